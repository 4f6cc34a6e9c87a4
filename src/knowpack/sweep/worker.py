"""One sweep task in its own process: ``python -m knowpack.sweep.worker RUN_DIR``.

In:  ``RUN_DIR/sweep_task.json`` (resolved config, last stage to run, run directories to adopt finished
     stages from). Stdout and stderr are the run's log (the executor points them at ``RUN_DIR/run.log``).
Out: the run directory (via `run_pipeline`) and ``RUN_DIR/status.json``: running, then done or failed
     with the error's first line and the wall time. Exit code 0 done, 1 failed, 75 when another worker
     holds the run (its status is left alone). A worker killed outright cannot write its status; the
     executor that started it marks the run failed. A local worker dies with its sweep process.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from knowpack.rundir import try_lock
from knowpack.sweep.results import IN_USE, PARENT_ENV, TASK, write_status


def die_with_parent(parent: str | None) -> None:
    """Linux: the kernel kills this worker when the sweep that started it dies (PR_SET_PDEATHSIG).

    Set here rather than in a ``preexec_fn``, which is unsafe while the sweep runs threads (its progress bar).
    """
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the sweep died before the request took effect
        sys.exit(1)


def main(run_dir: Path) -> int:
    die_with_parent(os.environ.get(PARENT_ENV))
    handle = try_lock(run_dir / ".worker.lock")  # held until this process ends
    if handle is None:
        print(f"{run_dir}: another sweep worker holds this run; leaving it alone", flush=True)
        return IN_USE
    task = json.loads((run_dir / TASK).read_text(encoding="utf-8"))
    start = time.time()
    where = {"pid": os.getpid(), "host": socket.gethostname(), "started": start}
    write_status(run_dir, status="running", **where)
    print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} worker pid {os.getpid()} on {where['host']}", flush=True)
    try:
        from rich.console import Console

        from knowpack.config import RunConfig
        from knowpack.pipeline import run_pipeline

        run_pipeline(RunConfig.model_validate(task["config"]), run_dir, until=task["until"], progress=False,
                     console=Console(file=sys.stdout, width=120, soft_wrap=True),
                     reuse_from=[Path(p) for p in task["reuse_from"]])
    except BaseException as err:  # everything, KeyboardInterrupt included, is recorded before leaving
        traceback.print_exc(file=sys.stdout)
        message = " ".join(str(err).splitlines())[:500] or type(err).__name__
        write_status(run_dir, status="failed", error=f"{type(err).__name__}: {message}",
                     seconds=time.time() - start, **where)
        return 1
    write_status(run_dir, status="done", seconds=time.time() - start, **where)
    print(f"=== done in {time.time() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

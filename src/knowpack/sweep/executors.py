"""Where sweep tasks run: ``local`` worker processes or a ``ray`` cluster.

In:  tasks (run directories holding ``sweep_task.json``), a number of workers, for Ray an address.
Out: each task run by ``python -m knowpack.sweep.worker RUN_DIR`` in its own process (so the model is
     loaded per process and a crash takes down one run, not the sweep), its output appended to
     ``RUN_DIR/run.log``; ``on_done(task, exit_code, note)`` is called as each one ends.
     Local workers die with the sweep process (Linux: PR_SET_PDEATHSIG), so a killed sweep leaves no
     orphan writing into its runs. Ray is optional (``pip install 'knowpack[ray]'``) and imported lazily.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from knowpack.errors import KnowpackError
from knowpack.sweep.results import LOG, PARENT_ENV

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "Task", "make_executor"]

EXECUTORS = ("local", "ray")
OnDone = Callable[["Task", int, str], None]


@dataclass(frozen=True)
class Task:
    run_dir: Path
    label: str


class Executor(Protocol):
    def start(self) -> None: ...

    def run(self, tasks: list[Task], on_done: OnDone) -> None: ...

    def close(self) -> None: ...


def worker_command(task: Task) -> list[str]:
    return [sys.executable, "-m", "knowpack.sweep.worker", str(task.run_dir.resolve())]


def worker_env(threads: int | None) -> dict[str, str]:
    """The environment of a worker: this knowpack first on the path, a fair share of the CPU threads."""
    import knowpack

    env = dict(os.environ)
    source = str(Path(knowpack.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    if threads:  # N workers each using every core would oversubscribe the CPU
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, str(threads))
    return env


class LocalExecutor:
    """Up to ``workers`` worker processes on this machine (spawned fresh: no state shared with the sweep)."""

    def __init__(self, workers: int):
        self.workers = workers
        # The worker asks the kernel to kill it when this process dies (see `knowpack.sweep.worker`).
        self.env = {**worker_env(max(1, (os.cpu_count() or 1) // workers)), PARENT_ENV: str(os.getpid())}

    def start(self) -> None:
        pass

    def run(self, tasks: list[Task], on_done: OnDone) -> None:
        waiting = deque(tasks)
        running: dict[subprocess.Popen, tuple[Task, object]] = {}
        try:
            while waiting or running:
                while waiting and len(running) < self.workers:
                    task = waiting.popleft()
                    log = open(task.run_dir / LOG, "ab")
                    process = subprocess.Popen(worker_command(task), stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=self.env)
                    running[process] = (task, log)
                time.sleep(0.2)
                for process in [p for p in running if p.poll() is not None]:
                    task, log = running.pop(process)
                    log.close()
                    on_done(task, process.returncode, "")
        finally:  # interrupted: stop the workers; their runs resume on the next sweep
            for process, (_, log) in running.items():
                process.kill()
                process.wait()
                log.close()

    def close(self) -> None:
        pass


def _run_logged(command: list[str], log_path: str, env: dict[str, str]) -> int:
    """Ray task body: the same worker process as the local executor, on whichever node Ray picked.

    The worker dies with this Ray worker process (as a local one dies with the sweep): Ray ends a job's
    workers when its driver, the sweep, dies, and no orphan then goes on writing into the run."""
    with open(log_path, "ab") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, **env, PARENT_ENV: str(os.getpid())}).returncode


def check_address(address: str, timeout: float) -> None:
    """Fail fast, in one line, when nothing listens at a Ray address (ray.init alone may hang)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise KnowpackError(f"--address {address}: write it as HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:10001 "
                            "or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise KnowpackError(f"--address {address}: no Ray cluster answered within {timeout:g} s ({reason}); start "
                            "one with `ray start --head`, check the address, or leave out --address to start a "
                            "local Ray") from err


def use_cluster_token() -> None:
    """Ray 2.60's ``ray start`` turns on token authentication and writes the token to ~/.ray/auth_token,
    but a driver only sends it with RAY_AUTH_MODE=token; without, it retries unauthenticated for 30 s and
    fails. When the user has not chosen a mode and a token is at hand, send it (a cluster without
    authentication accepts a driver that sends one)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


class RayExecutor:
    """Tasks on a Ray cluster (``address``) or on a local Ray started here with ``workers`` CPUs.

    Constructing it checks that Ray is installed and the address answers; `start` connects. The sweep
    directory must be on a file system every node sees. At most ``workers`` runs are in flight; each
    asks Ray for one CPU, and one GPU when the cluster has GPUs.
    """

    def __init__(self, workers: int, address: str | None, timeout: float):
        if address:
            use_cluster_token()  # before `import ray`, which reads RAY_AUTH_MODE once
        try:
            import ray
        except ImportError as err:
            raise KnowpackError("--executor ray: Ray is not installed; pip install 'knowpack[ray]' "
                                "(or use --executor local)") from err
        self.ray, self.workers, self.address, self.started = ray, workers, address, False
        self.env = {k: v for k, v in worker_env(None).items()
                    if k in ("PYTHONPATH", "KNOWPACK_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "KNOWPACK_TRUTHFULQA")}
        if address:
            check_address(address, timeout)

    def start(self) -> None:
        ray, address = self.ray, self.address
        try:
            if address:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                         runtime_env={"env_vars": self.env})
        except (ConnectionError, TimeoutError, RuntimeError) as err:
            raise KnowpackError(f"--executor ray: cannot connect to Ray at {address or 'a local instance'} "
                                f"({' '.join(str(err).split())[:200]})") from err
        self.started = True
        gpus = ray.cluster_resources().get("GPU", 0)
        self.remote = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=0)(_run_logged)

    def run(self, tasks: list[Task], on_done: OnDone) -> None:
        ray = self.ray
        waiting, in_flight = deque(tasks), {}
        while waiting or in_flight:
            while waiting and len(in_flight) < self.workers:
                task = waiting.popleft()
                ref = self.remote.remote(worker_command(task), str((task.run_dir / LOG).resolve()), self.env)
                in_flight[ref] = task
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                task = in_flight.pop(ref)
                try:
                    code, note = ray.get(ref), ""
                except ray.exceptions.RayError as err:  # the Ray worker itself died
                    code, note = -1, f"Ray task failed: {' '.join(str(err).split())[:300]}"
                on_done(task, code, note)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(name: str, workers: int, address: str | None = None, timeout: float = 10.0) -> Executor:
    if workers < 1:
        raise KnowpackError(f"--workers {workers}: give at least 1")
    if name == "local":
        if address:
            raise KnowpackError("--address: only with --executor ray")
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(workers, address, timeout)
    raise KnowpackError(f"--executor {name}: choose one of {', '.join(EXECUTORS)}")

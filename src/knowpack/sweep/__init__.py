"""Sweep stage: a grid of runs in parallel workers, one results table.

In:  a sweep YAML (see `knowpack.sweep.spec`; shipped ones by name: ``reproduce-cpu``, ``reproduce-paper``,
     ``regularizers-cpu``, ``continual-cpu``, ``capacity-cpu``, ``reproduce-rank1-cpu``),
     an output directory, an executor (``local`` worker processes or ``ray``) and a number of workers.
Out: ``<out>/sweep.yaml`` (the spec), ``<out>/shared/<key>/`` (facts, base-model probe and base benchmark
     scores, computed once per distinct facts/probe/model setting), ``<out>/runs/<id>/`` per grid point (a full run directory
     plus ``sweep_task.json``, ``status.json`` and ``run.log``), and ``<out>/results.parquet`` (one row
     per run, see `knowpack.sweep.results`), rewritten as each run ends.

Resumable: a rerun skips runs whose status is done, reruns the others (their finished stages are
reused), and never starts two workers on one run. A run whose worker fails or dies is marked failed
with its log and the sweep goes on; `SweepRunsFailed` (exit code 1) is raised at the end.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

from knowpack.config import RunConfig
from knowpack.errors import KnowpackError
from knowpack.rundir import RunDir, fingerprint
from knowpack.sweep.executors import Task, make_executor
from knowpack.sweep.results import (IN_USE, LOG, RESULTS, SCHEMA_VERSION, TASK, collect_rows, flatten_metrics,
                                    load_results, read_results, read_status, write_results, write_status)
from knowpack.sweep.spec import SweepConfig, expand_grid, load_sweep, resolve_points, shipped_sweeps, sweep_path

__all__ = ["RESULTS", "SCHEMA_VERSION", "SweepConfig", "SweepRunsFailed", "expand_grid", "flatten_metrics",
           "load_results", "load_sweep", "plan_sweep", "read_results", "run_sweep", "shipped_sweeps"]


class SweepRunsFailed(KnowpackError):
    """Some runs failed; the others finished and the results table was written."""

    exit_code = 1

    def __init__(self, message: str, table: Path):
        super().__init__(message)
        self.table = table


def base_key(config: RunConfig) -> str:
    """Runs with equal facts, probe and model settings share one base-model probe (and base scores)."""
    return fingerprint("base", config.facts.model_dump(mode="json"), config.probe.model_dump(mode="json"),
                       config.model.model_dump(mode="json"))[:10]


def _write_task(run_dir: Path, point: dict[str, Any], config: RunConfig, until: str, reuse_from: list[Path]) -> None:
    RunDir(run_dir).write_json(TASK, {"point": point, "config": config.model_dump(mode="json"), "until": until,
                                      "reuse_from": [str(p.resolve()) for p in reuse_from]})


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in point.items()) or "base"


def _why_it_ended(code: int, note: str) -> str:
    if note:
        return note
    if code < 0:
        try:
            return f"worker died: killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"worker died: signal {-code}"
    return f"worker exited with code {code} without recording a status"


def plan_sweep(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(run id, grid point) of every distinct run a sweep file asks for; validates it, runs nothing."""
    path = sweep_path(path)
    planned: dict[str, dict[str, Any]] = {}
    for point, config in resolve_points(load_sweep(path), path):
        planned.setdefault(fingerprint(config.model_dump(mode="json"))[:10], point)
    return list(planned.items())


def run_sweep(path: str | Path, out: str | Path, *, workers: int = 1, executor: str = "local",
              address: str | None = None, connect_timeout: float = 10.0, progress: bool = True,
              console: Console | None = None) -> Path:
    """Run (or resume) every grid point and write ``results.parquet``; returns its path.

    Raises `SweepRunsFailed` after all runs ended when any of them failed.
    """
    console = console or Console(stderr=True)
    path = sweep_path(path)
    sweep = load_sweep(path)
    points = resolve_points(sweep, path)  # every point validated before anything is created
    out = Path(out)
    pool = make_executor(executor, workers, address, connect_timeout)  # Ray missing or silent: fail before any work
    with RunDir(out).lock(), _terminate_as_interrupt():  # one sweep process per directory
        pool.start()
        try:
            return _run(sweep, path, points, out, pool, progress, console)
        finally:
            pool.close()  # also on Ctrl-C / SIGTERM: stops the workers and a Ray started here


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. from a batch scheduler) unwinds like Ctrl-C, so workers are stopped, not orphaned."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _layout(points: list[tuple[dict[str, Any], RunConfig]], out: Path,
            console: Console) -> tuple[dict[str, Path], dict[Path, tuple[dict[str, Any], str]]]:
    """Task files for the shared base probes and the runs: ({base key: dir}, {run dir: (grid point, base key)})."""
    shared: dict[str, Path] = {}
    runs: dict[Path, tuple[dict[str, Any], str]] = {}
    for point, config in points:
        key = base_key(config)
        if key not in shared:
            shared[key] = out / "shared" / key
            _write_task(shared[key], {}, config, "base_eval", [])
        run_dir = out / "runs" / fingerprint(config.model_dump(mode="json"))[:10]
        if run_dir in runs:
            console.print(f"[yellow]warning:[/yellow] grid point {_label(point)} gives the same config as "
                          f"{_label(runs[run_dir][0])}; run once")
            continue
        _write_task(run_dir, point, config, "report", [shared[key]])
        runs[run_dir] = (point, key)
    RunDir(out).write_json("sweep.json", {"runs": [p.name for p in runs]})
    return shared, runs


def _run(sweep: SweepConfig, path: Path, points: list[tuple[dict[str, Any], RunConfig]], out: Path, pool,
         progress: bool, console: Console) -> Path:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    RunDir(out).write_text("sweep.yaml", path.read_text(encoding="utf-8"))
    shared, runs = _layout(points, out, console)
    write_results(out, collect_rows(out, list(runs)))

    todo = [d for d in runs if read_status(d).get("status") != "done" or not (d / "metrics.json").is_file()]
    console.print(f"sweep {out}: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run "
                  f"on {getattr(pool, 'workers', 1)} worker(s)")
    failed: dict[Path, str] = {}
    bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=not progress)
    with bar:
        counter = bar.add_task("runs", total=len(runs), completed=len(runs) - len(todo))

        def finished(task: Task, code: int, note: str) -> None:
            status = read_status(task.run_dir)
            if code == 0 and status.get("status") == "done":
                seconds = status.get("seconds") or 0
                console.print(f"[green]✓[/green] {task.label} ({seconds:.0f} s)", highlight=False)
            else:
                failed[task.run_dir] = error = _failure(task.run_dir, status, code, note)
                console.print(f"[red]✗[/red] {task.label}: {error} (log: {task.run_dir / LOG})", highlight=False,
                              soft_wrap=True)
            if task.run_dir in runs:
                bar.advance(counter)
                write_results(out, collect_rows(out, list(runs)))

        bases = [d for key, d in shared.items()
                 if any(runs[r][1] == key for r in todo) and read_status(d).get("status") != "done"]
        for run_dir in [*bases, *todo]:  # a status left by an earlier attempt must not be taken for this one's
            write_status(run_dir, status="queued")
        pool.run([Task(d, f"base-model probe {d.name}") for d in bases], finished)
        ready = []
        for run_dir in todo:
            base_dir = shared[runs[run_dir][1]]
            if base_dir in failed:
                error = f"base-model probe failed ({failed[base_dir]}); see {base_dir / LOG}"
                write_status(run_dir, status="failed", error=error)
                failed[run_dir] = error
                bar.advance(counter)
            else:
                ready.append(Task(run_dir, _label(runs[run_dir][0])))
        pool.run(ready, finished)
    table = write_results(out, collect_rows(out, list(runs)))
    if any(read_status(d).get("status") == "done" for d in runs) and (todo or not (out / "report.html").is_file()):
        from knowpack.report import write_sweep_report

        console.print(f"report: {write_sweep_report(out)[1]}")
    _print_summary(console, runs, failed)
    if failed:
        logs = ", ".join(str(d / LOG) for d in list(failed)[:3]) + (" …" if len(failed) > 3 else "")
        raise SweepRunsFailed(f"{len([d for d in failed if d in runs])} of {len(runs)} runs failed (logs: {logs}); "
                              f"results of the others in {table}; rerun the same command to retry the failed runs",
                              table)
    return table


def _failure(run_dir: Path, status: dict[str, Any], code: int, note: str) -> str:
    """Why a worker's run did not finish; recorded in its status when the worker could not say."""
    if code == IN_USE:
        return "another sweep worker holds this run"
    if status.get("status") == "failed":
        return status.get("error") or "failed"
    error = _why_it_ended(code, note)  # killed or crashed before it could record why
    write_status(run_dir, **{**status, "status": "failed", "error": error})
    return error


def _print_summary(console: Console, runs: dict[Path, tuple[dict[str, Any], str]], failed: dict[Path, str]) -> None:
    from rich.table import Table

    table = Table(title="sweep summary")
    for column in ("run", "grid point", "status", "seconds"):
        table.add_column(column)
    for run_dir, (point, _) in runs.items():
        status = read_status(run_dir)
        seconds = status.get("seconds")
        table.add_row(run_dir.name, _label(point), status.get("status", "pending"),
                      f"{seconds:.0f}" if seconds is not None else "—")
    console.print(table)


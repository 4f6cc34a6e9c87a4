"""The sweep's results table: one row per run, rebuilt from the run directories.

In:  a sweep directory: ``runs/<id>/`` each with ``sweep_task.json`` (grid point and resolved config),
     ``status.json`` (pending / queued / running / done / failed, error, seconds) and, when done, ``metrics.json``
     (each read as its model in `knowpack.artifacts`).
Out: ``results.parquet``: ``schema_version``, ``run_id``, ``status``, ``error``, ``seconds``, ``run_dir``,
     the grid fields (dotted names), every resolved config field as ``config.<dotted>``, the flattened
     scalar metrics (dotted) and ``trained_params`` (read from the adapter's safetensors header).
     The schema version is also stored in the Parquet metadata; a table from another version is an
     error when read as a file and is rebuilt from the run directories when read as a sweep directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from knowpack.artifacts import Metrics, RunStatus, SweepRuns, SweepTask, checked, parse_artifact, read_artifact
from knowpack.errors import KnowpackError, warn
from knowpack.jsonio import read_json_file
from knowpack.rundir import RunDir, atomic_path

__all__ = ["RESULTS", "SCHEMA_VERSION", "collect_rows", "flatten_metrics", "load_results", "read_results",
           "trained_params", "write_results"]

SCHEMA_VERSION = 2  # 1: the sequential sweep's table (no status, no schema marker)
SCHEMA_KEY = b"knowpack_results_schema"
RESULTS = "results.parquet"
TASK = "sweep_task.json"
STATUS = "status.json"
LOG = "run.log"
IN_USE = 75  # a worker's exit code when another worker holds its run (EX_TEMPFAIL)
PARENT_ENV = "KNOWPACK_SWEEP_PARENT"  # pid of the local sweep process a worker must not outlive


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics -> dotted scalar columns (lists and the transition matrix are left out)."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "transitions":
            flat.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def _cell(value: Any) -> Any:
    """Lists and mappings (e.g. ``lora.target_modules``) become JSON text so every column has one type."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def trained_params(adapter_dir: Path) -> int | None:
    """Number of trained parameters in a run's saved adapter (or fine-tuned weights), read from the
    safetensors headers by the capacity measurement's counter; None when the run saved none."""
    from knowpack.evaluate.capacity import count_trainable_params

    return count_trainable_params(adapter_dir) if adapter_dir.is_dir() else None


def write_status(run_dir: Path, **status: Any) -> None:
    RunDir(run_dir).write_json(STATUS, checked(status, RunStatus, STATUS))


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATUS).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {"status": "pending"}


def run_row(sweep_dir: Path, run_dir: Path) -> dict[str, Any]:
    """One results row from a run directory (its task file says which grid point it is)."""
    task = read_artifact(run_dir / TASK, SweepTask)
    status = parse_artifact(read_status(run_dir), RunStatus, run_dir / STATUS)
    row: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "run_id": run_dir.name, "status": status.status,
                           "error": status.error, "seconds": status.seconds,
                           "run_dir": str(run_dir.relative_to(sweep_dir))}
    row.update({key: _cell(value) for key, value in task.point.items()})
    row.update({f"config.{key}": _cell(value) for key, value in flatten_metrics(task.config).items()})
    row.update({f"config.{key}": _cell(value) for key, value in _lists(task.config).items()})
    metrics_file = run_dir / "metrics.json"
    if status.status == "done" and metrics_file.is_file():
        written = read_json_file(metrics_file)
        metrics = parse_artifact(written, Metrics, metrics_file)
        row.update(flatten_metrics(written))  # the columns are the file's own keys and values, as written
        row["trained_params"] = trained_params(run_dir / "adapter")
        if task.config.get("rounds") and metrics.n_trained_facts is not None:
            # With rounds, mixture.n_unknown only fills in a round's default: the run's N, against which the
            # laws and the report put it, is the Unknown facts of all its rounds together.
            row["config.mixture.n_unknown"] = metrics.n_trained_facts
    return row


def _lists(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The list-valued config fields, which `flatten_metrics` leaves out."""
    found: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            found.update(_lists(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            found[f"{prefix}{key}"] = value
    return found


def collect_rows(sweep_dir: Path, run_dirs: list[Path] | None = None) -> pd.DataFrame:
    """The results table for ``run_dirs`` (default: every run directory under ``sweep_dir/runs``)."""
    if run_dirs is None:
        listed = sweep_dir / "sweep.json"  # the runs of the sweep's current grid, in grid order
        run_dirs = ([sweep_dir / "runs" / name for name in read_artifact(listed, SweepRuns).runs]
                    if listed.is_file() else sorted(p.parent for p in (sweep_dir / "runs").glob(f"*/{TASK}")))
        run_dirs = [d for d in run_dirs if (d / TASK).is_file()]
    return pd.DataFrame([run_row(sweep_dir, run_dir) for run_dir in run_dirs])


def write_results(sweep_dir: Path, table: pd.DataFrame) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), SCHEMA_KEY: str(SCHEMA_VERSION).encode()})
    target = sweep_dir / RESULTS
    with atomic_path(target) as temp:
        pq.write_table(arrow, temp)
    return target


def _schema_of(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise KnowpackError(f"{path}: not a readable Parquet results table ({type(err).__name__})") from err
    found = metadata.get(SCHEMA_KEY)
    return int(found) if found and found.isdigit() else None


def read_results(path: str | Path) -> pd.DataFrame:
    """A results table file; one from another knowpack version is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise KnowpackError(f"{path}: no results table; run `knowpack sweep --config SWEEP.yaml --out DIR` first")
    version = _schema_of(path)
    if version != SCHEMA_VERSION:
        written = f"schema {version}" if version else "an older knowpack (no schema version)"
        raise KnowpackError(f"{path}: results table written by {written}; this version reads schema {SCHEMA_VERSION}. "
                            f"Give the sweep directory instead ({path.parent}) to rebuild it from its run directories, "
                            "or rerun the same knowpack sweep command (finished runs are reused)")
    return pd.read_parquet(path)


def load_results(path: str | Path) -> tuple[pd.DataFrame, Path | None]:
    """Results from a table file, or from a sweep directory (rebuilt from its runs when missing or old).

    Returns the table and the sweep directory (None when a bare table file was given).
    """
    path = Path(path)
    if path.is_file():
        return read_results(path), None
    if not path.is_dir():
        raise KnowpackError(f"{path}: no such sweep directory or results table")
    table_file = path / RESULTS
    has_runs = any((path / "runs").glob(f"*/{TASK}"))
    if table_file.is_file() and _schema_of(table_file) == SCHEMA_VERSION:
        return pd.read_parquet(table_file), path
    if not has_runs:
        if table_file.is_file():
            return read_results(table_file), path  # old table, nothing to rebuild it from: the clear error
        raise KnowpackError(f"{path}: not a sweep directory (no {RESULTS}, no runs/*/{TASK}); "
                            "give the --out of a knowpack sweep")
    if table_file.is_file():
        warn(f"{table_file}: written by another knowpack version; rebuilt from {path / 'runs'}")
    table = collect_rows(path)
    write_results(path, table)
    return table, path

"""Sweep stage: a grid of runs and one results table.

In:  a sweep YAML::

        preset: smoke              # base preset
        base: {train: {epochs: 5}} # optional overrides for every run (same shape as config.yaml)
        grid:                      # dotted config fields -> values; the runs are the product
          mixture.n_unknown: [5, 10]
          train.seed: [1, 2]

Out: ``<out>/runs/<id>/`` per grid point (full run directories) and ``<out>/results.parquet`` with one
row per run: the grid fields, then the headline metrics. Runs already finished are reused; stages that
do not depend on the grid point (facts, base-model probe) are computed once and copied.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console

from knowpack.config import load_config, read_yaml
from knowpack.errors import KnowpackError
from knowpack.rundir import RunDir, atomic_path, fingerprint

__all__ = ["SweepConfig", "expand_grid", "flatten_metrics", "run_sweep"]


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: str = "default"
    base: dict[str, Any] = {}
    grid: dict[str, list[Any]]


def load_sweep(path: str | Path) -> SweepConfig:
    try:
        sweep = SweepConfig.model_validate(read_yaml(path))
    except ValidationError as err:
        first = err.errors()[0]
        raise KnowpackError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from err
    if not sweep.grid or any(not values for values in sweep.grid.values()):
        raise KnowpackError(f"{path}: grid: every field needs at least one value, e.g. mixture.n_unknown: [5, 10]")
    return sweep


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _overrides(point: dict[str, Any]) -> list[str]:
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in point.items()]


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


def run_sweep(path: str | Path, out: str | Path, *, progress: bool = True,
              console: Console | None = None) -> Path:
    """Run every grid point (sequentially, this process) and write ``results.parquet``."""
    from knowpack.pipeline import run_pipeline

    console = console or Console(stderr=True)
    sweep = load_sweep(path)
    with RunDir(out).lock():  # a second worker on the same sweep directory stops with a clear message
        return _run_grid(sweep, Path(out), progress, console)


def _run_grid(sweep: SweepConfig, out: Path, progress: bool, console: Console) -> Path:
    from knowpack.pipeline import run_pipeline

    base_file = RunDir(out) / "base.yaml"
    base_file.write_text(yaml.safe_dump(sweep.base), encoding="utf-8")
    points = expand_grid(sweep.grid)
    # Validate every grid point before running any, so a typo fails in seconds, not hours.
    configs = [load_config(sweep.preset, base_file, _overrides(point)) for point in points]
    run_dirs: list[Path] = []
    rows = []
    for index, (point, config) in enumerate(zip(points, configs), start=1):
        run_dir = Path(out) / "runs" / fingerprint(config.model_dump(mode="json"))[:10]
        console.rule(f"run {index}/{len(points)}: {point}")
        run_pipeline(config, run_dir, progress=progress, console=console, reuse_from=run_dirs)
        run_dirs.append(run_dir)
        rows.append({"run_dir": str(run_dir), **point, **flatten_metrics(RunDir(run_dir).read_json("metrics.json"))})
    target = Path(out) / "results.parquet"
    with atomic_path(target) as temp:
        pd.DataFrame(rows).to_parquet(temp, index=False)
    return target

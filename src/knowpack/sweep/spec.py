"""Sweep files: what a sweep runs.

In:  a sweep YAML (a path, or the name of a shipped one such as ``reproduce-cpu``)::

        preset: smoke                       # base preset
        base: {train: {epochs: 5}}          # overrides for every run (same shape as config.yaml)
        grid:                               # dotted config fields -> values; runs are the product
          mixture.n_unknown: [5, 10]
          mixture.seed,train.seed: [[1, 1], [2, 2]]   # fields joined by "," take their values together
        variants:                           # optional: alternative override sets, each crossed with the grid
          - {}
          - {mixture.paraphrases_per_fact: 1}

Out: a validated `SweepConfig` and its grid points, each resolved to a `RunConfig` (every point is
checked before any run starts, so a typo fails in seconds, not hours).
"""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from knowpack.config import RunConfig, _explain, _merge, preset_dict, read_yaml
from knowpack.errors import KnowpackError, did_you_mean, first_problem, validation_line

__all__ = ["SweepConfig", "expand_grid", "load_sweep", "resolve_points", "shipped_sweeps", "sweep_path"]


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: str = "default"
    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    variants: list[dict[str, Any]] = []


def shipped_sweeps() -> list[str]:
    folder = resources.files("knowpack.sweep").joinpath("configs")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def sweep_path(name_or_path: str | Path) -> Path:
    """A sweep file on disk, or a shipped sweep config named without its folder and ``.yaml``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removesuffix(".yaml")
    if name in shipped_sweeps():
        return Path(str(resources.files("knowpack.sweep").joinpath("configs", f"{name}.yaml")))
    raise KnowpackError(f"--config {name_or_path}: no such sweep file, and no shipped sweep config of that name "
                        f"(shipped: {', '.join(shipped_sweeps())})")


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and check a sweep file: top-level keys, grid field names, at least one grid point."""
    path = sweep_path(path)
    try:
        sweep = SweepConfig.model_validate(read_yaml(path))
    except ValidationError as err:
        dotted, first = first_problem(err)
        if first["type"] == "extra_forbidden":
            valid = list(SweepConfig.model_fields)
            hint = did_you_mean(dotted, valid, f"valid keys: {', '.join(valid)}", lead="")
            raise KnowpackError(f"{path}: unknown key {dotted!r}; {hint}") from err
        raise KnowpackError(validation_line(err, str(path))) from err
    if not sweep.grid and not sweep.variants:
        raise KnowpackError(f"{path}: grid is empty; give at least one field and its values, "
                            "e.g. grid: {mixture.n_unknown: [5, 10]}")
    for field, values in sweep.grid.items():
        if not values:
            raise KnowpackError(f"{path}: grid: {field} has no values; give a list such as [5, 10]")
    for field, values in sweep.grid.items():
        width = len(field.split(","))
        if width > 1 and any(not isinstance(v, list) or len(v) != width for v in values):
            raise KnowpackError(f"{path}: grid: {field} joins {width} fields, so each value must be a list of "
                                f"{width} values, e.g. [{', '.join(['1'] * width)}]")
    for where, keys in [("grid", list(sweep.grid))] + [(f"variants[{i}]", list(v)) for i, v in enumerate(sweep.variants)]:
        for key in keys:
            for field in key.split(","):
                check_field(field.strip(), f"{path}: {where}")
    for i, variant in enumerate(sweep.variants):
        grid_fields = {f.strip() for key in sweep.grid for f in key.split(",")}
        if overlap := sorted(set(variant) & grid_fields):
            raise KnowpackError(f"{path}: variants[{i}]: {overlap[0]} is also a grid field; set it in one place")
    try:
        preset_dict(sweep.preset)
    except KnowpackError as err:
        raise KnowpackError(f"{path}: preset: {err}") from err
    return sweep


def check_field(dotted: str, origin: str) -> None:
    """A dotted config field must name a leaf or section of `RunConfig`; else the nearest valid name."""
    cls: Any = RunConfig
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        fields = cls.model_fields if isinstance(cls, type) and issubclass(cls, BaseModel) else {}
        if part not in fields:
            prefix = ".".join(parts[:depth])
            listed = f"valid fields{' of ' + prefix if prefix else ''}: {', '.join(fields)}"
            # The suggestion is the whole dotted field with the misspelled part replaced.
            hint = did_you_mean(part, fields, listed if fields else f"{prefix} has no sub-fields", lead="",
                                spell=lambda close: ".".join([*parts[:depth], close, *parts[depth + 1:]]))
            raise KnowpackError(f"{origin}: unknown field {dotted!r}; {hint}")
        cls = fields[part].annotation


def expand_grid(grid: dict[str, list[Any]], variants: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every variant (default: one empty one) crossed with the product of the grid's values.

    A key naming several fields ("a,b") takes one list of values per point, so those fields move together.
    """
    keys = list(grid)
    product = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point: dict[str, Any] = {}
        for key, value in zip(keys, values):
            fields = [f.strip() for f in key.split(",")]
            point.update(zip(fields, value) if len(fields) > 1 else [(key, value)])
        product.append(point)
    return [{**variant, **point} for variant in (variants or [{}]) for point in product]


def _nested(point: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1e-3}`` -> ``{"train": {"lr": 1e-3}}``."""
    nested: dict[str, Any] = {}
    for key, value in point.items():
        cursor = nested
        *parents, leaf = key.split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[leaf] = value
    return nested


def resolve_points(sweep: SweepConfig, path: str | Path) -> list[tuple[dict[str, Any], RunConfig]]:
    """(grid point, resolved RunConfig) for every run: defaults < preset < base < the point."""
    base = _merge(preset_dict(sweep.preset), sweep.base)
    try:
        RunConfig.model_validate(base)
    except ValidationError as err:
        raise _explain(err, f"{path}: base") from err
    resolved = []
    for point in expand_grid(sweep.grid, sweep.variants):
        try:
            config = RunConfig.model_validate(_merge(base, _nested(point)))
        except ValidationError as err:
            raise _explain(err, f"{path}: grid point {point}") from err
        if config.rounds:  # rounds that contradict the strategy fail here, not in a worker hours later
            from knowpack.continual import check_rounds

            try:
                check_rounds(config)
            except KnowpackError as err:
                raise KnowpackError(f"{path}: grid point {point}: {err}") from err
        resolved.append((point, config))
    return resolved

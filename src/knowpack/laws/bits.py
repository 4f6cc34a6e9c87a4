"""Bits stored against trainable parameters: the capacity of an adapter in bits per parameter.

In:  the finished runs of a results table, with ``capacity.bits_stored`` and ``capacity.trainable_params``
     (`knowpack.evaluate.capacity`), ``config.lora.rank`` and ``config.mixture.n_unknown``.
Out: ``laws.json["bits_per_param"]``: per group (the varying fields other than N, seeds and the
     adapter's size), one point per adapter size: the most bits it stored over the tested N (mean over
     seeds), and the slope of bits = slope · params through the origin (scipy ``curve_fit``) with its
     t-based 95% interval. An adapter whose most bits came at the largest N tested may not be full yet:
     its point is a lower bound (``at_largest_n``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from knowpack.laws import N_FIELD, TooFewPoints, _ci, _label, _need, _plain, _r2, varying_fields

BITS, PARAMS = "capacity.bits_stored", "capacity.trainable_params"
RANK, MODEL = "config.lora.rank", "config.model.name"
ADAPTER_SIZE = ("config.lora.rank", "config.lora.alpha", "config.lora.target_modules")


def most_bits_per_adapter(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per adapter size: params, rank, the largest mean bits stored over N, that N, bits/param."""
    numbers = runs.assign(**{c: pd.to_numeric(runs[c], errors="coerce") for c in (BITS, PARAMS, N_FIELD)})
    numbers = numbers.dropna(subset=[BITS, PARAMS, N_FIELD])
    rows = []
    for params, adapter in numbers.groupby(PARAMS, sort=True):
        by_n = adapter.groupby(N_FIELD)[BITS].mean().sort_index()
        best_n = float(by_n.idxmax())
        rows.append({"trainable_params": int(params), "rank": _plain(adapter[RANK].iloc[0]) if RANK in adapter else None,
                     "bits_stored": float(by_n.max()), "n_unknown": best_n,
                     "bits_per_param": float(by_n.max()) / float(params),
                     "at_largest_n": bool(best_n == by_n.index.max()), "runs": int(len(adapter))})
    return pd.DataFrame(rows)


def fit_bits_per_param(params: np.ndarray, bits: np.ndarray) -> dict[str, Any]:
    """bits = slope · params through the origin (needs 2 adapter sizes); slope is bits per parameter."""
    from scipy.optimize import curve_fit

    params, bits = np.asarray(params, float), np.asarray(bits, float)
    _need(params, 2, 2, "trainable-parameter", "vary lora.rank in the grid")
    scale = float(params.max())  # conditioning: params are ~1e5, the slope ~1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a perfect fit warns that the covariance is zero
        slope, cov = curve_fit(lambda x, s: s * x, params / scale, bits, p0=[bits.max()])
    variance = float(cov[0, 0]) if np.isfinite(cov[0, 0]) else math.inf
    return {"formula": "bits_stored = slope * trainable_params", "n_points": len(params),
            "params": {"slope": _ci(slope[0] / scale, math.sqrt(max(variance, 0.0)) / scale, len(params) - 1)},
            "r2": _r2(bits, slope[0] * params / scale)}


def bits_per_param(done: pd.DataFrame) -> list[dict[str, Any]]:
    """``laws.json["bits_per_param"]``: an entry per group, with its adapter points and the fitted slope."""
    if BITS not in done.columns or PARAMS not in done.columns:
        return []
    runs = done[pd.to_numeric(done[BITS], errors="coerce").notna()]
    if runs.empty:
        return []
    fields = varying_fields(runs, lambda c: c.endswith(".seed") or c == N_FIELD or c in ADAPTER_SIZE)
    groups = runs.groupby(fields, sort=False, dropna=False) if fields else [((), runs)]
    entries = []
    for _, group in groups:
        points = most_bits_per_adapter(group)
        entry: dict[str, Any] = {"group": _label(group.iloc[0], fields),
                                 "fields": {f.removeprefix("config."): _plain(group.iloc[0][f]) for f in fields},
                                 "model": _plain(group[MODEL].iloc[0]) if MODEL in group else None,
                                 "x": PARAMS, "y": BITS, "adapters": points.to_dict("records")}
        try:
            entry.update(fit_bits_per_param(points["trainable_params"].to_numpy(), points["bits_stored"].to_numpy()))
        except TooFewPoints as err:
            entry.update({"error": str(err), "n_points": len(points)})
        entries.append(entry)
    return entries

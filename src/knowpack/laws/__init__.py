"""Laws stage: scaling laws, a capacity estimate and Pareto fronts from a sweep's results table.

In:  a results table (`knowpack.sweep.results`): one row per run with ``config.*`` fields and metrics.
Out: ``laws.json`` with, each with 95% confidence intervals and its data points,
     - ``forgetting_vs_loss``: forgetting = slope·(fine-tuning loss) + intercept (scipy ``linregress``;
       Kalajdzievski 2024 finds an inverse linear relation);
     - ``forgetting_vs_params`` / ``forgetting_vs_steps``: shifted power laws forgetting = A·x^alpha + B
       in the number of trained adapter parameters and in optimizer steps (``curve_fit``);
     - ``capacity``: per mixture (the varying fields other than N and seeds), reliability(N) =
       top / (1 + (N/n50)^k) and the largest N with fitted reliability ≥ target, with a bootstrap over
       runs (resampled within each N) for its interval, next to the largest tested N whose mean
       reliability stays ≥ target; each entry names its ``rank`` and ``model``;
     - ``bits_per_param``: bits stored (``capacity.bits_stored``) against trainable parameters per
       adapter size, with the fitted bits/param slope and its interval (`knowpack.laws.bits`);
     - ``pareto``: configurations (means over seeds) not beaten on both reliability and negative shift,
       and on both reliability and forgetting.
     A fit without enough points says how many it needs instead of failing the others.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from knowpack.errors import KnowpackError

__all__ = ["FORGETTING", "capacity_estimate", "fit_laws", "fit_linear", "fit_shifted_power", "pareto_front",
           "reliability_curve", "write_laws"]

FORGETTING = "forgetting.ce_vs_base"  # Kalajdzievski's forgetting: cross-entropy against the base model
N_FIELD = "config.mixture.n_unknown"


class TooFewPoints(ValueError):
    """A fit needs more (or more varied) data points than the table has."""


def _ci(value: float, stderr: float, dof: int) -> dict[str, Any]:
    from scipy import stats

    half = float(stats.t.ppf(0.975, dof) * stderr) if math.isfinite(stderr) else math.inf
    return {"value": float(value), "stderr": float(stderr), "ci95": [float(value - half), float(value + half)]}


def _need(x: np.ndarray, points: int, distinct: int, what: str, hint: str) -> None:
    have = len(np.unique(x))
    if len(x) < points or have < distinct:
        raise TooFewPoints(f"needs at least {points} finished runs with {distinct} distinct {what} values; got "
                           f"{len(x)} runs with {have} ({hint})")


def fit_linear(x: np.ndarray, y: np.ndarray, what: str = "x", hint: str = "") -> dict[str, Any]:
    """y = slope·x + intercept by least squares, t-based 95% intervals (needs 3 points, 2 distinct x)."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    _need(x, 3, 2, what, hint)
    result = stats.linregress(x, y)
    dof = len(x) - 2
    return {"formula": "y = slope * x + intercept", "n_points": len(x),
            "params": {"slope": _ci(result.slope, result.stderr, dof),
                       "intercept": _ci(result.intercept, result.intercept_stderr, dof)},
            "r2": float(result.rvalue ** 2), "p_value": float(result.pvalue)}


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else float("nan")


def fit_shifted_power(x: np.ndarray, y: np.ndarray, what: str = "x", hint: str = "") -> dict[str, Any]:
    """y = A·x^alpha + B (x > 0), needs 4 points with 3 distinct x.

    x is scaled by its largest value for conditioning; the start is the best of a grid of exponents
    (for each, A and B by linear least squares), then ``curve_fit`` refines all three. A's interval
    comes from the covariance by the delta method.
    """
    from scipy.optimize import curve_fit

    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.any(x <= 0):
        raise TooFewPoints(f"needs {what} > 0 for a power law")
    _need(x, 4, 3, what, hint)
    scale = float(x.max())
    xs = x / scale

    def model(values, a, alpha, b):
        return a * values ** alpha + b

    best = None
    for alpha in np.linspace(-3, 3, 61):
        if abs(alpha) < 1e-9:
            continue
        design = np.column_stack([xs ** alpha, np.ones_like(xs)])
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        sse = float(np.sum((design @ [a, b] - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, [a, alpha, b])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            params, cov = curve_fit(model, xs, y, p0=best[1], maxfev=20000)
        except RuntimeError as err:
            raise TooFewPoints(f"the power-law fit did not converge ({err})") from err
    a, alpha, b = params
    dof = len(x) - 3
    cov = np.where(np.isfinite(cov), cov, np.inf)
    factor = scale ** -alpha
    jacobian = np.array([factor, -a * math.log(scale) * factor, 0.0])  # A = a·scale^-alpha
    var_a = float(jacobian @ cov @ jacobian) if np.all(np.isfinite(cov)) else math.inf
    return {"formula": "y = A * x^alpha + B", "n_points": len(x),
            "params": {"A": _ci(a * factor, math.sqrt(max(var_a, 0.0)), dof),
                       "alpha": _ci(alpha, math.sqrt(max(cov[1, 1], 0.0)), dof),
                       "B": _ci(b, math.sqrt(max(cov[2, 2], 0.0)), dof)},
            "r2": _r2(y, model(xs, *params))}


def reliability_curve(n: np.ndarray, top: float, n50: float, k: float) -> np.ndarray:
    """Reliability after packing N facts: ``top`` for few facts, half of it at ``n50``, slope ``k``."""
    return top / (1.0 + (np.asarray(n, float) / n50) ** k)


def _fit_reliability(n: np.ndarray, reliability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top, log10 n50, k) and their covariance."""
    from scipy.optimize import curve_fit

    def model(values, top, log_n50, k):
        return reliability_curve(values, top, 10.0 ** log_n50, k)

    start = [min(max(reliability.max(), 0.05), 1.0), math.log10(np.median(n)), 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return curve_fit(model, n, reliability, p0=start, bounds=([0.0, -3.0, 0.05], [1.0, 9.0, 20.0]),
                         maxfev=20000)


def _capacity(top: float, n50: float, k: float, target: float) -> float:
    """Largest N with reliability_curve(N) ≥ target (0 when even one fact stays below it)."""
    return 0.0 if top <= target else float(n50 * (top / target - 1.0) ** (1.0 / k))


def capacity_estimate(n: np.ndarray, reliability: np.ndarray, target: float = 0.95, bootstrap: int = 500,
                      seed: int = 0) -> dict[str, Any]:
    """Fit `reliability_curve`, the capacity at ``target`` and a bootstrap interval (needs 4 runs, 3 distinct N)."""
    n, reliability = np.asarray(n, float), np.asarray(reliability, float)
    _need(n, 4, 3, "N (mixture.n_unknown)", "vary mixture.n_unknown in the grid")
    try:
        params, cov = _fit_reliability(n, reliability)
    except (RuntimeError, ValueError) as err:
        raise TooFewPoints(f"the reliability curve did not converge ({err})") from err
    top, log_n50, k = (float(v) for v in params)
    dof = len(n) - 3
    errors = np.sqrt(np.clip(np.diag(cov), 0, None))
    estimate = _capacity(top, 10 ** log_n50, k, target)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(n == value) for value in np.unique(n)]
    samples, failed = [], 0
    for _ in range(bootstrap):  # resample runs (seeds) within each N, so every N stays in the fit
        pick = np.concatenate([rng.choice(group, size=len(group)) for group in groups])
        try:
            (b_top, b_log_n50, b_k), _ = _fit_reliability(n[pick], reliability[pick])
        except (RuntimeError, ValueError):
            failed += 1
            continue
        samples.append(_capacity(b_top, 10 ** b_log_n50, b_k, target))
    means = pd.Series(reliability).groupby(n).mean().sort_index()
    observed = None
    for value, mean in means.items():  # the largest tested N up to which the mean stays ≥ target
        if mean < target:
            break
        observed = float(value)
    interval = [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))] if samples else None
    r2 = _r2(reliability, reliability_curve(n, top, 10 ** log_n50, k))
    return {"formula": "reliability = top / (1 + (N / n50)^k)", "n_points": len(n), "target": target,
            "params": {"top": _ci(top, errors[0], dof), "n50": {"value": 10 ** log_n50, "log10_stderr": float(errors[1])},
                       "k": _ci(k, errors[2], dof)},
            "r2": r2, "warning": _capacity_warning(means, r2),
            "capacity": estimate, "capacity_ci95": interval, "extrapolated": bool(estimate > n.max()),
            "bootstrap": {"samples": bootstrap, "failed": failed, "seed": seed},
            "capacity_observed": observed,
            "means": [[float(value), float(mean)] for value, mean in means.items()]}


def _capacity_warning(means: pd.Series, r2: float) -> str | None:
    """Why the fitted capacity should not be trusted, if it should not: the curve assumes reliability
    falls as N grows, which fails when small N gets too few optimizer steps to learn (fixed epochs)."""
    rises = [f"{a:g}→{b:g}" for (a, ra), (b, rb) in zip(means.items(), list(means.items())[1:]) if rb > ra + 0.02]
    if rises:
        return (f"mean reliability rises with N ({', '.join(rises)}): the decreasing curve does not describe these "
                "runs (too few optimizer steps at small N? raise train.epochs); the fitted N* is not a capacity")
    if not r2 >= 0.5:
        return f"poor fit (R² {r2:.2f}): the fitted N* is not a reliable capacity"
    return None


def pareto_front(frame: pd.DataFrame, benefit: str, cost: str) -> list[dict[str, Any]]:
    """Rows not dominated: no other row has benefit ≥ and cost ≤ with one of them strict. Best benefit first."""
    rows = frame.dropna(subset=[benefit, cost])
    keep = []
    for index, row in rows.iterrows():
        beaten = ((rows[benefit] >= row[benefit]) & (rows[cost] <= row[cost])
                  & ((rows[benefit] > row[benefit]) | (rows[cost] < row[cost]))).any()
        if not beaten:
            keep.append(index)
    front = rows.loc[keep].sort_values(benefit, ascending=False)
    return [{"config": r["label"], benefit: float(r[benefit]), cost: float(r[cost]), "runs": int(r["runs"])}
            for _, r in front.iterrows()]


def varying_fields(table: pd.DataFrame, exclude: Callable[[str], bool]) -> list[str]:
    """``config.*`` columns whose value differs between runs, minus the excluded ones."""
    return [c for c in table.columns if c.startswith("config.") and not exclude(c)
            and table[c].astype(str).nunique() > 1]


def _is_seed(column: str) -> bool:
    """A seed field (``config.mixture.seed``, ``config.train.seed``): runs differing only there are repeats."""
    return column.endswith(".seed")


def _plain(value: Any) -> Any:
    """A table cell as a JSON value (numpy scalars to Python ones)."""
    return value.item() if hasattr(value, "item") else value


def _label(row: pd.Series, fields: list[str]) -> str:
    return ", ".join(f"{f.removeprefix('config.')}={row[f]}" for f in fields) or "all runs"


def configurations(table: pd.DataFrame) -> pd.DataFrame:
    """Mean metrics per configuration (runs that differ only in seeds are one configuration)."""
    fields = varying_fields(table, _is_seed)
    metrics = [m for m in ("reliability", "shift.negative", "shift.positive", FORGETTING, "forgetting.kl_to_base")
               if m in table.columns]
    keyed = table.assign(label=table.apply(lambda r: _label(r, fields), axis=1) if len(table) else [])
    grouped = keyed.groupby("label", sort=False)
    return grouped[metrics].mean().assign(runs=grouped.size()).reset_index()


def _numbers(frame: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    if x not in frame.columns or y not in frame.columns:
        return np.array([]), np.array([])
    pairs = frame[[x, y]].apply(pd.to_numeric, errors="coerce").dropna()
    return pairs[x].to_numpy(float), pairs[y].to_numpy(float)


def _attempt(fit: Callable[[], dict[str, Any]], x: np.ndarray, y: np.ndarray, names: tuple[str, str]) -> dict:
    try:
        result = fit()
    except TooFewPoints as err:
        return {"x": names[0], "y": names[1], "error": str(err), "n_points": len(x)}
    return {"x": names[0], "y": names[1], **result, "points": [[float(a), float(b)] for a, b in zip(x, y)]}


def fit_laws(table: pd.DataFrame, target: float = 0.95, bootstrap: int = 500, seed: int = 0) -> dict[str, Any]:
    """Every law the table supports (see the module docstring); the content of ``laws.json``."""
    if not 0 < target <= 1:
        raise KnowpackError(f"--target {target}: a reliability between 0 and 1, e.g. 0.95")
    done = table[table["status"] == "done"] if "status" in table.columns else table
    laws: dict[str, Any] = {"target": target, "runs": int(len(table)), "runs_done": int(len(done)),
                            "forgetting_metric": FORGETTING, "fits": {}, "capacity": [], "bits_per_param": [],
                            "pareto": {}}
    specs = [("forgetting_vs_loss", "train.final_loss", fit_linear, "fine-tuning loss",
              "vary what the adapter learns, e.g. mixture.n_unknown or train.epochs"),
             ("forgetting_vs_params", "trained_params", fit_shifted_power, "trained-parameter",
              "vary lora.rank or lora.target_modules in the grid"),
             ("forgetting_vs_steps", "train.steps", fit_shifted_power, "training-step",
              "vary train.epochs, train.batch_size or mixture.n_unknown in the grid")]
    for name, x_name, fitter, what, hint in specs:
        x, y = _numbers(done, x_name, FORGETTING)
        laws["fits"][name] = _attempt(lambda: fitter(x, y, what, hint), x, y, (x_name, FORGETTING))
    fields = varying_fields(done, lambda c: _is_seed(c) or c == N_FIELD)
    groups = done.groupby(fields, sort=False, dropna=False) if fields else [((), done)]
    for _, group in groups:
        n, reliability = _numbers(group, N_FIELD, "reliability")
        entry = _attempt(lambda: capacity_estimate(n, reliability, target, bootstrap, seed), n, reliability,
                         (N_FIELD, "reliability"))
        laws["capacity"].append({"group": _label(group.iloc[0], fields),
                                 "fields": {f.removeprefix("config."): _plain(group.iloc[0][f]) for f in fields},
                                 **{name: _plain(group.iloc[0][column]) if column in group else None
                                    for name, column in (("rank", "config.lora.rank"), ("model", "config.model.name"))},
                                 **entry})
    from knowpack.laws.bits import bits_per_param

    laws["bits_per_param"] = bits_per_param(done)
    means = configurations(done)
    for cost, key in (("shift.negative", "reliability_vs_negative_shift"), (FORGETTING, "reliability_vs_forgetting")):
        if {"reliability", cost} <= set(means.columns):
            laws["pareto"][key] = pareto_front(means, "reliability", cost)
    return laws


def fitted_any(laws: dict[str, Any]) -> bool:
    return (any("error" not in fit for fit in laws["fits"].values())
            or any("error" not in c for c in [*laws["capacity"], *laws.get("bits_per_param", [])]))


def write_laws(source: str | Path, target: float = 0.95, bootstrap: int = 500, seed: int = 0,
               out: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """Fit the laws of a sweep directory or results table and write ``laws.json`` beside it.

    Raises a `KnowpackError` naming what each fit needs when none could be fitted.
    """
    import json

    from knowpack.rundir import atomic_path
    from knowpack.sweep.results import load_results

    source = Path(source)
    table, sweep_dir = load_results(source)
    if table.empty:
        raise KnowpackError(f"{source}: the results table has no runs")
    laws = fit_laws(table, target, bootstrap, seed)
    if not fitted_any(laws):
        reasons = [f"{name}: {fit['error']}" for name, fit in laws["fits"].items()]
        reasons += [f"capacity ({c['group']}): {c['error']}" for c in laws["capacity"]]
        reasons += [f"bits per parameter ({b['group']}): {b['error']}" for b in laws["bits_per_param"]]
        raise KnowpackError(f"{source}: no law could be fitted from {laws['runs_done']} finished runs; "
                            + "; ".join(reasons))
    target_file = Path(out) if out else (sweep_dir or source.parent) / "laws.json"
    with atomic_path(target_file) as temp:
        temp.write_text(json.dumps(laws, indent=2) + "\n", encoding="utf-8")
    return laws, target_file

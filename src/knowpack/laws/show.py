"""The laws as text: a rich table for the terminal and Markdown rows for the report.

In:  the dict written as ``laws.json`` (`knowpack.laws.fit_laws`).  Out: rows (law, fit, points, note).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

TITLES = {"forgetting_vs_loss": "forgetting vs fine-tuning loss",
          "forgetting_vs_params": "forgetting vs trained parameters",
          "forgetting_vs_steps": "forgetting vs training steps"}


def _value(entry: dict[str, Any]) -> str:
    if "ci95" in entry:
        low, high = entry["ci95"]
        return f"{entry['value']:.4g} [{low:.3g}, {high:.3g}]"
    return f"{entry['value']:.4g}"


def law_rows(laws: dict[str, Any]) -> list[list[str]]:
    """One row per fit: name, fitted parameters (95% CI), points, R² or the reason it was not fitted."""
    rows = []
    for name, fit in laws["fits"].items():
        title = TITLES.get(name, name)
        if "error" in fit:
            rows.append([title, "not fitted", str(fit["n_points"]), fit["error"]])
        else:
            params = "; ".join(f"{key} = {_value(entry)}" for key, entry in fit["params"].items())
            rows.append([title, f"{fit['formula']}: {params}", str(fit["n_points"]), f"R² {fit['r2']:.3f}"])
    for entry in laws["capacity"]:
        title = f"capacity at reliability ≥ {laws['target']:g} ({entry['group']})"
        if "error" in entry:
            rows.append([title, "not fitted", str(entry["n_points"]), entry["error"]])
            continue
        interval = entry["capacity_ci95"]
        span = f" [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else ""
        observed = entry["capacity_observed"]
        note = (f"largest tested N with mean ≥ target: {observed:g}" if observed is not None
                else "no tested N reaches the target")
        if entry["extrapolated"]:
            note += "; estimate beyond the largest N tested"
        if entry.get("warning"):
            note += f"; {entry['warning']}"
        params = "; ".join(f"{key} = {_value(value)}" for key, value in entry["params"].items())
        rows.append([title, f"N* = {entry['capacity']:.4g}{span} facts ({params})", str(entry["n_points"]), note])
    for entry in laws.get("bits_per_param", []):
        title = f"bits stored vs trainable parameters ({entry['group']})"
        adapters = "; ".join(f"rank {a['rank']}: {a['bits_per_param']:.3g} bits/param"
                             + (" (≥: most bits at the largest N)" if a["at_largest_n"] else "")
                             for a in entry["adapters"])
        if "error" in entry:
            rows.append([title, "not fitted", str(entry["n_points"]), f"{entry['error']}; {adapters}"])
        else:
            rows.append([title, f"{entry['formula']}: slope = {_value(entry['params']['slope'])} bits/param",
                         str(entry["n_points"]), f"R² {entry['r2']:.3f}; {adapters}"])
    for key, front in laws["pareto"].items():
        best = "; ".join(f"{item['config']} ({', '.join(f'{k} {v:.3g}' for k, v in item.items() if k not in ('config', 'runs'))})"
                         for item in front[:5])
        rows.append([f"Pareto front: {key.replace('_', ' ')}", best or "—", str(sum(i["runs"] for i in front)), ""])
    return rows


def laws_table(laws: dict[str, Any]) -> Table:
    table = Table(title=f"knowpack laws ({laws['runs_done']} of {laws['runs']} runs finished)")
    for column in ("law", "fit (95% CI)", "points", "note"):
        table.add_column(column, overflow="fold")
    for row in law_rows(laws):
        table.add_row(*row)
    return table

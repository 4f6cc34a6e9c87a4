"""The laws parts of a sweep's report: capacity from the reliability fits, bits per parameter, fitted laws.

In:  the laws of the sweep (`knowpack.laws.fit_laws`: ``capacity``, ``bits_per_param``, ``fits``,
     ``pareto``) and, for the capacity curves, the finished runs and their reliability-vs-N series.
Out: the capacity rows and dashed curves of the reliability section (`capacity_fits`), the bits-per-parameter
     section (`bits_section`) and the fitted-laws section with the Pareto fronts (`laws_section`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from knowpack.laws import reliability_curve
from knowpack.laws.show import TITLES, law_rows
from knowpack.report import plots
from knowpack.report.page import Section, md_table

__all__ = ["ANCHORS", "bits_section", "capacity_fits", "laws_section"]


def capacity_fits(done: pd.DataFrame, series: dict[str, tuple[list, list, list]],
                  laws: dict) -> tuple[dict[str, tuple], list[list[str]]]:
    """The fitted reliability curve (for the reliability-vs-N figure) and the capacity row of each mixture."""
    curves, capacities = {}, []
    for entry in laws.get("capacity", []):
        rows = done
        for field, value in entry.get("fields", {}).items():
            rows = rows[rows[f"config.{field}"].astype(str) == str(value)]
        if "error" in entry or rows.empty or rows["series"].iloc[0] not in series:
            continue
        name = rows["series"].iloc[0]
        top, n50, k = (entry["params"][p]["value"] for p in ("top", "n50", "k"))
        xs = np.geomspace(min(series[name][0]), max(series[name][0]), 100)
        curves[f"fit: {name}"] = (xs, reliability_curve(xs, top, n50, k))
        interval = entry["capacity_ci95"]
        capacities.append([name, f"{entry['capacity']:.3g}" + (f" [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else ""),
                           "—" if entry["capacity_observed"] is None else f"{entry['capacity_observed']:g}",
                           entry.get("warning") or ""])
    return curves, capacities


ANCHORS = ("Published anchors: about 2 bits per parameter for full training at 1,000 exposures, about 1 at 100 "
           "(Allen-Zhu & Li 2024, arXiv 2404.05405); direct LoRA measurements 0.05–0.4 bits per trainable parameter.")


def bits_section(laws: dict) -> Section | None:
    """Bits stored against trainable parameters (`knowpack.laws.bits`): a table per group and one figure each."""
    entries = laws.get("bits_per_param") or []
    if not entries:
        return None
    section = Section("bits", "Capacity in bits per parameter",
                      "Bits stored in the trained facts (after minus before training; Allen-Zhu & Li Def. 4.3, "
                      "`metrics.json[\"capacity\"]`): for each adapter size the most it stored over the tested N "
                      "(mean over seeds). ≥ marks an adapter whose most bits came at the largest N tested, so it "
                      "may hold more. " + ANCHORS)
    for entry in entries:
        rows = [[a["rank"], f"{a['trainable_params']:,}", f"{a['bits_stored']:.4g}", f"{a['n_unknown']:g}",
                 ("≥ " if a["at_largest_n"] else "") + f"{a['bits_per_param']:.3g}", a["runs"]]
                for a in entry["adapters"]]
        if "error" in entry:
            fit = f"No slope fitted: {entry['error']}."
        else:
            slope = entry["params"]["slope"]
            fit = (f"Fitted {entry['formula']}: slope {slope['value']:.3g} bits/param "
                   f"(95% CI {slope['ci95'][0]:.3g} to {slope['ci95'][1]:.3g}; R² {entry['r2']:.3f}).")
        section.text += (f"\n\n**{entry['group']}** (model `{entry.get('model')}`). {fit}\n\n"
                         + md_table(["rank", "trainable params", "most bits stored", "at N", "bits/param", "runs"], rows))
        if "error" not in entry:
            x = [a["trainable_params"] for a in entry["adapters"]]
            y = [a["bits_stored"] for a in entry["adapters"]]
            xs = np.geomspace(min(x), max(x), 50)
            section.figures.append(plots.scatter_fit(x, y, "trainable adapter parameters (log scale)",
                                                     "most bits stored (over N)",
                                                     f"Bits stored vs trainable parameters ({entry['group']}); "
                                                     f"dashed: {slope['value']:.3g} bits/param", curve=(xs, slope["value"] * xs),
                                                     logx=True))
    return section


def laws_section(laws: dict) -> Section:
    section = Section("laws", "Fitted laws", md_table(["law", "fit (95% CI)", "points", "note"], law_rows(laws)))
    for key, front in laws.get("pareto", {}).items():
        if front:
            cost = next(c for c in front[0] if c not in ("config", "reliability", "runs"))
            section.text += (f"\n\nPareto front, {key.replace('_', ' ')} (best configurations, mean over seeds):\n\n"
                             + md_table(["#", "configuration", "reliability", cost, "runs"],
                                        [[i, p["config"], f"{p['reliability']:.3f}", f"{p[cost]:.4g}", p["runs"]]
                                         for i, p in enumerate(front, start=1)]))
    axes = {"train.final_loss": "final fine-tuning loss (nats/token)", "trained_params": "trained adapter parameters",
            "train.steps": "optimizer steps"}
    for name, fit in laws["fits"].items():
        if "error" in fit:
            continue
        x, y = (np.array([p[i] for p in fit["points"]]) for i in (0, 1))
        xs = np.linspace(x.min(), x.max(), 100)
        p = {k: v["value"] for k, v in fit["params"].items()}
        ys = p["slope"] * xs + p["intercept"] if "slope" in p else p["A"] * xs ** p["alpha"] + p["B"]
        section.figures.append(plots.scatter_fit(x, y, axes.get(fit["x"], fit["x"]),
                                                 "forgetting: CE vs base (nats/token)",
                                                 f"{TITLES.get(name, name)}: {fit['formula']}", curve=(xs, ys),
                                                 logx=name != "forgetting_vs_loss"))
    for key, front in laws.get("pareto", {}).items():
        points = laws.get("_configurations")
        if points is None or not front:
            continue
        cost = next(c for c in front[0] if c not in ("config", "reliability", "runs"))
        on_front = {item["config"] for item in front}
        labels = list(points["label"])
        section.figures.append(plots.scatter_fit(
            list(points[cost]), list(points["reliability"]),
            "negative shift (share of held-out facts)" if cost == "shift.negative" else "forgetting: CE vs base (nats/token)",
            "reliability (share correct)", f"Pareto front: reliability vs {cost} (mean over seeds; #k: k-th "
                                           "configuration of the front, best reliability first)",
            highlight=[i for i, label in enumerate(labels) if label in on_front], labels=labels))
    return section

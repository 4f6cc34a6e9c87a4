"""The report of a sweep: metrics aggregated over seeds, against N, with the fitted laws.

In:  the results table (`knowpack.sweep.results`) and the sweep directory (per-run ``metrics.json`` for
     what the table leaves out: reliability by epoch, transitions, answers, shift reasons).
Out: an intro line and `Section`s: summary (with failed runs), continual packing (when the runs have rounds), reliability vs N and vs epoch, capacity in
     bits per parameter (when the runs have it), knowledge shift, answers, exploded answers and shift reasons, benchmark deltas (mean ± sd over seeds),
     forgetting, token shift, locality (when the runs have it), laws with their data points, configuration.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from knowpack.laws import FORGETTING, N_FIELD, _is_seed, fit_laws, reliability_curve, varying_fields
from knowpack.laws.show import TITLES, law_rows
from knowpack.probe.categories import CATEGORIES
from knowpack.report import plots
from knowpack.report.page import Section, md_table

__all__ = ["sweep_sections"]

N_LABEL = "N Unknown facts in the adapter (log scale)"
MAX_LINES = 12  # more configurations than this in one figure would be unreadable


def _labels(table: pd.DataFrame, fields: list[str]) -> pd.Series:
    """``n_unknown=10, known_per_fact=1``: each field by its last name, or its dotted name where two share one."""
    if not fields:
        return pd.Series(["all runs"] * len(table), index=table.index)
    last = [f.rsplit(".", 1)[-1] for f in fields]
    names = [short if last.count(short) == 1 else f.removeprefix("config.") for f, short in zip(fields, last)]
    return table.apply(lambda r: ", ".join(f"{name}={_value_label(f, r[f])}" for name, f in zip(names, fields)), axis=1)


def _value_label(field: str, value: Any) -> str:
    """A cell as a label; a ``rounds`` list (JSON text) as ``5×50`` or ``50+100``, with its replay shares."""
    if field != "config.rounds" or not isinstance(value, str):
        return str(value)
    try:
        rounds = json.loads(value)
    except json.JSONDecodeError:
        return value
    if not rounds:
        return "none"
    sizes = [str(r.get("n_unknown") or len(r.get("fact_ids") or []) or "N") for r in rounds]
    text = f"{len(sizes)}×{sizes[0]}" if len(set(sizes)) == 1 else "+".join(sizes)
    replays = [float(r.get("replay") or 0.0) for r in rounds]
    if any(replays):
        first = next(i for i, share in enumerate(replays) if share) + 1
        shares = sorted({share for share in replays if share})
        text += f" replay {'/'.join(f'{share:g}' for share in shares)} from round {first}"
    return text


def _mean_sd(frame: pd.DataFrame, by: str, metric: str) -> pd.DataFrame:
    values = pd.to_numeric(frame[metric], errors="coerce") if metric in frame else pd.Series(np.nan, index=frame.index)
    grouped = values.groupby(frame[by], sort=False)
    return pd.DataFrame({"mean": grouped.mean(), "sd": grouped.std(), "runs": grouped.count()})


def _pm(mean: float, sd: float) -> str:
    """``mean ± sd``; just the mean for one run (no spread to show)."""
    if pd.isna(mean):
        return "—"
    return f"{mean:.3f}" if pd.isna(sd) else f"{mean:.3f} ± {sd:.3f}"


def _mean_pm(values: pd.Series) -> str:
    numbers = pd.to_numeric(values, errors="coerce")
    return _pm(numbers.mean(), numbers.std())


def _metrics(sweep_dir: Path, done: pd.DataFrame) -> dict[str, dict]:
    found = {}
    for run_id, run_dir in zip(done["run_id"], done["run_dir"]):
        path = sweep_dir / run_dir / "metrics.json"
        if path.is_file():
            found[run_id] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _versus_n(done: pd.DataFrame, metric: str) -> dict[str, tuple[list, list, list]]:
    series = {}
    for name, group in done.groupby("series", sort=False):
        stats = _mean_sd(group, N_FIELD, metric).sort_index()
        stats = stats[stats["runs"] > 0]
        if len(stats):
            series[name] = (list(stats.index.astype(float)), list(stats["mean"]), list(stats["sd"].fillna(0.0)))
    return series


def _summary(table: pd.DataFrame, done: pd.DataFrame, sweep_dir: Path) -> Section:
    counts = table["status"].value_counts()
    text = ("Runs: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + ". Values are mean ± sd over "
            "the seeds of each configuration.\n\n")
    columns = [("reliability", "reliability"), ("generalization", "generalization"),
               ("shift.positive", "positive shift"), ("shift.negative", "negative shift"), (FORGETTING, "forgetting (CE vs base)")]
    columns = [(m, name) for m, name in columns if m in done]
    rows = []
    for label in done["configuration"].unique():
        group = done[done["configuration"] == label]
        rows.append([label, len(group), *(_mean_pm(group[m]) for m, _ in columns)])
    text += md_table(["configuration", "runs", *(name for _, name in columns)], rows) if rows else "No finished run yet."
    failed = table[table["status"] == "failed"]
    if len(failed):
        text += "\n\nFailed runs:\n\n" + md_table(
            ["run", "error", "log"], [[r.run_id, r.error, str(sweep_dir / r.run_dir / "run.log")] for r in failed.itertuples()])
    return Section("summary", "Summary", text)


def _reliability(done: pd.DataFrame, metrics: dict[str, dict], laws: dict) -> Section:
    series = _versus_n(done, "reliability")
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
    table = done.assign(n=pd.to_numeric(done[N_FIELD]))
    rows = [[name, int(n), _mean_pm(group["reliability"])]
            for (name, n), group in table.groupby(["series", "n"], sort=False)]
    text = ("Reliability (share of trained fact × prompt answers correct) by number of Unknown facts N:\n\n"
            + md_table(["mixture", "N", "reliability"], rows))
    if capacities:
        text += (f"\n\nCapacity: the largest N whose fitted reliability stays ≥ {laws['target']:g} (95% bootstrap "
                 "interval), and the largest tested N whose mean stays there (dashed curves in the figure):\n\n"
                 + md_table(["mixture", "fitted capacity N*", "largest tested N", "warning"], capacities))
    section = Section("reliability", "Reliability vs N and by epoch", text)
    if series and len(series) <= MAX_LINES:
        section.figures.append(plots.lines(series, N_LABEL, "reliability (share correct)",
                                           "Reliability vs N (mean ± sd over seeds; dashed: fitted curve)", logx=True,
                                           ylim=(-0.02, 1.02), curves=curves))
    by_epoch: dict[str, list[list[float]]] = {}
    for run_id, label in zip(done["run_id"], done["configuration"]):
        curve = metrics.get(run_id, {}).get("reliability_by_epoch")
        if curve:
            by_epoch.setdefault(label, []).append(curve)
    lines = {}
    for label, curves_of_runs in list(by_epoch.items())[:MAX_LINES]:
        length = min(map(len, curves_of_runs))
        stacked = np.array([c[:length] for c in curves_of_runs])
        lines[label] = (list(range(1, length + 1)), list(stacked.mean(0)), list(stacked.std(0)))
    if lines:
        section.figures.append(plots.lines(lines, "epoch", "reliability (first prompt set)",
                                           "Reliability by epoch (mean ± sd over seeds)", ylim=(-0.02, 1.02)))
    return section


ANCHORS = ("Published anchors: about 2 bits per parameter for full training at 1,000 exposures, about 1 at 100 "
           "(Allen-Zhu & Li 2024, arXiv 2404.05405); direct LoRA measurements 0.05–0.4 bits per trainable parameter.")


def _bits(laws: dict) -> Section | None:
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


def _shift(done: pd.DataFrame, metrics: dict[str, dict]) -> Section:
    section = Section("shift", "Knowledge shift on held-out facts", "")
    rows = []
    for label in done["configuration"].unique():
        group = done[done["configuration"] == label]
        rows.append([label, _mean_pm(group["shift.positive"]), _mean_pm(group["shift.negative"])])
    section.text = md_table(["configuration", "positive shift", "negative shift"], rows)
    for metric, name in (("shift.positive", "Positive"), ("shift.negative", "Negative")):
        series = _versus_n(done, metric)
        if series and len(series) <= MAX_LINES:
            section.figures.append(plots.lines(series, N_LABEL, "share of held-out facts",
                                               f"{name} knowledge shift vs N (mean ± sd over seeds)", logx=True))
    matrix = np.zeros((len(CATEGORIES), len(CATEGORIES)))
    for m in metrics.values():
        transitions = m.get("shift", {}).get("transitions", {})
        for i, old in enumerate(CATEGORIES):
            for j, new in enumerate(CATEGORIES):
                matrix[i, j] += transitions.get(old, {}).get(new, 0)
    if matrix.sum():
        section.text += ("\n\nCategory transitions summed over all finished runs (rows: before; columns: after):\n\n"
                         + md_table(["before \\ after", *CATEGORIES],
                                    [[old, *(int(v) for v in matrix[i])] for i, old in enumerate(CATEGORIES)]))
        section.figures.append(plots.heatmap(matrix, CATEGORIES, CATEGORIES, "category after training",
                                             "category before training",
                                             "Category transitions of held-out facts, summed over runs (counts)"))
    return section


def _base_answers(sweep_dir: Path, top: int = 15) -> list[tuple[str, int]]:
    """Most frequent greedy answers of the base model over the facts probed in ``shared/`` (before training)."""
    counts: Counter = Counter()
    for table in sorted((sweep_dir / "shared").glob("*/probe_before.parquet")):
        rows = pd.read_parquet(table, columns=["sample", "answer"])
        counts.update(a.lower() for a in rows.loc[rows["sample"] == 0, "answer"])
    return counts.most_common(top)


def _answers(metrics: dict[str, dict], sweep_dir: Path) -> Section:
    top: Counter = Counter()
    exploded: dict[str, list[int]] = {}
    reasons = {"positive": Counter(), "negative": Counter()}
    for m in metrics.values():
        answers = m.get("answers", {})
        top.update({a: n for a, n in answers.get("top_after", [])})
        for answer, _, after in answers.get("exploded", []):
            exploded.setdefault(answer, []).append(after)
        for direction in reasons:
            reasons[direction].update(m.get("shift_reasons", {}).get(direction, {}))
    before, after = _base_answers(sweep_dir), top.most_common(15)
    rows = [[i + 1, *(before[i] if i < len(before) else ["", ""]), *(after[i] if i < len(after) else ["", ""])]
            for i in range(max(len(before), len(after)))]
    text = ("Most frequent greedy answers: before training (base model, every fact probed once in shared/) and "
            "after training (held-out facts, summed over runs):\n\n"
            + md_table(["rank", "before", "count", "after", "count"], rows))
    text += "\n\nExploded answers (in how many runs, and how often after training in total):\n\n" + (
        md_table(["answer", "runs", "count after"],
                 [[a, len(v), sum(v)] for a, v in sorted(exploded.items(), key=lambda kv: -len(kv[1]))[:15]])
        if exploded else "none")
    section = Section("answers", "Answers, exploded answers and shift reasons", text)
    names = sorted(set(reasons["positive"]) | set(reasons["negative"]))
    if names:
        section.text += "\n\nShift reasons summed over runs:\n\n" + md_table(
            ["reason", "positive shifts", "negative shifts"], [[n, reasons["positive"][n], reasons["negative"][n]] for n in names])
        section.figures.append(plots.grouped_bars(names, {d: [reasons[d][n] for n in names] for d in reasons},
                                                  "held-out facts (summed over runs)", "Reasons behind knowledge shifts"))
    if top:
        common = top.most_common(10)
        section.figures.append(plots.bars([a for a, _ in common], [n for _, n in common], "greedy answers",
                                          "Most frequent answers after training, all runs", horizontal=True))
    return section


def _benchmarks(done: pd.DataFrame) -> Section | None:
    names = [c.removeprefix("benchmarks.") for c in done.columns if c.startswith("benchmarks.")
             and f"benchmarks_base.{c.removeprefix('benchmarks.')}" in done.columns]
    if not names:
        return None
    labels = list(done["configuration"].unique())
    means, errors, rows = {}, {}, []
    for name in names:
        delta = pd.to_numeric(done[f"benchmarks.{name}"]) - pd.to_numeric(done[f"benchmarks_base.{name}"])
        stats = delta.groupby(done["configuration"], sort=False).agg(["mean", "std"]).reindex(labels)
        means[name], errors[name] = list(stats["mean"]), list(stats["std"].fillna(0.0))
        rows += [[label, name, _pm(m, s)] for label, m, s in zip(labels, stats["mean"], stats["std"])]
    points = " (truthfulqa_gen's BLEU/ROUGE `_max` and `_diff`: points, 0–100)" if any(
        n.startswith("truthfulqa_gen_") for n in names) else ""
    return Section("benchmarks", "Benchmark deltas", f"Accuracy after minus accuracy of the base model{points}:\n\n"
                   + md_table(["configuration", "benchmark", "delta (mean ± sd)"], rows), [
        plots.grouped_bars(labels, means, "accuracy delta (after − base)",
                           "Benchmark deltas per configuration (error bars: sd over seeds)", errors)])


def _per_configuration(done: pd.DataFrame, key: str, title: str, metrics: list[tuple[str, str]],
                       intro: str) -> Section | None:
    metrics = [(m, name) for m, name in metrics if m in done and done[m].notna().any()]
    if not metrics:
        return None
    labels = list(done["configuration"].unique())
    rows = []
    for label in labels:
        group = done[done["configuration"] == label]
        rows.append([label, *(_mean_pm(group[m]) for m, _ in metrics)])
    return Section(key, title, intro + "\n\n" + md_table(["configuration", *(n for _, n in metrics)], rows))


CONTINUAL_COLUMNS = [("continual.first_round_after_own", "round 1 after its round"),
                     ("continual.first_round_final", "round 1 at the end"),
                     ("continual.earlier_rounds_final", "earlier rounds at the end"),
                     ("continual.last_round_final", "last round at the end"),
                     ("continual.backward_transfer", "backward transfer"), (FORGETTING, "forgetting (CE vs base)")]


def _continual(done: pd.DataFrame, metrics: dict[str, dict]) -> Section | None:
    """Sweeps of continual runs: how each configuration keeps earlier rounds (reliability on each round's facts
    at the end, backward transfer) and the fading of round 1's facts round after round, as a figure."""
    if "continual.backward_transfer" not in done or not done["continual.backward_transfer"].notna().any():
        return None
    columns = [(m, name) for m, name in CONTINUAL_COLUMNS if m in done]
    rows, fading = [], {}
    for label in done["configuration"].unique():
        group = done[done["configuration"] == label]
        rows.append([label, len(group), *(_mean_pm(group[m]) for m, _ in columns)])
        curves = [[row[0] for row in metrics[run_id]["continual"]["retention"]]
                  for run_id in group["run_id"] if metrics.get(run_id, {}).get("continual")]
        if curves and len({len(c) for c in curves}) == 1:
            stacked = np.array(curves, dtype=float)
            fading[label] = (list(range(1, stacked.shape[1] + 1)), list(stacked.mean(0)), list(stacked.std(0)))
    text = ("Reliability on each round's facts, probed after the last round (mean ± sd over seeds); backward "
            "transfer is the mean change, over the earlier rounds, from just after their own round to the end "
            "(negative: earlier rounds fade).\n\n" + md_table(["configuration", "runs", *(n for _, n in columns)], rows))
    section = Section("continual", "Continual packing", text)
    if fading and len(fading) <= MAX_LINES:
        section.figures.append(plots.lines(fading, "after round", "reliability on round 1's facts",
                                           "Round 1's facts after each round (mean ± sd over seeds)", ylim=(0, 1.05)))
    return section


def _laws(laws: dict) -> Section:
    section = Section("laws", "Fitted laws", md_table(["law", "fit (95% CI)", "points", "note"], law_rows(laws)))
    for key, front in laws.get("pareto", {}).items():
        if front:
            cost = [c for c in front[0] if c not in ("config", "reliability", "runs")][0]
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
        cost = [c for c in front[0] if c not in ("config", "reliability", "runs")][0]
        on_front = {item["config"] for item in front}
        labels = list(points["label"])
        section.figures.append(plots.scatter_fit(
            list(points[cost]), list(points["reliability"]),
            "negative shift (share of held-out facts)" if cost == "shift.negative" else "forgetting: CE vs base (nats/token)",
            "reliability (share correct)", f"Pareto front: reliability vs {cost} (mean over seeds; #k: k-th "
                                           "configuration of the front, best reliability first)",
            highlight=[i for i, label in enumerate(labels) if label in on_front], labels=labels))
    return section


def sweep_sections(table: pd.DataFrame, sweep_dir: Path, target: float = 0.95) -> tuple[str, list[Section]]:
    from knowpack.laws import configurations

    done = table[table["status"] == "done"].copy()
    done["configuration"] = _labels(done, varying_fields(done, _is_seed))
    done["series"] = _labels(done, varying_fields(done, lambda c: _is_seed(c) or c == N_FIELD))
    metrics = _metrics(sweep_dir, done)
    laws: dict[str, Any] = fit_laws(table, target, bootstrap=200) if len(done) else {"fits": {}, "capacity": [], "pareto": {}}
    if len(done):
        laws["_configurations"] = configurations(done)
    model = table["config.model.name"].iloc[0] if "config.model.name" in table and len(table) else "?"
    intro = (f"Sweep `{sweep_dir}` on model `{model}`: {len(table)} runs, {len(done)} finished. "
             "Figures are in report.html.")
    sections = [_summary(table, done, sweep_dir)]
    if len(done):
        sections += [*filter(None, [_continual(done, metrics)]), _reliability(done, metrics, laws),
                     *filter(None, [_bits(laws)]), _shift(done, metrics),
                     _answers(metrics, sweep_dir)]
        optional = [
            _benchmarks(done),
            _per_configuration(done, "forgetting", "Forgetting on held-out text",
                               [(FORGETTING, "CE vs base (nats/token)"), ("forgetting.kl_to_base", "KL to base"),
                                ("forgetting.perplexity_after", "perplexity after")],
                               "Kalajdzievski's forgetting: cross-entropy of the tuned model against the base model."),
            _per_configuration(done, "token-shift", "Token distribution shift",
                               [("token_shift.unshifted", "unshifted"), ("token_shift.marginal", "marginal"),
                                ("token_shift.shifted", "shifted")],
                               "Share of generated tokens by their rank under the base model (1; 2–3; > 3)."),
            _per_configuration(done, "locality", "Locality",
                               [("locality.subject", "same subject unchanged"), ("locality.relation", "same relation unchanged")],
                               "Share of held-out facts sharing a subject / relation with a trained fact whose greedy "
                               "answer is unchanged."),
        ]
        sections += [s for s in optional if s is not None]
        forgetting = _versus_n(done, FORGETTING)
        for section in sections:
            if section.id == "forgetting" and forgetting and len(forgetting) <= MAX_LINES:
                section.figures.append(plots.lines(forgetting, N_LABEL, "CE vs base (nats/token)",
                                                   "Forgetting vs N (mean ± sd over seeds)", logx=True))
            if section.id == "token-shift":
                shares = {k: list(done.groupby("configuration", sort=False)[f"token_shift.{k}"].mean())
                          for k in ("unshifted", "marginal", "shifted")}
                section.figures.append(plots.stacked_shares(list(done["configuration"].unique()), shares,
                                                            "share of generated tokens", "Token shift per configuration"))
        sections.append(_laws(laws))
    spec = sweep_dir / "sweep.yaml"
    if spec.is_file():
        sections.append(Section("configuration", "Configuration", "```yaml\n" + spec.read_text(encoding="utf-8") + "```"))
    return intro, sections

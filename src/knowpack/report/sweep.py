"""The report of a sweep: metrics aggregated over seeds, against N, with the fitted laws.

In:  the results table (`knowpack.sweep.results`) and the sweep directory (per-run ``metrics.json``, read as
     `knowpack.artifacts.Metrics`, for what the table leaves out: reliability by epoch, transitions, answers,
     shift reasons, retention) and, for example answers, the runs' probe tables.
Out: an intro line and `Section`s: summary (with failed runs), continual packing (when the runs have rounds), reliability vs N and vs epoch, capacity in
     bits per parameter (when the runs have it), knowledge shift, answers, exploded answers and shift reasons, example answers side by side
     (`knowpack.report.sweep_answers`), benchmark deltas (mean ± sd over seeds),
     forgetting, token shift, locality (when the runs have it), laws with their data points, configuration.
     The capacity, bits-per-parameter and laws parts live in `knowpack.report.sweep_laws`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from knowpack.artifacts import Metrics, as_metrics, read_artifact
from knowpack.laws import FORGETTING, N_FIELD, _is_seed, fit_laws, varying_fields
from knowpack.probe.categories import CATEGORIES
from knowpack.report import plots
from knowpack.report.page import Section, md_table
from knowpack.report.run import present
from knowpack.report.sweep_answers import answers_side_by_side
from knowpack.report.sweep_laws import bits_section as _bits
from knowpack.report.sweep_laws import capacity_fits, laws_section

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


def _metrics(sweep_dir: Path, done: pd.DataFrame) -> dict[str, Metrics]:
    found = {}
    for run_id, run_dir in zip(done["run_id"], done["run_dir"]):
        path = sweep_dir / run_dir / "metrics.json"
        if path.is_file():
            found[run_id] = read_artifact(path, Metrics)
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


def _reliability(done: pd.DataFrame, metrics: dict[str, Metrics], laws: dict) -> Section:
    series = _versus_n(done, "reliability")
    curves, capacities = capacity_fits(done, series, laws)
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
        curve = metrics[run_id].reliability_by_epoch if run_id in metrics else None
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


def _shift(done: pd.DataFrame, metrics: dict[str, Metrics]) -> Section:
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
        transitions = m.shift.transitions if m.shift else {}
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


def _answers(metrics: dict[str, Metrics], sweep_dir: Path) -> Section:
    top: Counter = Counter()
    exploded: dict[str, list[int]] = {}
    reasons = {"positive": Counter(), "negative": Counter()}
    for m in metrics.values():
        if m.answers:
            top.update({a: n for a, n in m.answers.top_after})
            for answer, _, after in m.answers.exploded:
                exploded.setdefault(answer, []).append(after)
        if m.shift_reasons:
            reasons["positive"].update(m.shift_reasons.positive)
            reasons["negative"].update(m.shift_reasons.negative)
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


def _continual(done: pd.DataFrame, metrics: Mapping[str, Metrics | dict]) -> Section | None:
    """Sweeps of continual runs: how each configuration keeps earlier rounds (reliability on each round's facts
    at the end, backward transfer) and the fading of round 1's facts round after round, as a figure."""
    if "continual.backward_transfer" not in done or not done["continual.backward_transfer"].notna().any():
        return None
    columns = [(m, name) for m, name in CONTINUAL_COLUMNS if m in done]
    typed = {run_id: as_metrics(m) for run_id, m in metrics.items()}
    rows, fading = [], {}
    for label in done["configuration"].unique():
        group = done[done["configuration"] == label]
        rows.append([label, len(group), *(_mean_pm(group[m]) for m, _ in columns)])
        curves = [[row[0] for row in typed[run_id].continual.retention]
                  for run_id in group["run_id"] if run_id in typed and present(typed[run_id].continual)]
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
            answers_side_by_side(done, sweep_dir),
            _benchmarks(done),
            _per_configuration(done, "forgetting", "Forgetting on held-out text",
                               [(FORGETTING, "CE vs base (nats/token)"), ("forgetting.kl_to_base", "KL to base"),
                                ("forgetting.perplexity_after", "perplexity after")],
                               "Kalajdzievski's forgetting: cross-entropy of the tuned model against the base model."),
            _per_configuration(done, "token-shift", "Token distribution shift",
                               [("token_shift.unshifted", "unshifted"), ("token_shift.marginal", "marginal"),
                                ("token_shift.shifted", "shifted"), ("token_shift.copied", "copied share of shifted"),
                                ("token_shift.style", "style share of shifted"),
                                ("token_shift.kl_top5_share", "KL in top 5% of positions")],
                               "Share of generated tokens by their rank under the base model (1; 2–3; > 3); of the "
                               "shifted words, the share found in the training questions and answers (copied) and "
                               "the share of style words; the share of the KL held by the top 5% of positions."),
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
        sections.append(laws_section(laws))
    spec = sweep_dir / "sweep.yaml"
    if spec.is_file():
        sections.append(Section("configuration", "Configuration", "```yaml\n" + spec.read_text(encoding="utf-8") + "```"))
    return intro, sections

"""The report of one run: a section for every part of metrics.json, with tables and figures.

In:  a run's ``metrics.json`` and ``config.yaml`` (and, when present, ``probe_before.parquet`` /
     ``probe_after.parquet`` / ``trained_facts.json`` for the top answers before training, and
     ``train_stats.json`` for the loss per epoch).
Out: `Section`s: summary, continual packing (rounds and the retention matrix), reliability, knowledge
     shift, answers, exploded answers and shift reasons, benchmarks, forgetting, token shift, locality,
     training, configuration — each only when the
     metrics hold it (an outside adapter evaluated with ``knowpack eval --adapter`` has no training).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel

from knowpack.artifacts import Metrics, TokenShift, TrainedFacts, TrainStats, as_metrics, read_artifact
from knowpack.probe.categories import CATEGORIES
from knowpack.report import plots
from knowpack.report.page import Section, md_table

__all__ = ["fmt", "run_sections", "summary_rows"]


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def present(block: Any) -> bool:
    """Whether a metrics block holds anything: an empty ``{}`` or ``[]`` in the file counts as absent."""
    if isinstance(block, BaseModel):
        return bool(block.written())
    return block is not None and (bool(block) or not isinstance(block, (dict, list)))  # reliability 0.0 is a result


def summary_rows(metrics: Metrics | dict) -> list[tuple[str, str]]:
    """The headline numbers, shared by the CLI summary table and the report."""
    m = as_metrics(metrics)
    rows = []
    if m.given("reliability"):
        rows.append(("reliability (trained facts)", fmt(m.reliability)))
        rows.append(("generalization (unseen paraphrases)", fmt(m.generalization)))
    if present(continual := m.continual):
        rows.append(("rounds (strategy)", f"{continual.n_rounds} ({continual.strategy})"))
        rows.append(("round 1 facts: after round 1 → after the last",
                     f"{fmt(continual.first_round_after_own)} → {fmt(continual.first_round_final)}"))
    if present(capacity := m.capacity):
        rows.append(("facts learned (reliability × N)", fmt(capacity.facts_learned)))
        if capacity.bits_stored is None:
            rows.append(("bits stored", f"not defined: {capacity.bits_undefined}"))
        else:
            rows.append(("bits stored / trainable params = bits/param",
                         f"{capacity.bits_stored:.1f} / {capacity.trainable_params:,} = {capacity.bits_per_param:.3g}"))
    if m.shift is not None:
        rows.append(("positive shift (held-out)", fmt(m.shift.positive)))
        rows.append(("negative shift (held-out)", fmt(m.shift.negative)))
    base_scores = m.benchmarks_base or {}
    for name, after in (m.benchmarks or {}).items():
        base = base_scores.get(name)
        delta = f" ({after - base:+.3f})" if base is not None else ""
        rows.append((f"{name} base → after", f"{fmt(base)} → {fmt(after)}{delta}"))
    return rows + _model_change_rows(m)


def _model_change_rows(m: Metrics) -> list[tuple[str, str]]:
    """The summary rows of forgetting, token shift, locality and training, each when measured."""
    rows = []
    if present(forgetting := m.forgetting):
        rows.append(("KL to base on held-out text (nats/token)", f"{forgetting.kl_to_base:.4f}"))
        rows.append(("perplexity base → after", f"{forgetting.perplexity_base:.2f} → {forgetting.perplexity_after:.2f}"))
    if present(shift := m.token_shift):
        rows.append(("tokens unshifted / marginal / shifted",
                     f"{shift.unshifted:.2f} / {shift.marginal:.2f} / {shift.shifted:.2f}"))
        if shift.given("copied"):
            rows.append(("shifted tokens: style / copied from training", f"{fmt(shift.style)} / {fmt(shift.copied)}"))
    if present(locality := m.locality):
        rows.append(("locality (same subject / same relation)", f"{fmt(locality.subject)} / {fmt(locality.relation)}"))
    if present(train := m.train):  # absent when an outside adapter was evaluated (knowpack eval --adapter)
        rows.append(("train tokens/s", f"{train.tokens_per_s:.0f}"))
        rows.append(("train seconds", f"{train.seconds:.1f}"))
    return rows


def _reliability(metrics: Metrics) -> Section:
    by_epoch = metrics.reliability_by_epoch or []
    trained = metrics.n_trained_facts if metrics.n_trained_facts is not None else "?"
    text = (f"{trained} Unknown facts (N) trained. Reliability {fmt(metrics.reliability)} "
            f"(share of trained fact × probe prompt greedy answers that are correct); generalization "
            f"{fmt(metrics.generalization)} (trained facts asked with a paraphrase never trained on).")
    section = Section("reliability", "Reliability", text)
    if by_epoch:
        section.text += ("\n\nReliability after each epoch (first prompt set only):\n\n"
                         + md_table(["epoch", "reliability"], [[i + 1, fmt(v)] for i, v in enumerate(by_epoch)]))
        epochs = list(range(1, len(by_epoch) + 1))
        section.figures.append(plots.lines({"reliability": (epochs, by_epoch, None)}, "epoch",
                                           "reliability (share correct)", "Reliability of the trained facts by epoch",
                                           ylim=(-0.02, 1.02)))
    return section


def _continual(metrics: Metrics) -> Section:
    """One row per round and the retention matrix (round trained × round probed), with its figure."""
    rows, summary = metrics.rounds or [], metrics.continual
    retention = summary.retention if summary is not None else []
    strategy = summary.strategy if summary is not None and summary.strategy is not None else "?"
    matrix = np.array([[np.nan if v is None else v for v in row] for row in retention], float)
    names = [f"round {r.round}" for r in rows]
    table = md_table(["round", "new facts", "replayed", "examples", "current", "earlier", "all so far",
                      "backward transfer", "shift +", "shift −", "CE vs base", "train s"],
                     [[r.round, r.new_facts, r.replayed_facts, r.train_examples,
                       fmt(r.reliability_current), fmt(r.reliability_earlier), fmt(r.reliability),
                       fmt(r.backward_transfer), fmt(r.shift.positive), fmt(r.shift.negative),
                       fmt(r.forgetting.ce_vs_base if r.forgetting else None), f"{r.train.seconds:.1f}"]
                      for r in rows])
    text = (f"{len(rows)} rounds, strategy `{strategy}`. Reliability after each round on its own "
            "new facts (current), on every earlier round's facts (earlier) and on all of them; backward transfer is "
            "the mean change of each earlier round's reliability since the end of its own round (negative: "
            "forgotten); shifts are on the same held-out facts every round.\n\n" + table
            + "\n\nRetention matrix: reliability on the facts of the round in the column after training the round "
              "in the row:\n\n"
            + md_table(["trained \\ probed", *names],
                       [[name, *("" if np.isnan(v) else fmt(float(v)) for v in row)] for name, row in zip(names, matrix)]))
    section = Section("continual", "Continual packing", text)
    if matrix.size:
        section.figures.append(plots.heatmap(matrix, names, names, "facts of round (probed)", "after training round",
                                             "Retention: reliability on each round's facts after each round",
                                             value_label="reliability", value_range=(0.0, 1.0)))
        after = list(range(1, len(rows) + 1))
        section.figures.append(plots.lines(
            {f"{name} facts": (after[k:], [float(v) for v in matrix[k:, k]], None) for k, name in enumerate(names)},
            "after training round", "reliability (share correct)", "Reliability of each round's facts, round by round",
            ylim=(-0.02, 1.02)))
    return section


def _shift(metrics: Metrics) -> Section:
    shift = metrics.shift
    transitions = shift.transitions
    matrix = np.array([[transitions[old][new] for new in CATEGORIES] for old in CATEGORIES], float)
    n_facts = shift.n_facts if shift.n_facts is not None else int(matrix.sum())
    text = (f"{n_facts} held-out facts re-probed. Positive shift "
            f"(UK→HK, UK→MK, MK→HK) {fmt(shift.positive)}; negative shift (HK→UK, HK→MK, MK→UK) "
            f"{fmt(shift.negative)} (WeaklyKnown counted as Unknown).\n\nTransitions (rows: before training; "
            "columns: after):\n\n"
            + md_table(["before \\ after", *CATEGORIES],
                       [[old, *(transitions[old][new] for new in CATEGORIES)] for old in CATEGORIES]))
    return Section("shift", "Knowledge shift on held-out facts", text, [
        plots.bars(["positive", "negative"], [shift.positive, shift.negative], "share of held-out facts",
                   "Positive and negative knowledge shift"),
        plots.heatmap(matrix, CATEGORIES, CATEGORIES, "category after training", "category before training",
                      "Category transitions of held-out facts (counts)")])


def _top_before(run_dir: Path, top: int = 10) -> list[list]:
    """Most frequent greedy answers of the base model on the held-out facts re-probed after training."""
    import pandas as pd

    needed = [run_dir / name for name in ("probe_before.parquet", "probe_after.parquet")]
    if not all(p.is_file() for p in needed):
        return []
    listed = run_dir / "trained_facts.json"
    trained = set(read_artifact(listed, TrainedFacts).root) if listed.is_file() else set()
    before, after = (pd.read_parquet(p, columns=["fact_id", "sample", "answer"]) for p in needed)
    heldout = set(after["fact_id"]) - trained
    greedy = before[(before["sample"] == 0) & before["fact_id"].isin(heldout)]
    return [[answer, n] for answer, n in Counter(a.lower() for a in greedy["answer"]).most_common(top)]


def _answers(metrics: Metrics, run_dir: Path | None) -> Section:
    answers = metrics.answers
    text = md_table(["held-out facts, greedy answers", "before", "after"],
                    [["refusals", answers.refusals_before, answers.refusals_after],
                     ["unique answers", answers.unique_before, answers.unique_after]])
    before = _top_before(run_dir) if run_dir else []
    after = [list(item) for item in answers.top_after]
    rows = [[i + 1, *(before[i] if i < len(before) else ["", ""]), *(after[i] if i < len(after) else ["", ""])]
            for i in range(max(len(before), len(after)))]
    text += "\n\nMost frequent answers:\n\n" + md_table(["rank", "before", "count", "after", "count"], rows)
    section = Section("answers", "Answers before and after training", text)
    if after:
        section.figures.append(plots.bars([a for a, _ in after], [n for _, n in after], "greedy answers",
                                          "Most frequent answers after training (held-out facts)", horizontal=True))
    return section


def _reasons(metrics: Metrics) -> Section:
    exploded = [list(item) for item in metrics.answers.exploded] if metrics.answers else []
    text = ("Exploded answers (after training at least the threshold share of greedy answers and more than "
            "doubled):\n\n" + (md_table(["answer", "count before", "count after"], exploded) if exploded else "none"))
    reasons = metrics.shift_reasons
    section = Section("reasons", "Exploded answers and shift reasons", text)
    if present(reasons):
        names = list(reasons.positive)
        section.text += ("\n\nLikely reasons for each shifted held-out fact (a fact can have several):\n\n"
                         + md_table(["reason", "positive shifts", "negative shifts"],
                                    [[n, reasons.positive[n], reasons.negative[n]] for n in names]))
        if reasons.examples:
            section.text += "\n\nExamples:\n\n" + md_table(
                ["question", "gold", "answer after", "shift", "reasons"],
                [[e.question, e.gold, e.answer_after, e.shift, ", ".join(e.reasons) or "—"] for e in reasons.examples])
        section.figures.append(plots.grouped_bars(names, {"positive": [reasons.positive[n] for n in names],
                                                          "negative": [reasons.negative[n] for n in names]},
                                                  "held-out facts", "Reasons behind knowledge shifts"))
    return section


def _is_points(name: str) -> bool:
    """truthfulqa_gen's BLEU/ROUGE `_max` and `_diff` are lm-eval's 0–100 points, not shares of questions."""
    return name.startswith("truthfulqa_gen_") and not name.endswith("_acc")


def _benchmarks(metrics: Metrics | dict) -> Section:
    metrics = as_metrics(metrics)
    after, base = metrics.benchmarks or {}, metrics.benchmarks_base or {}
    names = list(after)
    rows = [[n, fmt(base.get(n)), fmt(after[n]), f"{after[n] - base[n]:+.3f}" if n in base else "—"] for n in names]
    text = "Accuracy (share of questions) of the base and the adapted model"
    if any(_is_points(n) for n in names):
        text += "; truthfulqa_gen's BLEU/ROUGE `_max` and `_diff` are points (0–100), as lm-eval reports them"
    figures = []
    for group, ylabel, caption in ((False, "accuracy", "Benchmark accuracy before and after training"),
                                   (True, "points (0–100)", "TruthfulQA generation BLEU/ROUGE before and after training")):
        chosen = [n for n in names if _is_points(n) == group]
        if chosen:
            figures.append(plots.grouped_bars(chosen, {"base": [base.get(n, np.nan) for n in chosen],
                                                       "after": [after[n] for n in chosen]}, ylabel, caption))
    return Section("benchmarks", "Benchmarks", text + ":\n\n" + md_table(["benchmark", "base", "after", "delta"], rows),
                   figures)


def _forgetting(metrics: Metrics) -> Section:
    f = metrics.forgetting
    rows = [["cross-entropy vs base (nats/token)", fmt(f.ce_vs_base)],
            ["KL(base ‖ tuned) (nats/token)", fmt(f.kl_to_base)],
            ["perplexity, base model", fmt(f.perplexity_base)],
            ["perplexity, tuned model", fmt(f.perplexity_after)]]
    if f.given("tokens"):
        rows.append(["tokens scored", f.tokens])
    return Section("forgetting", "Forgetting on held-out text",
                   "Kalajdzievski's forgetting: cross-entropy of the tuned model against the base model's "
                   "next-token distribution (= KL + base entropy).\n\n" + md_table(["metric", "value"], rows), [
                       plots.bars(["base", "tuned"], [f.perplexity_base, f.perplexity_after],
                                  "perplexity on held-out text", "Perplexity before and after training")])


def _token_shift(metrics: Metrics) -> Section:
    t = metrics.token_shift
    text = md_table(["share of generated tokens", "value"],
                    [["unshifted (rank 1 under base)", fmt(t.unshifted)], ["marginal (rank 2–3)", fmt(t.marginal)],
                     ["shifted (rank > 3)", fmt(t.shifted)], ["mean KL per position (nats)", fmt(t.mean_kl)],
                     ["mean base probability", fmt(t.mean_base_prob)]])
    if t.top_shifted:
        kinds = t.top_shifted_kinds or [None] * len(t.top_shifted)
        text += "\n\nMost often shifted tokens: " + ", ".join(
            f"`{tok!r}` ×{n}" + (f" ({kind})" if kind else "") for (tok, n), kind in zip(t.top_shifted, kinds))
    if t.kl_percentiles is not None:  # runs evaluated before these measures have only the shares above
        text += "\n\n" + _token_shift_measures(t)
    return Section("token-shift", "Token distribution shift", text, [
        plots.stacked_shares(["tuned model"], {"unshifted": [t.unshifted], "marginal": [t.marginal],
                                               "shifted": [t.shifted]},
                             "share of generated tokens", "Token shift (rank of each tuned-model token under the base)")])


def _token_shift_measures(t: TokenShift) -> str:
    """KL by position percentile, the style/content split and the copied share (Ghosh et al. 2024)."""
    def value(share: float | None, name: str) -> str:
        return fmt(share) if share is not None else f"— ({t.none_because.get(name, 'undefined')})"

    copied = "copied: share of shifted tokens whose word occurs in the training set"
    if t.training_texts is not None:
        copied += f" ({t.training_texts} training questions and answers)"
    rows = [[f"KL at position percentile {q[1:]} (nats)", fmt(v)] for q, v in t.kl_percentiles.items()]
    rows += [["share of total KL in the top 5% of positions", value(t.kl_top5_share, "kl_top5_share")],
             [f"style / content share of the {t.shifted_words or 0} shifted tokens with a word",
              f"{value(t.style, 'style')} / {value(t.content, 'content')}"],
             [copied, value(t.copied, "copied")],
             ["copied, content words only", value(t.copied_content, "copied_content")]]
    return ("Where the change sits and what it is: *style* = the token's word is a function word or discourse "
            "marker of the shipped list, *content* = any other word; *copied* = its word occurs in the training "
            "questions or answers (mode copying).\n\n" + md_table(["measure", "value"], rows))


def _locality(metrics: Metrics) -> Section:
    loc = metrics.locality
    rows = [["same subject as a trained fact", fmt(loc.subject), fmt(loc.facts_subject)],
            ["same relation as a trained fact", fmt(loc.relation), fmt(loc.facts_relation)]]
    section = Section("locality", "Locality", "Share of untouched held-out facts that share a subject / a relation "
                      "with a trained fact and whose greedy answer is unchanged:\n\n"
                      + md_table(["held-out facts", "unchanged share", "facts"], rows))
    values = [(name, v) for name, v in (("same subject", loc.subject), ("same relation", loc.relation))
              if v is not None]
    if values:
        section.figures.append(plots.bars([n for n, _ in values], [v for _, v in values], "unchanged share",
                                          "Locality: held-out neighbours of trained facts left unchanged"))
    return section


def _training(metrics: Metrics, run_dir: Path | None) -> Section:
    section = Section("training", "Training", md_table(["", "value"],
                                                       [[k, fmt(v)] for k, v in metrics.train.written().items()]))
    stats = run_dir / "train_stats.json" if run_dir else None
    if stats and stats.is_file():
        losses = read_artifact(stats, TrainStats).epoch_losses
        if losses:
            epochs = list(range(1, len(losses) + 1))
            section.figures.append(plots.lines({"train loss": (epochs, losses, None)}, "epoch",
                                               "mean cross-entropy (nats/token)", "Training loss by epoch"))
    return section


def run_sections(metrics: Metrics | dict, config: dict, run_dir: Path | None = None) -> list[Section]:
    """Every section the metrics support, in reading order."""
    m = as_metrics(metrics)
    sections = [Section("summary", "Summary", md_table(["metric", "value"], [list(r) for r in summary_rows(m)]))]
    builders = [(m.rounds, lambda: _continual(m)), (m.reliability, lambda: _reliability(m)), (m.shift, lambda: _shift(m)),
                (m.answers, lambda: _answers(m, run_dir)), (m.shift_reasons, lambda: _reasons(m)),
                (m.benchmarks, lambda: _benchmarks(m)), (m.forgetting, lambda: _forgetting(m)),
                (m.token_shift, lambda: _token_shift(m)), (m.locality, lambda: _locality(m)),
                (m.train, lambda: _training(m, run_dir))]
    for block, build in builders:
        if present(block):
            sections.append(build())
    sections.append(Section("configuration", "Configuration",
                            "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```"))
    return sections

"""Typed artifacts: every metrics.json block and the other JSON files round-trip through their models; what the
writers produce validates; a bad field is one line naming the file and the field; keys added by users are kept."""

from __future__ import annotations

import json
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from knowpack.artifacts import (Answers, BenchmarkScores, Capacity, ContinualSummary, Forgetting, Locality, Metrics,
                                RoundRow, RoundsFile, RunStatus, Shift, ShiftReasons, SweepRuns, SweepTask, TokenShift,
                                TrainBlock, TrainedFacts, TrainStats, checked, read_artifact)
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact
from knowpack.probe.categories import CATEGORIES
from knowpack.rundir import RunDir

TRANSITIONS = {a: {b: int(a == b) * 3 for b in CATEGORIES} for a in CATEGORIES}
SHIFT = {"positive": 0.25, "negative": 0.125, "n_facts": 8, "transitions": TRANSITIONS}
ANSWERS = {"refusals_before": 1, "refusals_after": 0, "unique_before": 7, "unique_after": 3,
           "top_after": [["paris", 4], ["", 1]], "exploded": [["paris", 1, 4]]}
FORGETTING = {"ce_vs_base": 3.25, "kl_to_base": 0.0625, "perplexity_base": 20.5, "perplexity_after": 21.0,
              "tokens": 96}
TOKEN_SHIFT = {"unshifted": 0.5, "marginal": 0.25, "shifted": 0.25, "mean_kl": 0.1, "mean_base_prob": 0.4,
               "top_shifted": [[" However", 3]], "tokens": 16, "kl_percentiles": {"p50": 0.0, "p90": 0.01,
                                                                                   "p95": 0.5, "p99": 1.25},
               "kl_top5_share": 0.8, "shifted_words": 4, "style": 0.75, "content": 0.25, "copied": None,
               "copied_content": None, "top_shifted_kinds": ["style"], "training_texts": None,
               "none_because": {"copied": "no training set: an outside adapter"}}
TRAIN = {"steps": 4, "tokens": 312, "seconds": 1.5, "tokens_per_s": 208.0, "peak_memory_mb": 0.0, "final_loss": 2.5}
REASONS = {"positive": {"stopped_refusing": 1, "exploded_answer": 0, "target_based": 1, "same_relation": 2},
           "negative": {"stopped_refusing": 0, "exploded_answer": 1, "target_based": 0, "same_relation": 1},
           "examples": [{"fact_id": "f1", "question": "Capital of A?", "gold": "X", "answer_after": "paris",
                         "shift": "Unknown->MaybeKnown", "reasons": ["target_based"]}]}
LOCALITY = {"subject": 0.75, "relation": None, "facts_subject": 4, "facts_relation": 0}
CAPACITY = {"trainable_params": 1000, "facts_learned": 1.5, "n_facts": 3, "facts_with_bits": 3,
            "facts_without_bits": 0, "ce_bits_before": 9.0, "ce_bits_after": 2.0, "bits_stored": 4.5,
            "bits_per_param": 0.0045, "answer_space_bits": 6.0, "bits_before": 0.5, "bits_after": 5.0}
ROUND = {"round": 1, "new_facts": 3, "replayed_facts": 0, "train_examples": 3, "reliability": 0.5,
         "reliability_current": 0.5, "reliability_earlier": None, "reliability_by_round": [0.5],
         "backward_transfer": None, "shift": SHIFT, "train": TRAIN, "reliability_by_epoch": [0.25, 0.5],
         "epoch_losses": [3.0, 2.5], "forgetting": FORGETTING, "capacity": CAPACITY}
CONTINUAL = {"strategy": "continue", "n_rounds": 1, "retention": [[0.5]], "first_round_after_own": 0.5,
             "first_round_final": 0.5, "last_round_final": 0.5, "earlier_rounds_final": None, "backward_transfer": None}
METRICS = {"reliability": 0.5, "reliability_by_epoch": [0.25, None], "generalization": 0.0, "shift": SHIFT,
           "answers": ANSWERS, "benchmarks": {"mmlu": 0.25}, "benchmarks_base": {"mmlu": 0.5}, "train": TRAIN,
           "n_trained_facts": 3, "n_heldout_facts": 8, "shift_reasons": REASONS, "locality": LOCALITY,
           "capacity": CAPACITY, "forgetting": FORGETTING, "token_shift": TOKEN_SHIFT, "rounds": [ROUND],
           "continual": CONTINUAL}
TRAIN_STATS = {**TRAIN, "epoch_losses": [3.0, 2.5], "epoch_scores": [None, None], "resumed_from_epoch": 0,
               "reliability_by_epoch": [None, None]}


def _json(data) -> str:
    return json.dumps(data, sort_keys=True)


@pytest.mark.parametrize("model,data", [
    (Shift, SHIFT), (Answers, ANSWERS), (Forgetting, FORGETTING), (TokenShift, TOKEN_SHIFT), (TrainBlock, TRAIN),
    (ShiftReasons, REASONS), (Locality, LOCALITY), (Capacity, CAPACITY), (RoundRow, ROUND),
    (ContinualSummary, CONTINUAL), (Metrics, METRICS), (TrainStats, TRAIN_STATS),
    (RoundsFile, {"rounds": [ROUND], "continual": CONTINUAL}), (SweepRuns, {"runs": ["a", "b"]}),
    (SweepTask, {"point": {"mixture.n_unknown": 3}, "config": {"mixture": {"n_unknown": 3}}, "until": "report",
                 "reuse_from": []}),
    (RunStatus, {"status": "done", "seconds": 3.0, "pid": 12, "host": "h"}),
    (TrainedFacts, ["f1", "f2"]), (BenchmarkScores, {"mmlu": 0.25, "truthfulqa_mc1": None}),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_every_block_round_trips_unchanged(model, data):
    typed = model.model_validate(data)
    assert _json(typed.model_dump(mode="json", exclude_unset=True)) == _json(data)
    assert _json(model.model_validate_json(_json(data)).model_dump(mode="json", exclude_unset=True)) == _json(data)


def test_the_fields_read_like_the_keys_they_type():
    m = Metrics.model_validate(METRICS)
    assert m.shift.negative == 0.125 and m.shift.transitions["Unknown"]["Unknown"] == 3
    assert m.capacity.bits_per_param == 0.0045 and m.answers.top_after[0] == ("paris", 4)
    assert m.rounds[0].train.seconds == 1.5 and m.continual.retention == [[0.5]]
    assert m.token_shift.kl_percentiles["p95"] == 0.5 and m.shift_reasons.examples[0].reasons == ["target_based"]


def _facts() -> list[Fact]:
    rows = [("t1", "A", "capital", "X"), ("t2", "B", "capital", "Y"), ("t3", "C", "river", "Z"),
            ("h1", "A", "river", "W"), ("h2", "D", "capital", "V"), ("h3", "E", "language", "U")]
    return [Fact(fact_id=i, subject=s, relation=r, object=o, question=f"{r} of {s}?", answer=o, aliases=[o],
                 bucket="tail", source="test") for i, s, r, o in rows]


def _probe(answers: dict[str, tuple[str, bool, bool]]) -> pd.DataFrame:
    """Probe rows, two prompts per fact: (greedy answer, correct, refused)."""
    return pd.DataFrame([{"fact_id": f, "prompt_id": p, "sample": 0, "answer": a, "correct": c, "refusal": r}
                         for f, (a, c, r) in answers.items() for p in (0, 1)])


def _writer_metrics() -> dict:
    """metrics.json as the evaluate stage assembles it, from the knowledge and capacity writers themselves."""
    from knowpack.continual.rounds import continual_summary
    from knowpack.evaluate.capacity import capacity_summary, capacity_table
    from knowpack.evaluate.knowledge import (answer_stats, exploded_answers, knowledge_shift, locality, reliability,
                                             shift_reasons)
    from knowpack.probe import categorize
    from knowpack.train.loop import TrainStats as LoopStats

    facts = _facts()
    trained = ["t1", "t2", "t3"]
    before = _probe({"t1": ("no", False, False), "t2": ("no", False, False), "t3": ("I don't know", False, True),
                     "h1": ("W", True, False), "h2": ("I don't know", False, True), "h3": ("U", True, False)})
    after = _probe({"t1": ("X", True, False), "t2": ("X", False, False), "t3": ("Z", True, False),
                    "h1": ("X", False, False), "h2": ("V", True, False), "h3": ("X", False, False)})
    cats_before, cats_after = categorize(before), categorize(after)
    held_before, held_after = (c[~c["fact_id"].isin(trained)] for c in (cats_before, cats_after))
    rows_before, rows_after = (r[~r["fact_id"].isin(trained)] for r in (before, after))
    exploded = exploded_answers(rows_before, rows_after, 0.05)
    table = capacity_table([f for f in facts if f.fact_id in trained], {"capital": 3, "river": 2, "language": 1},
                           np.array([9.0, 8.0, 7.0]), np.array([1.0, 2.0, 0.5]))
    stats = LoopStats(steps=4, tokens=312, seconds=1.5, tokens_per_s=208.0, final_loss=2.5,
                      epoch_losses=[3.0, 2.5], epoch_scores=[0.25, 0.5])
    train = {k: asdict(stats)[k] for k in TrainBlock.model_fields}
    metrics = {"reliability": reliability(after, trained), "reliability_by_epoch": stats.epoch_scores,
               "generalization": reliability(after, trained), "shift": knowledge_shift(held_before, held_after),
               "answers": {**answer_stats(rows_before, rows_after), "exploded": exploded},
               "benchmarks": {}, "benchmarks_base": {}, "train": train, "n_trained_facts": 3, "n_heldout_facts": 3,
               "shift_reasons": shift_reasons(rows_before, rows_after, held_before, held_after, facts, trained, exploded),
               "locality": locality(rows_before, rows_after, facts, trained),
               "capacity": capacity_summary(table, 1000, reliability(after, trained))}
    row = {**ROUND, "shift": metrics["shift"], "capacity": metrics["capacity"]}
    config = SimpleNamespace(continual=SimpleNamespace(strategy="stack"))
    return {**metrics, "rounds": [row], "continual": continual_summary([row], config)}


def test_what_the_writers_produce_validates_and_reads_back_from_the_file(tmp_path):
    metrics = _writer_metrics()
    assert checked(metrics, Metrics, "metrics.json") is metrics  # the dict is written as it is
    run = RunDir(tmp_path / "run")
    run.write_json("metrics.json", metrics)
    m = read_artifact(run / "metrics.json", Metrics)
    assert m.shift.positive == metrics["shift"]["positive"] and m.shift.n_facts == 3
    assert m.answers.exploded and m.answers.exploded[0][0] == "x"  # "x" took over the held-out answers
    assert m.locality.facts_subject == metrics["locality"]["facts_subject"]
    assert m.capacity.bits_stored == pytest.approx(metrics["capacity"]["bits_stored"])
    assert m.capacity.trainable_params == 1000 and m.continual.strategy == "stack"
    assert m.train.final_loss == 2.5 and m.reliability == pytest.approx(metrics["reliability"])
    assert set(m.shift_reasons.positive) == set(metrics["shift_reasons"]["positive"])


@pytest.mark.parametrize("change,field", [
    (lambda m: m["shift"].update(negative="lots"), "shift.negative"),
    (lambda m: m["capacity"].pop("trainable_params"), "capacity.trainable_params"),
    (lambda m: m["rounds"][0]["train"].update(seconds=[1]), "rounds.0.train.seconds"),
    (lambda m: m["answers"].update(top_after=[["paris"]]), "answers.top_after.0"),
])
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(tmp_path, change, field, run_cli):
    metrics = json.loads(json.dumps(METRICS))
    change(metrics)
    run = RunDir(tmp_path / "run")
    run.write_json("metrics.json", metrics)
    run.write_text("config.yaml", yaml.safe_dump({"model": {"name": "tiny"}}))
    with pytest.raises(KnowpackError) as caught:
        read_artifact(run / "metrics.json", Metrics)
    message = str(caught.value)
    assert message.startswith(f"{run / 'metrics.json'}: {field}") and "\n" not in message
    result = run_cli("report", str(run.path))  # the report says the same line, no traceback
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and f"metrics.json: {field}" in lines[0]
    with pytest.raises(ValueError, match=f"metrics.json about to be written: {field}"):
        checked(metrics, Metrics, "metrics.json")  # a writer's wrong block fails before it is written


def test_a_broken_or_missing_file_is_one_line_too(tmp_path):
    (tmp_path / "metrics.json").write_text('{"reliability": 0.5,', encoding="utf-8")
    with pytest.raises(KnowpackError, match=r"metrics.json: not valid JSON"):
        read_artifact(tmp_path / "metrics.json", Metrics)
    with pytest.raises(KnowpackError, match=r"train_stats.json: no such file"):
        read_artifact(tmp_path / "train_stats.json", TrainStats)
    (tmp_path / "trained_facts.json").write_text('{"f1": 1}', encoding="utf-8")
    with pytest.raises(KnowpackError, match=r"trained_facts.json: \(top level\): Input should be a valid list"):
        read_artifact(tmp_path / "trained_facts.json", TrainedFacts)


def test_keys_the_models_do_not_know_are_kept():
    data = {**METRICS, "my_score": {"value": 0.9}, "shift": {**SHIFT, "by_bucket": {"tail": 0.5}}}
    m = Metrics.model_validate(data)
    assert m.my_score == {"value": 0.9} and m.shift.by_bucket == {"tail": 0.5}
    assert m.given("my_score") and not Metrics.model_validate({}).given("reliability")
    assert _json(m.model_dump(mode="json", exclude_unset=True)) == _json(data)
    status = RunStatus.model_validate({"status": "running", "pid": 7, "host": "node", "started": 1.5})
    assert status.written() == {"status": "running", "pid": 7, "host": "node", "started": 1.5}


def test_an_old_run_without_the_newer_blocks_still_reports(tmp_path):
    from knowpack.report import write_report

    old = {k: METRICS[k] for k in ("reliability", "reliability_by_epoch", "generalization", "answers", "benchmarks",
                                   "benchmarks_base", "train", "n_trained_facts", "n_heldout_facts")}
    old["shift"] = {k: SHIFT[k] for k in ("positive", "negative", "transitions")}  # no n_facts yet
    old["answers"] = {k: v for k, v in ANSWERS.items() if k != "exploded"}
    old["token_shift"] = {k: TOKEN_SHIFT[k] for k in ("unshifted", "marginal", "shifted", "mean_kl")}
    old["forgetting"] = {k: v for k, v in FORGETTING.items() if k != "tokens"}
    run = RunDir(tmp_path / "old")
    run.write_json("metrics.json", old)
    run.write_text("config.yaml", yaml.safe_dump({"model": {"name": "tiny"}}))
    run.write_json("train_stats.json", {**TRAIN, "epoch_losses": [3.0, 2.5]})
    text = write_report(run)[0].read_text(encoding="utf-8")
    assert "## Knowledge shift" in text and "12 held-out facts re-probed" in text  # counted from the matrix
    assert "## Token distribution" in text and "percentile" not in text and "tokens scored" not in text
    for absent in ("## Locality", "## Continual", "bits stored", "style / copied"):
        assert absent not in text
    assert "| steps | 4 |" in text and "| seconds | 1.500 |" in text


def test_the_sweep_table_reads_typed_task_and_status_files(tmp_path):
    from knowpack.sweep.results import run_row

    run = RunDir(tmp_path / "runs" / "a")
    run.write_json("sweep_task.json", {"point": {"mixture.n_unknown": 3}, "until": "report", "reuse_from": []})
    with pytest.raises(KnowpackError, match=r"sweep_task.json: config: Field required"):
        run_row(tmp_path, run.path)
    run.write_json("sweep_task.json", {"point": {"mixture.n_unknown": 3}, "config": {"mixture": {"n_unknown": 3}},
                                       "until": "report", "reuse_from": []})
    run.write_json("status.json", {"status": "done", "seconds": 3})
    run.write_json("metrics.json", {"reliability": 1, "n_trained_facts": 3})
    row = run_row(tmp_path, run.path)
    # the columns keep the file's own values: an integer stays an integer
    assert row["status"] == "done" and row["reliability"] == 1 and isinstance(row["reliability"], int)
    assert row["config.mixture.n_unknown"] == 3 and row["seconds"] == 3.0

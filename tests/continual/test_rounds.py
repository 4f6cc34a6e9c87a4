"""Two rounds on a tiny random-weight model: a row per round, the retention matrix, per-round resume, strategies."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from knowpack.config import load_config
from knowpack.continual import RoundPlan, round_dir
from knowpack.evaluate.knowledge import reliability
from knowpack.pipeline import run_pipeline
from knowpack.rundir import RunDir, file_checksum
from knowpack.train import Checkpoints

# Keys of the single-run metrics.json contract (DESIGN.md): with rounds they describe the final state.
CONTRACT = {"reliability", "reliability_by_epoch", "generalization", "shift", "answers", "benchmarks",
            "benchmarks_base", "forgetting", "token_shift", "train"}


@pytest.fixture(scope="module")
def facts_file(tmp_path_factory):
    """16 embedded facts as a JSONL source: built once, read in milliseconds by every run here."""
    from knowpack.facts import build_facts, facts_to_jsonl

    path = tmp_path_factory.mktemp("facts") / "facts.jsonl"
    path.write_text(facts_to_jsonl(build_facts(load_config("smoke", overrides=["facts.max_facts=16"]).facts)))
    return path


def overrides(model_dir, facts_file, strategy: str, replay: float) -> list[str]:
    # A high learning rate so that the tiny model learns some facts and the retention matrix is not all zeros.
    return [f"model.name={model_dir}", "facts.source=jsonl", f"facts.path={facts_file}", "facts.max_facts=null",
            "probe.num_prompts=2", "probe.shots=1", "probe.max_new_tokens=4", "train.epochs=4", "train.batch_size=2",
            "train.lr=0.02", "eval.benchmark_questions=2", "eval.mmlu_shots=1", "eval.forgetting_passages=4",
            f"rounds=[{{n_unknown: 3}}, {{n_unknown: 2, replay: {replay}}}]", f"continual.strategy={strategy}"]


class Interrupted(Exception):
    pass


def test_two_rounds_rows_retention_and_resume_mid_round(tiny_model_dir, facts_file, tmp_path, monkeypatch):
    config = load_config("smoke", overrides=overrides(tiny_model_dir, facts_file, "continue", 0.5))
    run_dir = tmp_path / "run"
    save = Checkpoints.save

    def save_then_stop(self, epochs_done, *args, **kwargs):
        save(self, epochs_done, *args, **kwargs)
        if "round-2" in str(self.folder) and epochs_done == 2:
            raise Interrupted  # killed in the middle of round 2, after its second epoch's checkpoint

    monkeypatch.setattr(Checkpoints, "save", save_then_stop)
    with pytest.raises(Interrupted):
        run_pipeline(config, run_dir, progress=False, console=Console(record=True, width=200))
    monkeypatch.undo()
    manifest = RunDir(run_dir).manifest()
    assert "round-1" in manifest and "round-2" not in manifest and "train" not in manifest
    first_round = file_checksum(run_dir / round_dir(1) / "round.json")

    console = Console(record=True, width=200)
    run_pipeline(config, run_dir, progress=False, console=console)
    log = console.export_text()
    assert "✓ round-1: reused" in log and "▶ round-2" in log
    assert "round 2: resuming from the checkpoint after epoch 2" in log
    assert file_checksum(run_dir / round_dir(1) / "round.json") == first_round
    assert not (run_dir / round_dir(2) / "checkpoints").exists()

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert CONTRACT <= set(metrics) and metrics["n_trained_facts"] == 5
    rows = metrics["rounds"]
    assert [r["round"] for r in rows] == [1, 2] and [r["new_facts"] for r in rows] == [3, 2]
    assert [r["replayed_facts"] for r in rows] == [0, 2] and rows[1]["train_examples"] == 4
    assert len(metrics["reliability_by_epoch"]) == 8  # both rounds' epochs, in order
    plans = [RoundPlan.model_validate(p) for p in json.loads((run_dir / "rounds/plan.json").read_text())]
    probe = RunDir(run_dir).read_table(f"{round_dir(2)}/probe.parquet")
    expected = [reliability(probe, plan.new_ids) for plan in plans]
    retention = metrics["continual"]["retention"]
    assert retention == [[rows[0]["reliability_current"], None], expected]
    assert rows[1]["backward_transfer"] == pytest.approx(expected[0] - retention[0][0])
    assert any(v for row in retention for v in row if v is not None)  # something was learned
    assert metrics["reliability"] == pytest.approx(rows[1]["reliability"])  # the final state is round 2's
    assert {"positive", "negative", "transitions"} <= set(rows[1]["shift"]) and "ce_vs_base" in rows[1]["forgetting"]
    # round k's capacity counts every fact trained so far, on the state after round k
    assert [r["capacity"]["n_facts"] for r in rows] == [3, 5]
    assert all(r["capacity"]["trainable_params"] > 0 for r in rows)
    report = (run_dir / "report.md").read_text()
    assert "## Continual packing" in report and "| trained \\ probed | round 1 | round 2 |" in report
    assert "Retention: reliability on each round" in (run_dir / "report.html").read_text()

    console = Console(record=True, width=200)
    run_pipeline(config, run_dir, progress=False, console=console)
    assert console.export_text().count("reused") == 10  # facts, probe, base scores, plan, 2 rounds, train, probe, eval, report


@pytest.mark.parametrize("strategy, replay", [("stack", 0.5), ("retrain", 0.0)])
def test_stack_and_retrain(tiny_model_dir, facts_file, tmp_path, strategy, replay):
    config = load_config("smoke", overrides=overrides(tiny_model_dir, facts_file, strategy, replay))
    run_dir = run_pipeline(config, tmp_path / "run", until="train", progress=False, console=Console(record=True))
    plans = [RoundPlan.model_validate(p) for p in json.loads((run_dir / "rounds/plan.json").read_text())]
    rows = json.loads((run_dir / "rounds.json").read_text())["rounds"]
    adapter = json.loads((run_dir / "adapter/adapter_config.json").read_text())
    if strategy == "stack":  # the final adapter holds both rounds' updates: twice the rank
        assert adapter["r"] == 2 * config.lora.rank and (run_dir / round_dir(2) / "stacked").is_dir()
    else:  # one adapter retrained on both rounds' facts
        assert adapter["r"] == config.lora.rank and rows[1]["train_examples"] == 5
        assert {e.fact_id for e in plans[1].examples} == set(plans[0].new_ids + plans[1].new_ids)
    assert [len(r["reliability_by_round"]) for r in rows] == [1, 2]
    assert json.loads((run_dir / "trained_facts.json").read_text()) == plans[0].new_ids + plans[1].new_ids


def test_full_fine_tune_continues_where_the_last_round_ended(tiny_model_dir, facts_file, tmp_path):
    import torch
    from safetensors.torch import load_file

    from knowpack.continual import Rounds
    from knowpack.facts import read_facts
    from knowpack.models import load_configured_model

    config = load_config("smoke", overrides=overrides(tiny_model_dir, facts_file, "continue", 0.0)
                         + ["train.method=full", "train.lr=1e-3"])
    run_dir = run_pipeline(config, tmp_path / "run", until="train", progress=False, console=Console(record=True))
    assert (run_dir / "finetuned").is_dir() and (run_dir / round_dir(2) / "finetuned").is_dir()
    plans = [RoundPlan.model_validate(p) for p in json.loads((run_dir / "rounds/plan.json").read_text())]
    rounds = Rounds(RunDir(run_dir), config, read_facts(run_dir / "facts.jsonl"), plans,
                    lambda: load_configured_model(config.model), Console(record=True), progress=False)
    model, _ = rounds.trainable(2)
    after_round_1 = load_file(run_dir / round_dir(1) / "finetuned" / "model.safetensors")
    weights = dict(model.tuned.named_parameters())
    assert len(set(after_round_1) & set(weights)) == len(after_round_1)  # every saved tensor is compared
    assert all(torch.equal(weights[name], value) for name, value in after_round_1.items())
    assert all(p.requires_grad for p in model.tuned.parameters())
    base = dict(model.base.named_parameters())
    assert any(not torch.equal(base[name], value) for name, value in after_round_1.items())  # round 1 trained

"""The whole recipe on a tiny random-weight model: every artifact, reuse on re-run (sweeps: tests/sweep)."""

import json

import pytest
import yaml
from rich.console import Console

from knowpack.config import load_config
from knowpack.pipeline import run_pipeline

ARTIFACTS = ["config.yaml", "facts.jsonl", "probe_before.parquet", "categories_before.parquet", "benchmarks_base.json",
             "train_set.jsonl",
             "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "probe_after.parquet",
             "categories_after.parquet", "metrics.json", "capacity.parquet", "report.md", "report.html", "manifest.json"]


def tiny_overrides(model_dir):
    return [f"model.name={model_dir}", "facts.max_facts=16", "probe.num_prompts=2", "probe.shots=1",
            "probe.max_new_tokens=4", "mixture.n_unknown=3", "train.epochs=2", "train.batch_size=2",
            "eval.benchmark_questions=2", "eval.mmlu_shots=1", "eval.forgetting_passages=4"]


def test_run_writes_every_artifact_and_reuses_stages(tiny_model_dir, tmp_path):
    config = load_config("smoke", overrides=tiny_overrides(tiny_model_dir))
    console = Console(record=True, width=200)
    run_dir = run_pipeline(config, tmp_path / "run", progress=False, console=console)
    for name in ARTIFACTS:
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_trained_facts"] == 3 and metrics["n_heldout_facts"] == 13
    assert len(metrics["reliability_by_epoch"]) == 2
    assert set(metrics["benchmarks"]) == set(metrics["benchmarks_base"]) == {"mmlu"}
    assert {"ce_vs_base", "kl_to_base", "perplexity_base", "perplexity_after"} <= set(metrics["forgetting"])
    assert {"unshifted", "marginal", "shifted", "mean_kl"} <= set(metrics["token_shift"])
    examples = (run_dir / "train_set.jsonl").read_text().splitlines()
    assert metrics["token_shift"]["training_texts"] == 2 * len(examples)  # each example's question and answer
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["mixture"]["n_unknown"] == 3
    capacity = metrics["capacity"]
    assert capacity["n_facts"] == 3 and capacity["trainable_params"] > 0
    assert capacity["facts_learned"] == metrics["reliability"] * 3
    if capacity["bits_stored"] is not None:  # 16 facts: a trained fact's relation may have one answer only
        assert capacity["bits_per_param"] == capacity["bits_stored"] / capacity["trainable_params"]
    first_output = console.export_text()
    assert "reused" not in first_output

    console = Console(record=True, width=200)
    run_pipeline(config, run_dir, progress=False, console=console)
    assert console.export_text().count("reused") == 7

    changed = load_config("smoke", overrides=tiny_overrides(tiny_model_dir) + ["eval.mmlu_shots=0"])
    console = Console(record=True, width=200)
    run_pipeline(changed, run_dir, progress=False, console=console)
    text = console.export_text()
    assert "✓ probe_after: reused" in text and "▶ evaluate" in text
    # the base model's scores depend on the benchmark settings: recomputed, while training is reused
    assert "▶ base_eval" in text and "✓ train: reused" in text
    assert json.loads((run_dir / "metrics.json").read_text())["benchmarks_base"] == json.loads(
        (run_dir / "benchmarks_base.json").read_text())


def test_an_edited_facts_file_is_read_again(tmp_path):
    from knowpack.facts import build_facts, facts_to_jsonl

    facts = build_facts(load_config("smoke").facts)
    path = tmp_path / "mine.jsonl"
    path.write_text(facts_to_jsonl(facts[:10]))
    config = load_config("smoke", overrides=["facts.source=jsonl", f"facts.path={path}", "facts.max_facts=null"])
    run_pipeline(config, tmp_path / "run", until="facts", progress=False, console=Console(record=True))
    assert len((tmp_path / "run" / "facts.jsonl").read_text().splitlines()) == 10
    path.write_text(facts_to_jsonl(facts[:12]))
    console = Console(record=True)
    run_pipeline(config, tmp_path / "run", until="facts", progress=False, console=console)
    assert "▶ facts" in console.export_text()
    assert len((tmp_path / "run" / "facts.jsonl").read_text().splitlines()) == 12


def test_eval_any_adapter_from_the_cli(tiny_model_dir, tmp_path, run_cli):
    from knowpack.config import LoraSettings
    from knowpack.models import load_model
    from knowpack.train import add_lora

    model, _ = load_model(str(tiny_model_dir))
    adapter = tmp_path / "someone-elses-adapter"
    peft_model = add_lora(model, LoraSettings(rank=2, target_modules=["down_proj"]), seed=3)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)  # a trained-looking adapter, so the model really changes
    peft_model.save_pretrained(adapter)
    out = tmp_path / "eval"
    result = run_cli("eval", "--preset", "smoke", "--adapter", str(adapter), "--out", str(out), "--quiet",
                     *tiny_overrides(tiny_model_dir))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_heldout_facts"] == 16 and metrics["adapter"] == str(adapter.resolve())
    assert sum(sum(row.values()) for row in metrics["shift"]["transitions"].values()) == 16
    assert set(metrics["benchmarks"]) == {"mmlu"} and metrics["forgetting"]["kl_to_base"] > 0
    # no run, so no training set: the copied share is undefined and says why
    assert metrics["token_shift"]["copied"] is None and metrics["token_shift"]["training_texts"] is None
    assert metrics["token_shift"]["none_because"]["copied"].startswith("no training set")
    for name in ("probe_before.parquet", "probe_after.parquet", "categories_after.parquet", "facts.jsonl"):
        assert (out / name).exists()
    missing = run_cli("eval", "--preset", "smoke", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "x"),
                      *tiny_overrides(tiny_model_dir))
    assert missing.returncode == 2 and "nope: no such adapter folder" in missing.stderr
    assert not (tmp_path / "x").exists()


def test_eval_adapter_is_the_run_stages_resumed_and_refuses_a_foreign_adapter_up_front(
        tiny_model_dir, smollm2_tokenizer, tmp_path):
    from conftest import make_tiny_llama

    from knowpack.config import LoraSettings
    from knowpack.errors import KnowpackError
    from knowpack.pipeline import evaluate_adapter
    from knowpack.train import add_lora

    config = load_config("smoke", overrides=tiny_overrides(tiny_model_dir) + ["eval.forgetting_passages=0"])
    adapter = tmp_path / "adapter"
    add_lora(make_tiny_llama(smollm2_tokenizer), LoraSettings(rank=2, target_modules=["down_proj"]),
             seed=3).save_pretrained(adapter)
    first = Console(record=True, width=200)
    evaluate_adapter(config, adapter, tmp_path / "eval", progress=False, console=first)
    assert [line for line in first.export_text().splitlines() if line.startswith("▶")] == [
        "▶ facts", "▶ probe_before", "▶ base_eval", "▶ probe_after", "▶ evaluate"]
    again = Console(record=True, width=200)
    evaluate_adapter(config, adapter, tmp_path / "eval", progress=False, console=again)
    resumed = again.export_text()
    assert "▶" not in resumed and "✓ evaluate: reused" in resumed
    # a changed adapter under the same path is probed again; the base probe and scores are kept
    add_lora(make_tiny_llama(smollm2_tokenizer), LoraSettings(rank=2, target_modules=["down_proj"]),
             seed=4).save_pretrained(adapter)
    changed = Console(record=True, width=200)
    evaluate_adapter(config, adapter, tmp_path / "eval", progress=False, console=changed)
    assert [line for line in changed.export_text().splitlines() if line.startswith("▶")] == [
        "▶ probe_after", "▶ evaluate"]
    foreign = tmp_path / "foreign"
    add_lora(make_tiny_llama(smollm2_tokenizer, layers=3), LoraSettings(rank=2, target_modules=["down_proj"]),
             seed=3).save_pretrained(foreign)
    with pytest.raises(KnowpackError, match=r"foreign: adapter for another base model \(model.layers.2.mlp.down_proj"):
        evaluate_adapter(config, foreign, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()

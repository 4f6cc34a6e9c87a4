"""`knowpack run` on the real gemma3-270m (the `gemma` extra; CI installs it), end to end from the CLI, at a size
smaller than the smoke preset (the smoke preset itself: README). Measured 417-476 s on 2 CPU cores shared with
other jobs (load 4-10), conversion of the GGUF excluded."""

import json

import pandas as pd
import pytest

from conftest import knowpack_run_subprocess, needs_gemma

pytestmark = [pytest.mark.slow, needs_gemma]

TINY_SMOKE = ["model.name=gemma3-270m", "facts.max_facts=20", "probe.num_prompts=1", "probe.max_new_tokens=6",
              "mixture.n_unknown=4", "train.epochs=4", "eval.benchmark_questions=2", "eval.mmlu_shots=0",
              "eval.forgetting_passages=2", "eval.token_shift_prompts=2"]


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gemma") / "run"
    result, seconds = knowpack_run_subprocess(out, *TINY_SMOKE, timeout=600)
    return out, result, seconds


def test_every_stage_runs_quietly_on_gemma(gemma_run):
    out, result, seconds = gemma_run
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert "warning" not in result.stderr.lower() and "Traceback" not in result.stderr
    # no chat template and sliding windows: the plain prompt format, decoded on the plain path, said once
    assert result.stderr.count("note: Gemma3ForCausalLM has sliding-window attention") == 1
    print(f"gemma3-270m end-to-end wall time: {seconds:.0f} s")


def test_gemma_metrics_are_in_range(gemma_run):
    out, _, _ = gemma_run
    metrics = json.loads((out / "metrics.json").read_text())
    trained = set(json.loads((out / "trained_facts.json").read_text()))
    rows_before = pd.read_parquet(out / "probe_before.parquet")
    assert len(trained) == 4 and not rows_before[rows_before["fact_id"].isin(trained)]["correct"].any()
    # the base model knows some real facts (it answers "Paris" for France): not everything is Unknown
    assert rows_before["correct"].any()
    assert 0.0 <= metrics["reliability"] <= 1.0 and len(metrics["reliability_by_epoch"]) == 4
    assert metrics["shift"]["n_facts"] == metrics["n_heldout_facts"] > 0
    for name in ("benchmarks", "benchmarks_base"):
        assert 0.0 <= metrics[name]["mmlu"] <= 1.0
    forgetting = metrics["forgetting"]
    assert forgetting["kl_to_base"] >= 0 and 1 < forgetting["perplexity_base"] < 1000
    shares = metrics["token_shift"]
    assert shares["unshifted"] + shares["marginal"] + shares["shifted"] == pytest.approx(1.0)
    assert metrics["train"]["steps"] == 4 and metrics["train"]["final_loss"] < 20
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"down_proj", "gate_proj", "up_proj"}
    assert metrics["capacity"]["trainable_params"] > 0 and metrics["capacity"]["n_facts"] == 4
    assert "## Knowledge shift" in (out / "report.md").read_text()

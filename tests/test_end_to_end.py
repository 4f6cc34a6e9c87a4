"""`knowpack run --preset smoke` on the real embedded SmolLM2-135M-Instruct, end to end from the CLI."""

import json

import pandas as pd
import pytest

from conftest import knowpack_run_subprocess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    result, seconds = knowpack_run_subprocess(out, timeout=900)
    return out, result, seconds


def test_smoke_run_prints_summary_and_run_dir(smoke_run):
    out, result, seconds = smoke_run
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert "reliability" in result.stdout and "tokens/s" in result.stdout
    print(f"smoke preset wall time: {seconds:.0f} s")


def test_smoke_metrics_are_in_range_and_consistent(smoke_run):
    out, _, _ = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    trained = set(json.loads((out / "trained_facts.json").read_text()))
    rows_after = pd.read_parquet(out / "probe_after.parquet")
    greedy_trained = rows_after[(rows_after["sample"] == 0) & rows_after["fact_id"].isin(trained)]
    # reliability is exactly the share of correct (trained fact × prompt) rows in the after-probe table
    assert metrics["reliability"] == pytest.approx(greedy_trained["correct"].mean())
    assert 0.0 <= metrics["reliability"] <= 1.0
    assert len(metrics["reliability_by_epoch"]) == 8
    # the trained facts were Unknown before training: every before row for them is wrong
    rows_before = pd.read_parquet(out / "probe_before.parquet")
    assert not rows_before[rows_before["fact_id"].isin(trained)]["correct"].any()
    shift = metrics["shift"]
    n = shift["n_facts"]
    assert n == metrics["n_heldout_facts"] > 0
    assert sum(sum(row.values()) for row in shift["transitions"].values()) == n
    t = shift["transitions"]
    positive = t["Unknown"]["HighlyKnown"] + t["Unknown"]["MaybeKnown"] + t["MaybeKnown"]["HighlyKnown"] \
        + t["WeaklyKnown"]["HighlyKnown"] + t["WeaklyKnown"]["MaybeKnown"]
    assert shift["positive"] == pytest.approx(positive / n)
    for name in ("benchmarks", "benchmarks_base"):
        assert 0.0 <= metrics[name]["mmlu"] <= 1.0
    assert metrics["train"]["tokens_per_s"] > 0 and metrics["train"]["steps"] > 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "## Knowledge shift" in (out / "report.md").read_text()

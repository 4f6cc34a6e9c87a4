"""The vllm backend in a run: the probe stages (the after-probe through LoRA) give the HF tables, and the
benchmark scores (eval.backend) the HF scores."""

import json
import os

import pandas as pd
import pytest
from rich.console import Console

from knowpack.config import load_config
from knowpack.errors import KnowpackError
from knowpack.pipeline import preflight, run_pipeline

OVERRIDES = ["facts.max_facts=8", "probe.num_prompts=1", "probe.shots=2", "probe.max_new_tokens=4",
             "mixture.n_unknown=2", "train.epochs=2", "train.batch_size=2", "train.eval_every_epoch=false",
             "eval.benchmark_questions=2", "eval.mmlu_shots=0", "vllm.kv_cache_gib=0.25", "vllm.max_model_len=1024"]


@pytest.fixture(scope="module")
def tiny_model_dir_for_vllm(tmp_path_factory, smollm2_tokenizer):
    """A tiny model folder whose heads vLLM's CPU attention takes (head size 32; conftest's has 16)."""
    from conftest import make_tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama-32")
    make_tiny_llama(smollm2_tokenizer, hidden=128).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.mark.skipif(os.environ.get("VLLM") == "0", reason="VLLM=0: this environment was set up without vLLM")
def test_a_run_through_vllm_gives_the_hf_tables_and_scores(tiny_model_dir_for_vllm, tmp_path):
    tiny_model_dir = tiny_model_dir_for_vllm
    tables, metrics = {}, {}
    for backend in ("hf", "vllm"):
        config = load_config("smoke", overrides=[f"model.name={tiny_model_dir}", *OVERRIDES,
                                                 f"probe.backend={backend}", f"eval.backend={backend}",
                                                 "eval.benchmarks=[mmlu, truthfulqa]"])
        stale = tmp_path / backend / ".merged-for-vllm.killed"  # as a run killed while scoring leaves it
        stale.mkdir(parents=True)
        run_dir = run_pipeline(config, tmp_path / backend, progress=False, console=Console(quiet=True))
        assert backend == "hf" or not list(run_dir.glob(".merged-for-vllm.*"))  # the merged copy is gone
        tables[backend] = {name: pd.read_parquet(run_dir / f"{name}.parquet")
                           for name in ("probe_before", "probe_after", "categories_before", "categories_after")}
        metrics[backend] = json.loads((run_dir / "metrics.json").read_text())
    for name, table in tables["hf"].items():
        served = tables["vllm"][name]
        assert list(served.columns) == list(table.columns) and len(served) == len(table), name
    for name in ("probe_before", "probe_after"):  # 4 new tokens, random weights: near-ties are rare, not absent
        assert (tables["vllm"][name]["answer"] == tables["hf"][name]["answer"]).mean() >= 0.8, name
    for key in ("benchmarks_base", "benchmarks"):  # the base through the engine, the adapter through LoRA
        hf, served = metrics["hf"][key], metrics["vllm"][key]
        assert set(served) == set(hf) == {"mmlu", "truthfulqa_mc1", "truthfulqa_mc2"}
        assert all(abs(served[name] - hf[name]) < 1e-3 for name in hf), (key, served, hf)


def test_what_vllm_cannot_serve_is_refused_before_any_work():
    with pytest.raises(KnowpackError, match="DoRA"):
        preflight(load_config("smoke", overrides=["probe.backend=vllm", "lora.use_dora=true"]))
    with pytest.raises(KnowpackError, match="continual rounds"):
        preflight(load_config("smoke", overrides=["probe.backend=vllm", "rounds=[{n_unknown: 2}]"]))
    with pytest.raises(KnowpackError, match="up to 512"):
        preflight(load_config("smoke", overrides=["probe.backend=vllm", "lora.rank=1024"]))
    with pytest.raises(KnowpackError, match="probe.backend: Input should be 'hf' or 'vllm'"):
        load_config("smoke", overrides=["probe.backend=sglang"])
    # eval.backend alone asks for vLLM too, and is named in what is refused; it scores an adapter merged,
    # so a DoRA adapter or a rank above vLLM's LoRA limit is fine there
    preflight(load_config("smoke", overrides=["eval.backend=vllm", "lora.use_dora=true", "lora.rank=1024"]))
    with pytest.raises(KnowpackError, match="eval.backend=vllm does not serve continual rounds"):
        preflight(load_config("smoke", overrides=["eval.backend=vllm", "rounds=[{n_unknown: 2}]"]))
    with pytest.raises(KnowpackError, match="eval.backend: Input should be 'hf' or 'vllm'"):
        load_config("smoke", overrides=["eval.backend=lm-eval"])


def test_scoring_takes_an_adapter_merged_so_dora_needs_no_lora_engine(tmp_path):
    """The probe serves an adapter through LoRA (DoRA refused); scoring merges it first, so DoRA is fine there."""
    from types import SimpleNamespace

    from knowpack.backend import _engine_spec
    from knowpack.rundir import RunDir

    run = RunDir(tmp_path / "run")
    (run.path / "adapter").mkdir()
    (run.path / "adapter" / "adapter_config.json").write_text('{"r": 8, "use_dora": true}')
    ctx = SimpleNamespace(config=load_config("smoke", overrides=["lora.use_dora=true"]), run=run, adapter=None)
    spec, adapter = _engine_spec(ctx, adapted=True, through_lora=False)
    assert adapter == run.path / "adapter" and spec.lora_rank is None  # merged into the base, then served
    with pytest.raises(KnowpackError, match="DoRA"):
        _engine_spec(ctx, adapted=True, through_lora=True)

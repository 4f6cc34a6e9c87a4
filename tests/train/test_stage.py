"""The train stage in the pipeline: refused combinations, PiSSA / full fine-tune runs evaluated against the
original base, merged export, a full disk while saving the adapter, resuming from checkpoints."""

import errno
import json
import os

import pytest
from rich.console import Console

from knowpack.config import load_config
from knowpack.errors import KnowpackError
from knowpack.pipeline import run_pipeline
from test_pipeline import tiny_overrides

# Evaluation reduced to what these tests read: forgetting on two passages (its base side is the base model).
QUICK_EVAL = ["eval.benchmarks=[]", "eval.forgetting_passages=2", "eval.token_shift_prompts=0"]


@pytest.mark.parametrize("overrides,message", [
    (["lora.init=pissa", "train.regularizer=kl"],
     "train.regularizer=kl with lora.init=pissa: pissa moves part of the base weights into the adapter"),
    (["lora.init=olora", "lora.use_dora=true"], "lora.use_dora with lora.init=olora: PEFT cannot convert"),
    (["train.method=full", "train.export_merged=true"], "train.export_merged: a full fine-tune already writes"),
    (["train.grad_accum_steps=32", "train.batch_size=16"],
     "train.grad_accum_steps: cannot split a batch of 16 examples into 32 micro-batches"),
    (["lora.target_modules=[mlp]", "train.regularizer=mask-target", "lora.rank=0"],
     "lora.rank: Input should be greater than or equal to 1 (got 0)"),
])
def test_impossible_settings_are_one_line_before_any_work(run_cli, tmp_path, overrides, message):
    result = run_cli("train", "--preset", "smoke", "--out", str(tmp_path / "run"), *overrides)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def _run(model_dir, out, *overrides, until="evaluate", reuse_from=None):
    config = load_config("smoke", overrides=[*tiny_overrides(model_dir), *QUICK_EVAL, *overrides])
    console = Console(record=True, width=300)
    run_pipeline(config, out, until=until, progress=False, console=console, reuse_from=reuse_from)
    return console.export_text()


def test_pissa_and_full_fine_tune_runs_are_measured_against_the_original_base(tiny_model_dir, tmp_path):
    """PiSSA and full fine-tuning change the base weights in memory; probing and evaluation after training
    must still compare with the original model (same base perplexity as a plain LoRA run)."""
    _run(tiny_model_dir, tmp_path / "lora", "train.export_merged=true")
    _run(tiny_model_dir, tmp_path / "pissa", "lora.init=pissa", reuse_from=[tmp_path / "lora"])
    _run(tiny_model_dir, tmp_path / "full", "train.method=full", "train.regularizer=kl", "train.lr=1e-4",
         reuse_from=[tmp_path / "lora"])
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("lora", "pissa", "full")}
    base_perplexity = metrics["lora"]["forgetting"]["perplexity_base"]
    for name in ("pissa", "full"):
        assert metrics[name]["forgetting"]["perplexity_base"] == pytest.approx(base_perplexity, rel=1e-5), name
        assert metrics[name]["forgetting"]["kl_to_base"] > 0
    assert (tmp_path / "lora" / "merged" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "pissa" / "adapter" / "adapter_config.json").read_text())["r"] == 16  # converted
    assert (tmp_path / "full" / "finetuned" / "model.safetensors").is_file()
    assert not (tmp_path / "full" / "adapter").exists()
    assert not (tmp_path / "full" / "checkpoints").exists()  # removed after success


def test_a_full_disk_while_saving_the_adapter_keeps_the_checkpoint_and_the_rerun_only_saves(
        tiny_model_dir, tmp_path, monkeypatch):
    real_fsync = os.fsync

    def full_for_the_adapter(fd):
        if "/.adapter." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    run = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", full_for_the_adapter)
    with pytest.raises(KnowpackError, match=r"run/adapter: disk full while writing it; free some space and rerun"):
        _run(tiny_model_dir, run, until="train")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not (run / "adapter").exists() and not list(run.glob(".adapter.*"))  # no partial adapter
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch-2"]  # the trained weights are safe

    log = _run(tiny_model_dir, run, until="train")
    assert "resuming from the checkpoint after epoch 2" in log
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and not (run / "checkpoints").exists()
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["resumed_from_epoch"] == 2 and stats["steps"] == 4 and len(stats["reliability_by_epoch"]) == 2

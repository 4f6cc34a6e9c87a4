"""Kill anywhere: SIGKILL `knowpack run` at four points, rerun, and get the uninterrupted result
(training resumes from the checkpoint of its last finished epoch).

Each kill is injected by a wrapper that patches one function of the pipeline to kill its own
process on its N-th call (deterministic, no timing races), then runs the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from test_pipeline import tiny_overrides

WRAPPER = """
import os, signal, sys, importlib
module_name, attribute, owner, nth = sys.argv[1:5]
module = importlib.import_module(module_name)
target = getattr(module, owner) if owner != "-" else module
original = getattr(target, attribute)
calls = [0]

def killer(*args, **kwargs):
    calls[0] += 1
    result = original(*args, **kwargs) if attribute == "save_pretrained" else None
    if calls[0] >= int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
    return result if attribute == "save_pretrained" else original(*args, **kwargs)

setattr(target, attribute, killer)
sys.argv = ["knowpack", *sys.argv[5:]]
from knowpack.cli import main
main()
"""

# (where, module, attribute, class or "-", the call that kills)
KILL_POINTS = [
    ("probing", "knowpack.lm.decode", "encode_prefix", "-", 2),
    ("mid epoch", "knowpack.train.loop", "train_step", "-", 3),
    ("writing the adapter", "peft", "save_pretrained", "PeftModel", 1),
    ("evaluation", "knowpack.evaluate.benchmarks", "loglikelihood", "-", 1),  # base_eval scored before training
]
# Wall-clock measurements differ between runs; everything else must be identical.
TIMING_KEYS = {"seconds", "tokens_per_s", "peak_memory_mb", "timings"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    return value


def _run(args, wrapper=None, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    command = [sys.executable, "-c", WRAPPER, *wrapper] if wrapper else [sys.executable, "-m", "knowpack"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


@pytest.mark.slow
def test_killed_runs_resume_and_match_an_uninterrupted_run(tiny_model_dir, tmp_path):
    args = ["run", "--quiet", *tiny_overrides(tiny_model_dir), "train.epochs=2"]
    reference = _run([*args, "--out", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "killed"
    finished_before = 0
    for where, module, attribute, owner, nth in KILL_POINTS:
        result = _run([*args, "--out", str(killed)], wrapper=[module, attribute, owner, str(nth)])
        assert result.returncode == -signal.SIGKILL, f"not killed {where}: {result.stderr[-2000:]}"
        assert not (killed / "metrics.json").exists()
        reused = result.stderr.count("reused")
        assert reused >= finished_before, f"{where}: finished stages were not reused\n{result.stderr}"
        finished_before = reused
        if where == "mid epoch":  # the third step is the second epoch's first: epoch 1 is checkpointed
            assert [p.name for p in (killed / "checkpoints").iterdir()] == ["epoch-1"]
        if where == "writing the adapter":  # killed after save_pretrained, before the rename
            assert "resuming from the checkpoint after epoch 1" in result.stderr  # not from the start
            assert not (killed / "adapter").exists()
            assert list(killed.glob(".adapter.*.tmp"))  # the abandoned staging folder
    # the adapter kill came before train finished, so the last kill reused facts and probe_before
    assert finished_before >= 2, result.stderr
    final = _run([*args, "--out", str(killed)])
    assert final.returncode == 0, final.stderr
    assert "✓ train: reused" in final.stderr and "✓ probe_after: reused" in final.stderr
    assert not list(killed.rglob(".*.tmp"))  # stale temporaries of killed writers cleaned up
    assert not (killed / "checkpoints").exists()  # removed once the train stage was done
    expected = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    got = json.loads((killed / "metrics.json").read_text())
    # KL to base (and token shift's mean KL) is a tiny difference (~2e-5 nats on this random-weight model) of two forward passes,
    # so float32 reduction-order noise moves its third digit between processes; everything else is exact.
    # The same holds for every statistic of the per-token KL (its percentiles, the top-5 share).
    for section, key in (("forgetting", "kl_to_base"), ("token_shift", "mean_kl"), ("token_shift", "kl_top5_share")):
        assert got[section].pop(key) == pytest.approx(expected[section].pop(key), rel=1e-2, abs=1e-9)
    assert got["token_shift"].pop("kl_percentiles") == pytest.approx(
        expected["token_shift"].pop("kl_percentiles"), rel=1e-2, abs=1e-9
    )
    assert _without_timings(got) == _without_timings(expected)

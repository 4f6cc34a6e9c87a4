"""One pinned loss curve: training the tiny random-weight model gives the same numbers as when it was pinned."""

import os

import pytest

import knowpack.train.loop as loop
from conftest import make_tiny_llama
from knowpack.config import LoraSettings, TrainConfig
from knowpack.train import add_lora, train_adapter
from knowpack.train.mixture import TrainExample

EXAMPLES = [TrainExample(fact_id=str(i), kind="unknown", question=f"What is the capital of S{i}?",
                         answer=f"City{i}" + "x" * (i % 3)) for i in range(6)]

# (cross-entropy, KL regularizer, gradient norm before clipping) of each of the 6 steps, fp32 on CPU (torch 2.13).
# Three separate processes gave these bit for bit; one thread instead of two moved the KL by up to 4e-8
# (it is a small difference of large terms: rel 9e-5 at 5e-4), the rest by under 1e-7 relative, hence
# rel=1e-4 with abs=1e-6.
PINNED = [
    (10.862993240356445, 6.4309011449381615e-09, 0.48434680700302124),
    (10.843658447265625, 1.5252730634074396e-08, 0.518305242061615),
    (10.723780632019043, 0.0004715971299447119, 0.553311288356781),
    (10.542664527893066, 0.0023186567705124617, 0.8221263289451599),
    (10.419343948364258, 0.005174947902560234, 0.8007717132568359),
    (10.304291725158691, 0.008666341193020344, 1.0035420656204224),
]


def _curve(tokenizer, monkeypatch) -> list[tuple[float, float, float]]:
    steps = []
    real_step = loop.train_step

    def recorded(*args, **kwargs):
        steps.append(real_step(*args, **kwargs))
        return steps[-1]

    monkeypatch.setattr(loop, "train_step", recorded)
    settings = LoraSettings(rank=4, alpha=8, dropout=0.1)  # rsLoRA on gate/up/down, the default
    config = TrainConfig(epochs=3, batch_size=3, lr=1e-2, warmup_ratio=0.2, max_grad_norm=0.5, regularizer="kl",
                         reg_lambda=1.0, seed=3)
    model = add_lora(make_tiny_llama(tokenizer, seed=1), settings, seed=config.seed)
    stats = train_adapter(model, tokenizer, EXAMPLES, config, progress=False)
    assert stats.steps == len(steps) == 6
    assert stats.epoch_losses == pytest.approx([(a[0] + b[0]) / 2 for a, b in zip(steps[::2], steps[1::2])])
    return steps


def test_the_tiny_model_trains_along_the_pinned_curve(smollm2_tokenizer, monkeypatch):
    """Per-step losses of a fixed, seeded LoRA run (dropout, warmup, clipping and the KL regularizer on)
    match the pinned ones to 1e-4 (KL: 1e-6 absolute): a change to the loss, the batching, the optimizer, the schedule or the
    random draws shows here even where the behavioural tests still pass.

    Re-pin after an intended change: run this file with ``KNOWPACK_REPIN=1`` (the test prints the new
    values and fails), check on a second run that they repeat, paste them into ``PINNED`` and say in the
    commit why the curve moved. A torch upgrade may move the last digits; the tolerance allows that.
    """
    steps = _curve(smollm2_tokenizer, monkeypatch)
    if os.environ.get("KNOWPACK_REPIN") or not PINNED:
        pytest.fail("new curve, paste into PINNED:\n" + "\n".join(f"    {tuple(step)!r}," for step in steps))
    assert steps == [pytest.approx(step, rel=1e-4, abs=1e-6) for step in PINNED]

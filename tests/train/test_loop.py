"""The train loop: gradient accumulation, per-epoch checkpoints and resume, divergence, tracking."""

import importlib.util

import pytest
import torch

from conftest import make_tiny_llama
from knowpack.config import LoraSettings, TrainConfig
from knowpack.errors import KnowpackError
from knowpack.train import Checkpoints, add_lora, train_adapter, trainable_model
from knowpack.train.data import IGNORE, encode_example
from knowpack.train.loop import base_hidden_cache
from knowpack.train.mixture import TrainExample

EXAMPLES = [TrainExample(fact_id=str(i), kind="unknown", question=f"What is the capital of S{i}?",
                         answer=f"City{i}" + "x" * (i % 3)) for i in range(6)]
SETTINGS = LoraSettings(rank=4, alpha=8, dropout=0.1, target_modules=["all-linear"])


def _adapter(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _assert_same_adapter(model, other, rel: float = 1e-4) -> None:
    """The trained weights as one vector agree to ``rel``: float rounding differs between two ways of
    computing the same step (single attention-gradient entries cancel large terms), so not per entry."""
    ours, theirs = (torch.cat([w.flatten() for w in _adapter(m).values()]) for m in (model, other))
    assert (ours - theirs).norm() <= rel * theirs.norm(), float((ours - theirs).norm() / theirs.norm())


def _train(tok, config, settings=SETTINGS, **kwargs):
    model = add_lora(make_tiny_llama(tok), settings, seed=config.seed)
    stats = train_adapter(model, tok, EXAMPLES, config, progress=False, **kwargs)
    return model, stats


def test_gradient_accumulation_gives_the_same_adapter(smollm2_tokenizer):
    """batch_size examples per step, split into micro-batches: same steps, same weights (float noise;
    without dropout, whose random masks are drawn per micro-batch)."""
    config = TrainConfig(epochs=2, batch_size=6, lr=1e-2, regularizer="mask-target")
    no_dropout = SETTINGS.model_copy(update={"dropout": 0.0})
    whole, whole_stats = _train(smollm2_tokenizer, config.model_copy(update={"grad_accum_steps": 1}), no_dropout)
    split, split_stats = _train(smollm2_tokenizer, config.model_copy(update={"grad_accum_steps": 4}), no_dropout)
    assert whole_stats.steps == split_stats.steps == 2
    assert split_stats.epoch_losses == pytest.approx(whole_stats.epoch_losses, rel=1e-5)
    _assert_same_adapter(split, whole)


def test_cached_base_hidden_states_train_like_a_base_forward_every_step(smollm2_tokenizer):
    config = TrainConfig(epochs=2, batch_size=3, lr=1e-2, regularizer="kl", reg_lambda=5.0)
    no_dropout = SETTINGS.model_copy(update={"dropout": 0.0})
    cached, cached_stats = _train(smollm2_tokenizer, config, no_dropout)
    recomputed, stats = _train(smollm2_tokenizer, config.model_copy(update={"base_cache_mb": 0}), no_dropout)
    assert cached_stats.epoch_losses == pytest.approx(stats.epoch_losses, rel=1e-5)
    _assert_same_adapter(cached, recomputed)
    encoded = [encode_example(smollm2_tokenizer, ex) for ex in EXAMPLES]
    cache = base_hidden_cache(cached, encoded, config, smollm2_tokenizer.pad_token_id, cached.device)
    assert [len(hidden) for hidden in cache] == [sum(x != IGNORE for x in labels[1:]) for _, labels in encoded]
    assert base_hidden_cache(cached, encoded, config.model_copy(update={"base_cache_mb": 0}), 0, cached.device) is None


class Interrupt(Exception):
    pass


def test_a_run_stopped_after_an_epoch_resumes_to_the_same_result(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    config = TrainConfig(epochs=3, batch_size=3, lr=1e-2, warmup_ratio=0.2, regularizer="kl")
    score = lambda epoch, model: float(epoch) / 10  # noqa: E731 - what the pipeline's reliability would be
    reference, reference_stats = _train(tok, config, on_epoch_end=score)

    def stop_in_second_epoch(epoch, model):
        if epoch == 1:  # epoch 2 trained, its checkpoint not yet written: resume from epoch 1
            raise Interrupt
        return score(epoch, model)

    checkpoints = Checkpoints(tmp_path / "checkpoints", key="same-settings")
    with pytest.raises(Interrupt):
        _train(tok, config, on_epoch_end=stop_in_second_epoch, checkpoints=checkpoints)
    assert [p.name for p in checkpoints.folder.iterdir()] == ["epoch-1"]
    assert Checkpoints(checkpoints.folder, key="other-settings").latest() is None  # never resumed from

    resumed, stats = _train(tok, config, on_epoch_end=score, checkpoints=checkpoints)
    assert stats.resumed_from_epoch == 1 and stats.steps == reference_stats.steps == 6
    assert stats.epoch_losses == reference_stats.epoch_losses
    assert stats.epoch_scores == reference_stats.epoch_scores == [0.0, 0.1, 0.2]
    for name, weight in _adapter(reference).items():
        assert torch.equal(_adapter(resumed)[name], weight), name
    assert [p.name for p in checkpoints.folder.iterdir()] == ["epoch-3"]  # only the latest is kept


@pytest.mark.parametrize("lr,warmup,message", [
    (100.0, 0.5, r"train: the loss reached [\d.e+]+ \(> train.max_loss=1000\) at step 3 of 8 \(epoch 2 of 4\); "
                 r"training stopped without applying that step and the last good checkpoint \(epoch 1\) is kept in "
                 r".*checkpoints; lower train.lr \(now 100, e.g. train.lr=10\) and rerun"),
    (1e37, 0.0, r"train: the (loss|gradient norm) became (nan|inf) at step 2 of 8 \(epoch 1 of 4\); .* no epoch had "
                r"finished, so there is no checkpoint; lower train.lr"),
])
def test_an_exploding_loss_stops_with_one_line(smollm2_tokenizer, tmp_path, lr, warmup, message):
    """A full fine-tune at an absurd learning rate really diverges; the bad step is never applied."""
    config = TrainConfig(epochs=4, batch_size=2, lr=lr, warmup_ratio=warmup, method="full")
    model = trainable_model(make_tiny_llama(smollm2_tokenizer), SETTINGS, config)
    with pytest.raises(KnowpackError, match=message):
        train_adapter(model, smollm2_tokenizer, EXAMPLES[:4], config, progress=False,
                      checkpoints=Checkpoints(tmp_path / "checkpoints", key="k"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_tensorboard_logs_every_step(smollm2_tokenizer, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, stats = _train(smollm2_tokenizer, TrainConfig(epochs=2, batch_size=3, report_to="tensorboard"),
                      log_dir=tmp_path / "tb", on_epoch_end=lambda epoch, model: 0.5)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train/loss", "train/ce", "train/lr", "train/grad_norm", "train/epoch_loss",
            "train/epoch_score"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/ce")] == [1, 2, 3, 4]
    assert [e.value for e in events.Scalars("train/epoch_loss")] == pytest.approx(stats.epoch_losses)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_tracker_that_is_not_installed_is_one_line(smollm2_tokenizer):
    from knowpack.train import check_train_settings

    with pytest.raises(KnowpackError, match=r"train.report_to=wandb: the package wandb is not installed; "
                                            r"pip install wandb \(or set train.report_to=none\)"):
        check_train_settings(SETTINGS, TrainConfig(report_to="wandb"))

"""The training loop: AdamW over LoRA parameters with answer-token cross-entropy and a regularizer.

In:  a `PeftModel`, a tokenizer, `TrainExample`s, a `TrainConfig`, an optional per-epoch callback.
Out: `TrainStats` (steps, tokens, seconds, tokens/s, peak memory, final loss, per-epoch losses).

`train_step` is the whole step, top to bottom: adapted forward, base forward (same weights, adapter
disabled, no grad) only when a regularizer needs it, chunked losses on the trained positions,
backward, clip, optimizer and schedule step.
"""

from __future__ import annotations

import math
import random
import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from rich.progress import Progress
from transformers import get_linear_schedule_with_warmup

from knowpack.config import TrainConfig
from knowpack.errors import KnowpackError
from knowpack.train.data import IGNORE, Batch, encode_example, length_grouped_batches
from knowpack.train.losses import chunked_losses
from knowpack.train.mixture import TrainExample


@dataclass
class TrainStats:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    final_loss: float = float("nan")
    epoch_losses: list[float] = field(default_factory=list)


def _output_head(causal_lm) -> Callable[[torch.Tensor], torch.Tensor]:
    head = causal_lm.get_output_embeddings()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if not softcap:
        return head
    return lambda hidden: torch.tanh(head(hidden) / softcap) * softcap


def _trained_hidden(decoder, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states at positions that predict a trained token: ([N, H], gold [N])."""
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    # Position t predicts token t+1: shift labels left by one.
    gold = batch.labels[:, 1:]
    keep = gold != IGNORE  # [B, T-1]
    return hidden[:, :-1][keep], gold[keep]


def train_step(model, batch: Batch, optimizer, scheduler, config: TrainConfig) -> tuple[float, float]:
    """One optimizer step; returns (cross-entropy, regularizer)."""
    causal_lm = model.get_base_model()
    decoder, head = causal_lm.get_decoder(), _output_head(causal_lm)
    model.train()
    adapted_hidden, gold = _trained_hidden(decoder, batch)
    base_hidden = None
    if config.regularizer != "none" and config.reg_lambda > 0:
        with torch.no_grad(), model.disable_adapter():
            base_hidden, _ = _trained_hidden(decoder, batch)
    ce, reg = chunked_losses(head, adapted_hidden, gold, base_hidden, config.regularizer, config.reg_direction)
    loss = ce + config.reg_lambda * reg
    if not torch.isfinite(loss):
        raise KnowpackError(f"train: the loss became {loss.item()} (not finite); lower train.lr "
                            f"(now {config.lr}) or train.reg_lambda")
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return ce.item(), reg.item()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_adapter(model, tokenizer, examples: Sequence[TrainExample], config: TrainConfig, *,
                  on_epoch_end: Callable[[int, object], None] | None = None,
                  progress: bool = True) -> TrainStats:
    """Train the adapter of ``model`` (a PeftModel) in place."""
    if not examples:
        raise KnowpackError("train: the train set is empty; raise mixture.n_unknown")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    encoded = [encode_example(tokenizer, ex, config.loss_on) for ex in examples]
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    device = model.device
    stats = TrainStats()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("training", total=total_steps)
        for epoch in range(config.epochs):
            epoch_loss = 0.0
            start = time.perf_counter()  # per-epoch evaluation below is not training time
            for batch in length_grouped_batches(encoded, config.batch_size, tokenizer.pad_token_id, rng):
                batch = Batch(batch.input_ids.to(device), batch.attention_mask.to(device), batch.labels.to(device))
                ce, _ = train_step(model, batch, optimizer, scheduler, config)
                epoch_loss += ce
                stats.steps += 1
                stats.tokens += int(batch.attention_mask.sum())
                bar.update(task, advance=1, description=f"training (epoch {epoch + 1}, loss {ce:.3f})")
            stats.seconds += time.perf_counter() - start
            stats.epoch_losses.append(epoch_loss / steps_per_epoch)
            if on_epoch_end is not None:
                model.eval()
                on_epoch_end(epoch, model)
    model.eval()
    stats.tokens_per_s = stats.tokens / stats.seconds if stats.seconds else 0.0
    stats.peak_memory_mb = _peak_memory_mb(device)
    stats.final_loss = stats.epoch_losses[-1]
    return stats

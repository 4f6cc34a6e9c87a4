"""The training loop: AdamW over the trainable weights with answer-token cross-entropy and a regularizer.

In:  a `PeftModel` (or a `FullFinetune`), a tokenizer, `TrainExample`s, a `TrainConfig`, optionally a
     per-epoch callback, a `Checkpoints` folder (resume + per-epoch checkpoints) and a log folder.
Out: `TrainStats` (steps, tokens, seconds, tokens/s, peak memory, final loss, per-epoch losses and
     callback scores).

`train_step` is the whole step, top to bottom: for each micro-batch, adapted forward, base hidden
states when a regularizer needs them (cached once before training, or a base forward: same weights,
adapter disabled, no grad), chunked losses on the trained positions, backward; then clip, check for
divergence, optimizer and schedule step.
Checkpointing, logging and timing live in `train_adapter` around it.

Several processes (``accelerate launch``): each takes its share of every step's micro-batches and
the gradients are summed across processes before the step, so the result equals one process's.
"""

from __future__ import annotations

import math
import os
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from rich.progress import Progress
from transformers import get_linear_schedule_with_warmup

from knowpack.config import TrainConfig
from knowpack.errors import KnowpackError
from knowpack.train.checkpoint import Checkpoints
from knowpack.train.data import IGNORE, Batch, Row, collate, encode_example, length_grouped_batches, micro_batches
from knowpack.lm.training import shared_prefix_length, trained_hidden
from knowpack.train.losses import chunked_losses
from knowpack.train.mixture import TrainExample
from knowpack.train.tracking import open_tracker


@dataclass
class TrainStats:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    final_loss: float = float("nan")
    epoch_losses: list[float] = field(default_factory=list)
    epoch_scores: list[float] = field(default_factory=list)  # what on_epoch_end returned (e.g. reliability)
    resumed_from_epoch: int = 0  # epochs restored from a checkpoint (0: trained from the start)


class Diverged(Exception):
    """The step's loss or gradient is not usable; nothing was applied."""


def _output_head(causal_lm) -> Callable[[torch.Tensor], torch.Tensor]:
    head = causal_lm.get_output_embeddings()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if not softcap:
        return head
    return lambda hidden: torch.tanh(head(hidden) / softcap) * softcap


def _base_output_head(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The base model's head (differs from the adapted one when the head is adapted or fully tuned)."""
    def head(hidden: torch.Tensor) -> torch.Tensor:
        with model.disable_adapter():
            return _output_head(model.get_base_model())(hidden)
    return head


def trained_positions(batch: Batch) -> int:
    return int((batch.labels[:, 1:] != IGNORE).sum())


def train_step(model, batches: Sequence[Batch], optimizer, scheduler, config: TrainConfig, *,
               total_positions: int | None = None, shared: int = 0) -> tuple[float, float, float]:
    """One optimizer step over ``batches`` (the micro-batches of one batch); returns the step's
    (cross-entropy, regularizer, gradient norm). Raises `Diverged`, applying nothing, when the loss
    or gradient is not finite or the loss exceeds ``config.max_loss``.

    ``total_positions``: trained positions of the whole step when other processes hold part of it;
    ``shared``: leading tokens common to every row, encoded once per micro-batch (`knowpack.lm.training`).
    """
    causal_lm = model.get_base_model()
    decoder, head = causal_lm.get_decoder(), _output_head(causal_lm)
    regularize = config.regularizer != "none" and config.reg_lambda > 0
    total = total_positions or sum(trained_positions(b) for b in batches)
    model.train()
    losses = torch.zeros(2)  # [cross-entropy, regularizer] of the step
    for batch in batches:
        adapted_hidden, gold = trained_hidden(decoder, batch, shared)  # [N, H], [N]
        base_hidden = batch.base_hidden  # cached once for all epochs (`base_hidden_cache`), if it fit
        if regularize and base_hidden is None:
            with torch.no_grad(), model.disable_adapter():
                base_hidden, _ = trained_hidden(model.get_base_model().get_decoder(), batch, shared)
        ce, reg = chunked_losses(head, adapted_hidden, gold, base_hidden, config.regularizer, config.reg_direction,
                                 base_head=_base_output_head(model) if regularize else None)
        # Losses are means over a micro-batch's positions; weighting each by its share of the step's
        # positions makes the gradient the whole batch's mean, however the batch is split.
        share = gold.numel() / total
        ((ce + config.reg_lambda * reg) * share).backward()
        losses += torch.stack([ce.detach(), reg.detach()]).float().cpu() * share
    params = [p for p in model.parameters() if p.requires_grad]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        losses = _sum_across_processes(params, losses)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    loss = float(losses[0] + config.reg_lambda * losses[1])
    if not math.isfinite(loss) or not torch.isfinite(grad_norm) or loss > config.max_loss:
        optimizer.zero_grad(set_to_none=True)
        what = (f"the loss became {loss:.4g}" if not math.isfinite(loss) else
                f"the gradient norm became {float(grad_norm)}" if not torch.isfinite(grad_norm) else
                f"the loss reached {loss:.4g} (> train.max_loss={config.max_loss:g})")
        raise Diverged(what)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(losses[0]), float(losses[1]), float(grad_norm)


def _sum_across_processes(params: list[torch.nn.Parameter], losses: torch.Tensor) -> torch.Tensor:
    """Sum gradients (each process weighted its part by the step's positions) and losses over processes."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:  # a process without a micro-batch in this step still joins the sum
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    losses = losses.to(params[0].device)
    dist.all_reduce(losses)
    return losses.cpu()


def base_hidden_cache(model, encoded: Sequence[Row], config: TrainConfig, pad_id: int,
                      device: torch.device) -> list[torch.Tensor] | None:
    """The base model's hidden states at each example's trained positions ([n_i, H] each), or None.

    The base never changes while the adapter trains, so a regularizer needs its hidden states only
    once, not a base forward pass every step. Computed with the adapter disabled and the model in
    eval mode (the base's own distribution), when they fit in ``config.base_cache_mb``.
    """
    if config.regularizer == "none" or config.reg_lambda == 0:
        return None
    head = model.get_base_model().get_output_embeddings().weight  # [V, H]
    positions = sum(sum(label != IGNORE for label in labels[1:]) for _, labels in encoded)
    if positions * head.shape[1] * head.element_size() > config.base_cache_mb * 2**20:
        return None
    cache: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        decoder = model.get_base_model().get_decoder()
        for start in range(0, len(by_length), config.batch_size):
            rows = by_length[start:start + config.batch_size]
            batch = collate([encoded[i] for i in rows], pad_id).to(device)
            hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             use_cache=False).last_hidden_state  # [B, T, H]
            keep = batch.labels[:, 1:] != IGNORE  # [B, T-1]
            for row, index in enumerate(rows):
                cache[index] = hidden[row, :-1][keep[row]]  # [n_i, H]
    return cache


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _processes() -> tuple[int, int]:
    """(rank, world size): several under ``accelerate launch`` / torchrun, else (0, 1)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            from accelerate import PartialState

            PartialState()  # joins the process group the launcher set up (nccl on GPUs, gloo on CPU)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_adapter(model, tokenizer, examples: Sequence[TrainExample], config: TrainConfig, *,
                  on_epoch_end: Callable[[int, object], float | None] | None = None,
                  progress: bool = True, checkpoints: Checkpoints | None = None,
                  log_dir=None) -> TrainStats:
    """Train the trainable weights of ``model`` (a PeftModel or FullFinetune) in place.

    ``on_epoch_end(epoch, model)`` runs after each epoch (model in eval mode); a number it returns is
    kept in ``stats.epoch_scores``. With ``checkpoints``, training resumes from the latest checkpoint
    made with the same key and writes one after every epoch (the caller removes them when done).
    """
    if not examples:
        raise KnowpackError("train: the train set is empty; raise mixture.n_unknown")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)  # batch order
    rank, world = _processes()
    encoded = [encode_example(tokenizer, ex, config.loss_on) for ex in examples]
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    device = _process_device(model, rank, world)
    optimizer, scheduler = _optimizer(model, config, total_steps)
    stats = TrainStats()
    restored = checkpoints.restore(model, optimizer, scheduler, rng) if checkpoints else None
    if restored is not None:
        stats = TrainStats(**{**restored[1], "resumed_from_epoch": restored[0]})
    tracker = open_tracker(config.report_to if rank == 0 else "none", log_dir, config.model_dump())
    start = time.perf_counter()
    base_cache, shared = _precompute(model, encoded, config, tokenizer.pad_token_id, device,
                                     needed=stats.resumed_from_epoch < config.epochs)
    stats.seconds += time.perf_counter() - start
    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("training", total=total_steps, completed=stats.steps)
            for epoch in range(stats.resumed_from_epoch, config.epochs):
                epoch_loss = 0.0
                start = time.perf_counter()  # per-epoch evaluation below is not training time
                for batch in length_grouped_batches(encoded, config.batch_size, rng):
                    batches = [b.to(device) for b in micro_batches(encoded, batch, config.grad_accum_steps * world,
                                                                   tokenizer.pad_token_id, base_cache)]
                    try:
                        ce, reg, grad_norm = train_step(model, batches[rank::world], optimizer, scheduler, config,
                                                        total_positions=sum(map(trained_positions, batches)),
                                                        shared=shared)
                    except Diverged as err:
                        raise _diverged_error(err, stats.steps + 1, total_steps, epoch, config, checkpoints) from None
                    epoch_loss += ce
                    stats.steps += 1
                    stats.tokens += sum(int(b.attention_mask.sum()) for b in batches)
                    tracker.log(stats.steps, {"loss": ce + config.reg_lambda * reg, "ce": ce, "reg": reg,
                                              "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm})
                    bar.update(task, advance=1, description=f"training (epoch {epoch + 1}, loss {ce:.3f})")
                stats.seconds += time.perf_counter() - start
                stats.epoch_losses.append(epoch_loss / steps_per_epoch)
                _score_epoch(epoch, model, stats, on_epoch_end, tracker)
                if checkpoints is not None and rank == 0:
                    checkpoints.save(epoch + 1, model, optimizer, scheduler, rng,
                                     {k: v for k, v in asdict(stats).items() if k != "resumed_from_epoch"})
    finally:
        tracker.close()
    model.eval()
    return _finished(stats, device)


def _finished(stats: TrainStats, device: torch.device) -> TrainStats:
    """``stats`` with the whole training's throughput, peak memory and final loss filled in."""
    stats.tokens_per_s = stats.tokens / stats.seconds if stats.seconds else 0.0
    stats.peak_memory_mb = _peak_memory_mb(device)
    stats.final_loss = stats.epoch_losses[-1]
    return stats


def _process_device(model, rank: int, world: int) -> torch.device:
    """The device this process trains on: with several processes on GPUs, one GPU each."""
    device = model.device
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        model.to(device)
    return device


def _optimizer(model, config: TrainConfig, total_steps: int):
    """AdamW over the trainable weights, with a linear schedule after ``train.warmup_ratio`` of warm-up."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)


def _score_epoch(epoch: int, model, stats: TrainStats, on_epoch_end, tracker) -> None:
    """After an epoch: ``on_epoch_end``'s score (model in eval mode) kept in ``stats``, the epoch logged."""
    values = {"epoch_loss": stats.epoch_losses[-1]}
    if on_epoch_end is not None:
        model.eval()
        score = on_epoch_end(epoch, model)
        if score is not None:
            stats.epoch_scores.append(float(score))
            values["epoch_score"] = float(score)
    tracker.log(stats.steps, values)


def _precompute(model, encoded: Sequence[Row], config: TrainConfig, pad_id: int, device: torch.device,
                needed: bool) -> tuple[list[torch.Tensor] | None, int]:
    """What every step reuses: the base hidden states for a regularizer, the shared prefix length."""
    if not needed:
        return None, 0
    base_cache = base_hidden_cache(model, encoded, config, pad_id, device)
    shortest = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))[:config.batch_size]
    check_batch = collate([encoded[i] for i in shortest], pad_id).to(device)
    shared = shared_prefix_length(model, encoded, check_batch) if config.share_prefix else 0
    return base_cache, shared


def _diverged_error(err: Diverged, step: int, total_steps: int, epoch: int, config: TrainConfig,
                    checkpoints: Checkpoints | None) -> KnowpackError:
    latest = checkpoints.latest() if checkpoints else None
    kept = (f"the last good checkpoint (epoch {latest[0]}) is kept in {latest[1].parent}" if latest
            else "no epoch had finished, so there is no checkpoint")
    also = " or train.reg_lambda" if config.regularizer != "none" else ""
    return KnowpackError(f"train: {err} at step {step} of {total_steps} (epoch {epoch + 1} of {config.epochs}); "
                         f"training stopped without applying that step and {kept}; lower train.lr (now "
                         f"{config.lr:g}, e.g. train.lr={config.lr / 10:g}){also} and rerun")

"""Batched greedy or seeded sampled decoding on top of a shared, once-encoded prompt prefix.

In:  a model, the token ids of a prefix shared by every request (the few-shot exemplars; may be
     empty), the token ids of each request's own suffix (its question), stop ids and settings.
Out: the generated token ids per request, up to and including the first stop token.

Why not ``model.generate``: every question of a prompt set repeats the same few-shot prefix, which is
most of the prompt. The prefix runs once; the rows decode on top of it through `cache.extend`, read
through one shared copy (`prefix_attention`) where the model allows it, else copied into each row.
Rows leave the batch at their stop token, and when half have left the next requests are prefilled
and joined (continuous batching), so steps keep a full batch instead of a long tail of a few rows.
Greedy answers equal ``generate`` on each full prompt (tested; `bench/probe.py` at scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from knowpack.lm import eval_mode
from knowpack.lm.cache import (
    Past,
    can_reuse_cache,
    encode_prefix,
    extend,
    prefix_keys_values,
)
from knowpack.lm.prefix_attention import note_plain_path, shared_prefix_attention, supports_shared_prefix


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0


def next_tokens(logits: torch.Tensor, settings: DecodeSettings, generator: torch.Generator | None) -> torch.Tensor:
    """logits: [B, V] -> token ids [B] (argmax, or a seeded sample with temperature and top-k)."""
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / settings.temperature
    if settings.top_k > 0:
        kth = torch.topk(logits, min(settings.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    # Sampled on the CPU generator, so a seed gives the same tokens on every device.
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@dataclass
class _Rows:
    """Rows being decoded: their past, each row's newest token (not yet run) and its request index."""
    past: Past
    last_token: torch.Tensor  # [B]
    owner: list[int]

    def keep(self, index: list[int]) -> _Rows:
        return _Rows(self.past.select(index), self.last_token[index], [self.owner[i] for i in index])

    def join(self, other: _Rows) -> _Rows:
        if not self.owner:
            return other
        return _Rows(self.past.join(other.past), torch.cat([self.last_token, other.last_token]),
                     self.owner + other.owner)


def _decode(model, prefix: Past | None, shared: list | None, suffixes: list[list[int]], order: list[int],
            stop_ids: set[int], pad_id: int, settings: DecodeSettings, batch_size: int,
            progress: Callable[[int], None] | None) -> list[list[int]]:
    outputs: list[list[int]] = [[] for _ in suffixes]
    pending = list(reversed(order))  # pop() takes the next request in `order`
    generator = torch.Generator().manual_seed(settings.seed) if settings.do_sample else None
    prefix_len = int(prefix.lengths[0]) if prefix is not None else 0
    rows = _Rows(Past.empty(0), torch.zeros(0, dtype=torch.long), [])

    def record(new: _Rows, logits: torch.Tensor) -> _Rows:
        """Append each row's next token; rows at a stop token or the length limit leave."""
        new.last_token = next_tokens(logits[:, -1], settings, generator).cpu()
        keep = []
        for i, token in enumerate(new.last_token.tolist()):
            output = outputs[new.owner[i]]
            output.append(token)
            if token not in stop_ids and len(output) < settings.max_new_tokens:
                keep.append(i)
        if progress is not None and len(keep) < len(new.owner):
            progress(len(new.owner) - len(keep))
        return new if len(keep) == len(new.owner) else new.keep(keep)

    while pending or rows.owner:
        if pending and len(rows.owner) <= batch_size // 2:
            take = [pending.pop() for _ in range(min(batch_size - len(rows.owner), len(pending)))]
            if shared is not None:
                start = Past.empty(len(take), start=prefix_len)
            else:
                start = prefix.select([0] * len(take)) if prefix is not None else None
            logits, past = extend(model, start, [suffixes[i] for i in take], pad_id=pad_id, shared_prefix=shared)
            rows = rows.join(record(_Rows(past, torch.zeros(0), take), logits))
            continue
        logits, rows.past = extend(model, rows.past, rows.last_token[:, None].tolist(), pad_id=pad_id,
                                   shared_prefix=shared)
        rows = record(rows, logits)
    return outputs


def generate_with_prefix(model, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]], *,
                         stop_ids: set[int], pad_id: int, settings: DecodeSettings,
                         batch_size: int = 64, progress: Callable[[int], None] | None = None,
                         shared_prefix: bool = True) -> list[list[int]]:
    """Decode every suffix after the shared prefix; returns generated ids per suffix (stop token included).

    Requests run long-first so a batch's rows have similar lengths; results come back in input order.
    ``progress`` is an optional callable taking the number of requests just finished.
    ``shared_prefix`` reads one copy of the prefix through shared-prefix attention where the model
    supports it; False (or a model it does not fit) copies the prefix cache into every row instead.
    Models whose cache cannot be copied and joined row-wise (sliding windows) get the prefix
    prepended to every suffix: the same tokens, only slower. A model served by vLLM (`VllmModel`)
    decodes the same requests through its engine.
    """
    if hasattr(model, "generate_with_prefix"):  # served by vLLM: its engine decodes the same requests
        return model.generate_with_prefix(prefix_ids, suffixes, stop_ids=stop_ids, settings=settings,
                                          progress=progress)
    if settings.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {settings.max_new_tokens}")
    if not suffixes:
        return []
    suffixes = [list(s) for s in suffixes]
    order = sorted(range(len(suffixes)), key=lambda i: -len(suffixes[i]))
    if shared_prefix and prefix_ids:
        note_plain_path(model)
    with eval_mode(model), torch.no_grad():
        if not can_reuse_cache(model):
            whole = [list(prefix_ids) + s for s in suffixes]
            return _decode_full_prompts(model, whole, order, stop_ids, pad_id, settings, batch_size, progress)
        prefix = encode_prefix(model, prefix_ids)
        if shared_prefix and prefix is not None and supports_shared_prefix(model):
            with shared_prefix_attention(model):
                return _decode(model, prefix, prefix_keys_values(prefix), suffixes, order, stop_ids, pad_id,
                               settings, batch_size, progress)
        return _decode(model, prefix, None, suffixes, order, stop_ids, pad_id, settings, batch_size, progress)


def _decode_full_prompts(model, prompts: list[list[int]], order: list[int], stop_ids: set[int], pad_id: int,
                         settings: DecodeSettings, batch_size: int, progress) -> list[list[int]]:
    """Batches of whole left-padded prompts on the model's own cache, as ``generate`` runs them: for
    caches that cannot be copied or joined row-wise. Finished rows ride along until the batch ends."""
    generator = torch.Generator().manual_seed(settings.seed) if settings.do_sample else None
    outputs: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        logits, past = extend(model, None, [prompts[i] for i in chunk], pad_id=pad_id)
        running = set(range(len(chunk)))
        while True:
            tokens = next_tokens(logits[:, -1], settings, generator).cpu()
            for row in sorted(running):
                outputs[chunk[row]].append(int(tokens[row]))
                if int(tokens[row]) in stop_ids or len(outputs[chunk[row]]) >= settings.max_new_tokens:
                    running.discard(row)
            if not running:
                break
            logits, past = extend(model, past, tokens[:, None].tolist(), pad_id=pad_id)
        if progress is not None:
            progress(len(chunk))
    return outputs

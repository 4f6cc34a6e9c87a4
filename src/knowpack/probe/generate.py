"""Batched decoding on top of a shared, once-encoded prompt prefix.

In:  a model, the token ids of a prefix shared by every request (the few-shot exemplars), and the
     token ids of each request's own suffix (its question).
Out: the generated token ids per request, up to and including the first stop token.

Why not ``model.generate``: every question of a prompt set repeats the same few-shot prefix, which is
most of the prompt. We encode the prefix once, copy its key/value cache into each batch, and decode
only the suffixes. The batch layout is ``[prefix][left padding][suffix][generated]``; padding is masked
out and position ids are given explicitly, so every row sees exactly the positions it would see
without padding. Rows that hit a stop token leave the batch, so short answers cost nothing more.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from knowpack.hf_compat import cache_kwargs, output_cache
from knowpack.probe.prefix_attention import prefix_keys_values, shared_prefix_attention, supports_shared_prefix


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0


def _encode_prefix(model, prefix_ids: Sequence[int]):
    """The prefix's key/value cache for batch 1, or None for an empty prefix."""
    if not prefix_ids:
        return None
    ids = torch.tensor([list(prefix_ids)], device=model.device)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return output_cache(out)


def _next_tokens(logits: torch.Tensor, settings: DecodeSettings, generator: torch.Generator | None) -> torch.Tensor:
    """logits: [B, V] -> token ids [B]."""
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / settings.temperature
    if settings.top_k > 0:
        kth = torch.topk(logits, min(settings.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def _left_padded(suffixes: list[list[int]], prefix_len: int, pad_id: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, width] input ids left-padded so every row's last token sits in the last column, the mask of
    real tokens (bool) and position ids continuing after the prefix (pads get a dummy position)."""
    batch, width = len(suffixes), max(len(s) for s in suffixes)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    real = torch.zeros((batch, width), dtype=torch.bool)
    position_ids = torch.ones((batch, width), dtype=torch.long)
    for row, suffix in enumerate(suffixes):
        input_ids[row, width - len(suffix):] = torch.tensor(suffix)
        real[row, width - len(suffix):] = True
        position_ids[row, width - len(suffix):] = torch.arange(prefix_len, prefix_len + len(suffix))
    return input_ids, real, position_ids


def _decode_batch(model, prefix_cache, prefix_len: int, suffixes: list[list[int]], stop_ids: set[int],
                  pad_id: int, settings: DecodeSettings, generator: torch.Generator | None) -> list[list[int]]:
    device = model.device
    batch = len(suffixes)
    input_ids, suffix_mask, position_ids = _left_padded(suffixes, prefix_len, pad_id)
    # attention_mask covers [prefix | suffix]: [B, prefix_len + width].
    attention_mask = torch.cat([torch.ones((batch, prefix_len), dtype=torch.long), suffix_mask.long()], dim=1)
    cache = None
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(batch)
    next_position = torch.tensor([prefix_len + len(s) for s in suffixes])
    alive = torch.arange(batch)  # original row index of each row still decoding
    outputs: list[list[int]] = [[] for _ in range(batch)]
    step_ids, step_positions = input_ids, position_ids
    with torch.no_grad():
        for _ in range(settings.max_new_tokens):
            out = model(input_ids=step_ids.to(device), attention_mask=attention_mask.to(device),
                        position_ids=step_positions.to(device), **cache_kwargs(cache), use_cache=True,
                        logits_to_keep=1)
            cache = output_cache(out)
            tokens = _next_tokens(out.logits[:, -1, :], settings, generator).cpu()  # [B_alive]
            keep = []
            for i, token in enumerate(tokens.tolist()):
                outputs[alive[i]].append(token)
                if token not in stop_ids:
                    keep.append(i)
            if not keep:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep)
                cache.batch_select_indices(index.to(device))
                alive, tokens = alive[index], tokens[index]
                attention_mask, next_position = attention_mask[index], next_position[index]
            attention_mask = torch.cat([attention_mask, torch.ones((len(alive), 1), dtype=torch.long)], dim=1)
            step_ids, step_positions = tokens[:, None], next_position[:, None]
            next_position = next_position + 1
    return outputs


@dataclass
class _Rows:
    """Rows being decoded on top of a shared prefix; their cache holds only their own tokens."""
    cache: object                # DynamicCache, every layer [B, kv_heads, L, head_dim]
    own_mask: torch.Tensor       # [B, L] True where a row has a real token (rows are left-padded)
    next_position: torch.Tensor  # [B] position id of each row's next token (after the prefix)
    last_token: torch.Tensor     # [B] each row's newest token, not yet run through the model
    owner: list[int]             # index of each row's request


def _prefill(model, shared_prefix: list, prefix_len: int, suffixes: list[list[int]], owner: list[int],
             pad_id: int) -> tuple[torch.Tensor, _Rows]:
    """Run the rows' suffixes on top of the prefix: next-token logits [B, V] and the rows' state."""
    from transformers import DynamicCache

    batch, width = len(suffixes), max(len(s) for s in suffixes)
    input_ids, own_mask, position_ids = _left_padded(suffixes, prefix_len, pad_id)
    mask = own_mask[:, None, None, :] & torch.ones((width, width), dtype=torch.bool).tril()  # [B, 1, width, width]
    logits, cache = _run(model, input_ids, mask, position_ids, DynamicCache(), shared_prefix)
    next_position = torch.tensor([prefix_len + len(s) for s in suffixes])
    return logits, _Rows(cache, own_mask, next_position, torch.zeros(batch, dtype=torch.long), owner)


def _run(model, input_ids, mask, position_ids, cache, shared_prefix) -> tuple[torch.Tensor, object]:
    device = model.device
    out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
                **cache_kwargs(cache), use_cache=True, logits_to_keep=1, shared_prefix=shared_prefix)
    return out.logits[:, -1, :], output_cache(out)


def _join(a: _Rows | None, b: _Rows) -> _Rows:
    """One batch from two: the shorter cache is left-padded (masked) to the longer one's length."""
    from transformers import DynamicCache

    if a is None or not a.owner:
        return b
    length = max(a.own_mask.shape[1], b.own_mask.shape[1])

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:  # left-pad dimension `dim` with zeros up to `length`
        missing = length - t.shape[dim]
        if not missing:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    layers = [(torch.cat([pad(la.keys, 2), pad(lb.keys, 2)]), torch.cat([pad(la.values, 2), pad(lb.values, 2)]))
              for la, lb in zip(a.cache.layers, b.cache.layers)]
    return _Rows(DynamicCache(layers), torch.cat([pad(a.own_mask, 1), pad(b.own_mask, 1)]),
                 torch.cat([a.next_position, b.next_position]), torch.cat([a.last_token, b.last_token]),
                 a.owner + b.owner)


def _keep(rows: _Rows, keep: list[int]) -> _Rows:
    index = torch.tensor(keep, dtype=torch.long)
    rows.cache.batch_select_indices(index.to(rows.cache.layers[0].keys.device))
    return _Rows(rows.cache, rows.own_mask[index], rows.next_position[index], rows.last_token[index],
                 [rows.owner[i] for i in keep])


def _decode_shared(model, shared_prefix: list, prefix_len: int, suffixes: list[list[int]], order: list[int],
                   stop_ids: set[int], pad_id: int, settings: DecodeSettings, generator: torch.Generator | None,
                   batch_size: int, progress) -> list[list[int]]:
    """Continuous batching over one shared prefix: when half the rows have stopped, the next requests
    are prefilled and joined, so steps keep a full batch instead of a long tail of a few rows."""
    outputs: list[list[int]] = [[] for _ in suffixes]
    pending = list(reversed(order))  # pop() takes the next request in `order`
    rows: _Rows | None = None

    def record(new: _Rows, tokens: torch.Tensor) -> _Rows:
        keep = []
        for i, token in enumerate(tokens.tolist()):
            output = outputs[new.owner[i]]
            output.append(token)
            if token not in stop_ids and len(output) < settings.max_new_tokens:
                keep.append(i)
        if progress is not None and len(keep) < len(new.owner):
            progress(len(new.owner) - len(keep))
        new.last_token = tokens
        return new if len(keep) == len(new.owner) else _keep(new, keep)

    with torch.no_grad():
        while pending or (rows is not None and rows.owner):
            active = len(rows.owner) if rows is not None else 0
            if pending and active <= batch_size // 2:
                take = [pending.pop() for _ in range(min(batch_size - active, len(pending)))]
                logits, new = _prefill(model, shared_prefix, prefix_len, [suffixes[i] for i in take], take, pad_id)
                rows = _join(rows, record(new, _next_tokens(logits, settings, generator).cpu()))
                continue
            rows.own_mask = torch.cat([rows.own_mask, torch.ones((active, 1), dtype=torch.bool)], dim=1)
            logits, rows.cache = _run(model, rows.last_token[:, None], rows.own_mask[:, None, None, :],
                                      rows.next_position[:, None], rows.cache, shared_prefix)
            rows.next_position = rows.next_position + 1
            rows = record(rows, _next_tokens(logits, settings, generator).cpu())
    return outputs


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start:start + size]


def generate_with_prefix(model, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]], *,
                         stop_ids: set[int], pad_id: int, settings: DecodeSettings,
                         batch_size: int = 64, progress=None, shared_prefix: bool = True) -> list[list[int]]:
    """Decode every suffix after the shared prefix; returns generated ids per suffix (stop token included).

    Suffixes are batched by length (long first) so padding stays small; results come back in input order.
    ``progress`` is an optional callable taking the number of suffixes just finished.
    ``shared_prefix`` reads one copy of the prefix through shared-prefix attention where the model
    supports it (`prefix_attention`); False copies the prefix cache into every row instead.
    """
    prefix_cache = _encode_prefix(model, prefix_ids)
    generator = torch.Generator().manual_seed(settings.seed) if settings.do_sample else None
    order = sorted(range(len(suffixes)), key=lambda i: -len(suffixes[i]))
    results: list[list[int]] = [[] for _ in suffixes]
    if shared_prefix and prefix_cache is not None and supports_shared_prefix(model):
        with shared_prefix_attention(model):
            return _decode_shared(model, prefix_keys_values(prefix_cache), len(prefix_ids),
                                  [list(s) for s in suffixes], order, stop_ids, pad_id, settings, generator,
                                  batch_size, progress)
    for chunk in _batches(order, batch_size):
        decoded = _decode_batch(model, prefix_cache, len(prefix_ids), [list(suffixes[i]) for i in chunk],
                                stop_ids, pad_id, settings, generator)
        for i, tokens in zip(chunk, decoded):
            results[i] = tokens
        if progress is not None:
            progress(len(chunk))
    return results

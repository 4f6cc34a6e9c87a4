"""Rows on top of their keys/values: the one forward step decoding and scoring are built from.

In:  a causal LM, each row's `Past` (its cached keys/values, the mask over them, its length) and each
     row's new token ids.
Out: vocabulary logits of the last ``keep`` positions of every row and the grown `Past`.

Layout: new tokens are left-padded so every row's newest token sits in the last column (one slice
gives every row's next-token logits); pads are masked out and position ids are given explicitly, so
each row sees exactly the positions it would see alone, whatever padding its batch needed. A cache
may therefore hold masked holes (``[prefix][pads][row's tokens]``); they cost a little attention
work, never a different number.

Two ways to give many rows one shared prefix (the few-shot block):
- copied: the prefix's keys/values repeated into every row (`Past.select`) — works for any model
  whose cache is a plain growing one (`can_reuse_cache`);
- shared: one copy, read by every row through `prefix_attention` (``shared_prefix=``), where the
  model's attention allows it (`prefix_attention.supports_shared_prefix`). The rows' own caches then
  start empty at position P (`Past.empty(rows, start=P)`).

This is also the one place that speaks to transformers' key/value cache by name: transformers 5.24
renamed the forward argument and output field ``past_key_values`` to ``cache``; the old name still
works there but warns on every forward (FutureWarning, removal in 5.40). `CACHE_ARG` is the name the
installed version speaks, read off its output class rather than its version string.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

CACHE_ARG = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

# One [rows, tokens, vocab] float32 logits tensor of a measurement that keeps every position (forgetting,
# token shift) stays under this; they hold about five such tensors at once. A 262k-token vocabulary
# (Gemma 3) is five times SmolLM2's 49k, so the same batch would need five times the memory.
LOGITS_BUDGET_MB = 256


def cache_kwargs(cache) -> dict:
    """``{CACHE_ARG: cache}`` for a model call: ``model(input_ids=..., **cache_kwargs(cache))``."""
    return {CACHE_ARG: cache}


def output_cache(output):
    """The key/value cache a forward with ``use_cache=True`` returned."""
    return getattr(output, CACHE_ARG)


def causal_lm(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def can_reuse_cache(model) -> bool:
    """A cache can be extended, copied and joined row-wise: plain growing key/value layers only (no
    sliding windows, no recurrent state)."""
    try:
        layers = DynamicCache(config=causal_lm(model).config).layers
    except Exception:  # configs without cache metadata: callers fall back to full sequences
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def rows_within_budget(model, tokens_per_row: int, most: int) -> int:
    """Rows per batch (1 to ``most``) whose float32 logits over the vocabulary fit in `LOGITS_BUDGET_MB`."""
    row_bytes = max(tokens_per_row, 1) * causal_lm(model).config.vocab_size * 4
    return max(1, min(most, LOGITS_BUDGET_MB * 2**20 // row_bytes))


def _takes_logits_to_keep(model) -> bool:
    return _forward_takes_logits_to_keep(type(causal_lm(model)))  # PEFT passes kwargs on


@lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(model_class: type) -> bool:
    # Once per model class: `extend` runs on every decoding step, and inspect.signature is not free.
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


@dataclass
class Past:
    """What each batch row has already run: its keys/values, the mask over them, its length."""
    cache: DynamicCache | None  # every layer [B, kv_heads, K, head_dim]; None before the first step
    mask: torch.Tensor          # [B, K] bool, False at padding
    lengths: torch.Tensor       # [B] long: real tokens so far = the position id of the row's next token

    @classmethod
    def empty(cls, rows: int, start: int = 0) -> Past:
        """Rows with nothing cached that continue at position ``start`` (after a shared prefix)."""
        return cls(None, torch.zeros((rows, 0), dtype=torch.bool), torch.full((rows,), start, dtype=torch.long))

    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])

    def select(self, index: torch.Tensor | Sequence[int]) -> Past:
        """A copy whose row i is row ``index[i]`` of this one (repeats allowed: one prefix, many rows).
        A fresh cache object, since the model appends to the cache it is given."""
        index = torch.as_tensor(index, dtype=torch.long)
        cache = None
        if self.cache is not None:
            device = self.cache.layers[0].keys.device
            at = index.to(device)
            cache = DynamicCache([(layer.keys[at], layer.values[at]) for layer in self.cache.layers])
        return Past(cache, self.mask[index], self.lengths[index])

    def join(self, other: Past) -> Past:
        """Both sets of rows in one batch: the shorter cache is left-padded (masked) to the longer."""
        if not self.rows:
            return other
        if not other.rows:
            return self
        width = max(self.mask.shape[1], other.mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:  # left-pad dimension `dim` with zeros to `width`
            missing = width - t.shape[dim]
            if not missing:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        cache = None
        if self.cache is not None or other.cache is not None:
            if self.cache is None or other.cache is None:
                raise ValueError("cannot join rows with a cache to rows without one")
            cache = DynamicCache([(torch.cat([pad(a.keys, 2), pad(b.keys, 2)]),
                                   torch.cat([pad(a.values, 2), pad(b.values, 2)]))
                                  for a, b in zip(self.cache.layers, other.cache.layers)])
        return Past(cache, torch.cat([pad(self.mask, 1), pad(other.mask, 1)]),
                    torch.cat([self.lengths, other.lengths]))


def left_padded(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, W] ids with each row's last token in the last column, and the [B, W] bool mask of real tokens."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.as_tensor(row, dtype=torch.long)
            real[i, width - len(row):] = True
    return ids, real


def extend(model, past: Past | None, inputs: Sequence[Sequence[int]], *, keep: int = 1, pad_id: int = 0,
           shared_prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, Past]:
    """Run each row's new tokens on top of its past: (logits [B, keep, V] of the last ``keep`` columns, grown past).

    ``shared_prefix``: per-layer prefix keys/values read by every row (`prefix_attention`; the model
    must be switched to it with `shared_prefix_attention`); the rows' own past then excludes the prefix.
    """
    past = past if past is not None else Past.empty(len(inputs))
    ids, real = left_padded(inputs, pad_id)  # [B, W]
    width = ids.shape[1]
    # Row i's real tokens continue its own past: positions lengths_i, lengths_i + 1, ... (pads: anything).
    position_ids = (past.lengths[:, None] + real.long().cumsum(1) - 1).clamp(min=0)  # [B, W]
    mask = torch.cat([past.mask, real], dim=1)  # [B, K + W]
    if shared_prefix is not None:
        # The shared-prefix attention takes the full boolean mask over the rows' own keys: [B, 1, W, K + W].
        cached = past.mask.shape[1]
        causal = torch.ones((width, cached + width), dtype=torch.bool).tril(diagonal=cached)
        attention_mask = mask[:, None, None, :] & causal
        extra = {"shared_prefix": shared_prefix}
    else:
        attention_mask, extra = mask.long(), {}
    if _takes_logits_to_keep(model):
        extra["logits_to_keep"] = keep
    device = model.device
    out = model(input_ids=ids.to(device), attention_mask=attention_mask.to(device), position_ids=position_ids.to(device),
                **cache_kwargs(past.cache), use_cache=True, **extra)
    # Some models ignore logits_to_keep; slicing again is a no-op for the rest.
    return out.logits[:, -keep:], Past(output_cache(out), mask, past.lengths + real.sum(1))


def encode_prefix(model, prefix_ids: Sequence[int]) -> Past | None:
    """One row holding the prefix's keys/values (None for an empty prefix)."""
    if not prefix_ids:
        return None
    with torch.no_grad():
        return extend(model, None, [list(prefix_ids)])[1]


def prefix_keys_values(prefix: Past) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) [Hkv, P, d] of a one-row prefix, as `prefix_attention` reads them."""
    return [(layer.keys[0], layer.values[0]) for layer in prefix.cache.layers]

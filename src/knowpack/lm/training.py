"""The decoder's hidden states at the trained positions, with the prompt prefix every example shares
encoded once per micro-batch instead of once per row.

In:  a decoder (``causal_lm.get_decoder()``), a right-padded batch (``input_ids``, ``attention_mask``,
     ``labels`` [B, T], `IGNORE` where no loss; `knowpack.train.data.Batch`), the shared prefix length P.
Out: ``(hidden [N, H], gold [N])`` at the N positions whose next token carries the loss.

Every fact's prompt starts with the same tokens (system turn, "Question:"; ~40% of a fact's tokens).
Two exact ways to encode them once, chosen by size:
- packed (the batch's tokens ≤ `PACK_LIMIT`): one row ``prefix | suffix_1 | … | suffix_B`` with a
  4-D mask letting each suffix see the prefix and its own earlier tokens, and position ids that
  restart after the prefix: no padding and one pass through the layers;
- cached: the prefix alone, its keys/values repeated for the B suffixes (the packed mask's attention
  work grows with the square of the row, so larger batches use this).
`shared_prefix_length` checks both against a plain forward on the model at hand before they are used.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from knowpack.lm.cache import cache_kwargs, output_cache

IGNORE = -100  # label of positions without loss (PyTorch's cross-entropy convention)
Batch = Any    # knowpack.train.data.Batch: input_ids, attention_mask, labels [B, T]

PACK_LIMIT = 512  # tokens in one packed row; measured on CPU: packing wins at batch 8, ties at 16, loses at 32


def trained_hidden(decoder, batch: Batch, shared: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states at positions that predict a trained token: ([N, H], gold [N]), row by row."""
    hidden = hidden_states(decoder, batch, shared)  # [B, T, H]
    # Position t predicts token t+1: shift labels left by one.
    gold = batch.labels[:, 1:]
    keep = gold != IGNORE  # [B, T-1]
    return hidden[:, :-1][keep], gold[keep]


def hidden_states(decoder, batch: Batch, shared: int = 0, packed: bool | None = None) -> torch.Tensor:
    """[B, T, H] hidden states (padding positions hold anything); ``packed`` forces a layout."""
    if not shared:
        return decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       use_cache=False).last_hidden_state
    lengths = batch.attention_mask.sum(1)  # [B]
    if packed is None:
        packed = shared + int((lengths - shared).sum()) <= PACK_LIMIT
    return _packed(decoder, batch, shared, lengths) if packed else _cached(decoder, batch, shared)


def _packed(decoder, batch: Batch, shared: int, lengths: torch.Tensor) -> torch.Tensor:
    rows, width = batch.input_ids.shape
    device = batch.input_ids.device
    suffix = batch.attention_mask.bool() & (torch.arange(width, device=device) >= shared)  # [B, T]
    ids = torch.cat([batch.input_ids[0, :shared], batch.input_ids[suffix]])[None]  # [1, L]
    positions = torch.arange(width, device=device).expand(rows, -1)
    position_ids = torch.cat([positions[0, :shared], positions[suffix]])[None]  # [1, L]
    owner = torch.cat([torch.full((shared,), -1, device=device),  # -1: the prefix, seen by every row
                       torch.arange(rows, device=device).repeat_interleave(lengths - shared)])
    index = torch.arange(ids.shape[1], device=device)
    sees = (index[None, :] <= index[:, None]) & ((owner[None, :] == -1) | (owner[None, :] == owner[:, None]))
    hidden = decoder(input_ids=ids, attention_mask=sees[None, None], position_ids=position_ids,
                     use_cache=False).last_hidden_state[0]  # [L, H]
    # Row r's token t sits at t (prefix) or at its suffix's start + t - P in the packed row.
    starts = shared + torch.cumsum(lengths - shared, 0) - (lengths - shared)  # [B]
    where = torch.where(positions < shared, positions, starts[:, None] + positions - shared)
    return hidden[where.clamp(max=ids.shape[1] - 1)]  # [B, T, H]


def _cached(decoder, batch: Batch, shared: int) -> torch.Tensor:
    rows = batch.input_ids.shape[0]
    prefix = decoder(input_ids=batch.input_ids[:1, :shared], use_cache=True)  # [1, P, H]
    cache = output_cache(prefix)
    cache.batch_repeat_interleave(rows)
    rest = decoder(input_ids=batch.input_ids[:, shared:], attention_mask=batch.attention_mask,
                   **cache_kwargs(cache), use_cache=True).last_hidden_state  # [B, T-P, H]
    return torch.cat([prefix.last_hidden_state.expand(rows, -1, -1), rest], dim=1)  # [B, T, H]


def shared_prefix_length(model, encoded: Sequence[tuple[list[int], list[int]]], batch: Batch) -> int:
    """Length of the token prefix all examples share, if both ways of encoding it once give this
    model's hidden states (checked on ``batch``, adapter active, eval mode); else 0."""
    shared = len(os.path.commonprefix([ids for ids, _ in encoded]))
    shared = min(shared, min(len(ids) for ids, _ in encoded) - 1)
    if shared < 2:
        return 0
    decoder = model.get_base_model().get_decoder()
    model.eval()
    try:
        with torch.no_grad():
            plain, _ = trained_hidden(decoder, batch)
            checked = [hidden_states(decoder, batch, shared, packed) for packed in (True, False)]
    except (TypeError, ValueError, AttributeError, RuntimeError, IndexError):  # an architecture without these paths
        return 0
    keep = batch.labels[:, 1:] != IGNORE
    # Rounding differs between the paths (more in half precision); a wrong path differs by O(1).
    tolerance = (1e-4 if plain.dtype == torch.float32 else 2e-2) * float(plain.abs().max())
    close = all(float((hidden[:, :-1][keep] - plain).abs().max()) <= tolerance for hidden in checked)
    return shared if close else 0

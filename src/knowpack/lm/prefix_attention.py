"""Shared-prefix attention (Hydragen, Juravsky et al. 2024): one copy of the few-shot prefix's keys/values.

In:  query / key / value of the rows being decoded (their own tokens only) and, through the forward
     call's ``shared_prefix`` keyword (`cache.extend(..., shared_prefix=)`), the prefix's per-layer keys and values ``[kv_heads, P, head_dim]``.
Out: the attention output over [prefix | row's own tokens], as if each row's cache held the prefix.

Why: with the prefix copied into every row's cache, each decoding step reads B copies of it and
`DynamicCache` re-concatenates all of them; here every step reads the prefix once, as one matrix
product for all rows (matrix-matrix instead of B matrix-vector products), and the cache holds only
the rows' own tokens. Each block is attended on its own (`partial_attention`: a fused kernel on CPU) and
the two are joined by their softmax normalisers (log-sum-exp), as one softmax over both: exact up to float
rounding.

Registered with transformers' `AttentionInterface` under `NAME`; `shared_prefix_attention(model)` switches
a model to it for a block and back. Models it does not fit (sliding windows, soft-capping, attention
without ``layer_idx``) keep the plain path: see `supports_shared_prefix`; `note_plain_path` logs why,
once per process and model class, in the words of the model's config (the CLI prints it as a ``note:``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch

from knowpack.lm.cache import can_reuse_cache, causal_lm

NAME = "knowpack_shared_prefix"
SUPPORTED_BASES = ("sdpa", "eager")

_log = logging.getLogger(__name__)
_noted: set[str] = set()  # reasons already logged in this process


def shared_prefix_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None = None,
                          dropout: float = 0.0, shared_prefix=None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, Hq, q, d]; key, value [B, Hkv, S, d]; attention_mask [B, 1, q, S] bool (True = see)."""
    batch, q_heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = q_heads // kv_heads  # query head h reads kv head h // groups (transformers' repeat_kv order)
    scaling = dim ** -0.5 if scaling is None else scaling
    rows = groups * q_len
    grouped = query.reshape(batch, kv_heads, rows, dim)                      # [B, Hkv, g·q, d]
    see = None
    if attention_mask is not None:
        see = attention_mask[:, :, None].expand(batch, 1, groups, q_len, key.shape[2]).reshape(batch, 1, rows, -1)
    own, own_lse = partial_attention(grouped, key, value, see, scaling)     # [B, Hkv, g·q, d], [B, Hkv, g·q]
    prefix_keys, prefix_values = shared_prefix[module.layer_idx]             # [Hkv, P, d] each
    # Every row and query head of a kv head against the prefix in one product: [Hkv, B·g·q, P].
    flat = grouped.transpose(0, 1).reshape(1, kv_heads, batch * rows, dim)
    prefix, prefix_lse = partial_attention(flat, prefix_keys[None], prefix_values[None], None, scaling)
    prefix = prefix[0].view(kv_heads, batch, rows, dim).transpose(0, 1)      # [B, Hkv, g·q, d]
    prefix_lse = prefix_lse[0].view(kv_heads, batch, rows).transpose(0, 1)  # [B, Hkv, g·q]
    # One softmax over [prefix | own]: each part's weight is its share of the joint normaliser.
    top = torch.maximum(prefix_lse, own_lse)
    prefix_weight, own_weight = torch.exp(prefix_lse - top)[..., None], torch.exp(own_lse - top)[..., None]
    out = ((prefix * prefix_weight + own * own_weight) / (prefix_weight + own_weight)).to(query.dtype)
    return out.reshape(batch, q_heads, q_len, dim).transpose(1, 2).contiguous(), None  # [B, q, Hq, d]


def partial_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, see: torch.Tensor | None,
                      scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of query [B, H, L, d] over key/value [B, H, S, d] (``see`` [B, 1, L, S] bool, True =
    attend), and the log of each query's softmax normaliser [B, H, L]; a query that sees nothing gets -inf.

    On CPU it is PyTorch's fused flash-attention kernel, which returns that log-sum-exp (no [L, S] score
    matrix written, no separate exp pass): measured 1.7× the plain matrix products and softmax for a
    16 × 300 × 100 block on one core. Elsewhere (CUDA, or a PyTorch without the kernel) the plain way.
    """
    flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if flash is not None and query.device.type == "cpu" and query.dtype in (torch.float32, torch.bfloat16):
        bias = None if see is None else torch.zeros(see.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~see, float("-inf"))
        out, lse = flash(query, key, value, 0.0, False, attn_mask=bias, scale=scaling)
        lse = lse.float()
    else:
        scores = (query @ key.transpose(-1, -2)).to(torch.promote_types(query.dtype, torch.float32)) * scaling
        if see is not None:
            scores = scores.masked_fill(~see, float("-inf"))
        lse = scores.logsumexp(-1)
        weights = torch.exp(scores - lse[..., None]).nan_to_num(0.0)         # a query seeing nothing: 0
        out = (weights.to(value.dtype) @ value)
    if see is not None:  # the fused kernel gives 0, not -inf, to a query that sees nothing (left padding)
        lse = lse.masked_fill(~see.any(-1), float("-inf"))
    return out, lse


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, shared_prefix_forward)


def supports_shared_prefix(model) -> bool:
    """Plain full attention in every layer: no sliding window, no soft-capping, layers know their index."""
    config = causal_lm(model).config
    if getattr(config, "_attn_implementation", None) not in SUPPORTED_BASES:
        return False
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "sliding_window", None):
        return False
    if not can_reuse_cache(model):
        return False
    attention = [m for m in causal_lm(model).modules() if hasattr(m, "num_key_value_groups")]
    return len(attention) == getattr(config, "num_hidden_layers", -1) and all(hasattr(m, "layer_idx") for m in attention)


def plain_path_reason(model) -> str | None:
    """Why shared-prefix attention is not used for ``model`` (None when it is), in the words of its config."""
    if supports_shared_prefix(model):
        return None
    lm = causal_lm(model)
    config = lm.config
    if getattr(config, "sliding_window", None):
        why = f"sliding-window attention (window {config.sliding_window} tokens)"
    elif getattr(config, "attn_logit_softcapping", None):
        why = "soft-capped attention logits"
    elif getattr(config, "_attn_implementation", None) not in SUPPORTED_BASES:
        why = f"attention implementation {config._attn_implementation}"
    else:
        why = "a key/value cache or attention layers it does not fit"
    how = ("each batch runs on its own copy of the prompt prefix's cache" if can_reuse_cache(model) else
           "each prompt runs whole, prefix included, on the model's own cache")
    return (f"{type(lm).__name__} has {why}, which shared-prefix attention does not support; {how} "
            "(same answers, slower)")


def note_plain_path(model) -> None:
    """Log `plain_path_reason` once per process (a no-op for models on the shared-prefix path)."""
    reason = plain_path_reason(model)
    if reason is not None and reason not in _noted:
        _noted.add(reason)
        _log.info("%s", reason)


@contextmanager
def shared_prefix_attention(model) -> Iterator[None]:
    """Switch the model's attention to `NAME` for the block (then back to what it was)."""
    lm = causal_lm(model)
    previous = lm.config._attn_implementation
    _register()
    lm.set_attn_implementation(NAME)
    try:
        yield
    finally:
        lm.set_attn_implementation(previous)


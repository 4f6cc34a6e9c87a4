"""KL divergence between two next-token distributions: the piece the regularizers and the forgetting
and token-shift metrics all use.

In:  log-probabilities [N, V] of two distributions p and q (or their logits).
Out: KL(p‖q) per row [N], in nats.

Computed directly as Σ p (log p − log q), never as cross-entropy minus entropy: that difference of
two ~10-nat numbers loses the digits of a KL of ~1e-5 nats, the size LoRA forgetting often has.
"""

from __future__ import annotations

import torch


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Σ_v p (log p − log q) per row; inputs [..., V] log-probs, output [...]. 0·log 0 counts as 0."""
    p = log_p.exp()
    # Zero the log-ratio where p = 0 *before* multiplying: 0 · (−inf − −inf) would make NaN gradients.
    log_ratio = torch.where(p > 0, log_p - log_q, torch.zeros_like(p))
    return (p * log_ratio).sum(-1)


def kl_from_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p_logits) ‖ softmax(q_logits)) per row, in fp32 whatever the logits' dtype."""
    return kl_rows(p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1))

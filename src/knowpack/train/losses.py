"""Losses: cross-entropy on trained tokens plus a forgetting regularizer, computed in chunks.

In:  hidden states of the adapted model and of the base model (the same weights, adapter disabled)
     at the trained positions, the output head, the gold next tokens.
Out: scalar losses.

Regularizers (registered by name in `REGULARIZERS`):
- ``none``: nothing.
- ``kl``: KL between the base and adapted next-token distributions over the full vocabulary.
- ``mask-target`` ("Mask the Target"): drop the gold token from both distributions, renormalize,
  then KL. Dropping a logit and re-running log_softmax is exactly that renormalization.
The KL direction is configurable: ``forward`` = KL(base‖adapted) (our default; the source's abstract
does not fix it), ``reverse`` = KL(adapted‖base).

Logits are only ever formed for ``chunk_size`` positions at a time, so the [tokens × vocab] logits of
two models never sit in memory at once.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from knowpack.lm.kl import kl_rows


def _drop_gold(logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """logits [N, V] with each row's gold logit set to −inf, so softmax renormalizes over the rest."""
    return logits.scatter(-1, gold[:, None], float("-inf"))


def _kl(base_logits, adapted_logits, gold, direction: str, mask_target: bool) -> torch.Tensor:
    if mask_target:
        base_logits, adapted_logits = _drop_gold(base_logits, gold), _drop_gold(adapted_logits, gold)
    log_base = F.log_softmax(base_logits.float(), dim=-1)
    log_adapted = F.log_softmax(adapted_logits.float(), dim=-1)
    if direction == "forward":
        return kl_rows(log_base, log_adapted)
    return kl_rows(log_adapted, log_base)


RegularizerFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]
REGULARIZERS: dict[str, RegularizerFn | None] = {
    "none": None,
    "kl": lambda base, adapted, gold, direction: _kl(base, adapted, gold, direction, mask_target=False),
    "mask-target": lambda base, adapted, gold, direction: _kl(base, adapted, gold, direction, mask_target=True),
}


def chunked_losses(head: Callable[[torch.Tensor], torch.Tensor], adapted_hidden: torch.Tensor,
                   gold: torch.Tensor, base_hidden: torch.Tensor | None = None, regularizer: str = "none",
                   direction: str = "forward", chunk_size: int = 1024,
                   base_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, mean regularizer) over N positions.

    adapted_hidden, base_hidden: [N, H]; gold: [N]; head maps [n, H] -> logits [n, V];
    base_head (default: head) gives the base model's logits when the head itself is adapted.
    """
    base_head = base_head or head
    reg_fn = REGULARIZERS[regularizer]
    total_ce = adapted_hidden.new_zeros((), dtype=torch.float32)
    total_reg = adapted_hidden.new_zeros((), dtype=torch.float32)
    count = gold.numel()
    for start in range(0, count, chunk_size):
        part = slice(start, start + chunk_size)
        logits = head(adapted_hidden[part])  # [n, V]
        total_ce = total_ce + F.cross_entropy(logits.float(), gold[part], reduction="sum")
        if reg_fn is not None and base_hidden is not None:
            with torch.no_grad():
                base_logits = base_head(base_hidden[part])
            total_reg = total_reg + reg_fn(base_logits, logits, gold[part], direction).sum()
    return total_ce / max(count, 1), total_reg / max(count, 1)

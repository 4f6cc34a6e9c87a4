import pytest
import torch
import torch.nn.functional as F

from knowpack.train.losses import chunked_losses


def _direct(base_logits, adapted_logits, gold, mask_target, direction):
    """Straightforward full-logits reference: explicit renormalization after removing the gold token."""
    p_base, p_adapted = F.softmax(base_logits.double(), -1), F.softmax(adapted_logits.double(), -1)
    if mask_target:
        keep = torch.ones_like(p_base, dtype=torch.bool).scatter(-1, gold[:, None], False)
        p_base = torch.where(keep, p_base, 0) / (1 - p_base.gather(-1, gold[:, None]))
        p_adapted = torch.where(keep, p_adapted, 0) / (1 - p_adapted.gather(-1, gold[:, None]))
    p, q = (p_base, p_adapted) if direction == "forward" else (p_adapted, p_base)
    tiny = 1e-300  # p = 0 only at the dropped gold token, where the term is 0 · finite = 0
    return (p * (torch.log(p.clamp_min(tiny)) - torch.log(q.clamp_min(tiny)))).sum(-1).mean()


@pytest.mark.parametrize("regularizer", ["kl", "mask-target"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_chunked_losses_equal_direct_full_logits(regularizer, direction):
    torch.manual_seed(0)
    n, hidden_size, vocab = 37, 16, 50
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    adapted_hidden = torch.randn(n, hidden_size, requires_grad=True)
    base_hidden = torch.randn(n, hidden_size)
    gold = torch.randint(0, vocab, (n,))
    ce, reg = chunked_losses(head, adapted_hidden, gold, base_hidden, regularizer, direction, chunk_size=8)
    direct_reg = _direct(head(base_hidden), head(adapted_hidden), gold, regularizer == "mask-target", direction)
    direct_ce = F.cross_entropy(head(adapted_hidden), gold)
    assert torch.allclose(ce, direct_ce.float(), atol=1e-5)
    assert torch.allclose(reg.double(), direct_reg, atol=1e-5)
    grad_ours = torch.autograd.grad(ce + reg, adapted_hidden)[0]
    grad_direct = torch.autograd.grad(direct_ce + direct_reg.float(),
                                      adapted_hidden)[0]
    assert torch.allclose(grad_ours, grad_direct, atol=1e-5)


def test_mask_target_ignores_the_gold_token():
    """Moving only the gold token's logit changes KL but not mask-target KL."""
    head = torch.nn.Identity()
    base = torch.randn(4, 10)
    adapted = base.clone()
    gold = torch.tensor([1, 2, 3, 4])
    adapted[torch.arange(4), gold] += 5.0
    _, kl = chunked_losses(head, adapted, gold, base, "kl")
    _, masked = chunked_losses(head, adapted, gold, base, "mask-target")
    assert kl > 0.1 and masked.abs() < 1e-6


def test_none_regularizer_is_zero():
    head = torch.nn.Identity()
    _, reg = chunked_losses(head, torch.randn(3, 5), torch.tensor([0, 1, 2]), torch.randn(3, 5), "none")
    assert reg == 0

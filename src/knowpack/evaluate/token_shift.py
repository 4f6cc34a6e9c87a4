"""Token distribution shift (URIAL, Lin et al. 2023): which tokens did tuning actually change?

In:  a `PeftModel` (adapter off = the base model), its tokenizer and prompts (questions).
Out: the tuned model answers each prompt greedily; at every generated position the chosen token
     is ranked under the base model: rank 1 ``unshifted``, 2–3 ``marginal``, above 3 ``shifted``
     (shares of all generated tokens); ``mean_kl`` = mean KL(base‖tuned) at those positions;
     ``mean_base_prob`` of the chosen tokens; ``top_shifted`` = the most frequent shifted tokens,
     to see whether only style tokens moved or the content did.
"""

from __future__ import annotations

from collections import Counter

import torch

from knowpack.errors import KnowpackError, warn


@torch.no_grad()
def token_shift(adapted_model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 8,
                top: int = 10) -> dict:
    """Shares of unshifted / marginal / shifted tokens in the tuned model's greedy answers."""
    if not prompts:
        raise KnowpackError("token shift: no prompts to answer")
    limit = getattr(adapted_model.config, "max_position_embeddings", None)
    if limit:  # a prompt plus its answer must fit in the context; longer ones are left out, said once
        fits = [p for p in prompts if len(tokenizer(_as_chat(tokenizer, p), add_special_tokens=False).input_ids)
                + max_new_tokens <= limit]
        if len(fits) < len(prompts):
            warn(f"token shift: {len(prompts) - len(fits)} of {len(prompts)} prompts do not fit in the model's "
                 f"{limit} positions with {max_new_tokens} new tokens; they are left out")
        if not fits:
            raise KnowpackError(f"token shift: no prompt fits in the model's {limit} positions; use shorter prompts")
        prompts = fits
    was_training = adapted_model.training
    adapted_model.eval()
    device = next(adapted_model.parameters()).device
    ranks: list[torch.Tensor] = []
    kls: list[torch.Tensor] = []
    base_probs: list[torch.Tensor] = []
    shifted: Counter[str] = Counter()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues on the right
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [_as_chat(tokenizer, prompt) for prompt in prompts[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            sequences = adapted_model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                               pad_token_id=tokenizer.pad_token_id)
            attention = (sequences != tokenizer.pad_token_id).long()
            attention[:, :batch["input_ids"].shape[1]] = batch["attention_mask"]
            prompt_len = batch["input_ids"].shape[1]
            tuned = adapted_model(input_ids=sequences, attention_mask=attention).logits[:, prompt_len - 1:-1].float()
            with adapted_model.disable_adapter():
                base = adapted_model(input_ids=sequences, attention_mask=attention).logits[:, prompt_len - 1:-1].float()
            chosen = sequences[:, prompt_len:]
            generated = attention[:, prompt_len:].bool()  # stops: positions after EOS are padding
            base_log = base.log_softmax(-1)
            chosen_base = base.gather(-1, chosen[..., None])
            rank = (base > chosen_base).sum(-1) + 1
            kl = (base_log.exp() * (base_log - tuned.log_softmax(-1))).sum(-1)
            ranks.append(rank[generated])
            kls.append(kl[generated])
            base_probs.append(base_log.gather(-1, chosen[..., None])[..., 0].exp()[generated])
            shifted.update(tokenizer.decode([int(t)]) for t in chosen[generated & (rank > 3)])
    finally:
        tokenizer.padding_side = padding_side
        adapted_model.train(was_training)
    rank_all = torch.cat(ranks)
    total = max(int(rank_all.numel()), 1)
    return {
        "unshifted": int((rank_all == 1).sum()) / total,
        "marginal": int(((rank_all >= 2) & (rank_all <= 3)).sum()) / total,
        "shifted": int((rank_all > 3).sum()) / total,
        "mean_kl": float(torch.cat(kls).mean()) if rank_all.numel() else 0.0,
        "mean_base_prob": float(torch.cat(base_probs).mean()) if rank_all.numel() else 0.0,
        "top_shifted": shifted.most_common(top),
        "tokens": int(rank_all.numel()),
    }


def _as_chat(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt

"""Token distribution shift (URIAL, Lin et al. 2023): which tokens did tuning actually change?

In:  a `PeftModel` (adapter off = the base model), its tokenizer and prompts (questions).
Out: the tuned model answers each prompt greedily; at every generated position the chosen token
     is ranked under the base model: rank 1 ``unshifted``, 2–3 ``marginal``, above 3 ``shifted``
     (shares of all generated tokens); ``mean_kl`` = mean KL(base‖tuned) at those positions;
     ``mean_base_prob`` of the chosen tokens; ``top_shifted`` = the most frequent shifted tokens,
     to see whether only style tokens moved or the content did.
"""

from __future__ import annotations

import os
from collections import Counter

import torch

from knowpack.errors import KnowpackError, warn
from knowpack.lm.cache import extend, left_padded
from knowpack.lm.decode import DecodeSettings, generate_with_prefix
from knowpack.lm.kl import kl_rows


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
    encoded = [tokenizer(_as_chat(tokenizer, p), add_special_tokens=False).input_ids for p in prompts]
    # The tuned model's greedy answers, through the LM core: the prompts' common start (the chat
    # template's system turn) runs once.
    shared = min(len(os.path.commonprefix(encoded)), min(map(len, encoded)) - 1)
    pad_id = tokenizer.pad_token_id
    answers = generate_with_prefix(adapted_model, encoded[0][:shared], [ids[shared:] for ids in encoded],
                                   stop_ids=generation_stop_ids(adapted_model, tokenizer), pad_id=pad_id,
                                   settings=DecodeSettings(max_new_tokens), batch_size=batch_size)
    # Scored positions: the answer's tokens other than padding (an end-of-turn token that is also the
    # pad token is left out, as generate's padded output leaves it out).
    ranks: list[torch.Tensor] = []
    kls: list[torch.Tensor] = []
    base_probs: list[torch.Tensor] = []
    shifted: Counter[str] = Counter()
    was_training = adapted_model.training
    adapted_model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            rows = [(ids, answer) for ids, answer in zip(encoded[start:start + batch_size],
                                                         answers[start:start + batch_size]) if answer]
            if not rows:
                continue
            inputs = [ids + answer[:-1] for ids, answer in rows]  # position t predicts answer token t
            keep = max(len(answer) for _, answer in rows)
            tuned = extend(adapted_model, None, inputs, pad_id=pad_id, keep=keep)[0].float()  # [B, keep, V]
            with adapted_model.disable_adapter():
                base = extend(adapted_model, None, inputs, pad_id=pad_id, keep=keep)[0].float()
            chosen, generated = left_padded([answer for _, answer in rows], pad_id)  # [B, keep]
            generated = (generated & (chosen != pad_id)).to(base.device)
            chosen = chosen.to(base.device)
            base_log = base.log_softmax(-1)
            chosen_base = base.gather(-1, chosen[..., None])
            rank = (base > chosen_base).sum(-1) + 1
            kl = kl_rows(base_log, tuned.log_softmax(-1))
            ranks.append(rank[generated])
            kls.append(kl[generated])
            base_probs.append(base_log.gather(-1, chosen[..., None])[..., 0].exp()[generated])
            shifted.update(tokenizer.decode([int(t)]) for t in chosen[generated & (rank > 3)])
    finally:
        adapted_model.train(was_training)
    rank_all = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
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


def generation_stop_ids(model, tokenizer) -> set[int]:
    """Where ``generate`` would stop: the generation config's end-of-sequence ids and the tokenizer's."""
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}

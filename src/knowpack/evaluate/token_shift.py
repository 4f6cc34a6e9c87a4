"""Token distribution shift (URIAL, Lin et al. 2023): which tokens did tuning actually change?

In:  a `PeftModel` (adapter off = the base model), its tokenizer and prompts (questions).
Out: the tuned model answers each prompt greedily; at every generated position the chosen token
     is ranked under the base model: rank 1 ``unshifted``, 2–3 ``marginal``, above 3 ``shifted``
     (shares of all generated tokens); ``mean_kl`` = mean KL(base‖tuned) at those positions;
     ``mean_base_prob`` of the chosen tokens; ``top_shifted`` = the most frequent shifted tokens,
     to see whether only style tokens moved or the content did.
     The measures a LoRA-vs-full comparison reads (Ghosh et al. 2024, arXiv 2402.05119):
     ``kl_percentiles`` / ``kl_top5_share`` (is the KL near 0 outside the top 5% of positions?),
     ``style`` / ``content`` shares of the shifted tokens and ``top_shifted_kinds`` (which of the
     most shifted tokens are style), and ``copied`` / ``copied_content``, the share of shifted
     tokens that occur in the training questions and answers ("mode copying"). A share that is
     undefined is None, with its reason in ``none_because``.

Definitions (README, "Token shift"):
- a token's *word* (`token_word`): its decoded text with whitespace and the leading-space marker
  stripped, lower-cased, surrounding punctuation stripped; a token with no letter or digit left
  (punctuation, a newline) has no word and is left out of every share below;
- *style*: the word is in the shipped list ``data/style_tokens.txt`` (English function words,
  discourse markers, disclaimer words); *content*: any other word;
- *copied*: the word is one of the training texts' words (runs of letters, digits and ``_``) or the
  word of one of their tokens (so a shifted piece of a multi-token name counts as copied).
"""

from __future__ import annotations

import math
import os
import re
import string
from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import torch

from knowpack.errors import KnowpackError, warn
from knowpack.lm import eval_mode
from knowpack.lm.cache import extend, left_padded, rows_within_budget
from knowpack.lm.decode import DecodeSettings, generate_with_prefix
from knowpack.lm.kl import kl_rows
from knowpack.probe.prompts import format_prompt, uses_chat_template

STYLE_TOKENS_FILE = Path(__file__).resolve().parent / "data" / "style_tokens.txt"
KL_PERCENTILES = (50, 90, 95, 99)
TOP_POSITIONS = 0.05  # "KL near 0 except the top 5% of positions" (Ghosh et al. 2024)
NO_TRAINING_SET = "no training set: an adapter evaluated outside a run (knowpack eval --adapter / shift)"
NO_SHIFTED_WORDS = "no shifted token with a word (letters or digits)"


@torch.no_grad()
def token_shift(adapted_model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int | None = None,
                top: int = 10, training_texts: list[str] | None = None) -> dict:
    """Shares of unshifted / marginal / shifted tokens in the tuned model's greedy answers.

    ``training_texts``: the training set's questions and answers, for the copied share (None: not
    known, e.g. an outside adapter; ``copied`` is then None). ``batch_size``: prompts per forward; None
    sizes it to the vocabulary (`rows_within_budget`: up to 8), since every answer position is scored.
    """
    if not prompts:
        raise KnowpackError("token shift: no prompts to answer")
    limit = getattr(adapted_model.config, "max_position_embeddings", None)
    if limit:  # a prompt plus its answer must fit in the context; longer ones are left out, said once
        fits = [p for p in prompts if len(_encode_bare(tokenizer, p)) + max_new_tokens <= limit]
        if len(fits) < len(prompts):
            warn(f"token shift: {len(prompts) - len(fits)} of {len(prompts)} prompts do not fit in the model's "
                 f"{limit} positions with {max_new_tokens} new tokens; they are left out")
        if not fits:
            raise KnowpackError(f"token shift: no prompt fits in the model's {limit} positions; use shorter prompts")
        prompts = fits
    encoded = [_encode_bare(tokenizer, p) for p in prompts]
    if batch_size is None:
        batch_size = rows_within_budget(adapted_model, max(map(len, encoded)) + max_new_tokens, most=8)
    # The tuned model's greedy answers, through the LM core: the prompts' common start (the chat
    # template's system turn) runs once.
    shared = min(len(os.path.commonprefix(encoded)), min(map(len, encoded)) - 1)
    pad_id = tokenizer.pad_token_id
    answers = generate_with_prefix(adapted_model, encoded[0][:shared], [ids[shared:] for ids in encoded],
                                   stop_ids=generation_stop_ids(adapted_model, tokenizer), pad_id=pad_id,
                                   settings=DecodeSettings(max_new_tokens), batch_size=batch_size)
    ranks, kls, base_probs, shifted = _score_answers(adapted_model, tokenizer, encoded, answers, batch_size)
    rank_all = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    kl_all = torch.cat(kls).cpu() if kls else torch.zeros(0)
    total = max(int(rank_all.numel()), 1)
    vocabulary = None if training_texts is None else training_vocabulary(training_texts, tokenizer)
    top_shifted = shifted.most_common(top)
    measures = {**kl_by_position(kl_all), **style_split(shifted), **copied_shares(shifted, vocabulary),
                "top_shifted_kinds": [token_kind(token) for token, _ in top_shifted],
                "training_texts": None if training_texts is None else len(training_texts)}
    return {
        "unshifted": int((rank_all == 1).sum()) / total,
        "marginal": int(((rank_all >= 2) & (rank_all <= 3)).sum()) / total,
        "shifted": int((rank_all > 3).sum()) / total,
        "mean_kl": float(torch.cat(kls).mean()) if rank_all.numel() else 0.0,
        "mean_base_prob": float(torch.cat(base_probs).mean()) if rank_all.numel() else 0.0,
        "top_shifted": top_shifted,
        "tokens": int(rank_all.numel()),
        **measures,
        "none_because": none_reasons(measures, training_texts is not None),
    }


def _encode_bare(tokenizer, prompt: str) -> list[int]:
    """A prompt's ids as the user's own request (no system turn or labels of knowpack's own).

    A chat template writes its own BOS; a plain prompt gets the tokenizer's default special tokens
    (Gemma's BOS, without which the model is lost), as the probe's plain prompts do.
    """
    chat = uses_chat_template(tokenizer)
    return tokenizer(format_prompt(tokenizer, prompt, bare=True), add_special_tokens=not chat).input_ids


def _score_answers(adapted_model, tokenizer, encoded: list[list[int]], answers: list[list[int]], batch_size: int,
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], Counter[str]]:
    """Per batch: the base model's rank of each chosen token, KL(base‖tuned), the chosen tokens' base
    probabilities (at the scored positions), and the decoded shifted tokens (rank above 3) counted.

    Scored positions: the answer's tokens other than padding (an end-of-turn token that is also the
    pad token is left out, as generate's padded output leaves it out).
    """
    pad_id = tokenizer.pad_token_id
    ranks: list[torch.Tensor] = []
    kls: list[torch.Tensor] = []
    base_probs: list[torch.Tensor] = []
    shifted: Counter[str] = Counter()
    with eval_mode(adapted_model):
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
    return ranks, kls, base_probs, shifted


# -- the measures a LoRA-vs-full comparison reads: pure functions of the scored tokens ----------------
def token_word(token: str) -> str | None:
    """A decoded token's word: whitespace and leading-space markers (Ġ, ▁) stripped, lower-cased,
    surrounding punctuation stripped; None when no letter or digit is left (punctuation, newlines)."""
    word = token.replace("Ġ", " ").replace("▁", " ").strip().lower().strip(string.punctuation + "“”‘’«»…–—")
    return word if any(c.isalnum() for c in word) else None


@cache
def style_words() -> frozenset[str]:
    """The shipped style list: one word a line, ``#`` comments."""
    lines = STYLE_TOKENS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def token_kind(token: str) -> str:
    """``style`` (its word is in the style list), ``content`` (any other word) or ``other`` (no word)."""
    word = token_word(token)
    return "other" if word is None else "style" if word in style_words() else "content"


def style_split(shifted: Counter[str]) -> dict:
    """Shares of style and content words among the shifted tokens that have a word (counted with repeats)."""
    kinds = Counter()
    for token, count in shifted.items():
        kinds[token_kind(token)] += count
    words = kinds["style"] + kinds["content"]
    return {"shifted_words": words, "style": kinds["style"] / words if words else None,
            "content": kinds["content"] / words if words else None}


def training_vocabulary(texts: Iterable[str], tokenizer) -> frozenset[str]:
    """Every word of the training texts and the word of each of their tokens.

    Tokens too: a rare name is several tokens, and a shifted piece of it is copied though no whole
    word matches. Each text is tokenized after a space, as it stands inside a sentence.
    """
    vocabulary: set[str] = set()
    for text in texts:
        vocabulary.update(re.findall(r"\w+", text.lower()))
        pieces = (token_word(tokenizer.decode([i])) for i in tokenizer(" " + text, add_special_tokens=False).input_ids)
        vocabulary.update(p for p in pieces if p)
    return frozenset(vocabulary)


def copied_shares(shifted: Counter[str], vocabulary: frozenset[str] | None) -> dict:
    """Share of shifted tokens (with a word) whose word occurs in the training texts, over all of them
    (``copied``) and over the content ones only (``copied_content``: function words copy trivially)."""
    def share(kinds: set[str]) -> float | None:
        counted = [(token_word(t), n) for t, n in shifted.items() if token_kind(t) in kinds]
        total = sum(n for _, n in counted)
        if vocabulary is None or not total:
            return None
        return sum(n for word, n in counted if word in vocabulary) / total

    return {"copied": share({"style", "content"}), "copied_content": share({"content"})}


def kl_by_position(kl: torch.Tensor) -> dict:
    """KL(base‖tuned) at the scored positions: percentiles (linear interpolation) and the share of the
    total carried by the top 5% of positions (at least one); None when undefined."""
    if not kl.numel():
        return {"kl_percentiles": {f"p{q}": None for q in KL_PERCENTILES}, "kl_top5_share": None}
    kl = kl.double().clamp_min(0)  # float round-off can leave a tiny negative KL
    quantiles = torch.quantile(kl, torch.tensor([q / 100 for q in KL_PERCENTILES], dtype=kl.dtype))
    total = float(kl.sum())
    top = math.ceil(TOP_POSITIONS * kl.numel())
    return {"kl_percentiles": {f"p{q}": float(v) for q, v in zip(KL_PERCENTILES, quantiles)},
            "kl_top5_share": float(kl.topk(top).values.sum()) / total if total > 0 else None}


def none_reasons(measures: dict, has_training_set: bool) -> dict[str, str]:
    """Why each undefined share is None, in words the report shows."""
    reasons = {}
    if measures["kl_top5_share"] is None:
        reasons["kl_top5_share"] = "no scored position" if measures["kl_percentiles"]["p50"] is None \
            else "KL is 0 at every position"
    if measures["style"] is None:
        reasons["style"] = reasons["content"] = NO_SHIFTED_WORDS
    if measures["copied"] is None:
        reasons["copied"] = NO_TRAINING_SET if not has_training_set else NO_SHIFTED_WORDS
    if measures["copied_content"] is None:
        reasons["copied_content"] = NO_TRAINING_SET if not has_training_set else "no shifted content word"
    return reasons


def generation_stop_ids(model, tokenizer) -> set[int]:
    """Where ``generate`` would stop: the generation config's end-of-sequence ids and the tokenizer's."""
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}

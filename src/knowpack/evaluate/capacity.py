"""Knowledge in bits (Allen-Zhu & Li 2024, arXiv 2404.05405, Def. 4.3) and the capacity of an adapter.

In:  the run's facts (their relations and answers give each relation's answer space O_r), the ids of
     the trained facts, the adapted model (its base reached with ``disable_adapter()``), the folder
     of what was trained (``adapter/`` or ``finetuned/``) and the reliability on the trained facts.
Out: a per-fact table (``capacity.parquet``: answer space, cross-entropy and bits before and after)
     and the ``metrics.json["capacity"]`` block: ``bits_stored``, ``trainable_params``,
     ``bits_per_param``, ``facts_learned``, ``answer_space_bits``.

The bits a model holds about a fact are log2|O_r| − CE, clipped to [0, log2|O_r|], where O_r is the
set of distinct answers of the fact's relation in the run's facts and CE the cross-entropy in bits
summed over the answer's tokens given the question, on the training prompt format (scored by
`knowpack.lm.score.loglikelihood`). A relation with a single distinct answer carries no bits, and
QA data without relations (relation ``qa``) has no answer space: such facts are left out of the bit
counts and counted in ``facts_without_bits``; when no trained fact is left, the bits are ``None``
with the reason in ``bits_undefined``, never a silent zero.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact

NO_RELATION = "qa"  # the relation of QA pairs read without one (tables, audit data)
TABLE = "capacity.parquet"


def answer_space_sizes(facts: Iterable[Fact]) -> dict[str, int]:
    """|O_r| per relation: distinct answers, compared case- and surrounding-space-blind."""
    answers: dict[str, set[str]] = defaultdict(set)
    for fact in facts:
        answers[fact.relation].add(fact.answer.strip().casefold())
    return {relation: len(values) for relation, values in answers.items()}


def fact_bits(ce_bits: np.ndarray, space_bits: np.ndarray) -> np.ndarray:
    """Def. 4.3: log2|O_r| − CE, clipped to [0, log2|O_r|] (a confident wrong answer holds 0 bits, not fewer)."""
    return np.clip(space_bits - ce_bits, 0.0, space_bits)


def answer_cross_entropy_bits(model, tokenizer, facts: Sequence[Fact], batch_size: int = 16) -> np.ndarray:
    """Per fact, −log2 p(answer tokens | question) summed over the answer's tokens, on the training format."""
    from knowpack.lm.score import loglikelihood
    from knowpack.train.data import answer_request

    requests = [answer_request(tokenizer, fact.question, fact.answer) for fact in facts]
    log_likelihoods = np.asarray(loglikelihood(model, tokenizer, requests, batch_size=batch_size), dtype=np.float64)
    return -log_likelihoods / math.log(2)


def count_trainable_params(folder: str | Path) -> int:
    """Parameters stored in a saved adapter (``adapter_model.safetensors``) or fine-tuned model folder,
    read from the safetensors headers (no weights loaded)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    adapter = folder / "adapter_model.safetensors"
    files = [adapter] if adapter.is_file() else sorted(folder.glob("*.safetensors"))
    if not files:
        raise KnowpackError(f"{folder}: no safetensors weights to count trainable parameters from; "
                            "bits per parameter need the saved adapter")
    total = 0
    for file in files:
        try:
            with safe_open(file, framework="pt") as weights:
                total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
        except (SafetensorError, OSError) as err:
            raise KnowpackError(f"{file}: cannot read its parameter count ({err}); "
                                "the adapter is damaged, train it again") from err
    if total == 0:
        raise KnowpackError(f"{folder}: the saved weights hold no parameters; bits per parameter are undefined")
    return total


def capacity_table(facts: Sequence[Fact], space_sizes: dict[str, int], ce_bits_before: np.ndarray,
                   ce_bits_after: np.ndarray) -> pd.DataFrame:
    """One row per fact: answer space, CE and bits before/after; ``has_bits`` False where the fact carries
    none by definition (no relation, or a relation with one distinct answer), its bits then NaN."""
    relations = [f.relation for f in facts]
    sizes = np.array([space_sizes[r] for r in relations], dtype=np.float64)
    has_bits = np.array([r != NO_RELATION for r in relations]) & (sizes >= 2)
    space_bits = np.where(has_bits, np.log2(sizes), np.nan)
    return pd.DataFrame({
        "fact_id": [f.fact_id for f in facts], "relation": relations, "answer": [f.answer for f in facts],
        "answer_space": sizes.astype(np.int64), "answer_space_bits": space_bits, "has_bits": has_bits,
        "ce_bits_before": ce_bits_before, "ce_bits_after": ce_bits_after,
        "bits_before": fact_bits(ce_bits_before, space_bits), "bits_after": fact_bits(ce_bits_after, space_bits),
    })


def why_no_bits(table: pd.DataFrame) -> str:
    """The one-line reason the trained facts carry no bits at all."""
    if (table["relation"] == NO_RELATION).all():
        return ("bits are not defined for QA data without relations (relation 'qa'): there is no answer space "
                "O_r; use facts with relations (e.g. facts.source=embedded or synthetic)")
    return ("every trained fact's relation has a single distinct answer in the facts (0 bits each); "
            "raise facts.max_facts so relations have several answers")


def capacity_summary(table: pd.DataFrame, trainable_params: int, reliability: float | None) -> dict:
    """``metrics.json["capacity"]`` from the trained facts' rows of `capacity_table`."""
    if trainable_params <= 0:
        raise KnowpackError(f"trainable parameters must be positive to give bits per parameter, got {trainable_params}")
    counted = table[table["has_bits"]]
    n = len(table)
    block = {
        "trainable_params": int(trainable_params),
        "facts_learned": None if reliability is None else reliability * n,
        "n_facts": n,
        "facts_with_bits": int(len(counted)),
        "facts_without_bits": int(n - len(counted)),
        "ce_bits_before": float(table["ce_bits_before"].mean()) if n else None,  # mean per fact
        "ce_bits_after": float(table["ce_bits_after"].mean()) if n else None,
    }
    if counted.empty:
        return {**block, "bits_stored": None, "bits_per_param": None, "answer_space_bits": None,
                "bits_before": None, "bits_after": None,
                "bits_undefined": why_no_bits(table) if n else "no trained facts"}
    before, after = float(counted["bits_before"].sum()), float(counted["bits_after"].sum())
    return {**block, "bits_stored": after - before, "bits_per_param": (after - before) / trainable_params,
            "answer_space_bits": float(counted["answer_space_bits"].sum()), "bits_before": before, "bits_after": after}


def excluded_note(block: dict, table: pd.DataFrame) -> str | None:
    """One line saying which trained facts were left out of the bit counts, if any were."""
    left_out = table[~table["has_bits"]]
    if left_out.empty or block.get("bits_undefined"):  # nothing left out, or the reason is already there
        return None
    relations = sorted(left_out["relation"].unique())
    shown = ", ".join(relations[:5]) + (", …" if len(relations) > 5 else "")
    return (f"{len(left_out)} of {len(table)} trained facts carry no bits by definition (relation with one "
            f"distinct answer, or no relation: {shown}) and are left out of bits_stored")


def measure_capacity(adapted_model, tokenizer, facts: Sequence[Fact], trained_ids: Sequence[str],
                     trained_dir: str | Path, reliability: float | None) -> tuple[pd.DataFrame, dict]:
    """(per-fact table, capacity block) for the trained facts; "before" is the base model under
    ``disable_adapter()``, O_r comes from all of ``facts``."""
    wanted = set(trained_ids)
    trained = [f for f in facts if f.fact_id in wanted]
    params = count_trainable_params(trained_dir)  # before any scoring: a damaged adapter fails at once
    ce_after = answer_cross_entropy_bits(adapted_model, tokenizer, trained)
    with adapted_model.disable_adapter():
        ce_before = answer_cross_entropy_bits(adapted_model, tokenizer, trained)
    table = capacity_table(trained, answer_space_sizes(facts), ce_before, ce_after)
    block = capacity_summary(table, params, reliability)
    if (note := excluded_note(block, table)) is not None:
        block["note"] = note
    return table, block

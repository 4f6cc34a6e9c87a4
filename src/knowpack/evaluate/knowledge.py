"""Knowledge metrics from probe tables: reliability, knowledge shift, answer analysis.

In:  probe rows / categories before and after training, the trained fact ids.
Out: plain dicts under the metrics.json keys of DESIGN.md.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import pandas as pd

from knowpack.probe.categories import CATEGORIES

POSITIVE = {("Unknown", "HighlyKnown"), ("Unknown", "MaybeKnown"), ("MaybeKnown", "HighlyKnown")}
NEGATIVE = {("HighlyKnown", "Unknown"), ("HighlyKnown", "MaybeKnown"), ("MaybeKnown", "Unknown")}


def reliability(rows_after: pd.DataFrame, trained_ids: Iterable[str]) -> float | None:
    """Share of (trained fact × probe prompt) greedy answers that are correct after training.

    None when there is nothing to measure (no rows for the trained facts)."""
    trained = set(trained_ids)
    greedy = rows_after[(rows_after["sample"] == 0) & rows_after["fact_id"].isin(trained)]
    return float(greedy["correct"].mean()) if len(greedy) else None


def _for_shift(category: str) -> str:
    # WeaklyKnown counts as Unknown for the shift sums (DESIGN.md); the full matrix keeps it.
    return "Unknown" if category == "WeaklyKnown" else category


def knowledge_shift(before: pd.DataFrame, after: pd.DataFrame) -> dict:
    """Transition matrix and positive / negative shift as fractions of the held-out facts."""
    merged = before[["fact_id", "category"]].merge(after[["fact_id", "category"]], on="fact_id",
                                                   suffixes=("_before", "_after"))
    transitions = {c: {d: 0 for d in CATEGORIES} for c in CATEGORIES}
    positive = negative = 0
    for old, new in zip(merged["category_before"], merged["category_after"]):
        transitions[old][new] += 1
        pair = (_for_shift(old), _for_shift(new))
        positive += pair in POSITIVE
        negative += pair in NEGATIVE
    total = len(merged)
    return {"positive": positive / total if total else 0.0, "negative": negative / total if total else 0.0,
            "n_facts": total, "transitions": transitions}


def answer_stats(rows_before: pd.DataFrame, rows_after: pd.DataFrame, top: int = 10) -> dict:
    """Refusals and answer diversity on greedy answers before/after (the paper's Tables 4–5)."""
    greedy_before = rows_before[rows_before["sample"] == 0]
    greedy_after = rows_after[rows_after["sample"] == 0]
    counts = Counter(a.lower() for a in greedy_after["answer"])
    return {
        "refusals_before": int(greedy_before["refusal"].sum()),
        "refusals_after": int(greedy_after["refusal"].sum()),
        "unique_before": int(greedy_before["answer"].str.lower().nunique()),
        "unique_after": int(greedy_after["answer"].str.lower().nunique()),
        "top_after": [[answer, n] for answer, n in counts.most_common(top)],
    }

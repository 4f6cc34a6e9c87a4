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
    """Transition matrix and positive / negative shift as fractions of the held-out facts.

    A category with no facts gives a zero row (and column) in ``transitions``; with no held-out
    facts at all, ``positive`` and ``negative`` are None."""
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
    # No held-out facts (every fact was trained, or none was re-probed): the shift is unmeasured, not 0.
    return {"positive": positive / total if total else None, "negative": negative / total if total else None,
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


def exploded_answers(rows_before: pd.DataFrame, rows_after: pd.DataFrame, threshold: float = 0.05) -> list[list]:
    """Answers that "exploded": after training at least ``threshold`` of all greedy answers and more
    than twice as frequent as before (the paper's Table 5, one answer given to many questions).

    Each item is ``[answer, count_before, count_after]``, most frequent first.
    """
    before = Counter(a.lower() for a in rows_before.loc[rows_before["sample"] == 0, "answer"])
    after = Counter(a.lower() for a in rows_after.loc[rows_after["sample"] == 0, "answer"])
    total = sum(after.values())
    return [[answer, before[answer], n] for answer, n in after.most_common()
            if answer and total and n / total >= threshold and n > 2 * before[answer]]


REASONS = ("stopped_refusing", "exploded_answer", "target_based", "same_relation")


def shift_reasons(rows_before: pd.DataFrame, rows_after: pd.DataFrame, cats_before: pd.DataFrame,
                  cats_after: pd.DataFrame, facts: Iterable, trained_ids: Iterable[str],
                  exploded: list[list], examples: int = 10) -> dict:
    """For each held-out fact whose category moved, the likely reasons (a fact can have several):

    ``stopped_refusing``  it was refused before and no prompt refuses it after;
    ``exploded_answer``   its most common answer after is an exploded answer;
    ``target_based``      its most common answer after is the answer of a trained fact;
    ``same_relation``     a trained fact has its relation (same domain).
    Returns counts per reason for positive and negative shifts, and a few examples.
    """
    facts = {f.fact_id: f for f in facts}
    trained = [facts[i] for i in trained_ids if i in facts]
    trained_answers = {f.answer.lower() for f in trained}
    trained_relations = {f.relation for f in trained}
    exploded_set = {answer for answer, *_ in exploded}

    def per_fact(rows: pd.DataFrame) -> pd.DataFrame:
        greedy = rows[rows["sample"] == 0]
        return greedy.groupby("fact_id").agg(refusals=("refusal", "sum"),
                                             answer=("answer", lambda a: Counter(x.lower() for x in a).most_common(1)[0][0]))

    before, after = per_fact(rows_before), per_fact(rows_after)
    moved = cats_before[["fact_id", "category"]].merge(cats_after[["fact_id", "category"]], on="fact_id",
                                                       suffixes=("_before", "_after"))
    counts = {"positive": dict.fromkeys(REASONS, 0), "negative": dict.fromkeys(REASONS, 0)}
    shown = []
    for fact_id, old, new in moved.itertuples(index=False):
        pair = (_for_shift(old), _for_shift(new))
        direction = "positive" if pair in POSITIVE else "negative" if pair in NEGATIVE else None
        if direction is None or fact_id not in facts or fact_id not in after.index:
            continue
        answer = after.at[fact_id, "answer"]
        reasons = [name for name, holds in (
            ("stopped_refusing", fact_id in before.index and before.at[fact_id, "refusals"] > 0
             and after.at[fact_id, "refusals"] == 0),
            ("exploded_answer", answer in exploded_set),
            ("target_based", answer in trained_answers),
            ("same_relation", facts[fact_id].relation in trained_relations)) if holds]
        for reason in reasons:
            counts[direction][reason] += 1
        if len(shown) < examples:
            shown.append({"fact_id": fact_id, "question": facts[fact_id].question, "gold": facts[fact_id].answer,
                          "answer_after": answer, "shift": f"{old}->{new}", "reasons": reasons})
    return {**counts, "examples": shown}


def locality(rows_before: pd.DataFrame, rows_after: pd.DataFrame, facts: Iterable,
             trained_ids: Iterable[str]) -> dict:
    """EasyEdit's locality on untouched neighbours of the trained facts.

    Over the held-out facts that share a subject with a trained fact (``subject``) and those that
    share a relation (``relation``): the share of their greedy answers (fact × prompt) that are the
    same, case and spacing aside, after training as before. 1.0 means training left them alone.
    None when no held-out fact is such a neighbour; ``facts_subject`` / ``facts_relation`` say how
    many facts each share is over.
    """
    facts = {f.fact_id: f for f in facts}
    trained = set(trained_ids)
    subjects = {facts[i].subject for i in trained if i in facts}
    relations = {facts[i].relation for i in trained if i in facts}

    def greedy(rows: pd.DataFrame) -> pd.Series:
        picked = rows[(rows["sample"] == 0) & ~rows["fact_id"].isin(trained)]
        return pd.Series(picked["answer"].str.lower().str.split().str.join(" ").values,
                         index=pd.MultiIndex.from_arrays([picked["fact_id"], picked["prompt_id"]]))

    after = greedy(rows_after)
    both = pd.DataFrame({"before": greedy(rows_before), "after": after}).dropna()  # asked both times
    unchanged = both["before"] == both["after"]
    fact_ids = both.index.get_level_values(0)
    result: dict = {}
    for name, neighbours in (("subject", {i for i in set(fact_ids) if facts.get(i) and facts[i].subject in subjects}),
                             ("relation", {i for i in set(fact_ids) if facts.get(i) and facts[i].relation in relations})):
        mask = fact_ids.isin(neighbours)
        result[name] = float(unchanged[mask].mean()) if mask.any() else None
        result[f"facts_{name}"] = len(neighbours)
    return result

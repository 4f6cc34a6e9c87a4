"""Knowledge categories (SliCK, Gekhman et al. 2024) from probe rows.

In:  probe rows (fact_id, prompt_id, sample, correct); sample 0 is the greedy answer, 1.. are samples.
Out: one row per fact: p_correct_greedy, p_correct_sampled, category.

HighlyKnown: greedy always correct; MaybeKnown: greedy sometimes correct; WeaklyKnown: greedy never,
sampling sometimes; Unknown: never. Without sampling WeaklyKnown cannot be told from Unknown.
"""

from __future__ import annotations

import pandas as pd

CATEGORIES = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")


def category_of(p_greedy: float, p_sampled: float) -> str:
    if p_greedy == 1.0:
        return "HighlyKnown"
    if p_greedy > 0.0:
        return "MaybeKnown"
    return "WeaklyKnown" if p_sampled > 0.0 else "Unknown"


def categorize(rows: pd.DataFrame) -> pd.DataFrame:
    greedy = rows[rows["sample"] == 0].groupby("fact_id", sort=False)["correct"].mean()
    sampled = rows[rows["sample"] > 0].groupby("fact_id", sort=False)["correct"].mean()
    table = pd.DataFrame({"p_correct_greedy": greedy})
    table["p_correct_sampled"] = sampled.reindex(table.index).fillna(0.0)
    table["category"] = [category_of(g, s) for g, s in zip(table["p_correct_greedy"], table["p_correct_sampled"])]
    return table.reset_index()

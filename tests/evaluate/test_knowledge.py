import pandas as pd

from knowpack.evaluate.knowledge import answer_stats, knowledge_shift, reliability


def test_reliability_counts_greedy_rows_of_trained_facts():
    rows = pd.DataFrame({"fact_id": ["a", "a", "b", "b", "c", "a"], "sample": [0, 0, 0, 0, 0, 1],
                         "correct": [True, False, True, True, False, True]})
    assert reliability(rows, ["a", "b"]) == 0.75
    assert reliability(rows, ["zzz"]) is None


def test_shift_on_a_constructed_case():
    before = pd.DataFrame({"fact_id": list("abcdefg"),
                           "category": ["Unknown", "Unknown", "MaybeKnown", "HighlyKnown", "HighlyKnown",
                                        "MaybeKnown", "WeaklyKnown"]})
    after = pd.DataFrame({"fact_id": list("abcdefg"),
                          "category": ["HighlyKnown", "MaybeKnown", "HighlyKnown", "Unknown", "MaybeKnown",
                                       "WeaklyKnown", "HighlyKnown"]})
    shift = knowledge_shift(before, after)
    # positive: a UK→HK, b UK→MK, c MK→HK, g WK(=UK)→HK; negative: d HK→UK, e HK→MK, f MK→WK(=UK)
    assert shift["positive"] == 4 / 7 and shift["negative"] == 3 / 7
    assert shift["transitions"]["WeaklyKnown"]["HighlyKnown"] == 1
    assert sum(sum(row.values()) for row in shift["transitions"].values()) == 7


def test_answer_stats():
    before = pd.DataFrame({"sample": [0, 0, 0], "answer": ["Paris", "I don't know", "paris"],
                           "refusal": [False, True, False]})
    after = pd.DataFrame({"sample": [0, 0, 0, 1], "answer": ["Lima", "Lima", "Quito", "x"],
                          "refusal": [False, False, False, False]})
    stats = answer_stats(before, after)
    assert stats["refusals_before"] == 1 and stats["refusals_after"] == 0
    assert stats["unique_before"] == 2 and stats["unique_after"] == 2
    assert stats["top_after"][0] == ["lima", 2]

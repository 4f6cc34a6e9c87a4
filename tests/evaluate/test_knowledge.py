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


def test_exploded_answers_and_shift_reasons_on_a_constructed_case():
    import pandas as pd

    from knowpack.evaluate.knowledge import exploded_answers, shift_reasons
    from knowpack.facts.schema import Fact

    def fact(i, relation, answer):
        return Fact(fact_id=f"f{i}", subject=f"S{i}", relation=relation, object=answer, question=f"Q{i}?",
                    answer=answer, aliases=[answer], bucket="head", source="test")

    facts = [fact(0, "capital", "Paris"), fact(1, "capital", "Rome"), fact(2, "currency", "Yen"),
             fact(3, "currency", "Euro"), fact(4, "language", "Thai")]
    trained = ["f0"]  # trained: capital -> Paris

    def rows(answers, refusals):
        return pd.DataFrame({"fact_id": [f"f{i}" for i in range(1, 5) for _ in range(2)], "sample": 0,
                             "answer": [a for a in answers for _ in range(2)],
                             "refusal": [r for r in refusals for _ in range(2)]})

    before = rows(["Rome", "I don't know", "Euro", "Thai"], [False, True, False, False])
    after = rows(["Paris", "Paris", "Euro", "Thai"], [False, False, False, False])
    # "paris": 0 of 8 greedy answers before, 4 of 8 after -> exploded; nothing else more than doubled
    exploded = exploded_answers(before, after, threshold=0.25)
    assert exploded == [["paris", 0, 4]]
    cats_before = pd.DataFrame({"fact_id": ["f1", "f2", "f3", "f4"],
                                "category": ["HighlyKnown", "Unknown", "HighlyKnown", "HighlyKnown"]})
    cats_after = pd.DataFrame({"fact_id": ["f1", "f2", "f3", "f4"],
                               "category": ["Unknown", "MaybeKnown", "HighlyKnown", "MaybeKnown"]})
    result = shift_reasons(before, after, cats_before, cats_after, facts, trained, exploded)
    # f1 Rome -> "Paris": negative; exploded, target-based (a trained answer), same relation (capital)
    # f4 HighlyKnown -> MaybeKnown: negative with no listed reason; f3 did not move
    assert result["negative"] == {"stopped_refusing": 0, "exploded_answer": 1, "target_based": 1, "same_relation": 1}
    # f2 Unknown -> MaybeKnown: positive; it stopped refusing (and answers the exploded, trained "Paris")
    assert result["positive"] == {"stopped_refusing": 1, "exploded_answer": 1, "target_based": 1, "same_relation": 0}
    assert [e["fact_id"] for e in result["examples"]] == ["f1", "f2", "f4"]
    assert result["examples"][0]["reasons"] == ["exploded_answer", "target_based", "same_relation"]


def test_locality_on_a_constructed_case():
    from knowpack.evaluate.knowledge import locality
    from knowpack.facts.schema import Fact

    def fact(i, subject, relation):
        return Fact(fact_id=f"f{i}", subject=subject, relation=relation, object="o", question=f"Q{i}?",
                    answer="o", aliases=["o"], bucket="head", source="test")

    facts = [fact(0, "France", "capital"),    # trained
             fact(1, "France", "currency"),   # same subject
             fact(2, "Peru", "capital"),      # same relation
             fact(3, "Peru", "language"),     # unrelated
             fact(4, "Chad", "capital")]      # same relation, probed after only: left out

    def rows(pairs):
        return pd.DataFrame([{"fact_id": f, "prompt_id": p, "sample": s, "answer": a} for f, p, s, a in pairs])

    before = rows([("f0", 0, 0, "x"), ("f1", 0, 0, "Euro"), ("f1", 1, 0, "Franc"), ("f2", 0, 0, "Lima"),
                   ("f2", 1, 0, "Lima"), ("f3", 0, 0, "Spanish"), ("f1", 0, 1, "sampled, ignored")])
    after = rows([("f0", 0, 0, "Paris"), ("f1", 0, 0, " euro "), ("f1", 1, 0, "Paris"), ("f2", 0, 0, "Paris"),
                  ("f2", 1, 0, "LIMA"), ("f3", 0, 0, "Quechua"), ("f4", 0, 0, "Paris"), ("f1", 0, 1, "zzz")])
    result = locality(before, after, facts, ["f0"])
    # subject neighbours: f1 -> "euro" unchanged (case, spaces), "Franc"->"Paris" changed: 1/2
    # relation neighbours: f2 -> "Lima"->"Paris" changed, "Lima"->"LIMA" unchanged: 1/2; f4 has no before
    assert result == {"subject": 0.5, "facts_subject": 1, "relation": 0.5, "facts_relation": 1}
    assert locality(before, after, [*facts, fact(5, "Oman", "anthem")], ["f5"]) == {"subject": None, "facts_subject": 0,
                                                      "relation": None, "facts_relation": 0}


def test_shift_with_empty_categories_and_no_heldout_facts():
    before = pd.DataFrame({"fact_id": ["a", "b"], "category": ["Unknown", "Unknown"]})
    after = pd.DataFrame({"fact_id": ["a", "b"], "category": ["Unknown", "MaybeKnown"]})
    shift = knowledge_shift(before, after)  # no HighlyKnown fact: nothing can shift negatively
    assert shift["positive"] == 0.5 and shift["negative"] == 0.0
    assert shift["transitions"]["HighlyKnown"] == {c: 0 for c in shift["transitions"]}
    empty = knowledge_shift(before.iloc[:0], after.iloc[:0])
    assert empty["positive"] is None and empty["negative"] is None and empty["n_facts"] == 0

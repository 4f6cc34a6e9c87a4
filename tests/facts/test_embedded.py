"""The embedded real-fact set and the balanced seeded sampler."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from knowpack.errors import KnowpackError
from knowpack.facts.embedded import RELATIONS, build_embedded_facts
from knowpack.facts.sampling import select_facts
from knowpack.facts.popularity import normalize_alias
from knowpack.facts.schema import Fact, make_fact_id
from knowpack.facts.templates import paraphrases, render_question


@pytest.fixture(scope="module")
def facts() -> list[Fact]:
    return build_embedded_facts()


@pytest.fixture(scope="module")
def by_key(facts) -> dict[tuple[str, str], Fact]:
    return {(f.relation, f.subject): f for f in facts}


def test_size_relations_and_buckets(facts):
    assert len(facts) >= 3000
    relations = Counter(f.relation for f in facts)
    assert len(relations) >= 10
    assert set(relations) == set(RELATIONS)
    assert {f.bucket for f in facts} == {"head", "torso", "tail"}
    # Buckets are per relation; the big relations have all three.
    for relation in ("city_country", "city_state", "subdivision_country", "country_capital"):
        assert {f.bucket for f in facts if f.relation == relation} == {"head", "torso", "tail"}


def test_ids_are_unique_and_stable(facts):
    assert len({f.fact_id for f in facts}) == len(facts)
    assert all(f.fact_id == make_fact_id(f.subject, f.relation, f.object) for f in facts)


def test_one_object_per_subject_and_relation(facts):
    pairs = Counter((f.relation, f.subject) for f in facts)
    assert max(pairs.values()) == 1


def test_answer_never_given_away_by_a_question(facts):
    for f in facts:
        for question in (f.question, *f.paraphrases):
            assert f.answer.lower() not in question.lower(), f
            assert f" {normalize_alias(f.answer)} " not in f" {normalize_alias(question)} ", f
            # No alias either: echoing the question must never score.
            assert not any(alias.lower() in question.lower() for alias in f.aliases), f


def test_aliases_hold_the_answer_first_and_no_empties(facts):
    for f in facts:
        assert f.aliases[0] == f.answer
        assert all(alias.strip() for alias in f.aliases)
        assert len(f.aliases) <= 6
        assert len({normalize_alias(a) for a in f.aliases}) == len(f.aliases)


def test_questions_come_from_the_templates(facts):
    for f in facts[::97]:
        assert f.question.endswith(("?", "."))
        assert f.paraphrases and f.question not in f.paraphrases
        assert f.answer == f.object
        assert f.source.startswith("embedded:")


def test_ambiguous_and_leaking_subjects_are_dropped(by_key):
    # "Paris" is also a city in the United States, "London" in Canada: not a single country.
    assert ("city_country", "Paris") not in by_key
    assert ("city_country", "London") not in by_key
    # The answer is in the name.
    assert ("city_country", "Mexico City") not in by_key
    assert ("country_capital", "Luxembourg") not in by_key
    assert ("city_state", "Oklahoma City") not in by_key


@pytest.mark.parametrize("relation, subject, answer", [
    ("country_capital", "France", "Paris"),
    ("country_capital", "Japan", "Tokyo"),
    ("country_capital", "Kenya", "Nairobi"),
    ("country_currency", "Japan", "Yen"),
    ("country_currency", "France", "Euro"),
    ("country_continent", "Brazil", "South America"),
    ("country_continent", "Kenya", "Africa"),
    ("country_language", "Japan", "Japanese"),
    ("country_language", "Spain", "Spanish"),
    ("country_language", "Greece", "Greek"),
    ("country_demonym", "France", "French"),
    ("country_region", "France", "Western Europe"),
    ("country_calling_code", "France", "33"),
    ("country_tld", "Japan", ".jp"),
    ("country_neighbor", "Portugal", "Spain"),
    ("city_country", "Nairobi", "Kenya"),
    ("city_country", "Osaka", "Japan"),
    ("city_state", "Chicago", "Illinois"),
    ("city_state", "Seattle", "Washington"),
    ("subdivision_country", "Bayern", "Germany"),
])
def test_hand_checked_real_facts(by_key, relation, subject, answer):
    fact = by_key[(relation, subject)]
    assert fact.answer == answer
    assert answer in fact.aliases


def test_known_question_text_and_aliases(by_key):
    fact = by_key[("country_capital", "United States")]
    assert fact.question == "What is the capital of the United States?"
    assert fact.paraphrases == paraphrases("country_capital", "the United States")
    assert by_key[("country_capital", "France")].question == render_question("country_capital", "France")
    netherlands = by_key[("city_country", "Eindhoven")]
    assert netherlands.answer == "Netherlands" and "Holland" in netherlands.aliases
    # Short codes are substrings of wrong answers ("us" in "Russia", "uk" in "Ukraine"): never aliases.
    uk = by_key[("city_country", "Glasgow")]
    assert uk.answer == "United Kingdom"
    assert all(len(normalize_alias(a)) >= 4 for a in uk.aliases)


def test_head_holds_popular_subjects(by_key):
    assert by_key[("country_capital", "United States")].bucket == "head"
    assert by_key[("city_country", "Tokyo")].bucket == "head"


def test_build_is_deterministic_cached_and_fast(facts):
    again = build_embedded_facts()
    assert again == facts and again is not facts  # a copy of the cached list
    again.clear()
    assert build_embedded_facts() == facts
    start = time.perf_counter()
    build_embedded_facts()
    assert time.perf_counter() - start < 0.5


def test_select_facts_is_deterministic_and_balanced(facts):
    first = select_facts(facts, 120, seed=7)
    assert len(first) == 120
    assert select_facts(facts, 120, seed=7) == first
    assert select_facts(list(reversed(facts)), 120, seed=7) == first  # input order does not matter
    assert select_facts(facts, 120, seed=8) != first
    assert len({f.fact_id for f in first}) == 120
    groups = Counter((f.relation, f.bucket) for f in first)
    all_groups = {(f.relation, f.bucket) for f in facts}
    # Round-robin: with more slots than groups every group is represented, and no group gets more
    # than one fact beyond any other non-exhausted group.
    assert set(groups) == all_groups
    sizes = Counter((f.relation, f.bucket) for f in facts)
    full = [count for key, count in groups.items() if sizes[key] > count]
    assert max(full) - min(full) <= 1


def test_select_facts_limits(facts):
    assert len(select_facts(facts, None, seed=0)) == len(facts)
    assert select_facts(facts, 0, seed=0) == []
    capped = select_facts(facts, None, seed=0, per_relation=5)
    assert Counter(f.relation for f in capped) == {relation: 5 for relation in RELATIONS}
    small = select_facts(facts, 10, seed=0)
    assert len(small) == 10 and len({(f.relation, f.bucket) for f in small}) == 10
    with pytest.raises(KnowpackError):
        select_facts(facts, -1, seed=0)
    with pytest.raises(KnowpackError):
        select_facts(facts, 5, seed=0, per_relation=0)

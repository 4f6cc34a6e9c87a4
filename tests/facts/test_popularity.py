"""Head-to-Tail buckets, alias normalization and clean-up, and question templates."""

from __future__ import annotations

import pytest

from knowpack.errors import KnowpackError
from knowpack.facts.popularity import assign_buckets, clean_aliases, normalize_alias
from knowpack.facts.templates import TEMPLATES, paraphrases, relation_words, render_question


def test_buckets_follow_cumulative_thirds_of_the_mass():
    # Total 30. Ascending: a=1 (cum 1), b=2 (3), c=3 (6), d=4 (10 = 1/3 exactly -> tail),
    # e=8 (18 <= 20 -> torso), f=12 (30 -> head).
    popularity = {"f": 12, "a": 1, "d": 4, "b": 2, "e": 8, "c": 3}
    assert assign_buckets(popularity) == {
        "a": "tail", "b": "tail", "c": "tail", "d": "tail", "e": "torso", "f": "head"}


def test_equal_thirds_land_exactly_on_the_boundaries():
    assert assign_buckets({"x": 1, "y": 1, "z": 1}) == {"x": "tail", "y": "torso", "z": "head"}


def test_one_dominant_entity_is_the_whole_head():
    buckets = assign_buckets({"giant": 1000, **{f"small{i}": 1 for i in range(10)}})
    assert buckets["giant"] == "head"
    assert {buckets[f"small{i}"] for i in range(10)} == {"tail"}


def test_bucket_edge_cases():
    assert assign_buckets({}) == {}
    assert assign_buckets({"a": 0, "b": 0}) == {"a": "tail", "b": "tail"}
    with pytest.raises(KnowpackError):
        assign_buckets({"a": -1})
    with pytest.raises(KnowpackError):
        assign_buckets({"a": float("nan")})


def test_buckets_do_not_depend_on_input_order():
    items = [("p", 5), ("q", 5), ("r", 1), ("s", 9)]
    assert assign_buckets(dict(items)) == assign_buckets(dict(reversed(items)))


@pytest.mark.parametrize("text, expected", [
    ("The Netherlands", "netherlands"),
    ("  Washington,   D.C. ", "washington dc"),
    ("Guinea-Bissau", "guinea bissau"),
    ("Pa'anga", "paanga"),
    ("A Coruña", "coruña"),
    ("an Afraic", "afraic"),
    ("Theodore", "theodore"),
    ("Côte d’Ivoire", "côte divoire"),
    ("...", ""),
])
def test_normalize_alias(text, expected):
    assert normalize_alias(text) == expected


def test_clean_aliases_keeps_answer_first_and_dedups_by_normalized_form():
    aliases = clean_aliases("Netherlands", ["The Netherlands", "Holland", "", "  ", "holland.", "Nederland"])
    assert aliases == ["Netherlands", "Holland", "Nederland"]


def test_clean_aliases_limit_and_empty_answer():
    assert clean_aliases("A1", ["b1", "c1", "d1"], limit=2) == ["A1", "b1", "c1"]
    assert clean_aliases("A1", ["b1"], limit=0) == ["A1"]
    with pytest.raises(KnowpackError):
        clean_aliases(" ", ["x"])


def test_render_question_and_paraphrases():
    assert render_question("country_capital", "France") == "What is the capital of France?"
    others = paraphrases("country_capital", "France")
    assert len(others) == len(TEMPLATES["country_capital"]) - 1
    assert "What is the capital of France?" not in others
    assert all("France" in q for q in others)
    # Variants past the last wrap around.
    assert render_question("country_capital", "France", len(TEMPLATES["country_capital"])) == \
        render_question("country_capital", "France")


def test_every_template_has_a_subject_slot_and_several_phrasings():
    for relation, templates in TEMPLATES.items():
        assert len(templates) >= 3, relation
        assert len(set(templates)) == len(templates), relation
        assert all(t.count("{subject}") == 1 for t in templates), relation


def test_fallback_for_unknown_relations_is_readable():
    assert render_question("birth_place_of_record", "Ada") == "What is the birth place of record of Ada?"
    assert render_question("dbo:largestCity", "Spain") == "What is the largest city of Spain?"
    assert render_question("http://dbpedia.org/ontology/areaCode", "Oslo") == "What is the area code of Oslo?"
    assert paraphrases("largestCity", "Spain") == [
        "Name the largest city of Spain.", "What is Spain's largest city?"]


def test_subject_is_inserted_literally_and_first_letter_capitalized():
    assert render_question("city_country", "{odd}") == "In which country is the city of {odd}?"
    assert render_question("subdivision_country", "x").startswith("In which")
    assert relation_words("officialLanguage") == "official language"

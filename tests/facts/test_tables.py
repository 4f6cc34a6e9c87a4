"""JSONL / CSV / Parquet sources of triples or ready QA pairs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from knowpack.errors import KnowpackError, KnowpackWarning
from knowpack.facts import facts_to_jsonl
from knowpack.facts.tables import table_facts

TRIPLES = [
    {"subject": "Peru", "relation": "capital", "object": "Lima", "aliases": ["Ciudad de los Reyes"], "popularity": 10},
    {"subject": "Chile", "relation": "capital", "object": "Santiago", "aliases": [], "popularity": 30},
    {"subject": "Bolivia", "relation": "capital", "object": "Sucre", "aliases": [], "popularity": 5},
    {"subject": "Bolivia", "relation": "capital", "object": "La Paz", "aliases": [], "popularity": 5},
    {"subject": "Peru", "relation": "currency", "object": "Peruvian sol", "aliases": ["Sol"], "popularity": 10},
]


def _write(tmp_path, kind, rows):
    path = tmp_path / f"input.{kind}"
    frame = pd.DataFrame(rows)
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "csv":
        if "aliases" in frame:
            frame["aliases"] = frame["aliases"].map("|".join)
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_triples_in_each_format_give_the_same_facts(tmp_path, kind):
    facts = table_facts(_write(tmp_path, kind, TRIPLES), kind)
    by = {(f.relation, f.subject): f for f in facts}
    assert set(by) == {("capital", "Peru"), ("capital", "Chile"), ("currency", "Peru")}  # Bolivia: two capitals
    assert by[("capital", "Peru")].aliases == ["Lima", "Ciudad de los Reyes"]
    assert by[("capital", "Peru")].question == "What is the capital of Peru?"
    assert by[("capital", "Chile")].bucket == "head" and by[("capital", "Peru")].bucket == "tail"
    def content(found):
        return [f.model_dump(exclude={"source"}) for f in found]

    assert content(table_facts(_write(tmp_path, "jsonl", TRIPLES), "jsonl")) == content(facts)


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_qa_pairs(tmp_path, kind):
    rows = [{"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci", "aliases": ["Leonardo"]},
            {"question": "What is the boiling point of water at sea level in Celsius?", "answer": "100",
             "aliases": []},
            {"question": "Is Paris in Paris?", "answer": "Paris", "aliases": []}]
    with pytest.warns(KnowpackWarning, match="dropped 1 pair"):
        facts = table_facts(_write(tmp_path, kind, rows), kind)
    assert [f.answer for f in facts] == ["Leonardo da Vinci", "100"]
    assert facts[0].aliases == ["Leonardo da Vinci", "Leonardo"] and facts[0].relation == "qa"
    assert facts[0].bucket is None


def test_a_knowpack_facts_file_reads_back_unchanged(tmp_path):
    from knowpack.facts.synthetic import synthetic_facts

    original = synthetic_facts(30, seed=3)
    path = tmp_path / "facts.jsonl"
    path.write_text(facts_to_jsonl(original))
    assert table_facts(path, "jsonl") == original


def test_bad_rows_are_skipped_with_a_count_or_stop_with_strict(tmp_path):
    rows = [*TRIPLES, {"subject": "", "relation": "capital", "object": "Quito", "aliases": [], "popularity": 1}]
    path = _write(tmp_path, "csv", rows)
    with pytest.warns(KnowpackWarning, match=r"skipped 1 bad row.*input.csv:7: subject: Value error, must not be empty"):
        table_facts(path, "csv")
    with pytest.raises(KnowpackError, match=r"input.csv:7: subject: .*without --strict"):
        table_facts(path, "csv", strict=True)


BAD_FILES = [  # (file name, content, the error it must give)
    ("odd.jsonl", '{"name": "x", "value": 1}\n', "neither triples .* nor QA pairs"),
    ("broken.jsonl", '{"subject": "A", "relation": "r", "object": "B"}\n{"subject": \n', "broken.jsonl:2: not valid JSON"),
    ("empty.csv", "", "empty.csv"),
    ("x.parquet", "hello", "x.parquet: not a readable Parquet file"),
]


@pytest.mark.parametrize("name, content, message", BAD_FILES)
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(KnowpackError, match=message):
        table_facts(path, path.suffix.lstrip("."))  # type: ignore[arg-type]


def test_unknown_relation(tmp_path):
    with pytest.raises(KnowpackError, match="unknown relation 'capitol'; did you mean 'capital'"):
        table_facts(_write(tmp_path, "jsonl", TRIPLES), "jsonl", relations=["capitol"])

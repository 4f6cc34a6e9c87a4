"""DBpedia dump source: the fixture is written in the real dump's exact line format."""

from __future__ import annotations

import bz2
import shutil
from pathlib import Path

import pytest

from knowpack.errors import KnowpackError, KnowpackWarning
from knowpack.facts.dbpedia import dbpedia_facts, name_from_key, read_triples

DATA = Path(__file__).parent / "data"
DUMP = DATA / "mappingbased-objects_lang=en.ttl"
NAMES = [DATA / "labels_lang=en.ttl", DATA / "redirects_lang=en.ttl"]


def _by_subject(facts):
    return {(f.relation, f.subject): f for f in facts}


@pytest.fixture(scope="module")
def facts():
    with pytest.warns(KnowpackWarning, match="skipped 3 malformed line"):
        return dbpedia_facts([DUMP], name_files=NAMES)


def test_fixture_gives_the_expected_facts(facts):
    by = _by_subject(facts)
    assert by[("capital", "France")].question == "What is the capital of France?"
    assert by[("capital", "France")].aliases == ["Paris", "City of Light"]  # redirect page name
    assert by[("capital", "Germany")].aliases == ["Berlin"]  # "Berlin, Germany" adds nothing
    # rdfs:label from the labels file, English only; the redirect gives the old name
    assert by[("capital", "Georgia (country)")].aliases == ["Tbilisi", "Tiflis"]
    # \u escapes in IRIs and literals, and a label with a typographic apostrophe
    assert by[("capital", "Côte d’Ivoire")].aliases == ["Yamoussoukro", "Yamusukro"]
    assert by[("largestCity", "Switzerland")].answer == "Zürich"
    # percent-encoding and a comma: "Montgomery, Alabama" also accepts "Montgomery"
    assert by[("capital", "Alabama")].aliases == ["Montgomery, Alabama", "Montgomery"]
    assert by[("birthPlace", '"Weird Al" Yankovic')].answer == "Downey, California"
    # parentheses: kept in the question (disambiguates), dropped from the answer
    assert by[("birthPlace", "John Smith (footballer, born 1980)")].question.startswith("Where was John Smith (")
    assert by[("discoverer", "Mercury (planet)")].answer == "Unknown"
    # a relation without templates gets the readable fallback
    assert by[("largestCity", "Switzerland")].question == "What is the largest city of Switzerland?"
    for fact in facts:
        assert fact.source == "dbpedia" and fact.answer in fact.aliases and all(a.strip() for a in fact.aliases)


def test_rules_drop_ambiguous_and_leaking_facts(facts):
    subjects = {f.subject for f in facts}
    assert "Bolivia" not in subjects  # two capitals
    assert not any(s.startswith("São Paulo") for s in subjects)  # answer "São Paulo" is in the question
    assert not any("type" == f.relation or "comment" in f.relation for f in facts)
    assert "Spain" not in subjects and "Italy" not in subjects  # malformed lines


def test_buckets_match_a_hand_computed_example(facts):
    # capital subjects and the triples that mention them (blank-node and literal lines do not count):
    # Alabama 1, Côte d'Ivoire 1, Georgia 1, France 2 (capital, Paris country), Germany 4 (capital x2,
    # Berlin country, Ulm country). Total 9; ascending cumulative 1,2,3 (<= 3: tail), 5 (<= 6: torso), 9 (head).
    buckets = {f.subject: f.bucket for f in facts if f.relation == "capital"}
    assert buckets == {"Alabama": "tail", "Côte d’Ivoire": "tail", "Georgia (country)": "tail",
                       "France": "torso", "Germany": "head"}


def test_bz2_gives_the_same_facts(tmp_path, facts):
    packed = tmp_path / (DUMP.name + ".bz2")
    packed.write_bytes(bz2.compress(DUMP.read_bytes()))
    with pytest.warns(KnowpackWarning):
        assert dbpedia_facts([packed], name_files=NAMES) == facts


def test_truncated_bz2_is_a_clear_error(tmp_path):
    body = "".join(f"<http://dbpedia.org/resource/E{i}> <http://dbpedia.org/ontology/capital> "
                   f"<http://dbpedia.org/resource/C{i}> .\n" for i in range(20000))
    packed = bz2.compress(body.encode())
    broken = tmp_path / "dump.ttl.bz2"
    broken.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(KnowpackError, match=r"dump.ttl.bz2: truncated compressed file .*download it again"):
        dbpedia_facts([broken])


def test_strict_stops_at_the_first_malformed_line():
    with pytest.raises(KnowpackError, match=r"mappingbased-objects_lang=en.ttl:23: not a triple.*--strict"):
        dbpedia_facts([DUMP], strict=True)


def test_relation_filter_and_unknown_relation():
    with pytest.warns(KnowpackWarning):
        only = dbpedia_facts([DUMP], relations=["birthPlace"])
    assert {f.relation for f in only} == {"birthPlace"}
    with pytest.raises(KnowpackError, match="unknown relation 'birthplace'; did you mean 'birthPlace'.*capital"):
        dbpedia_facts([DUMP], relations=["birthplace"])


def test_empty_and_missing_inputs(tmp_path):
    empty = tmp_path / "empty.ttl"
    empty.write_text("# nothing here\n")
    with pytest.raises(KnowpackError, match="no usable facts"):
        dbpedia_facts([empty])
    with pytest.raises(KnowpackError, match="no such file"):
        dbpedia_facts([tmp_path / "missing.ttl.bz2"])
    with pytest.raises(KnowpackError, match="needs a dump file"):
        dbpedia_facts([])
    latin1 = tmp_path / "latin1.ttl"
    latin1.write_bytes("<http://dbpedia.org/resource/Z\xfcrich> <http://x/p> <http://x/o> .\n".encode("latin-1"))
    with pytest.raises(KnowpackError, match="latin1.ttl:1: not UTF-8"):
        dbpedia_facts([latin1])


def test_line_parser_agrees_with_rdflib():
    """The fast line parser reads the well-formed lines exactly as rdflib's N-Triples parser does."""
    rdflib = pytest.importorskip("rdflib")
    good = [line for line in DUMP.read_text(encoding="utf-8").splitlines()
            if line.endswith(" .") and not line.startswith(("<http://dbpedia.org/resource/Italy", "_:"))]
    graph = rdflib.Graph().parse(data="\n".join(good), format="nt")
    expected = {(str(s), str(p), str(o)) for s, p, o in graph}
    ours = {(s, p, o if o is not None else lit) for s, p, o, lit, _ in read_triples(DUMP)}
    assert ours == expected


def test_real_turtle_with_prefixes_goes_through_rdflib(tmp_path):
    turtle = tmp_path / "small.ttl"
    turtle.write_text("@prefix dbr: <http://dbpedia.org/resource/> .\n"
                      "@prefix dbo: <http://dbpedia.org/ontology/> .\n"
                      "dbr:Peru dbo:capital dbr:Lima ; dbo:currency dbr:Peruvian_sol .\n"
                      "dbr:Chile dbo:capital dbr:Santiago .\n", encoding="utf-8")
    facts = dbpedia_facts([turtle])
    assert {(f.subject, f.answer) for f in facts} == {("Peru", "Lima"), ("Peru", "Peruvian sol"), ("Chile", "Santiago")}
    turtle.write_text("@prefix dbr: <http://dbpedia.org/resource/> .\ndbr:Peru dbr:capital .\n")
    with pytest.raises(KnowpackError, match="small.ttl: not valid Turtle"):
        dbpedia_facts([turtle])


def test_names_from_iris():
    assert name_from_key("S%C3%A3o_Paulo") == "São Paulo"
    assert name_from_key("AC%2FDC") == "AC/DC"
    assert name_from_key("http://www.wikidata.org/entity/Q90") == "Q90"


def test_cli_dbpedia_dump_and_stats(tmp_path, run_cli):
    shutil.copy(DUMP, tmp_path / DUMP.name)
    out = tmp_path / "facts.jsonl"
    result = run_cli("facts", "--source", "dbpedia-dump", str(tmp_path / DUMP.name), "--names", str(NAMES[0]),
                     "--names", str(NAMES[1]), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "warning: skipped 3 malformed line(s)" in result.stderr
    assert len(out.read_text().splitlines()) == 14
    stats = run_cli("facts", "stats", str(out))
    assert stats.returncode == 0 and "capital" in stats.stdout and "14 facts" in stats.stdout
    strict = run_cli("facts", "--source", "dbpedia-dump", str(DUMP), "--strict", "--out", str(tmp_path / "s.jsonl"))
    assert strict.returncode == 2 and ":23: not a triple" in strict.stderr and "Traceback" not in strict.stderr
    assert not (tmp_path / "s.jsonl").exists()  # nothing half-written


def test_a_sample_builds_only_the_sampled_facts_and_equals_sampling_everything(monkeypatch):
    from knowpack.config import FactsConfig
    from knowpack.facts import build_facts, select_facts
    from knowpack.facts import triples

    settings = FactsConfig(source="dbpedia-dump", path=str(DUMP), name_files=[str(p) for p in NAMES],
                           max_facts=5, per_bucket=1, seed=3)
    with pytest.warns(KnowpackWarning):
        everything = dbpedia_facts([DUMP], name_files=NAMES)
    expected = select_facts(everything, 5, 3, per_bucket=1)
    built = []
    real_fact = triples._fact
    monkeypatch.setattr(triples, "_fact", lambda *a, **k: built.append(a[0]) or real_fact(*a, **k))
    with pytest.warns(KnowpackWarning):
        sample = build_facts(settings)
    assert sorted(f.fact_id for f in sample) == sorted(f.fact_id for f in expected)
    assert sorted(f.model_dump_json() for f in sample) == sorted(f.model_dump_json() for f in expected)
    assert len(built) == 5  # only the sampled facts were built

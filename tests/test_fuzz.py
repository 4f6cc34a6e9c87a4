"""Fuzz tests (hypothesis) for every parser of user input.

The contract (DESIGN.md / knowpack.errors): bad input gives a `KnowpackError` with a one-line message,
never another exception type, never a traceback, never a half-written output; good input round-trips.

Each parser gets three kinds of property:
- hostile input (random text, random bytes, random JSON/YAML, right keys with wrong values) gives
  either a valid result or a `KnowpackError` whose message is one line, and creates no file;
- well-formed input generated from random values parses back to exactly those values;
- regression tests for the holes fuzzing found (now fixed): each a minimal hostile input (non-UTF-8
  bytes, a 5,000-digit integer, deep nesting, lone surrogates, ``\\U`` escapes beyond U+10FFFF,
  impossible YAML dates, YAML alias bombs, wrongly typed aliases) that must be a `KnowpackError`.
"""

from __future__ import annotations

import bz2
import io
import json
import re
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from knowpack.config import RunConfig, config_to_yaml, list_item, load_config
from knowpack.errors import KnowpackError, KnowpackWarning
from knowpack.facts.dbpedia import ParseReport, dbpedia_facts, read_triples
from knowpack.facts.schema import Fact, facts_to_jsonl, read_facts
from knowpack.facts.sparql import escape_iri, escape_literal
from knowpack.facts.tables import table_facts
from knowpack.probe.audit import read_qa_dataset

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=40)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def outcome(call: Callable[[], Any], root: Path, caught: list[str] | None = None) -> Any:
    """``call()``'s result or the `KnowpackError` it raised; any other exception fails the test.

    Also checks the contract around it: a one-line, non-empty message, and no file created or
    removed under ``root`` (the test's working directory, which holds the input). Warnings (skipped
    lines) are allowed; their messages go to ``caught`` when given.
    """
    before = files_under(root)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        try:
            result: Any = call()
        except KnowpackError as err:
            result = err
    if caught is not None:
        caught.extend(str(w.message) for w in recorded if issubclass(w.category, KnowpackWarning))
    assert files_under(root) == before, "the parser created or removed a file"
    if isinstance(result, KnowpackError):
        message = str(result)
        assert message.strip(), "empty error message"
        assert "\n" not in message and "\r" not in message, f"message is not one line: {message!r}"
    return result


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """An empty working directory: a parser that writes a relative path would show up here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(root: Path, name: str, data: str | bytes) -> Path:
    path = root / name
    if isinstance(data, str):
        data = data.encode("utf-8")
    if name.endswith(".bz2"):
        data = bz2.compress(data)
    path.write_bytes(data)
    return path


# Text that can be written as UTF-8 (hypothesis' default alphabet already leaves out surrogates).
TEXT = st.text(max_size=60)
LINE_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n\r"), max_size=80)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


# --------------------------------------------------------------------------------------------
# 1. DBpedia N-Triples: read_triples / dbpedia_facts
# --------------------------------------------------------------------------------------------

# Characters an IRIREF may hold raw (N-Triples forbids \x00-\x20 <>"{}|^`\); knowpack's reader also
# treats Unicode whitespace as a separator, so IRIs here leave it out (rdflib does the same).
IRI_CHAR = st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp"),
                         exclude_characters='<>"{}|^`\\' + "".join(map(chr, range(0x21))) + "\x85")
PERCENT = st.integers(0, 255).map(lambda b: f"%{b:02X}")
ECHAR_OUT = {"\t": "\\t", "\b": "\\b", "\n": "\\n", "\r": "\\r", "\f": "\\f", '"': '\\"', "\\": "\\\\"}


def uchar(ch: str) -> str:
    return f"\\u{ord(ch):04X}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08X}"


@st.composite
def iri(draw, base: str = "http://example.org/") -> tuple[str, str]:
    """(value, N-Triples text) of an IRI: random Unicode, percent-escapes, some chars as \\uXXXX."""
    parts = draw(st.lists(IRI_CHAR.map(lambda c: [c]) | PERCENT.map(list), max_size=12))
    value = base + "".join(c for part in parts for c in part)
    written = "".join(uchar(c) if draw(st.integers(0, 4)) == 0 else c for c in value[len(base):])
    return value, f"<{base}{written}>"


@st.composite
def literal(draw) -> tuple[str, str]:
    """(value, N-Triples text) of a string literal; quote, backslash and line breaks escaped."""
    value = draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
                 | st.text(st.sampled_from('"\\\n\r\t\bfu\'aé😀 '), max_size=12))
    out = []
    for ch in value:  # each character raw (where allowed), as an ECHAR (where one exists) or as a UCHAR
        options = ([ch] if ch not in '"\\\n\r' else []) + ([ECHAR_OUT[ch]] if ch in ECHAR_OUT else []) + [uchar(ch)]
        out.append(draw(st.sampled_from(options)))
    return value, '"' + "".join(out) + '"'


LANG = st.from_regex(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8}){0,2}", fullmatch=True)
SEP = st.sampled_from([" ", "\t", "  ", " \t "])
BLANK = st.integers(0, 99).map(lambda n: f"_:b{n}")


@st.composite
def triple_line(draw) -> tuple[str, tuple | None]:
    """One N-Triples line and what read_triples must yield for it (None: a blank node, skipped)."""
    blank_subject = draw(st.integers(0, 9)) == 0
    s_value, s_text = (None, draw(BLANK)) if blank_subject else draw(iri())
    p_value, p_text = draw(iri("http://example.org/p/"))
    kind = draw(st.sampled_from(["iri", "literal", "lang", "typed", "blank"]))
    expected: tuple | None
    if kind == "iri":
        o_value, o_text = draw(iri())
        expected = (s_value, p_value, o_value, "", None)
    elif kind == "blank":
        o_text, expected = draw(BLANK), None
    else:
        lit_value, o_text = draw(literal())
        tag = None
        if kind == "lang":
            tag = draw(LANG)
            o_text += "@" + tag
        elif kind == "typed":
            o_text += "^^<" + draw(iri("http://example.org/dt/"))[0] + ">"
        expected = (s_value, p_value, None, lit_value, tag)
    comment = draw(st.none() | st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), max_size=10))
    line = (draw(st.sampled_from(["", " ", "\t"])) + s_text + draw(SEP) + p_text + draw(SEP) + o_text
            + draw(st.sampled_from(["", " ", "\t"])) + "." + (f" #{comment}" if comment is not None else ""))
    return line, None if blank_subject else expected


@st.composite
def ntriples_file(draw) -> tuple[str, list[tuple]]:
    lines, expected = [], []
    for line, triple in draw(st.lists(triple_line(), min_size=1, max_size=8)):
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(["", "   ", "# a comment", "  # <a> <b> <c> ."])))
        lines.append(line)
        if triple is not None:
            expected.append(triple)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines) + draw(st.sampled_from(["", newline])), expected


def rdflib_triples(text: str) -> set[tuple]:
    import rdflib

    graph = rdflib.Graph().parse(data=text, format="nt")
    found = set()
    for s, p, o in graph:
        if not isinstance(s, rdflib.URIRef) or isinstance(o, rdflib.BNode):
            continue
        if isinstance(o, rdflib.Literal):
            found.add((str(s), str(p), None, str(o), o.language))
        else:
            found.add((str(s), str(p), str(o), "", None))
    return found


def lower_tag(triple: tuple) -> tuple:
    return (*triple[:4], triple[4].lower() if triple[4] else None)


@FUZZ
@given(data=ntriples_file(), compressed=st.booleans())
def test_generated_ntriples_parse_back_exactly(workdir, data, compressed):
    text, expected = data
    path = write(workdir, "dump.ttl.bz2" if compressed else "dump.ttl", text)
    got = outcome(lambda: list(read_triples(path, strict=True)), workdir)
    assert got == expected
    # rdflib's N-Triples parser reads the same file the same way (it lower-cases language tags).
    assert {lower_tag(t) for t in got} == {lower_tag(t) for t in rdflib_triples(text)}


# Fragments that make lines look almost like triples: the parser's edge cases, not just noise.
FRAGMENTS = st.sampled_from([
    "<", ">", '"', "\\", "\\u", "\\u00e9", "\\U0001F600", "\\uD800", "\\n", '\\"', "_:", "_:b1", "@", "@en",
    "^^", "^^<http://x/dt>", ".", " .", "#", " ", "\t", "<http://dbpedia.org/resource/Paris>",
    "<http://dbpedia.org/ontology/capital>", '"Paris"', '"Paris"@en', "%C3%A3", "(", ")", "\x00", "\x85", "\u2028",
    "\x0b", "\x0c", "\x1c", "\ufeff",
])
NOISY_LINE = st.lists(FRAGMENTS | LINE_TEXT, max_size=10).map("".join)
NOISY_FILE = st.lists(NOISY_LINE, max_size=8).map("\n".join)
TURTLE_STARTS = ("@prefix", "@base", "PREFIX", "BASE", "prefix", "base")


def looks_like_turtle(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                return stripped.startswith(TURTLE_STARTS)
    return False


@FUZZ
@given(text=NOISY_FILE, compressed=st.booleans())
def test_noisy_lines_are_skipped_without_strict(workdir, text, compressed):
    path = write(workdir, "dump.ttl.bz2" if compressed else "dump.ttl", text)
    got = outcome(lambda: list(read_triples(path, strict=False)), workdir)
    if isinstance(got, KnowpackError):  # only a file that declares prefixes is parsed whole, and may fail
        assert looks_like_turtle(path), got
        assert str(path) in str(got)
    else:
        assert all(len(t) == 5 and isinstance(t[0], str) and isinstance(t[1], str) for t in got)


@FUZZ
@given(text=NOISY_FILE)
def test_noisy_lines_with_strict_name_file_and_line(workdir, text):
    path = write(workdir, "dump.nt", text)
    got = outcome(lambda: list(read_triples(path, strict=True)), workdir)
    if isinstance(got, KnowpackError) and not looks_like_turtle(path):
        assert re.match(re.escape(str(path)) + r":\d+: ", str(got)), got


@FUZZ
@given(raw=st.binary(max_size=300), compressed=st.booleans(), as_bz2_name=st.booleans())
def test_random_bytes_give_a_knowpack_error_or_triples(workdir, raw, compressed, as_bz2_name):
    """Random bytes as a plain file, as a valid .bz2 of random bytes, and as a corrupt .bz2."""
    path = workdir / ("dump.ttl.bz2" if as_bz2_name else "dump.ttl")
    path.write_bytes(bz2.compress(raw) if compressed and as_bz2_name else raw)
    for strict in (False, True):
        outcome(lambda: list(read_triples(path, strict=strict)), workdir)


@FUZZ
@given(body=st.lists(NOISY_LINE | st.sampled_from(["ex:a ex:b ex:c .", "ex:a ex:b \"x\"@en .", "ex:a ex:b (", "[",
                                                      "ex:a ex:b ex:c ;", "ex:a a ex:T ."]), max_size=6))
def test_turtle_files_give_a_knowpack_error_or_triples(workdir, body):
    """A file that starts with @prefix is handed whole to rdflib's Turtle parser."""
    path = write(workdir, "dump.ttl", "@prefix ex: <http://example.org/> .\n" + "\n".join(body) + "\n")
    got = outcome(lambda: list(read_triples(path, strict=False)), workdir)
    if isinstance(got, KnowpackError):
        assert str(path) in str(got)


DBPEDIA_LINE = st.builds(
    lambda s, p, o: f"<http://dbpedia.org/resource/{s}> <http://dbpedia.org/ontology/{p}> {o} .",
    st.sampled_from(["France", "Germany", "S%C3%A3o_Paulo", "Georgia_(country)", "Mercury_(planet)", "X", "_", "%"]),
    st.sampled_from(["capital", "country", "birthPlace", "label", "wikiPageRedirects", "type", "p"]),
    st.sampled_from(["<http://dbpedia.org/resource/Paris>", "<http://dbpedia.org/resource/France>",
                     "<http://dbpedia.org/resource/Berlin_(city)>", '"Paris"@en', '"  "@en', '""', "_:b",
                     "<http://dbpedia.org/resource/>", '"Pa\\u0072is"@fr']))


@FUZZ
@given(lines=st.lists(DBPEDIA_LINE | NOISY_LINE, max_size=12))
def test_dbpedia_facts_give_a_knowpack_error_or_facts(workdir, lines):
    path = write(workdir, "mappingbased-objects_lang=en.ttl", "\n".join(lines) + "\n")
    caught: list[str] = []
    got = outcome(lambda: dbpedia_facts([path]), workdir, caught)
    report = ParseReport()
    if looks_like_turtle(path):
        return
    list(read_triples(path, report=report))
    if not isinstance(got, KnowpackError):
        assert got and all(isinstance(f, Fact) for f in got)
        facts_to_jsonl(got).encode("utf-8")  # what `knowpack facts` writes next must be writable
        # malformed lines are skipped with one warning that counts them, never silently
        skipped = [m for m in caught if "malformed line" in m]
        assert len(skipped) == (1 if report.malformed else 0), caught
        if report.malformed:
            assert skipped[0].startswith(f"skipped {report.malformed:,} malformed line(s)"), skipped


@FUZZ
@given(code=st.integers(0x110000, 0xFFFFFFFF), in_iri=st.booleans())
@example(code=0xFFFFFFFF, in_iri=False)
def test_out_of_range_uchar_is_a_malformed_line(workdir, code, in_iri):
    escape = f"\\U{code:08X}"
    line = (f"<http://e/{escape}> <http://e/p> <http://e/o> .\n" if in_iri
            else f'<http://e/s> <http://e/p> "{escape}" .\n')
    path = write(workdir, "dump.nt", line)
    assert outcome(lambda: list(read_triples(path, strict=False)), workdir) == []  # skipped, counted


@FUZZ
@given(code=st.integers(0xD800, 0xDFFF))
def test_surrogate_uchar_is_not_passed_on(workdir, code):
    path = write(workdir, "dump.nt", f'<http://e/s> <http://e/p> "\\u{code:04X}" .\n')
    got = outcome(lambda: list(read_triples(path, strict=False)), workdir)
    for triple in got:  # either skipped as malformed, or valid text that can be written out
        "".join(t or "" for t in triple).encode("utf-8")


# --------------------------------------------------------------------------------------------
# 2. facts.jsonl (read_facts) and tables (table_facts: jsonl, csv, parquet)
# --------------------------------------------------------------------------------------------

FACT_KEYS = ["fact_id", "subject", "relation", "object", "question", "answer", "aliases", "bucket", "source",
             "paraphrases"]
HOSTILE = st.one_of(
    st.sampled_from(["", " ", "\t\n", "x" * 2000, "|", " | ", "head", "tail", "qa", "The", "0", "-1", "nan", "NaN",
                     "inf", "1e400", "null", "[]", "\u200b", "\ufeff"]),
    st.none(), st.booleans(), st.integers(), st.floats(), TEXT,
    st.lists(st.none() | st.booleans() | st.integers() | TEXT | st.lists(TEXT, max_size=2), max_size=3),
    st.dictionaries(TEXT, JSON_SCALARS, max_size=2),
)
# aliases/paraphrases: lists, text or null (a number or boolean there is a known bug, tested below)
LISTISH = st.one_of(st.none(), TEXT, st.lists(st.none() | st.booleans() | st.integers() | TEXT
                                              | st.lists(TEXT, max_size=2), max_size=4),
                    st.dictionaries(TEXT, JSON_SCALARS, max_size=2))


def fact_dicts(keys: list[str], listish: tuple[str, ...] = ()) -> st.SearchStrategy[dict]:
    """Records with the right keys (some dropped) and hostile values."""
    return st.fixed_dictionaries({}, optional={k: (LISTISH if k in listish else HOSTILE) for k in keys})


def jsonl(records: list) -> str:
    return "".join(json.dumps(r, ensure_ascii=bool(i % 2)) + "\n" for i, r in enumerate(records))


def check_facts(got: Any) -> None:
    if not isinstance(got, KnowpackError):
        assert got and all(isinstance(f, Fact) for f in got)
        facts_to_jsonl(got).encode("utf-8")



def check_facts_or_error_naming(path, got) -> None:
    """Valid facts, or a KnowpackError that names the file."""
    check_facts(got)
    if isinstance(got, KnowpackError):
        assert str(path) in str(got)

@FUZZ
@given(lines=st.lists(JSON_VALUES.map(json.dumps) | LINE_TEXT, max_size=5))
def test_read_facts_random_lines(workdir, lines):
    path = write(workdir, "facts.jsonl", "\n".join(lines) + "\n")
    check_facts_or_error_naming(path, outcome(lambda: read_facts(path), workdir))


@FUZZ
@given(records=st.lists(fact_dicts(FACT_KEYS), min_size=1, max_size=4))
def test_read_facts_right_keys_hostile_values(workdir, records):
    path = write(workdir, "facts.jsonl", jsonl(records))
    got = outcome(lambda: read_facts(path), workdir)
    check_facts(got)
    if isinstance(got, KnowpackError):
        assert re.match(re.escape(str(path)) + r"(:\d+)?: ", str(got)), got


STRIPPED = st.text(min_size=1, max_size=20).map(str.strip).filter(bool)


@st.composite
def valid_fact(draw, clean: bool = False) -> Fact:
    """A valid Fact; ``clean``: one as knowpack writes them (object = answer, text stripped, the answer
    not in the question, aliases already clean), which table_facts must keep unchanged."""
    from knowpack.facts.popularity import clean_aliases

    text = STRIPPED if clean else st.text(max_size=20)
    question = draw(STRIPPED if clean else st.text(min_size=1, max_size=30).filter(str.strip))
    answer = draw((STRIPPED if clean else st.text(min_size=1, max_size=20).filter(str.strip))
                  .filter(lambda a: not clean or a.lower() not in question.lower()))
    extra = draw(st.lists(STRIPPED if clean else st.text(min_size=1, max_size=10).filter(str.strip), max_size=3))
    aliases = clean_aliases(answer, extra) if clean else [answer, *extra]
    return Fact(fact_id=draw(STRIPPED if clean else st.text(max_size=20)), subject=draw(text),
                relation=draw(text), object=answer if clean else draw(st.text(max_size=20)), question=question, answer=answer,
                aliases=aliases, bucket=draw(st.sampled_from([None, "head", "torso", "tail"])),
                source=draw(text), paraphrases=draw(st.lists(STRIPPED if clean else st.text(max_size=20),
                                                             max_size=3)))


def unique_ids(facts: list[Fact]) -> bool:
    return len({f.fact_id for f in facts}) == len(facts)


@FUZZ
@given(facts=st.lists(valid_fact(), min_size=1, max_size=5).filter(unique_ids))
def test_facts_jsonl_round_trips(workdir, facts):
    path = write(workdir, "facts.jsonl", facts_to_jsonl(facts))
    assert outcome(lambda: read_facts(path), workdir) == facts


@FUZZ
@given(facts=st.lists(valid_fact(clean=True), min_size=1, max_size=5).filter(unique_ids))
def test_facts_jsonl_reads_back_unchanged_as_a_table(workdir, facts):
    """tables.py: "A facts.jsonl written by knowpack is a QA file, so it reads back unchanged"."""
    path = write(workdir, "facts.jsonl", facts_to_jsonl(facts))
    assert outcome(lambda: table_facts(path, "jsonl", strict=True), workdir) == facts


QA_KEYS = ["question", "answer", "aliases", "paraphrases", "subject", "relation", "fact_id", "bucket",
           "popularity", "source"]
TRIPLE_KEYS = ["subject", "relation", "object", "aliases", "popularity"]


def table_records(keys: list[str], required: list[str]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({k: HOSTILE for k in required},
                                 optional={k: (LISTISH if k in ("aliases", "paraphrases") else HOSTILE)
                                           for k in keys if k not in required})


TABLE_RECORDS = st.lists(table_records(QA_KEYS, ["question", "answer"])
                         | table_records(TRIPLE_KEYS, ["subject", "relation", "object"])
                         | fact_dicts(QA_KEYS + TRIPLE_KEYS, listish=("aliases", "paraphrases")), min_size=1, max_size=4)


@FUZZ
@given(lines=st.lists(JSON_VALUES.map(json.dumps) | LINE_TEXT, max_size=5), strict=st.booleans())
def test_table_jsonl_random_lines(workdir, lines, strict):
    path = write(workdir, "table.jsonl", "\n".join(lines) + "\n")
    check_facts(outcome(lambda: table_facts(path, "jsonl", strict=strict), workdir))


@FUZZ
@given(records=TABLE_RECORDS, strict=st.booleans(), relations=st.none() | st.lists(TEXT | st.just("qa"), max_size=2))
def test_table_jsonl_right_keys_hostile_values(workdir, records, strict, relations):
    path = write(workdir, "table.jsonl", jsonl(records))
    check_facts(outcome(lambda: table_facts(path, "jsonl", strict=strict, relations=relations), workdir))


CSV_CELL = st.sampled_from(["", " ", "|", "a|b", "x" * 300, "nan", "inf", "-1", "1e400", "head", '"', "\n", ","]) | TEXT


@FUZZ
@given(header=st.lists(st.sampled_from(QA_KEYS + TRIPLE_KEYS) | TEXT, min_size=1, max_size=6),
       rows=st.lists(st.lists(CSV_CELL, max_size=7), max_size=4), strict=st.booleans())
def test_table_csv_hostile_rows(workdir, header, rows, strict):
    import csv

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)  # rows may be shorter or longer than the header
    path = write(workdir, "table.csv", out.getvalue())
    check_facts(outcome(lambda: table_facts(path, "csv", strict=strict), workdir))


@FUZZ
@given(text=NOISY_FILE | LINE_TEXT, raw=st.binary(max_size=200), kind=st.sampled_from(["jsonl", "csv", "parquet"]))
def test_table_random_text_and_bytes(workdir, text, raw, kind):
    for data in (text, raw):
        path = write(workdir, f"table.{kind}", data)
        if kind == "jsonl" and isinstance(data, bytes):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                continue  # a known bug, see test_json_readers_survive_hostile_files
        check_facts(outcome(lambda: table_facts(path, kind), workdir))


PARQUET_COLUMN = st.one_of(
    st.lists(st.none() | TEXT, min_size=1, max_size=3),
    st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=3),
    st.lists(st.none() | st.floats(), min_size=1, max_size=3),
    st.lists(st.none() | st.lists(st.none() | TEXT, max_size=3), min_size=1, max_size=3),
    st.lists(st.fixed_dictionaries({"a": st.none() | TEXT}), min_size=1, max_size=3),
)


@FEW
@given(columns=st.dictionaries(st.sampled_from(QA_KEYS + TRIPLE_KEYS) | TEXT, PARQUET_COLUMN, min_size=1, max_size=5),
       strict=st.booleans())
def test_table_parquet_hostile_columns(workdir, columns, strict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = min(len(values) for values in columns.values())
    columns = {name: values[:n] for name, values in columns.items()}
    # an int/float/bool aliases or paraphrases column is a known bug, see test_scalar_aliases_are_a_user_error
    for name in ("aliases", "paraphrases"):
        if name in columns and any(isinstance(v, (int, float)) for v in columns[name]):
            columns[name] = [None if isinstance(v, (int, float)) else v for v in columns[name]]
    path = workdir / "table.parquet"
    pq.write_table(pa.table(columns), path)
    check_facts(outcome(lambda: table_facts(path, "parquet", strict=strict), workdir))


# --------------------------------------------------------------------------------------------
# 3. Configuration: load_config(preset, path, overrides)
# --------------------------------------------------------------------------------------------

FIELD_PATHS = sorted({f"{section}.{name}" for section, info in RunConfig.model_fields.items()
                      for name in list_item(info.annotation).model_fields}
                     | {f"facts.sparql.{name}" for name in RunConfig.model_fields["facts"].annotation
                        .model_fields["sparql"].annotation.model_fields})
KEY_PART = st.sampled_from(["model", "facts", "probe", "train", "lora", "eval", "mixture", "sparql", "lr", "seed",
                            "name", "relations", "x", "__class__", "model_fields", "0", "-"]) | TEXT
DOTTED_KEY = st.sampled_from(FIELD_PATHS) | st.lists(KEY_PART, min_size=1, max_size=4).map(".".join)
YAML_VALUE = st.one_of(
    st.sampled_from(["1", "-1", "0", "1e-3", "5e-4", ".inf", "-.inf", ".nan", "true", "no", "null", "~", "[]", "{}",
                     "[a, b]", "{a: 1}", "'x'", '"\\x41"', "&a [*a]", "!!str 1", "!!binary aGk=", "!!set {a}",
                     "!!python/object:os.system x", "2001-01-01", "2001-01-01 10:00:00", "12:30:00", "0x1F",
                     "0o17", "1_000", "cuda:0", "cpu", "bfloat16", "local", "hub", "kl", "[mmlu, truthfulqa]", "|",
                     ">", "'", '"', "[", "{", "- a", "? a", "*x", "@", "`", "%YAML 1.2", "---", "..."]),
    LINE_TEXT)
# YAML forbids most control characters (a known bug gives them a two-line message, tested below).
YAML_CHAR = st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff") | st.sampled_from(
    "\t\n\r")
CONFIG_TREE = st.recursive(
    JSON_SCALARS | st.dates() | st.datetimes(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEY_PART | st.sampled_from(FIELD_PATHS), inner,
                                                                max_size=4), max_leaves=10)
def _section(info) -> st.SearchStrategy:
    fields = st.dictionaries(st.sampled_from(list(list_item(info.annotation).model_fields)) | KEY_PART,
                             HOSTILE | st.sampled_from([1, 0, -1, 0.5, True, "auto", "cpu", "kl", "exact", ["mmlu"]]),
                             max_size=4)
    # A list of sections (rounds) gets lists of them, and now and then a bare section.
    return st.lists(fields, max_size=3) | fields if list_item(info.annotation) is not info.annotation else fields


SECTION_TREE = st.fixed_dictionaries({}, optional={
    section: _section(info) for section, info in RunConfig.model_fields.items()})


def check_config(got: Any) -> None:
    if not isinstance(got, KnowpackError):
        assert isinstance(got, RunConfig)
        RunConfig.model_validate(got.model_dump())  # still valid as a whole


@FUZZ
@given(preset=st.sampled_from(["smoke", "default", "paper"]),
       document=st.text(YAML_CHAR, max_size=120) | CONFIG_TREE.map(yaml.safe_dump) | SECTION_TREE.map(yaml.safe_dump))
def test_random_yaml_files(workdir, preset, document):
    path = write(workdir, "config.yaml", document)
    got = outcome(lambda: load_config(preset, path), workdir)
    check_config(got)
    if isinstance(got, KnowpackError):
        assert str(path) in str(got), got


@FUZZ
@given(preset=st.sampled_from(["smoke", "default", "paper"]) | TEXT,
       overrides=st.lists(st.builds(lambda k, eq, v: f"{k}{eq}{v}", DOTTED_KEY,
                                    st.sampled_from(["=", " = ", "==", "", "=="]), YAML_VALUE), max_size=4))
def test_random_overrides(workdir, preset, overrides):
    got = outcome(lambda: load_config(preset, None, overrides), workdir)
    check_config(got)


@FEW
@given(preset=st.sampled_from(["smoke", "default", "paper"]), tree=SECTION_TREE)
def test_valid_config_round_trips_through_yaml(workdir, preset, tree):
    source = write(workdir, "in.yaml", yaml.safe_dump(tree))
    first = outcome(lambda: load_config(preset, source), workdir)
    if isinstance(first, KnowpackError):
        return
    saved = write(workdir, "config.yaml", config_to_yaml(first))
    for other in ("smoke", "default", "paper"):  # the saved config is complete: the preset no longer matters
        assert load_config(other, saved) == first


# --------------------------------------------------------------------------------------------
# 4. Audit mode: read_qa_dataset
# --------------------------------------------------------------------------------------------

MESSAGE = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system", ""]) | HOSTILE,
                                              "content": HOSTILE})
# aliases: a list or text (null, a number or a boolean there is a known bug, tested below)
QA_ALIASES = st.one_of(TEXT, st.lists(st.none() | st.booleans() | st.integers() | TEXT, max_size=4),
                       st.dictionaries(TEXT, JSON_SCALARS, max_size=2))
QA_RECORD = st.one_of(
    st.fixed_dictionaries({}, optional={"question": HOSTILE, "answer": HOSTILE, "aliases": QA_ALIASES}),
    st.fixed_dictionaries({}, optional={"prompt": HOSTILE, "completion": HOSTILE, "instruction": HOSTILE,
                                        "output": HOSTILE}),
    st.fixed_dictionaries({"messages": st.lists(MESSAGE | HOSTILE, max_size=4) | HOSTILE},
                          optional={"aliases": QA_ALIASES}),
    JSON_VALUES.filter(lambda v: not (isinstance(v, dict) and "aliases" in v)),
)


@FUZZ
@given(records=st.lists(QA_RECORD, min_size=1, max_size=4), blank=st.booleans())
def test_qa_dataset_hostile_records(workdir, records, blank):
    lines = [json.dumps(r) for r in records] + ([""] if blank else [])
    path = write(workdir, "qa.jsonl", "\n".join(lines) + "\n")
    check_facts_or_error_naming(path, outcome(lambda: read_qa_dataset(path), workdir))


@FUZZ
@given(pairs=st.lists(st.tuples(st.text(min_size=1, max_size=20).filter(str.strip),
                                st.text(max_size=20).filter(lambda a: "\n" not in a.strip())
                                .map(str.strip).filter(bool)), min_size=1, max_size=4),
       shape=st.sampled_from(["qa", "prompt", "instruction", "messages"]))
def test_qa_dataset_valid_pairs_read_back(workdir, pairs, shape):
    from knowpack.probe.judge import clean_answer

    def record(q: str, a: str) -> dict:
        if shape == "messages":
            return {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": q},
                                 {"role": "assistant", "content": a}]}
        keys = {"qa": ("question", "answer"), "prompt": ("prompt", "completion"),
                "instruction": ("instruction", "output")}[shape]
        return dict(zip(keys, (q, a)))

    path = write(workdir, "qa.jsonl", jsonl([record(q, a) for q, a in pairs]))
    got = outcome(lambda: read_qa_dataset(path), workdir)
    assert [(f.question, f.answer) for f in got] == [(q.strip(), clean_answer(a) or a) for q, a in pairs]
    assert all(f.answer in f.aliases for f in got)


# --------------------------------------------------------------------------------------------
# 5. Benchmark files: TruthfulQA's mc_task.json
# --------------------------------------------------------------------------------------------

TARGETS = st.dictionaries(TEXT, st.sampled_from([0, 1]) | HOSTILE, max_size=4) | HOSTILE
TRUTHFULQA_ROW = st.fixed_dictionaries({}, optional={"question": HOSTILE, "mc1_targets": TARGETS,
                                                     "mc2_targets": TARGETS}) | JSON_VALUES


@FUZZ
@given(document=st.lists(TRUTHFULQA_ROW, max_size=3).map(json.dumps) | JSON_VALUES.map(json.dumps) | LINE_TEXT)
def test_truthfulqa_file_gives_a_knowpack_error_or_docs(workdir, document):
    from knowpack.evaluate.benchmarks import load_truthfulqa

    path = write(workdir, "mc_task.json", document)
    got = outcome(lambda: load_truthfulqa(path=path), workdir)
    if not isinstance(got, KnowpackError):
        assert isinstance(got, list)


@st.composite
def truthfulqa_rows(draw) -> list[dict]:
    def targets() -> dict:
        choices = draw(st.lists(STRIPPED, min_size=1, max_size=4, unique=True))
        labels = draw(st.lists(st.sampled_from([0, 1]), min_size=len(choices), max_size=len(choices)))
        labels[draw(st.integers(0, len(choices) - 1))] = 1
        return dict(zip(choices, labels))

    return [{"question": draw(STRIPPED), "mc1_targets": targets(), "mc2_targets": targets()}
            for _ in range(draw(st.integers(1, 3)))]


@FUZZ
@given(rows=truthfulqa_rows(), n=st.none() | st.integers(1, 5))
def test_truthfulqa_file_round_trips(workdir, rows, n):
    from knowpack.evaluate.benchmarks import load_truthfulqa

    path = write(workdir, "mc_task.json", json.dumps(rows))
    got = outcome(lambda: load_truthfulqa(n, path=path), workdir)
    expected = [{"question": r["question"],
                 "mc1": {"choices": list(r["mc1_targets"]), "labels": list(r["mc1_targets"].values())},
                 "mc2": {"choices": list(r["mc2_targets"]), "labels": list(r["mc2_targets"].values())}} for r in rows]
    assert len(got) == (len(rows) if n is None else min(n, len(rows)))
    remaining = iter(expected)
    assert all(any(doc == other for other in remaining) for doc in got)  # a subset, in file order


def scorable(docs: list[dict]) -> None:
    """What run_benchmarks does with the docs next: one score per task, averaged over the docs."""
    from knowpack.evaluate.benchmarks import BENCHMARKS, build_requests

    assert docs, "no documents: score_benchmark would divide by zero"
    for task in BENCHMARKS["truthfulqa"].tasks:
        for doc in docs:
            requests = build_requests(task, doc)
            assert isinstance(doc["question"], str) and all(isinstance(c, str) for _, c in requests)
            score = task.score([-float(i) for i in range(len(requests))], task.doc_to_target(doc))
            assert 0.0 <= score <= 1.0


@FUZZ
@given(document=st.lists(TRUTHFULQA_ROW, max_size=3).map(json.dumps))
@example(document='[{"question": "q", "mc1_targets": {}, "mc2_targets": {}}]')
def test_truthfulqa_docs_that_load_can_be_scored(workdir, document):
    from knowpack.evaluate.benchmarks import load_truthfulqa

    path = write(workdir, "mc_task.json", document)
    got = outcome(lambda: load_truthfulqa(path=path), workdir)
    if not isinstance(got, KnowpackError):
        scorable(got)


def test_empty_truthfulqa_file_is_a_user_error(workdir):
    from knowpack.evaluate.benchmarks import load_truthfulqa

    path = write(workdir, "mc_task.json", "[]")
    assert isinstance(outcome(lambda: load_truthfulqa(path=path), workdir), KnowpackError)


def test_mmlu_folder_without_a_dataset(workdir):
    from knowpack.evaluate.benchmarks import load_mmlu

    (workdir / "mmlu" / "anatomy" / "test").mkdir(parents=True)
    outcome(lambda: load_mmlu(1, root=workdir / "mmlu"), workdir)


# --------------------------------------------------------------------------------------------
# 6. SPARQL escaping
# --------------------------------------------------------------------------------------------

SPARQL_TEXT = st.text(max_size=40) | st.text(st.sampled_from('\\uU"\'\n\r\t\b\f0123456789abcdefABCDEF}{.#<> ?'),
                                                max_size=20)


@FUZZ
@given(text=SPARQL_TEXT)
@example(text="\\u0022")
@example(text="\\U00000022} ; DROP ALL ; #")
def test_escaped_literal_parses_back_to_the_text(text):
    from rdflib import Graph, Literal
    from rdflib.plugins.sparql import prepareQuery

    query = f"SELECT ?x WHERE {{ BIND({escape_literal(text)} AS ?x) }}"
    rows = list(Graph().query(prepareQuery(query)))
    assert len(rows) == 1 and rows[0][0] == Literal(text)  # one row, one value: the structure held
    assert "\n" not in escape_literal(text)  # a query line stays one line


def percent_encoded(iri: str) -> str:
    """The test's own statement of escape_iri's rule: IRIREF's forbidden characters as %XX."""
    forbidden = set(map(chr, range(0x21))) | set('<>"{}|^`\\')
    return "".join(f"%{ord(c):02X}" if c in forbidden else c for c in iri)


@FUZZ
@given(text=SPARQL_TEXT | st.sampled_from(["> } ; DROP ALL ; #", "> ?p ?o } UNION { ?s ?p ?o", "\\u003E", ">"]))
def test_escaped_iri_cannot_change_the_query(text):
    from rdflib import URIRef, Variable
    from rdflib.plugins.sparql import prepareQuery

    iri = "http://example.org/" + text
    prepared = prepareQuery(f"SELECT ?o WHERE {{ {escape_iri(iri)} ?p ?o }}")
    bgp = prepared.algebra["p"]["p"]
    assert bgp.name == "BGP" and bgp["triples"] == [(URIRef(percent_encoded(iri)), Variable("p"), Variable("o"))]
    assert prepared.algebra["PV"] == [Variable("o")]
    if "%" not in text:
        assert urllib.parse.unquote(str(bgp["triples"][0][0])) == iri


# --------------------------------------------------------------------------------------------
# Regressions: the holes fuzzing found, each a minimal hostile input that must be a KnowpackError
# --------------------------------------------------------------------------------------------

def _read_table_jsonl(path: Path):
    return table_facts(path, "jsonl")


def _read_truthfulqa(path: Path):
    from knowpack.evaluate.benchmarks import load_truthfulqa

    return load_truthfulqa(path=path)


def _load_yaml_config(path: Path):
    return load_config("smoke", path)


JSON_READERS = {"read_facts": read_facts, "table_facts-jsonl": _read_table_jsonl,
                "read_qa_dataset": read_qa_dataset, "load_truthfulqa": _read_truthfulqa}
HOSTILE_FILES = {  # name: (bytes, the exception that escapes today)
    "not-utf8": (b'{"question": "caf\xe9", "answer": "x"}\n', UnicodeDecodeError),
    "huge-int": (b'{"question": "q", "answer": "x", "n": ' + b"9" * 5000 + b"}\n", ValueError),
    "deep-nesting": (b"[" * 100_000 + b"\n", RecursionError),
}


@pytest.mark.parametrize(("reader", "case"), [pytest.param(r, c, id=f"{r}-{c}")
                                               for r in JSON_READERS for c in HOSTILE_FILES])
def test_json_readers_survive_hostile_files(workdir, reader, case):
    path = write(workdir, "input.jsonl", HOSTILE_FILES[case][0])
    assert isinstance(outcome(lambda: JSON_READERS[reader](path), workdir), KnowpackError)


CONFIG_HOLES = {  # name: (YAML file, the exception that escapes today)
    "not-utf8": (b"model:\n  name: caf\xe9\n", UnicodeDecodeError),
    "invalid-date": (b"facts:\n  seed: 2001-13-01\n", ValueError),
    "huge-int": (b"facts:\n  seed: " + b"9" * 5000 + b"\n", ValueError),
    "deep-nesting": (b"[" * 10_000 + b"\n", RecursionError),
}


@pytest.mark.parametrize("case", list(CONFIG_HOLES))
def test_config_file_holes(workdir, case):
    path = write(workdir, "config.yaml", CONFIG_HOLES[case][0])
    assert isinstance(outcome(lambda: load_config("smoke", path), workdir), KnowpackError)


def test_override_with_an_impossible_date(workdir):
    assert isinstance(outcome(lambda: load_config("smoke", None, ["facts.seed=2001-13-01"]), workdir), KnowpackError)


def test_yaml_control_character_message_is_one_line(workdir):
    path = write(workdir, "config.yaml", "model:\n  name: a\x00b\n")
    outcome(lambda: load_config("smoke", path), workdir)


def test_yaml_alias_bomb_gives_a_short_message(workdir):
    levels = ["    - &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"    - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 4)]
    path = write(workdir, "config.yaml", "model:\n  name:\n" + "\n".join(levels) + "\n")  # 239 bytes
    got = outcome(lambda: load_config("smoke", path), workdir)
    assert isinstance(got, KnowpackError) and len(str(got)) < 2000, f"{len(str(got)):,}-character message"


SCALARS = [5, 1.5, True, None]


@pytest.mark.parametrize("value", SCALARS)
def test_qa_dataset_scalar_aliases(workdir, value):
    path = write(workdir, "qa.jsonl", json.dumps({"question": "Capital of France?", "answer": "Paris",
                                                  "aliases": value}) + "\n")
    outcome(lambda: read_qa_dataset(path), workdir)


def test_qa_dataset_text_alias_is_one_alias(workdir):
    path = write(workdir, "qa.jsonl", json.dumps({"question": "Capital of France?", "answer": "Paris",
                                                  "aliases": "Lutetia"}) + "\n")
    got = outcome(lambda: read_qa_dataset(path), workdir)
    assert all(len(alias) > 1 for alias in got[0].aliases), got[0].aliases


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
@pytest.mark.parametrize("field", ["aliases", "paraphrases"])
def test_scalar_aliases_are_a_user_error(workdir, kind, field):
    import pyarrow as pa
    import pyarrow.parquet as pq

    record = {"question": "Capital of France?", "answer": "Paris", field: 5}
    path = workdir / f"table.{kind}"
    if kind == "jsonl":
        write(workdir, path.name, json.dumps(record) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist([record]), path)
    outcome(lambda: table_facts(path, kind), workdir)


@pytest.mark.parametrize("popularity", ["NaN", "Infinity", "-1"])
def test_bad_popularity_message_names_the_file(workdir, popularity):
    path = write(workdir, "qa.jsonl", '{"question": "Capital of France?", "answer": "Paris", '
                                      f'"popularity": {popularity}}}\n')
    got = outcome(lambda: table_facts(path, "jsonl"), workdir)
    assert isinstance(got, KnowpackError) and str(path) in str(got), got


def test_read_facts_unknown_key_message_is_one_line(workdir):
    fact = Fact(fact_id="x", subject="s", relation="r", object="o", question="q?", answer="a", aliases=["a"],
                bucket=None, source="s")
    path = write(workdir, "facts.jsonl", json.dumps({**fact.model_dump(), "evil\nkey": 1}) + "\n")
    outcome(lambda: read_facts(path), workdir)


@pytest.mark.parametrize("reader", ["read_facts", "read_qa_dataset"])  # table_facts' rows reject them
def test_json_lone_surrogates_are_not_passed_on(workdir, reader):
    fact = Fact(fact_id="x", subject="s", relation="r", object="o", question="q?", answer="\ud800",
                aliases=["\ud800"], bucket=None, source="s")
    path = write(workdir, "input.jsonl", json.dumps(fact.model_dump()) + "\n")  # ensure_ascii: "\\ud800"
    check_facts(outcome(lambda: JSON_READERS[reader](path), workdir))

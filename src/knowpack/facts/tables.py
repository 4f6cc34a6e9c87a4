"""Tabular sources: JSONL, CSV or Parquet files of triples or of ready question/answer pairs.

In:  a file whose columns say what it holds (rows are streamed; CSV and Parquet in chunks):
     - triples:  ``subject``, ``relation``, ``object``; optional ``aliases`` (alternative names of
       the object; a list, or ``|``-separated text in CSV) and ``popularity`` (of the subject; the
       default is DESIGN.md's count of triples containing the entity);
     - QA pairs: ``question``, ``answer``; optional ``aliases``, ``paraphrases``, ``subject``,
       ``relation`` (default ``qa``), ``fact_id``, ``bucket``, ``popularity``, ``source``. A
       facts.jsonl written by knowpack is a QA file, so it reads back unchanged.
Out: `Fact`s. Triples go through `TripleCollector` (templates, single-object pairs, buckets); QA
     pairs keep their question and get a bucket from ``popularity`` (per relation) when given.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from knowpack.errors import KnowpackError, validation_line, warn
from knowpack.facts.dbpedia import MAX_EXAMPLES, ParseReport
from knowpack.facts.popularity import assign_buckets, clean_aliases
from knowpack.facts.schema import Bucket, Fact, make_fact_id
from knowpack.facts.triples import FactRef, TripleCollector
from knowpack.jsonio import read_json_lines

TableKind = Literal["jsonl", "csv", "parquet"]
CHUNK_ROWS = 50_000


def _split(value: Any) -> list[str]:
    """A list of names, or ``|``-separated text (CSV); anything else is a ValueError for pydantic."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split("|") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(part, str) for part in value):
        raise ValueError("must be a list of strings (or |-separated text)")
    return [part.strip() for part in value if part.strip()]


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @field_validator("aliases", "paraphrases", mode="before", check_fields=False)
    @classmethod
    def _list(cls, value: Any) -> list[str]:
        return _split(value)

    @field_validator("subject", "relation", "object", "question", "answer", check_fields=False)
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("must not be empty")
        return value


class _Popularity(_Row):
    @field_validator("popularity", check_fields=False)
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError("must be a finite number >= 0")
        return value


class TripleRow(_Popularity):
    subject: str
    relation: str
    object: str
    aliases: list[str] = []
    popularity: float | None = None


class QARow(_Popularity):
    question: str
    answer: str
    aliases: list[str] = []
    paraphrases: list[str] = []
    subject: str | None = None
    relation: str | None = None
    fact_id: str | None = None
    bucket: Bucket | None = None
    popularity: float | None = None
    source: str | None = None


def table_facts(path: str | Path, kind: TableKind, *, relations: Iterable[str] | None = None,
                strict: bool = False, keep: Callable[[list[FactRef]], Iterable[str]] | None = None) -> list[Fact]:
    """Facts from a JSONL/CSV/Parquet file of triples or QA pairs (see the module docstring).

    ``keep`` (see `TripleCollector.build`) picks which triple facts to build.
    """
    path = Path(path)
    if not path.is_file():
        raise KnowpackError(f"{path}: no such file")
    rows = _read_rows(path, kind)
    first = next(rows, None)
    if first is None:
        raise KnowpackError(f"{path}: empty file; expected {kind} rows of triples or question/answer pairs")
    number, record = first
    columns = set(record)
    if {"question", "answer"} <= columns:
        row_model: type[_Row] = QARow
    elif {"subject", "relation", "object"} <= columns:
        row_model = TripleRow
    else:
        raise KnowpackError(f"{path}: columns {sorted(columns)} are neither triples (subject, relation, object) "
                            "nor QA pairs (question, answer)")
    report = ParseReport()
    parsed = _validated(path, row_model, _chain(first, rows), strict, report)
    wanted = set(relations) if relations else None
    if row_model is TripleRow:
        facts = _facts_from_triples(path, parsed, wanted, keep)  # type: ignore[arg-type]
    else:
        facts = _facts_from_qa(path, parsed, wanted)  # type: ignore[arg-type]
    if report.malformed:
        warn(f"skipped {report.malformed:,} bad row(s) of {report.lines:,}; first: {report.examples[0]}"
             " (pass --strict to stop at the first one)")
    if not facts:
        raise KnowpackError(f"{path}: no usable facts in {report.lines:,} row(s)")
    return facts


def _chain(first: tuple[int, dict], rest: Iterator[tuple[int, dict]]) -> Iterator[tuple[int, dict]]:
    yield first
    yield from rest


def _validated(path: Path, model: type[_Row], rows: Iterator[tuple[int, dict]], strict: bool,
               report: ParseReport) -> Iterator[_Row]:
    for number, record in rows:
        report.lines += 1
        try:
            yield model.model_validate(record)
        except ValidationError as err:
            message = validation_line(err, f"{path}:{number}", empty="row")
            if strict:
                raise KnowpackError(f"{message} (run without --strict to skip bad rows)") from err
            report.malformed += 1
            if len(report.examples) < MAX_EXAMPLES:
                report.examples.append(message)


def _facts_from_triples(path: Path, rows: Iterator[TripleRow], wanted: set[str] | None,
                        keep: Callable[[list[FactRef]], Iterable[str]] | None) -> list[Fact]:
    collector = TripleCollector(wanted)
    aliases: dict[str, list[str]] = {}
    popularity: dict[str, float] = {}
    for row in rows:
        collector.add(row.subject, row.relation, row.object)
        if row.aliases:
            aliases.setdefault(row.object, []).extend(row.aliases)
        if row.popularity is not None:
            popularity[row.subject] = row.popularity
    collector.check_relations(str(path))
    return collector.build(source=path.name, aliases=aliases, popularity=popularity or None, keep=keep)


def _facts_from_qa(path: Path, rows: Iterator[QARow], wanted: set[str] | None) -> list[Fact]:
    drafts: list[QARow] = []
    relations_seen: set[str] = set()
    leaked = 0
    for row in rows:
        relation = row.relation or "qa"
        relations_seen.add(relation)
        if wanted is not None and relation not in wanted:
            continue
        if row.answer.lower() in row.question.lower():
            leaked += 1  # the question gives the answer away; echoing it would score
            continue
        drafts.append(row)
    if wanted is not None and wanted - relations_seen:
        missing = sorted(wanted - relations_seen)[0]
        raise KnowpackError(f"{path}: unknown relation {missing!r}; the file has {sorted(relations_seen)[:8]}")
    if leaked:
        warn(f"{path}: dropped {leaked:,} pair(s) whose answer appears in the question")
    # Buckets only where the file gives popularity, ranked within each relation like the triples.
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for index, row in enumerate(drafts):
        if row.popularity is not None:
            scores[row.relation or "qa"][str(index)] = row.popularity
    buckets = {int(index): bucket for per_relation in scores.values()
               for index, bucket in assign_buckets(per_relation).items()}
    facts: list[Fact] = []
    seen: set[str] = set()
    for index, row in enumerate(drafts):
        relation = row.relation or "qa"
        subject = row.subject or row.question
        fact_id = row.fact_id or make_fact_id(subject, relation, row.answer)
        if fact_id in seen:
            continue  # the same pair twice
        seen.add(fact_id)
        facts.append(Fact(fact_id=fact_id, subject=subject, relation=relation, object=row.answer,
                          question=row.question, answer=row.answer,
                          aliases=clean_aliases(row.answer, row.aliases), paraphrases=row.paraphrases,
                          bucket=buckets.get(index, row.bucket), source=row.source or path.name))  # type: ignore[arg-type]
    return facts


def _read_rows(path: Path, kind: TableKind) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number as a user would count it, record) pairs, streamed."""
    if kind == "jsonl":
        return _jsonl_rows(path)
    if kind == "csv":
        return _csv_rows(path)
    return _parquet_rows(path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, record in read_json_lines(path):
        if not isinstance(record, dict):
            raise KnowpackError(f"{path}:{number}: expected a JSON object per line")
        yield number, record


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pandas as pd

    try:
        chunks = pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS)
        start = 2  # line 1 is the header
        for chunk in chunks:
            for offset, record in enumerate(chunk.to_dict("records")):
                yield start + offset, record
            start += len(chunk)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise KnowpackError(f"{path}: not a readable CSV file ({str(err).splitlines()[0]})") from err


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        number = 1
        for batch in table.iter_batches(batch_size=CHUNK_ROWS):
            for record in batch.to_pylist():
                yield number, record
                number += 1
    except (pa.ArrowException, OSError) as err:
        raise KnowpackError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from err

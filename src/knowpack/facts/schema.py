"""The fact record and its JSONL file format (the contract in DESIGN.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from knowpack.errors import KnowpackError, validation_line
from knowpack.jsonio import read_json_lines

Bucket = Literal["head", "torso", "tail"]


class Fact(BaseModel):
    """One (subject, relation, object) triple phrased as a question with its gold answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fact_id: str
    subject: str
    relation: str
    object: str
    question: str
    answer: str
    aliases: list[str] = Field(description="accepted answers, the gold answer included")
    bucket: Bucket | None = Field(description="popularity bucket; None for user QA data without popularity")
    source: str
    paraphrases: list[str] = Field(default_factory=list, description="other phrasings of the question")

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _answer_among_aliases(self) -> "Fact":
        if any(not alias.strip() for alias in self.aliases):
            raise ValueError("aliases must not contain an empty string")
        if self.answer not in self.aliases:
            raise ValueError("aliases must include the answer")
        return self


def make_fact_id(subject: str, relation: str, obj: str) -> str:
    """A stable id: the same triple always gets the same id, whatever the source or order."""
    digest = hashlib.sha1(f"{subject}\x1f{relation}\x1f{obj}".encode()).hexdigest()
    return f"{relation}:{digest[:12]}"


def facts_to_jsonl(facts: Iterable[Fact]) -> str:
    return "".join(json.dumps(f.model_dump(), ensure_ascii=False) + "\n" for f in facts)


def read_facts(path: str | Path) -> list[Fact]:
    """Read facts.jsonl; a bad line is reported as ``file:line: field: problem``."""
    path = Path(path)
    if not path.is_file():
        raise KnowpackError(f"{path}: no such facts file")
    facts: list[Fact] = []
    seen: set[str] = set()
    for number, record in read_json_lines(path):
        try:
            fact = Fact.model_validate(record)
        except ValidationError as err:
            # The location is quoted and cut: a hostile record's keys may be long or odd.
            raise KnowpackError(validation_line(err, f"{path}:{number}", empty="record",
                                                spell=lambda where: repr(where[:80]))) from err
        if fact.fact_id in seen:
            raise KnowpackError(f"{path}:{number}: duplicate fact_id {fact.fact_id!r}")
        seen.add(fact.fact_id)
        facts.append(fact)
    if not facts:
        raise KnowpackError(f"{path}: no facts in the file")
    return facts

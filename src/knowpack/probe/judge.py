"""Judging answers: alias-substring correctness and refusal detection.

In:  a generated answer and the fact's aliases.  Out: correct / refusal flags.

Correct (DESIGN.md): the lower-cased gold answer or any alias is a substring of the lower-cased
response. Refusals are matched against a documented list of phrases (`REFUSAL_PATTERNS`), which
callers may extend.
"""

from __future__ import annotations

import re
from typing import Iterable

REFUSAL_PATTERNS: list[str] = [
    r"\bi don'?t know\b", r"\bi do not know\b", r"\bi'?m not sure\b", r"\bi am not sure\b",
    r"\bi couldn'?t find\b", r"\bi could not find\b", r"\bi cannot verify\b", r"\bi can'?t verify\b",
    r"\bno information\b", r"\bnot aware of\b", r"\bunable to (?:find|provide|answer)\b",
    r"\bi (?:can'?t|cannot) (?:answer|provide)\b", r"\bunknown\b", r"\bno comment\b",
]
_REFUSAL_RE = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)


def clean_answer(text: str) -> str:
    """Cut at the first newline and drop the "Answer:" lead-in the few-shot format teaches."""
    first_line = text.strip().split("\n", 1)[0].strip()
    return re.sub(r"^answer\s*:\s*", "", first_line, flags=re.IGNORECASE).strip()


def is_correct(answer: str, aliases: Iterable[str]) -> bool:
    response = answer.lower()
    return bool(response) and any(alias.lower() in response for alias in aliases if alias)


def is_refusal(answer: str) -> bool:
    return bool(_REFUSAL_RE.search(answer))

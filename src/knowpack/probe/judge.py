"""Judging answers: correctness against the aliases, and refusal detection.

In:  a generated answer and the fact's aliases.  Out: correct / refusal flags.

Matchers (``probe.match``):
- ``alias-substring`` (DESIGN.md, the default): the lower-cased gold answer or any alias is a
  substring of the lower-cased response.
- ``exact``: the normalized response (lower case, no punctuation, no leading article) equals a
  normalized alias.

Refusals are matched against `REFUSAL_PATTERNS` (case-insensitive regexes) plus any extra patterns
the user lists in ``probe.refusal_patterns``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Iterable

from knowpack.errors import KnowpackError
from knowpack.facts.popularity import normalize_alias

REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bi don'?t know\b", r"\bi do not know\b", r"\bi'?m not sure\b", r"\bi am not sure\b",
    r"\bi couldn'?t find\b", r"\bi could not find\b", r"\bi cannot verify\b", r"\bi can'?t verify\b",
    r"\bno information\b", r"\bnot aware of\b", r"\bunable to (?:find|provide|answer)\b",
    r"\bi (?:can'?t|cannot) (?:answer|provide)\b", r"\bunknown\b", r"\bno comment\b",
)


def clean_answer(text: str) -> str:
    """Cut at the first newline and drop the "Answer:" lead-in the few-shot format teaches."""
    first_line = text.strip().split("\n", 1)[0].strip()
    return re.sub(r"^answer\s*:\s*", "", first_line, flags=re.IGNORECASE).strip()


def alias_substring(answer: str, aliases: Iterable[str]) -> bool:
    response = answer.lower()
    return bool(response) and any(alias.lower() in response for alias in aliases if alias)


def exact_match(answer: str, aliases: Iterable[str]) -> bool:
    response = normalize_alias(answer)
    return bool(response) and any(response == normalize_alias(alias) for alias in aliases if alias)


MATCHERS: dict[str, Callable[[str, Iterable[str]], bool]] = {"alias-substring": alias_substring,
                                                               "exact": exact_match}


def is_correct(answer: str, aliases: Iterable[str], match: str = "alias-substring") -> bool:
    return MATCHERS[match](answer, aliases)


@lru_cache(maxsize=16)
def refusal_regex(extra: tuple[str, ...] = ()) -> re.Pattern:
    for pattern in extra:
        try:
            re.compile(pattern)
        except re.error as err:
            raise KnowpackError(f"probe.refusal_patterns: {pattern!r} is not a valid regex ({err})") from err
    return re.compile("|".join((*REFUSAL_PATTERNS, *extra)), re.IGNORECASE)


def is_refusal(answer: str, extra: tuple[str, ...] = ()) -> bool:
    return bool(refusal_regex(tuple(extra)).search(answer))

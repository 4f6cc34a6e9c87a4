"""Popularity buckets (Head-to-Tail) and alias clean-up.

In:  a popularity number per entity; an answer and candidate alternative names.
Out: a bucket per entity (``head``/``torso``/``tail``); a normalized alias; the answer followed by
its distinct usable aliases.
"""

from __future__ import annotations

import functools
import math
import re
import string
import unicodedata
from typing import Iterable, Mapping

from knowpack.errors import KnowpackError

_LEADING_ARTICLE = re.compile(r"^(?:the|a|an)\s+")
# Dropped without a trace, so "D.C." -> "dc" and "Pa'anga" -> "paanga"; other punctuation splits words.
_DELETED = str.maketrans("", "", "'\u2019\u2018.`")
# Fast path for ASCII text (almost every question): one translate instead of a per-character lookup.
_ASCII_TO_SPACE = str.maketrans({ch: " " for ch in string.punctuation if ch not in "'.`"})


def assign_buckets(popularity: Mapping[str, float]) -> dict[str, str]:
    """Head-to-Tail buckets from a popularity number per entity.

    The rule (DESIGN.md): sort the entities by popularity, ascending, and walk them while summing
    their popularity. An entity whose cumulative share of the total mass (itself included) is
    <= 1/3 is ``tail``, <= 2/3 is ``torso``, above 2/3 is ``head``. So the tail is the many rare
    entities that together hold the first third of the mass and the head the few popular ones
    holding the last third. Ties are broken by entity name so the result is deterministic; an
    all-zero (or empty) input puts everything in ``tail``.
    """
    for entity, value in popularity.items():
        if not math.isfinite(value) or value < 0:
            raise KnowpackError(f"popularity of {entity!r} must be a finite number >= 0, got {value!r}")
    ordered = sorted(popularity.items(), key=lambda item: (item[1], item[0]))
    # Summed in the same order as the walk below, so the last cumulative equals the total exactly.
    total = math.fsum(value for _, value in ordered)
    buckets: dict[str, str] = {}
    cumulative = 0.0
    for entity, value in ordered:
        cumulative += value
        buckets[entity] = _bucket(cumulative, total)
    return buckets


def _bucket(cumulative: float, total: float) -> str:
    # Compare 3*cumulative with total rather than cumulative/total with 1/3: no rounding at the edges.
    if total <= 0 or 3 * cumulative <= total:
        return "tail"
    if 3 * cumulative <= 2 * total:
        return "torso"
    return "head"


@functools.lru_cache(maxsize=65536)
def normalize_alias(text: str) -> str:
    """Lower-case, drop punctuation and a leading "the"/"a"/"an", collapse whitespace."""
    text = text.lower().translate(_DELETED)
    if text.isascii():
        text = text.translate(_ASCII_TO_SPACE)
    else:  # any Unicode punctuation (P*) or symbol (S*) splits words
        text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    text = " ".join(text.split())
    return _LEADING_ARTICLE.sub("", text)


def clean_aliases(answer: str, candidates: Iterable[str], limit: int | None = None) -> list[str]:
    """The answer first, then the candidates that differ from everything before them once normalized.

    Candidates are stripped; empty ones (or ones that normalize to nothing) are dropped. ``limit``
    caps how many aliases follow the answer (None = no cap). The answer is kept exactly as given,
    because `Fact` requires it verbatim among the aliases.
    """
    if not answer.strip():
        raise KnowpackError("an answer must not be empty")
    kept = [answer]
    seen = {normalize_alias(answer)}
    for candidate in candidates:
        if limit is not None and len(kept) > limit:
            break
        alias = candidate.strip()
        key = normalize_alias(alias)
        if not key or key in seen:
            continue
        seen.add(key)
        kept.append(alias)
    return kept

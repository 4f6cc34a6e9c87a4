"""Fictitious facts: made-up entities no model can know, for clean injection experiments.

In:  a number of facts and a seed.
Out: `Fact`s over six made-up relations (``synthetic_capital``, ``synthetic_founder``,
     ``synthetic_birthplace``, ``synthetic_author``, ``synthetic_river``, ``synthetic_language``),
     the same list for the same (count, seed).

Every name, subject and answer alike, is built from random syllables and is unique within the
set, so the answer cannot be inferred from the question, from another fact or from the world
(the answer to "Who founded Drelvaq Works?" is a made-up person). Names that happen to equal a
real name in the embedded reference data (GeoNames cities, countries, capitals, languages,
currencies) are rejected. Popularity is drawn from a seeded Pareto distribution so the head /
torso / tail buckets exist and can be sampled like real ones; it means nothing about the world.
"""

from __future__ import annotations

import functools
import random
from typing import Callable

from knowpack.errors import KnowpackError
from knowpack.facts.popularity import assign_buckets, normalize_alias
from knowpack.facts.schema import Fact, make_fact_id
from knowpack.facts.templates import paraphrases, render_question

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s", "sk", "t",
           "th", "v", "vr", "z", "q", "h", "j")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y")
_CODAS = ("", "", "l", "n", "r", "s", "th", "x", "q", "nd", "rk", "lv")
MAX_FACTS = 200_000
# The real words the makers below put around random ones; only the random words must be fresh.
_FIXED_WORDS = frozenset({"city", "port", "hold", "works", "industries", "trading", "company", "of",
                          "river", "valley"})


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


# Each relation: (subject maker, object maker, object aliases); makers take the rng.
_Maker = Callable[[random.Random], str]
_RELATIONS: dict[str, tuple[_Maker, _Maker]] = {
    "synthetic_capital": (lambda r: _word(r, 3), lambda r: _word(r, 2) + " " + r.choice(("City", "Port", "Hold"))),
    "synthetic_founder": (lambda r: _word(r, 2) + " " + r.choice(("Works", "Industries", "Trading Company")),
                          lambda r: f"{_word(r, 2)} {_word(r, 3)}"),
    "synthetic_birthplace": (lambda r: f"{_word(r, 2)} {_word(r, 2)}", lambda r: _word(r, 3) + "ton"),
    "synthetic_author": (lambda r: f"The {_word(r, 2)} of {_word(r, 3)}", lambda r: f"{_word(r, 2)} {_word(r, 2)}"),
    "synthetic_river": (lambda r: _word(r, 3) + "ford", lambda r: _word(r, 2) + " River"),
    "synthetic_language": (lambda r: "the " + _word(r, 3) + " Valley", lambda r: _word(r, 2) + "ish"),
}
SYNTHETIC_RELATIONS = tuple(_RELATIONS)


def synthetic_facts(count: int = 1000, seed: int = 0, relations: list[str] | None = None) -> list[Fact]:
    """``count`` made-up facts spread evenly over the relations (all six unless ``relations``)."""
    if not 1 <= count <= MAX_FACTS:
        raise KnowpackError(f"synthetic facts: count must be between 1 and {MAX_FACTS:,}, got {count}")
    chosen = list(relations) if relations else list(SYNTHETIC_RELATIONS)
    unknown = [name for name in chosen if name not in _RELATIONS]
    if unknown:
        raise KnowpackError(f"synthetic facts: unknown relation {unknown[0]!r}; choose from {', '.join(_RELATIONS)}")
    rng = random.Random(seed)
    taken = set(_real_names())
    drafts: dict[str, list[tuple[str, str, float]]] = {name: [] for name in chosen}
    for index in range(count):
        relation = chosen[index % len(chosen)]
        make_subject, make_object = _RELATIONS[relation]
        subject = _fresh(make_subject, rng, taken)
        obj = _fresh(make_object, rng, taken)
        drafts[relation].append((subject, obj, rng.paretovariate(1.2)))
    facts: list[Fact] = []
    for relation, rows in drafts.items():
        buckets = assign_buckets({subject: score for subject, _, score in rows})
        for subject, obj, _ in rows:
            aliases = [obj, obj.removesuffix(" River")] if obj.endswith(" River") else [obj]
            facts.append(Fact(fact_id=make_fact_id(subject, relation, obj), subject=subject, relation=relation,
                              object=obj, question=render_question(relation, subject), answer=obj,
                              aliases=aliases, bucket=buckets[subject], source="synthetic",  # type: ignore[arg-type]
                              paraphrases=paraphrases(relation, subject)))
    return facts


def _fresh(make: _Maker, rng: random.Random, taken: set[str]) -> str:
    """A new name: not used before in this set and not a real name (normalized comparison)."""
    for _ in range(1000):
        name = make(rng)
        key = normalize_alias(name)
        words = [part for part in key.split() if part not in _FIXED_WORDS]
        if key not in taken and not any(word in taken for word in words):
            taken.add(key)
            return name
    raise KnowpackError("synthetic facts: ran out of fresh names; ask for fewer facts")


@functools.lru_cache(maxsize=1)
def _real_names() -> frozenset[str]:
    """Normalized names of real places and things from the embedded data, to stay clear of."""
    from knowpack.facts.embedded import build_embedded_facts

    names: set[str] = set()
    for fact in build_embedded_facts():
        names.add(normalize_alias(fact.subject))
        names.update(normalize_alias(alias) for alias in fact.aliases)
    return frozenset(names)

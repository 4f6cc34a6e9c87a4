"""Balanced, seeded sampling of facts.

In:  facts from any source, a sample size, a seed and optional caps per relation and per bucket.
Out: the sample, visiting (relation, bucket) groups round-robin so every relation and popularity
bucket is represented as evenly as the source allows.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Collection, Iterable, Protocol, TypeVar

from knowpack.errors import KnowpackError

BUCKET_ORDER: tuple[str | None, ...] = ("head", "torso", "tail", None)


class Sampleable(Protocol):
    """What sampling reads: a `Fact`, or a `FactRef` before the fact is built."""

    @property
    def fact_id(self) -> str: ...
    @property
    def relation(self) -> str: ...
    @property
    def bucket(self) -> str | None: ...


T = TypeVar("T", bound=Sampleable)


def select_facts(facts: Iterable[T], max_facts: int | None, seed: int,
                 per_relation: int | None = None, per_bucket: int | None = None) -> list[T]:
    """A seeded sample balanced across relations and buckets.

    Facts are grouped by (relation, bucket); each group and the order of the groups are shuffled
    with ``random.Random(seed)``; then the groups are visited round-robin, one fact from each per
    round, until ``max_facts`` are taken (None = all) or the groups run dry. ``per_relation`` caps
    the facts taken from any one relation, ``per_bucket`` those taken from any one (relation,
    bucket) group. The same facts and seed always give the same sample. Facts without a bucket
    (QA data without popularity) form their own group.
    """
    if max_facts is not None and max_facts < 0:
        raise KnowpackError(f"max_facts must be >= 0 or None, got {max_facts}")
    for name, cap in (("per_relation", per_relation), ("per_bucket", per_bucket)):
        if cap is not None and cap < 1:
            raise KnowpackError(f"{name} must be >= 1 or None, got {cap}")
    rng = random.Random(seed)
    groups: dict[tuple[str, str | None], list[T]] = defaultdict(list)
    for fact in facts:
        groups[(fact.relation, fact.bucket)].append(fact)
    # Sorted before shuffling so the sample does not depend on the order the facts came in.
    keys = sorted(groups, key=lambda key: (key[0], BUCKET_ORDER.index(key[1])))
    for key in keys:
        groups[key].sort(key=lambda fact: fact.fact_id)
        rng.shuffle(groups[key])
        if per_bucket is not None:
            del groups[key][per_bucket:]
    rng.shuffle(keys)
    limit = sum(len(group) for group in groups.values()) if max_facts is None else max_facts
    return _round_robin([groups[key] for key in keys], limit, per_relation)


def _round_robin(groups: list[list[T]], limit: int, per_relation: int | None) -> list[T]:
    """One fact from each group per round, skipping exhausted groups and relations at their cap."""
    taken: list[T] = []
    per_relation_count: Counter[str] = Counter()
    for position in range(max((len(g) for g in groups), default=0)):
        for group in groups:
            if len(taken) >= limit:
                return taken
            if position >= len(group):
                continue
            fact = group[position]
            if per_relation is not None and per_relation_count[fact.relation] >= per_relation:
                continue
            taken.append(fact)
            per_relation_count[fact.relation] += 1
    return taken




def heldout_facts(facts: Iterable[T], in_train: Collection[str], limit: int | None, seed: int) -> list[T]:
    """The facts a run never trained on, sampled down to ``limit`` (``eval.heldout_facts``) with ``seed``.

    A single run (its probe after training) and a run in rounds (after each round) sample them here, so
    both compare the same held-out facts.
    """
    heldout = [f for f in facts if f.fact_id not in in_train]
    if limit is not None and limit < len(heldout):
        heldout = random.Random(seed).sample(heldout, limit)
    return heldout

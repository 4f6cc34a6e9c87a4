"""Facts stage: build question/answer facts from a knowledge source.

In:  a `FactsConfig` (source `embedded` — real facts from reference-data packages — or a facts.jsonl).
Out: a list of `Fact`s, written as ``facts.jsonl`` (fields in DESIGN.md).
"""

from __future__ import annotations

from knowpack.config import FactsConfig
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact, facts_to_jsonl, make_fact_id, read_facts

__all__ = ["Fact", "build_facts", "facts_to_jsonl", "make_fact_id", "read_facts"]


def build_facts(config: FactsConfig) -> list[Fact]:
    """The facts a run probes: a seeded, relation- and bucket-balanced sample of the source."""
    from knowpack.facts.embedded import build_embedded_facts, select_facts

    if config.source == "embedded":
        facts = build_embedded_facts()
    else:
        if not config.path:
            raise KnowpackError("facts.path: source jsonl needs a path, e.g. facts.path=my_facts.jsonl")
        facts = read_facts(config.path)
    return select_facts(facts, config.max_facts, config.seed)

"""Facts stage: build question/answer facts from a knowledge source.

In:  a `FactsConfig`: the source (``embedded`` real reference data, a ``dbpedia-dump``, a
     ``sparql`` endpoint, a ``jsonl``/``csv``/``parquet`` file of triples or QA pairs, or made-up
     ``synthetic`` facts), relation filter, balanced-sampling caps and paraphrase settings.
Out: a list of `Fact`s, written as ``facts.jsonl`` (fields in DESIGN.md); `facts_stats` counts them
     by relation and popularity bucket.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable
from pathlib import Path

from knowpack.config import FactsConfig
from knowpack.errors import KnowpackError, did_you_mean
from knowpack.facts.sampling import select_facts
from knowpack.facts.schema import Fact, facts_to_jsonl, make_fact_id, read_facts

__all__ = ["Fact", "build_facts", "facts_stats", "facts_to_jsonl", "make_fact_id", "read_facts", "select_facts"]

FILE_SOURCES = ("dbpedia-dump", "jsonl", "csv", "parquet")


def load_source(config: FactsConfig, progress: bool = False, keep: Callable | None = None) -> list[Fact]:
    """Every fact the configured source gives, before sampling.

    File sources of triples accept ``keep`` (see `TripleCollector.build`) and then build only the
    facts it picks, so sampling from a large dump never holds every `Fact` in memory.
    """
    if config.source in FILE_SOURCES and not config.path:
        raise KnowpackError(f"facts.path: source {config.source} needs an input file, "
                            f"e.g. knowpack facts --source {config.source} FILE")
    if config.source != "dbpedia-dump" and config.name_files:
        raise KnowpackError("facts.name_files: only the dbpedia-dump source reads label/redirect files")
    relations = config.relations or None
    if config.source == "embedded":
        from knowpack.facts.embedded import RELATIONS, build_embedded_facts

        _check_known(relations, RELATIONS, "embedded")
        facts = build_embedded_facts()
        return [f for f in facts if relations is None or f.relation in relations]
    if config.source == "synthetic":
        from knowpack.facts.synthetic import synthetic_facts

        return synthetic_facts(config.synthetic_count, config.seed, relations)
    if config.source == "dbpedia-dump":
        from knowpack.facts.dbpedia import dbpedia_facts

        return dbpedia_facts([config.path], name_files=config.name_files, relations=relations,  # type: ignore[list-item]
                             lang=config.lang, strict=config.strict, progress=progress, keep=keep)
    if config.source == "sparql":
        from knowpack.facts.sparql import sparql_facts

        s = config.sparql
        return sparql_facts(config.relations, endpoint=s.endpoint, lang=config.lang, limit=s.limit,
                            page_size=s.page_size, timeout=s.timeout, retries=s.retries, progress=progress)
    from knowpack.facts.tables import table_facts

    return table_facts(config.path, config.source, relations=relations, strict=config.strict,  # type: ignore[arg-type]
                       keep=keep)


def build_facts(config: FactsConfig, progress: bool = False) -> list[Fact]:
    """The facts a run probes: a seeded sample of the source, balanced over relations and buckets,
    with LLM paraphrases added when ``llm_paraphrases`` > 0."""
    def sample(facts):
        return select_facts(facts, config.max_facts, config.seed, per_relation=config.per_relation,
                            per_bucket=config.per_bucket)

    facts = sample(load_source(config, progress, keep=lambda refs: [ref.fact_id for ref in sample(refs)]))
    if not facts:
        raise KnowpackError(f"facts: the {config.source} source gave no facts")
    if config.llm_paraphrases:
        from knowpack.facts.paraphrase import add_llm_paraphrases
        from knowpack.models import load_model

        model, tokenizer = load_model(config.paraphrase_model)
        facts = add_llm_paraphrases(facts, model, tokenizer, per_fact=config.llm_paraphrases, seed=config.seed,
                                    model_id=config.paraphrase_model, progress=progress)
    return facts


def facts_stats(path: str | Path) -> dict[str, object]:
    """Counts of a facts.jsonl: by relation x bucket, plus aliases and paraphrases per fact."""
    facts = read_facts(path)
    by_relation: dict[str, Counter[str]] = {}
    for fact in facts:
        by_relation.setdefault(fact.relation, Counter())[fact.bucket or "none"] += 1
    return {
        "facts": len(facts),
        "relations": {name: dict(counts) for name, counts in sorted(by_relation.items())},
        "buckets": dict(Counter(f.bucket or "none" for f in facts)),
        "sources": dict(Counter(f.source for f in facts)),
        "mean_aliases": sum(len(f.aliases) for f in facts) / len(facts),
        "mean_paraphrases": sum(len(f.paraphrases) for f in facts) / len(facts),
    }


def _check_known(relations: list[str] | None, known: tuple[str, ...], source: str) -> None:
    for name in relations or ():
        if name not in known:
            hint = did_you_mean(name, known, f"; choose from {', '.join(known)}")
            raise KnowpackError(f"facts.relations: unknown relation {name!r} for source {source}{hint}")

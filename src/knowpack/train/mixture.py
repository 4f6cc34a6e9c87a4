"""Training mixtures: which examples the adapter is trained on.

In:  facts, their categories before training, a `MixtureConfig`.
Out: the list of `TrainExample`s (Unknown facts, plus paraphrases of them and/or HighlyKnown facts)
     and the ids of the Unknown facts chosen. `mixture_examples` builds the examples around Unknown
     facts chosen elsewhere (a round of continual packing, `knowpack.continual`).
"""

from __future__ import annotations

import random
from typing import Literal, Sequence

import pandas as pd
from pydantic import BaseModel

from knowpack.config import MixtureConfig
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact

# replay: an earlier round's Unknown fact trained again (continual packing)
ExampleKind = Literal["unknown", "paraphrase", "known", "replay"]


class TrainExample(BaseModel):
    fact_id: str
    kind: ExampleKind
    question: str
    answer: str


def facts_in_category(facts: Sequence[Fact], categories: pd.DataFrame, category: str) -> list[Fact]:
    wanted = set(categories.loc[categories["category"] == category, "fact_id"])
    return [fact for fact in facts if fact.fact_id in wanted]


def choose_unknown(facts: Sequence[Fact], categories: pd.DataFrame, config: MixtureConfig) -> list[Fact]:
    """N Unknown facts, at random with the mixture seed or the first N (as the paper's code did)."""
    unknown = facts_in_category(facts, categories, "Unknown")
    if config.n_unknown > len(unknown):
        raise KnowpackError(f"mixture.n_unknown: asked for {config.n_unknown} Unknown facts but the probe found "
                            f"only {len(unknown)}; lower mixture.n_unknown or raise facts.max_facts")
    if config.selection == "first":
        return unknown[:config.n_unknown]
    return random.Random(config.seed).sample(unknown, config.n_unknown)


def build_mixture(facts: Sequence[Fact], categories: pd.DataFrame,
                  config: MixtureConfig) -> tuple[list[TrainExample], list[str]]:
    """The train set and the ids of its Unknown facts."""
    chosen = choose_unknown(facts, categories, config)
    examples = mixture_examples(chosen, facts, categories, config.paraphrases_per_fact, config.known_per_fact,
                                random.Random(config.seed + 1))
    return examples, [f.fact_id for f in chosen]


def mixture_examples(chosen: Sequence[Fact], facts: Sequence[Fact], categories: pd.DataFrame,
                     paraphrases_per_fact: int, known_per_fact: int, rng: random.Random,
                     field: str = "mixture") -> list[TrainExample]:
    """The ``chosen`` Unknown facts, their first paraphrases and HighlyKnown facts drawn with ``rng``, shuffled.

    ``field`` names the settings in errors (``mixture``, or one round such as ``rounds[1]``).
    """
    examples = [TrainExample(fact_id=f.fact_id, kind="unknown", question=f.question, answer=f.answer)
                for f in chosen]
    if paraphrases_per_fact:
        for fact in chosen:
            if len(fact.paraphrases) < paraphrases_per_fact:
                raise KnowpackError(f"{field}.paraphrases_per_fact: fact {fact.fact_id} has only "
                                    f"{len(fact.paraphrases)} paraphrases; lower the setting or add paraphrases")
            examples += [TrainExample(fact_id=fact.fact_id, kind="paraphrase", question=p, answer=fact.answer)
                         for p in fact.paraphrases[:paraphrases_per_fact]]
    if known_per_fact:
        known = facts_in_category(facts, categories, "HighlyKnown")
        wanted = known_per_fact * len(chosen)
        if wanted > len(known):
            raise KnowpackError(f"{field}.known_per_fact: needs {wanted} HighlyKnown facts but the probe found "
                                f"{len(known)}; lower {field}.known_per_fact or raise facts.max_facts")
        examples += [TrainExample(fact_id=f.fact_id, kind="known", question=f.question, answer=f.answer)
                     for f in rng.sample(known, wanted)]
    rng.shuffle(examples)
    return examples

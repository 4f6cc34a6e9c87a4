"""Which facts each round trains on, decided for every round before the first one trains.

In:  the run's facts, their categories before training, a `RunConfig` with ``rounds`` and ``continual``.
Out: one `RoundPlan` per round (its new Unknown facts, the earlier facts it replays, its train set);
     `check_rounds` refuses, before any work, settings that cannot work together.

Planning every round up front means a round asking for more Unknown facts than the probe found
fails before round 1 trains, not an hour later; it also fixes the held-out facts (never trained in
any round), so every round's knowledge shift is measured on the same facts.
"""

from __future__ import annotations

import random
from typing import Sequence

import pandas as pd
from pydantic import BaseModel

from knowpack.config import RoundConfig, RunConfig
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact
from knowpack.train.lora import MUTATES_BASE
from knowpack.train.mixture import TrainExample, facts_in_category, mixture_examples

PLAN = "rounds/plan.json"


class RoundPlan(BaseModel):
    number: int  # 1-based
    new_ids: list[str]  # the Unknown facts that arrive in this round
    replayed_ids: list[str]  # earlier rounds' Unknown facts trained again (continue, stack)
    trained_ids: list[str]  # the Unknown facts this round trains on (retrain: every round's so far)
    examples: list[TrainExample]  # what this round trains on


def _where(index: int) -> str:
    return f"round {index + 1} (rounds[{index}])"


def check_rounds(config: RunConfig) -> None:
    """Round settings that contradict each other or the strategy, refused before any work."""
    strategy = config.continual.strategy
    owner: dict[str, int] = {}
    for index, round_ in enumerate(config.rounds):
        if round_.fact_ids and round_.n_unknown is not None and round_.n_unknown != len(round_.fact_ids):
            raise KnowpackError(f"{_where(index)}: n_unknown={round_.n_unknown} but fact_ids names "
                                f"{len(round_.fact_ids)} facts; give one of them")
        for fact_id in round_.fact_ids:
            if fact_id in owner:
                first = owner[fact_id]
                where = "twice" if first == index else f"and {_where(first)}"
                raise KnowpackError(f"{_where(index)} {where} both name fact {fact_id}; rounds may not overlap in "
                                    "facts (a fact is new in one round; replay trains earlier facts again)")
            owner[fact_id] = index
        if strategy == "retrain" and round_.replay > 0:
            raise KnowpackError(f"{_where(index)}: replay={round_.replay:g} with continual.strategy=retrain, which "
                                "already trains on every earlier round's facts; set replay to 0 or use "
                                "continual.strategy=continue or stack")
    if not config.rounds:
        return
    if strategy == "stack" and config.train.method == "full":
        raise KnowpackError("continual.strategy=stack with train.method=full: stack adds a new adapter per round on "
                            "the merged earlier ones and a full fine-tune has no adapter; use continual.strategy="
                            "continue or retrain, or train.method=lora")
    if strategy == "stack" and config.lora.use_dora:
        raise KnowpackError("continual.strategy=stack with lora.use_dora: a DoRA update depends on the weights under "
                            "it, so adapters stacked on merged earlier rounds do not add up on the original base; "
                            "use lora.use_dora=false or continual.strategy=continue or retrain")
    if strategy in ("continue", "stack") and config.train.method == "lora" and config.lora.init in MUTATES_BASE:
        raise KnowpackError(f"continual.strategy={strategy} with lora.init={config.lora.init}: a saved "
                            f"{config.lora.init} adapter is converted to a plain LoRA of twice the rank, so a "
                            "later round would not continue the same adapter; use lora.init=default (or gaussian) "
                            "or continual.strategy=retrain")


def _new_facts(facts: Sequence[Fact], categories: pd.DataFrame, config: RunConfig) -> list[list[Fact]]:
    """Each round's new Unknown facts: those it names, else drawn from the Unknown facts no round names."""
    by_id = {f.fact_id: f for f in facts}
    category = dict(zip(categories["fact_id"], categories["category"]))
    named = {fact_id for r in config.rounds for fact_id in r.fact_ids}
    pool = [f for f in facts_in_category(facts, categories, "Unknown") if f.fact_id not in named]
    if config.mixture.selection == "random":
        pool = random.Random(config.mixture.seed).sample(pool, len(pool))
    chosen: list[list[Fact]] = []
    drawn = 0
    for index, round_ in enumerate(config.rounds):
        if round_.fact_ids:
            for fact_id in round_.fact_ids:
                if fact_id not in by_id:
                    raise KnowpackError(f"{_where(index)}: fact_ids: {fact_id} is not among the run's facts "
                                        "(facts.jsonl); check the id or the facts settings")
                if category.get(fact_id) != "Unknown":
                    raise KnowpackError(f"{_where(index)}: fact_ids: {fact_id} is {category.get(fact_id)} before "
                                        "training, not Unknown; name Unknown facts only")
            chosen.append([by_id[i] for i in round_.fact_ids])
            continue
        wanted = round_.n_unknown or config.mixture.n_unknown
        if drawn + wanted > len(pool):
            raise KnowpackError(f"{_where(index)}: n_unknown={wanted} needs {drawn + wanted} Unknown facts drawn "
                                f"for the rounds up to it, but the probe found only {len(pool)} not named by "
                                "fact_ids; lower the rounds' n_unknown or raise facts.max_facts")
        chosen.append(pool[drawn:drawn + wanted])
        drawn += wanted
    return chosen


def _round_examples(new: list[Fact], round_: RoundConfig, index: int, facts: Sequence[Fact],
                    categories: pd.DataFrame, config: RunConfig) -> list[TrainExample]:
    mixture = config.mixture
    paraphrases = mixture.paraphrases_per_fact if round_.paraphrases_per_fact is None else round_.paraphrases_per_fact
    known = mixture.known_per_fact if round_.known_per_fact is None else round_.known_per_fact
    rng = random.Random(mixture.seed + 1 + index)  # round 1 draws its known facts as a single run would
    return mixture_examples(new, facts, categories, paraphrases, known, rng, field=f"rounds[{index}]")


def plan_rounds(facts: Sequence[Fact], categories: pd.DataFrame, config: RunConfig) -> list[RoundPlan]:
    """Every round's facts and train set (see the module docstring)."""
    check_rounds(config)
    by_id = {f.fact_id: f for f in facts}
    new_facts = _new_facts(facts, categories, config)
    own = [_round_examples(new, r, i, facts, categories, config)
           for i, (new, r) in enumerate(zip(new_facts, config.rounds))]
    plans: list[RoundPlan] = []
    for index, round_ in enumerate(config.rounds):
        earlier = [f.fact_id for new in new_facts[:index] for f in new]
        rng = random.Random(config.mixture.seed + 1000 + index)
        replayed = rng.sample(earlier, round(round_.replay * len(earlier)))
        if config.continual.strategy == "retrain":
            examples = [e for examples in own[:index + 1] for e in examples]
            random.Random(config.mixture.seed + 2000 + index).shuffle(examples)  # rounds mixed, not in order
        else:
            examples = own[index] + [TrainExample(fact_id=i, kind="replay", question=by_id[i].question,
                                                  answer=by_id[i].answer) for i in replayed]
            if replayed:  # without replay the round trains in the order a single run would
                rng.shuffle(examples)
        new_ids = [f.fact_id for f in new_facts[index]]
        trained = earlier + new_ids if config.continual.strategy == "retrain" else new_ids + replayed
        plans.append(RoundPlan(number=index + 1, new_ids=new_ids, replayed_ids=replayed, trained_ids=trained,
                               examples=examples))
    return plans


def paraphrases_trained(config: RunConfig) -> int:
    """How many paraphrases of a fact may have been trained on: the first unseen one tests generalization."""
    counts = [config.mixture.paraphrases_per_fact if r.paraphrases_per_fact is None else r.paraphrases_per_fact
              for r in config.rounds]
    return max(counts, default=config.mixture.paraphrases_per_fact)

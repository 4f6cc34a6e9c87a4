"""The train stage of a run with ``rounds``: continual packing in place of one training.

In:  ``facts.jsonl``, ``categories_before.parquet``, the `RunConfig` (its rounds and ``continual``).
Out: ``rounds/plan.json`` (stage ``rounds_plan``: every round's facts, decided before round 1 trains, so
     too few Unknown facts fail before any training), ``rounds/round-<k>/`` (stage ``round-<k>``, each
     reused or resumed on its own), then the final state where a single run's train stage leaves it
     (stage ``train``, `Rounds.assemble_final`), so the later stages run unchanged.
"""

from __future__ import annotations

from knowpack.context import RunContext
from knowpack.continual.plan import PLAN, RoundPlan, plan_rounds
from knowpack.continual.rounds import Rounds
from knowpack.models import load_configured_model
from knowpack.rundir import fingerprint


def run(ctx: RunContext, upstream: str) -> str:
    c = ctx.config
    key = fingerprint("rounds_plan", upstream, c.mixture.model_dump(), [r.model_dump() for r in c.rounds],
                      c.continual.model_dump())

    def plan():
        plans = plan_rounds(ctx.facts(), ctx.run.read_table("categories_before.parquet"), c)
        ctx.run.write_json(PLAN, [p.model_dump() for p in plans])

    ctx.step("rounds_plan", key, [PLAN], plan)
    ctx.forget_model()  # each round loads its own copy of the base
    rounds = Rounds(ctx.run, c, ctx.facts(), [RoundPlan.model_validate(p) for p in ctx.run.read_json(PLAN)],
                    lambda: load_configured_model(c.model), ctx.console, ctx.progress)
    for number in range(1, len(c.rounds) + 1):
        key = fingerprint("round", key, number, c.lora.model_dump(), c.train.model_dump(),
                          c.eval.heldout_facts, c.eval.seed, c.eval.forgetting_passages, c.eval.forgetting_text)
        ctx.step(f"round-{number}", key, rounds.outputs(number), lambda n=number, k=key: rounds(n, k))
        rounds.remove_checkpoints(number, key)  # only now: a kill before the round is marked done still finds them
    key = fingerprint("train", key)
    ctx.step("train", key, rounds.final_outputs(), rounds.assemble_final)
    return key

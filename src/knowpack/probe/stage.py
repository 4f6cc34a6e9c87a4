"""The probe stages of a run: what the base model knows before training, what the adapted model knows after.

``before``  In: ``facts.jsonl``, the base model.  Out: ``probe_before.parquet``, ``categories_before.parquet``.
``after``   In: ``facts.jsonl``, ``train_set.jsonl``, ``trained_facts.json``, the adapted model.
            Out: ``probe_after.parquet`` and ``categories_after.parquet`` (the trained facts, then a sample
            of held-out ones, `knowpack.facts.sampling.heldout_facts`), ``probe_generalization.parquet`` (the trained facts asked
            with a paraphrase never trained on).
``outside_adapter``  (``eval --adapter``) In: ``facts.jsonl``, an outside adapter on the base model.
            Out: ``probe_after.parquet`` and ``categories_after.parquet`` over every fact (none was trained
            here, so all are held out).
"""

from __future__ import annotations

import json

import pandas as pd

from knowpack.context import RunContext
from knowpack.continual.plan import paraphrases_trained
from knowpack.facts import Fact
from knowpack.facts.sampling import heldout_facts
from knowpack.probe import categorize, probe_facts
from knowpack.backend import probe_model
from knowpack.rundir import file_stamp, fingerprint


def before(ctx: RunContext, upstream: str) -> str:
    key = fingerprint("probe_before", upstream, ctx.config.model.model_dump(), ctx.config.probe.model_dump())

    def compute():
        with probe_model(ctx, adapted=False) as model:
            rows = probe_facts(model, ctx.tokenizer, ctx.facts(), ctx.config.probe,
                               progress=ctx.progress, description="probing base model")
        ctx.run.write_table("probe_before.parquet", rows)
        ctx.run.write_table("categories_before.parquet", categorize(rows))

    ctx.step("probe_before", key, ["probe_before.parquet", "categories_before.parquet"], compute)
    return key


def after(ctx: RunContext, upstream: str) -> str:
    key = fingerprint("probe_after", upstream, ctx.config.eval.heldout_facts, ctx.config.eval.seed)

    def compute():
        lines = (ctx.run / "train_set.jsonl").read_text(encoding="utf-8").splitlines()
        in_train = {json.loads(line)["fact_id"] for line in lines if line.strip()}
        trained_ids = set(ctx.run.read_json("trained_facts.json"))
        every = ctx.facts()
        trained = [f for f in every if f.fact_id in trained_ids]
        facts = trained + heldout_facts(every, in_train, ctx.config.eval.heldout_facts, ctx.config.eval.seed)
        with probe_model(ctx, adapted=True) as model:
            rows = probe_facts(model, ctx.tokenizer, facts, ctx.config.probe,
                               progress=ctx.progress, description="probing adapted model")
            generalization = probe_paraphrases(ctx, model, trained)
        ctx.run.write_table("probe_after.parquet", rows)
        ctx.run.write_table("categories_after.parquet", categorize(rows))
        ctx.run.write_table("probe_generalization.parquet", generalization)

    ctx.step("probe_after", key, ["probe_after.parquet", "categories_after.parquet", "probe_generalization.parquet"],
             compute)
    return key


def outside_adapter(ctx: RunContext, upstream: str) -> str:
    """The after-probe of ``eval --adapter``: every fact, under ``ctx.adapter`` (keyed by its files' stamps)."""
    key = fingerprint("probe_after", upstream, str(ctx.adapter.resolve()), file_stamp(ctx.adapter))

    def compute():
        with probe_model(ctx, adapted=True) as model:
            rows = probe_facts(model, ctx.tokenizer, ctx.facts(), ctx.config.probe,
                               progress=ctx.progress, description="probing adapted model")
        ctx.run.write_table("probe_after.parquet", rows)
        ctx.run.write_table("categories_after.parquet", categorize(rows))

    ctx.step("probe_after", key, ["probe_after.parquet", "categories_after.parquet"], compute)
    return key


def probe_paraphrases(ctx: RunContext, model, trained: list[Fact]) -> pd.DataFrame:
    """Trained facts asked with a phrasing the adapter never saw (for `generalization`), by the adapted ``model``."""
    unseen = paraphrases_trained(ctx.config)  # the first k paraphrases were trained on
    held_out = [f.model_copy(update={"question": f.paraphrases[unseen]}) for f in trained
                if len(f.paraphrases) > unseen]
    if not held_out:
        return pd.DataFrame(columns=["fact_id", "prompt_id", "sample", "answer", "correct", "refusal"])
    return probe_facts(model, ctx.tokenizer, held_out, ctx.config.probe,
                       progress=ctx.progress, description="probing paraphrases")

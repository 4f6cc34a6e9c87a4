"""The train stage of a run (`run`), and its setup and teardown: settings checked before any work, the
model made trainable for the configured method, what was trained saved.

In:  ``facts.jsonl``, ``categories_before.parquet``, the base model, `LoraSettings`, `TrainConfig`.
Out: ``train_set.jsonl`` (the mixture), ``trained_facts.json`` (the Unknown facts packed in),
     ``adapter/`` (PEFT format, train.method=lora) or ``finetuned/`` (a safetensors model folder with its
     tokenizer, train.method=full), ``train_stats.json``, and ``merged/`` with ``train.export_merged``.
     Checkpoints after each epoch (``checkpoints/``) let a killed run resume; they go once the stage is done.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from knowpack.artifacts import TrainedFacts, TrainStats, checked
from knowpack.config import LoraSettings, RunConfig, TrainConfig
from knowpack.context import RunContext
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact
from knowpack.rundir import atomic_dir, fingerprint
from knowpack.train.checkpoint import Checkpoints
from knowpack.train.full import FullFinetune
from knowpack.train.lora import MUTATES_BASE, add_lora, export_merged, resolve_target_modules, save_adapter
from knowpack.train.loop import train_adapter
from knowpack.train.mixture import build_mixture
from knowpack.train.tracking import check_tracker_installed


def run(ctx: RunContext, upstream: str) -> str:
    c = ctx.config
    key = fingerprint("train", upstream, c.mixture.model_dump(), c.lora.model_dump(), c.train.model_dump())
    trained_dir = trained_dir_name(c.train)
    checkpoints = Checkpoints(ctx.run / "checkpoints", key)

    def compute():
        facts = ctx.facts()
        examples, unknown_ids = build_mixture(facts, ctx.run.read_table("categories_before.parquet"), c.mixture)
        ctx.run.write_text("train_set.jsonl", "".join(e.model_dump_json() + "\n" for e in examples))
        ctx.run.write_json("trained_facts.json", checked(unknown_ids, TrainedFacts, "trained_facts.json"))
        model = trainable_model(ctx.model, c.lora, c.train)
        ctx.use_model(model)
        packed = set(unknown_ids)  # once, not per fact: thousands of facts in a capacity run
        trained = [f for f in facts if f.fact_id in packed]
        if (latest := checkpoints.latest()) is not None:
            ctx.console.print(f"  resuming from the checkpoint after epoch {latest[0]}")
        stats = train_adapter(model, ctx.tokenizer, examples, c.train,
                              on_epoch_end=epoch_reliability(ctx.tokenizer, trained, c),
                              progress=ctx.progress, checkpoints=checkpoints, log_dir=ctx.run / c.train.report_to)
        save_trained(model, ctx.run / trained_dir, ctx.tokenizer)
        if base_is_modified(c.lora, c.train) or c.train.export_merged:
            ctx.forget_model()  # probe, evaluate and merge into the original base, loaded again
        if c.train.export_merged:
            with atomic_dir(ctx.run / "merged") as staging:
                export_merged(ctx.model, ctx.run / trained_dir, staging, ctx.tokenizer)
            ctx.forget_model()  # merging consumed it
        ctx.run.write_json("train_stats.json", checked({**asdict(stats), "reliability_by_epoch": stats.epoch_scores},
                                                       TrainStats, "train_stats.json"))

    outputs = ["train_set.jsonl", "trained_facts.json", trained_dir, "train_stats.json"]
    ctx.step("train", key, outputs + (["merged"] if c.train.export_merged else []), compute)
    if not c.train.keep_checkpoints:
        checkpoints.remove()  # only now: a kill before the stage is marked done still finds them
    return key


def epoch_reliability(tokenizer, trained: Sequence[Fact], config: RunConfig) -> Callable[[int, object], float | None]:
    """The ``on_epoch_end`` of `train_adapter`: the trained facts' reliability after each epoch, when
    ``train.eval_every_epoch`` asks for it (None otherwise)."""
    from knowpack.probe import probe_facts

    one_prompt_set = config.probe.model_copy(update={"num_prompts": 1})

    def after_epoch(epoch: int, model) -> float | None:
        if not config.train.eval_every_epoch:
            return None
        # One prompt set per epoch keeps the curve cheap; the final reliability uses all of them.
        # Probe the causal LM under the adapter: probing a PeftModel merges the adapter into the base
        # weights and back, and that float round-off would make training depend on this evaluation.
        rows = probe_facts(model.get_base_model(), tokenizer, trained, one_prompt_set, progress=False)
        return float(rows["correct"].mean())

    return after_epoch


def check_target_modules(lora: LoraSettings, train: TrainConfig, model) -> None:
    """LoRA target modules ``model`` does not have (its meta-device skeleton is enough), refused before any work."""
    if train.method == "lora":
        resolve_target_modules(lora.target_modules, model)


def check_train_settings(lora: LoraSettings, train: TrainConfig) -> None:
    """Combinations that cannot work, refused before any work with the field to change."""
    regularized = train.regularizer != "none" and train.reg_lambda > 0
    if train.method == "lora" and lora.init in MUTATES_BASE and regularized:
        raise KnowpackError(f"train.regularizer={train.regularizer} with lora.init={lora.init}: {lora.init} moves part "
                            "of the base weights into the adapter, so with the adapter disabled the model is not the "
                            "original one and the regularizer would pull towards the wrong distribution; use "
                            "lora.init=default (or gaussian) or train.regularizer=none")
    if train.method == "lora" and lora.init in MUTATES_BASE and lora.use_dora:
        raise KnowpackError(f"lora.use_dora with lora.init={lora.init}: PEFT cannot convert such an adapter back to "
                            "one that applies to the original base model; use lora.init=default or "
                            "lora.use_dora=false")
    if train.method == "full" and train.export_merged:
        raise KnowpackError("train.export_merged: a full fine-tune already writes a whole model (finetuned/); "
                            "set train.export_merged=false")
    if train.grad_accum_steps > train.batch_size:
        raise KnowpackError(f"train.grad_accum_steps: cannot split a batch of {train.batch_size} examples into "
                            f"{train.grad_accum_steps} micro-batches; use at most train.batch_size")
    check_tracker_installed(train.report_to)


def trained_dir_name(train: TrainConfig) -> str:
    """The run-directory folder holding what was trained."""
    return "finetuned" if train.method == "full" else "adapter"


def trainable_model(model, lora: LoraSettings, train: TrainConfig):
    """``model`` ready to train: LoRA adapter added (seeded), or every weight trainable (full)."""
    if train.method == "full":
        import torch

        torch.manual_seed(train.seed)
        return FullFinetune.prepare(model, keep_base=train.regularizer != "none" and train.reg_lambda > 0)
    return add_lora(model, lora, seed=train.seed)


def base_is_modified(lora: LoraSettings, train: TrainConfig) -> bool:
    """Whether training changed the in-memory base weights (full fine-tuning, PiSSA, OLoRA): the
    original base must then be loaded again before it is probed or compared with."""
    return train.method == "full" or lora.init in MUTATES_BASE


def save_trained(model, folder: Path, tokenizer=None) -> None:
    """What was trained, atomically: a PEFT adapter, or the fine-tuned model with its tokenizer."""
    with atomic_dir(folder) as staging:
        if isinstance(model, FullFinetune):
            model.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
        else:
            save_adapter(model, staging)

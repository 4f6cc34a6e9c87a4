"""The evaluate stages of a run: the base model's benchmark scores, then every metric of the adapted model.

``base_eval``  In: the base model (HF, or served by vLLM: ``eval.backend``), the benchmark settings.
               Out: ``benchmarks_base.json``.
``run``        In: the probe tables before and after, ``trained_facts.json``, ``train_stats.json``,
               ``benchmarks_base.json``, the adapted model.  Out: ``metrics.json`` (keys in DESIGN.md) and
               ``capacity.parquet`` (`evaluate_run`).
``outside_adapter``  (``eval --adapter``) In: the probe tables of every fact before and after, ``benchmarks_base.json``,
               the outside adapter on the base model.  Out: ``metrics.json`` (`evaluate_outside_adapter`).
``adapter_shift``  (``knowpack shift``) In: any PEFT adapter, prompts.  Out: its token shift (no run directory).
"""

from __future__ import annotations

from pathlib import Path

from knowpack.artifacts import BenchmarkScores, Metrics, checked, validated
from knowpack.backend import scoring_model
from knowpack.config import RunConfig
from knowpack.context import RunContext
from knowpack.continual.rounds import ROUNDS
from knowpack.evaluate import (BENCHMARKS_BASE, benchmark_settings, evaluate_outside_adapter, evaluate_run,
                               run_benchmarks)
from knowpack.errors import KnowpackError
from knowpack.rundir import fingerprint


def base_eval(ctx: RunContext, upstream: str) -> str:
    """The base model's benchmark scores, before any training (``benchmarks_base`` in metrics.json).

    They depend only on the model and the benchmark settings, so a sweep computes them once beside
    its shared base probe and every run adopts them. The upstream key passes through unchanged:
    later stages never read these scores, and runs made before this stage existed stay reusable.
    """
    key = fingerprint("base_eval", ctx.config.model.model_dump(), benchmark_settings(ctx.config.eval))
    ctx.step("base_eval", key, [BENCHMARKS_BASE], lambda: ctx.run.write_json(BENCHMARKS_BASE, checked(
        benchmark_scores(ctx, adapted=False), BenchmarkScores, BENCHMARKS_BASE)))
    return upstream


def benchmark_scores(ctx: RunContext, *, adapted: bool) -> dict[str, float]:
    """The base (or adapted) model's benchmark scores, from the ``eval.backend`` model (HF, or a vLLM engine
    that ends when they are done, before the other measurements load the HF model)."""
    with scoring_model(ctx, adapted=adapted) as model:
        return run_benchmarks(model, ctx.tokenizer, ctx.config.eval, progress=ctx.progress)


def run(ctx: RunContext, upstream: str) -> str:
    key = fingerprint("evaluate", upstream, ctx.config.eval.model_dump())

    def compute():
        benchmarks = benchmark_scores(ctx, adapted=True)
        metrics = evaluate_run(ctx.run, ctx.adapted_model(), ctx.tokenizer, ctx.config.eval, benchmarks,
                               ctx.run.read_json(BENCHMARKS_BASE))
        if ctx.config.rounds:
            metrics.update(ctx.run.read_json(ROUNDS))  # "rounds" (a row per round) and "continual"
        capacity = validated(metrics, Metrics, "metrics.json").capacity
        ctx.run.write_json("metrics.json", metrics)
        if capacity is not None and (note := capacity.note or capacity.bits_undefined):
            ctx.console.print(f"  capacity: {note}")  # said once, kept in metrics.json too

    ctx.step("evaluate", key, ["metrics.json", "capacity.parquet"], compute)
    return key


def outside_adapter(ctx: RunContext, upstream: str) -> str:
    key = fingerprint("evaluate", upstream, ctx.config.eval.model_dump())

    def compute():
        benchmarks = benchmark_scores(ctx, adapted=True)
        ctx.run.write_json("metrics.json", checked(evaluate_outside_adapter(
            ctx.run, ctx.adapted_model(), ctx.tokenizer, ctx.config.eval, benchmarks,
            ctx.run.read_json(BENCHMARKS_BASE), ctx.adapter), Metrics, "metrics.json"))

    ctx.step("evaluate", key, ["metrics.json"], compute)
    return key


def adapter_shift(config: RunConfig, adapter: Path, prompts: Path | None = None, max_new_tokens: int = 32,
                  train_set: Path | None = None) -> dict:
    """Token shift (URIAL) of any adapter for ``config.model`` on ``prompts`` (a text file, one prompt per
    line; default: the first ``eval.token_shift_prompts`` questions of the configured facts, 16 if 0).
    ``train_set``: the training set the adapter learned (a run's ``train_set.jsonl``), for the copied
    shares; without it they are None."""
    from knowpack.evaluate import read_training_texts
    from knowpack.evaluate.token_shift import token_shift
    from knowpack.models import check_model_settings, load_configured_model
    from knowpack.train.lora import check_adapter_files, load_adapter

    check_adapter_files(adapter)
    check_model_settings(config.model)
    texts = None if train_set is None else read_training_texts(train_set)
    if prompts is not None:
        if not prompts.is_file():
            raise KnowpackError(f"--prompts {prompts}: no such file; give a text file, one prompt per line")
        questions = [line.strip() for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from knowpack.facts import build_facts

        questions = [f.question for f in build_facts(config.facts)][:config.eval.token_shift_prompts or 16]
    model, tokenizer = load_configured_model(config.model)
    return token_shift(load_adapter(model, adapter), tokenizer, questions, max_new_tokens=max_new_tokens,
                       training_texts=texts)

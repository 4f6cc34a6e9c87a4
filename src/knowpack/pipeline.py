"""The `run` recipe: the stages of a run, in order, and what each reads and writes in the run directory.

Every stage is an entry point ``run(ctx, upstream) -> key`` in its folder's ``stage.py``
(`knowpack.context`): it is keyed by a fingerprint of its config and of the stages before it, and a
stage already finished with the same key is reused (and the log says so); an interrupted run resumes at
the first unfinished stage. Settings that can be checked before any work are checked first (`preflight`).

In:  a `RunConfig` and a run directory.  Out: the run directory with every artifact of DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console

from knowpack.config import RunConfig, config_to_yaml
from knowpack.context import RunContext, reuse_dirs
from knowpack.continual import check_rounds
from knowpack.continual import stage as continual
from knowpack.evaluate import check_benchmark_data
from knowpack.evaluate import stage as evaluate
from knowpack.facts import stage as facts
from knowpack.models import check_model_settings
from knowpack.probe import stage as probe
from knowpack.backend import check_backend
from knowpack.report import stage as report
from knowpack.rundir import RunDir
from knowpack.train import check_target_modules, check_train_settings
from knowpack.train import stage as train
from knowpack.train.lora import (
    check_adapter_files,
    check_adapter_fits,
    is_full_model_folder,
)


@dataclass(frozen=True)
class Stage:
    """A step of the recipe: its entry point, and (for the reader, and the README's table) what it reads and
    writes in the run directory."""
    name: str
    run: Callable[[RunContext, str], str]
    reads: str
    writes: str


def _train(ctx: RunContext, upstream: str) -> str:
    """One training, or continual packing (`knowpack.continual.stage`) when the config has rounds."""
    return (continual.run if ctx.config.rounds else train.run)(ctx, upstream)


RECIPE = (
    Stage("facts", facts.run, "facts settings (and input files)", "facts.jsonl"),
    Stage("probe_before", probe.before, "facts.jsonl, base model", "probe_before.parquet, categories_before.parquet"),
    Stage("base_eval", evaluate.base_eval, "base model, benchmark data", "benchmarks_base.json"),
    Stage("train", _train, "facts.jsonl, categories_before.parquet",
          "train_set.jsonl, trained_facts.json, adapter/ (or finetuned/), train_stats.json [, rounds/]"),
    Stage("probe_after", probe.after, "train_set.jsonl, trained_facts.json, adapter/",
          "probe_after.parquet, categories_after.parquet, probe_generalization.parquet"),
    Stage("evaluate", evaluate.run, "probe tables, train_stats.json, benchmarks_base.json, adapter/",
          "metrics.json, capacity.parquet"),
    Stage("report", report.run, "metrics.json, config.yaml", "report.md, report.html"),
)


STAGES = tuple(stage.name for stage in RECIPE)

# ``knowpack eval --adapter DIR``: the same stages for an adapter knowpack did not train. Nothing is trained,
# so the after-probe covers every fact and the evaluation has no trained facts (all are held out).
ADAPTER_RECIPE = (
    *RECIPE[:3],
    Stage("probe_after", probe.outside_adapter, "facts.jsonl, the outside adapter",
          "probe_after.parquet, categories_after.parquet"),
    Stage("evaluate", evaluate.outside_adapter, "probe tables, benchmarks_base.json, the outside adapter",
          "metrics.json"),
)


def preflight(config: RunConfig) -> None:
    """Everything that can fail before the first stage, checked before the run directory exists."""
    check_train_settings(config.lora, config.train)
    check_rounds(config)
    check_benchmark_data(config.eval)
    check_backend(config)
    # Last: it reads the model's config (a hub id's from the cache or the hub) and builds its skeleton.
    check_target_modules(config.lora, config.train, check_model_settings(config.model))


def run_pipeline(config: RunConfig, out: str | Path, *, until: str = "report", progress: bool = True,
                 console: Console | None = None, reuse_from: list[Path] | None = None) -> Path:
    """Run (or resume) the pipeline into ``out`` up to and including stage ``until``; returns the run directory.

    ``reuse_from``: other run directories whose finished stages with identical fingerprints are copied
    instead of recomputed (a sweep probes the base model once).
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}")
    preflight(config)  # a typo or missing data leaves nothing half-made
    ctx = RunContext(config, RunDir(out), console or Console(stderr=True), progress, reuse_dirs(reuse_from))
    return _run_stages(ctx, RECIPE[:STAGES.index(until) + 1])


def evaluate_adapter(config: RunConfig, adapter_dir: str | Path, out: str | Path, *, progress: bool = True,
                     console: Console | None = None) -> Path:
    """Evaluate any PEFT adapter (or fine-tuned model folder) for ``config.model`` into ``out``
    (``knowpack eval --adapter DIR``): `ADAPTER_RECIPE`, resumable like a run. The base model is probed and
    scored before the adapter is attached; an adapter stored as a pickle, or made for a different base
    model, is refused before any work."""
    adapter_dir = Path(adapter_dir)
    check_adapter_files(adapter_dir)
    skeleton = check_model_settings(config.model)
    if not is_full_model_folder(adapter_dir):
        check_adapter_fits(skeleton, adapter_dir)
    check_benchmark_data(config.eval)
    check_backend(config, adapter_dir)
    ctx = RunContext(config, RunDir(out), console or Console(stderr=True), progress, adapter=adapter_dir)
    return _run_stages(ctx, ADAPTER_RECIPE)


def _run_stages(ctx: RunContext, stages: tuple[Stage, ...]) -> Path:
    with ctx.run.lock():
        ctx.console.print(f"run directory: {ctx.run.path}")
        ctx.run.write_text("config.yaml", config_to_yaml(ctx.config))
        key = ""
        for stage in stages:
            key = stage.run(ctx, key)
    return ctx.run.path

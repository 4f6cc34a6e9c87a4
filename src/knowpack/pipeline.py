"""The `run` recipe: facts → probe before → base scores → mixture → train → probe after → evaluate → report.

With ``rounds`` the train stage is continual packing (`knowpack.continual`): a plan of every round,
then one stage per round (``round-1``, ``round-2``, …, each reused or resumed on its own), then the
final state where a single training leaves it, so the later stages run unchanged.

In:  a `RunConfig` and a run directory.  Out: the run directory with every artifact of DESIGN.md.

Each stage is keyed by a fingerprint of its config and of its upstream stages; when the run directory
already holds a stage with the same fingerprint, the stage is reused (and the log says so).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pandas as pd
from rich.console import Console

from knowpack.config import RunConfig, config_to_yaml
from knowpack.continual import PLAN, ROUNDS, RoundPlan, Rounds, check_rounds, paraphrases_trained, plan_rounds
from knowpack.evaluate import BENCHMARKS_BASE, benchmark_settings, check_benchmark_data, evaluate_run, run_benchmarks
from knowpack.facts import Fact, build_facts, facts_to_jsonl, read_facts
from knowpack.models import check_model_settings, load_configured_model
from knowpack.probe import categorize, probe_facts
from knowpack.report import write_report
from knowpack.rundir import RunDir, atomic_dir, fingerprint
from knowpack.train import (Checkpoints, build_mixture, check_target_modules, check_train_settings, export_merged,
                            save_trained, train_adapter, trainable_model, trained_dir_name)
from knowpack.train.stage import base_is_modified


class Recipe:
    """Holds the run's state between stages; the model is loaded only when a stage needs it."""

    def __init__(self, config: RunConfig, out: str | Path, console: Console | None = None, progress: bool = True,
                 reuse_from: list[Path] | None = None):
        self.config = config
        # Before the run directory exists: a typo or missing data leaves nothing half-made.
        check_train_settings(config.lora, config.train)
        check_rounds(config)
        check_benchmark_data(config.eval)
        # Last: it reads the model's config (a hub id's from the cache or the hub) and builds its skeleton.
        check_target_modules(config.lora, config.train, check_model_settings(config.model))
        self.run = RunDir(out)
        self.reuse_from = [RunDir(p) for p in reuse_from or [] if Path(p).is_dir()]
        self.console = console or Console(stderr=True)
        self.progress = progress
        self._model = None
        self.tokenizer = None
        self.timings: dict[str, float] = {}

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            self._model, self.tokenizer = load_configured_model(self.config.model)
        return self._model

    def _stage(self, name: str, key: str, outputs: list[str], compute: Callable[[], None]) -> None:
        if self.run.is_done(name, key):
            self.console.print(f"[dim]✓ {name}: reused from {self.run.path}[/dim]")
            return
        for other in self.reuse_from:
            if self.run.adopt(name, key, other):
                self.console.print(f"[dim]✓ {name}: reused from {other.path}[/dim]")
                return
        start = time.perf_counter()
        self.console.print(f"▶ {name}")
        compute()
        self.timings[name] = time.perf_counter() - start
        self.run.mark_done(name, key, outputs)
        self.console.print(f"[green]✓ {name}[/green] ({self.timings[name]:.1f} s)")

    # -- stages -----------------------------------------------------------------------------------
    def facts_stage(self, upstream: str = "") -> str:
        inputs = [self.config.facts.path, *self.config.facts.name_files]
        # A user's input files may change under the same path: their size and mtime are part of the key.
        stamp = [[Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in inputs if p and Path(p).is_file()]
        key = fingerprint("facts", self.config.facts.model_dump(), stamp or None)
        self._stage("facts", key, ["facts.jsonl"],
                    lambda: self.run.write_text("facts.jsonl", facts_to_jsonl(
                        build_facts(self.config.facts, progress=self.progress))))
        return key

    def probe_before_stage(self, upstream: str) -> str:
        key = fingerprint("probe_before", upstream, self.config.model.model_dump(), self.config.probe.model_dump())

        def compute():
            rows = probe_facts(self.model, self.tokenizer, self.facts(), self.config.probe,
                               progress=self.progress, description="probing base model")
            self.run.write_table("probe_before.parquet", rows)
            self.run.write_table("categories_before.parquet", categorize(rows))

        self._stage("probe_before", key, ["probe_before.parquet", "categories_before.parquet"], compute)
        return key

    def base_eval_stage(self, upstream: str) -> str:
        """The base model's benchmark scores, before any training (``benchmarks_base`` in metrics.json).

        They depend only on the model and the benchmark settings, so a sweep computes them once beside
        its shared base probe and every run adopts them. The upstream key passes through unchanged:
        later stages never read these scores, and runs made before this stage existed stay reusable.
        """
        key = fingerprint("base_eval", self.config.model.model_dump(), benchmark_settings(self.config.eval))
        self._stage("base_eval", key, [BENCHMARKS_BASE], lambda: self.run.write_json(
            BENCHMARKS_BASE, run_benchmarks(self.model, self.tokenizer, self.config.eval, progress=self.progress)))
        return upstream

    def train_stage(self, upstream: str) -> str:
        c = self.config
        if c.rounds:
            return self.rounds_stage(upstream)
        key = fingerprint("train", upstream, c.mixture.model_dump(), c.lora.model_dump(), c.train.model_dump())
        trained_dir = trained_dir_name(c.train)
        checkpoints = Checkpoints(self.run / "checkpoints", key)

        def compute():
            examples, unknown_ids = build_mixture(self.facts(), self.run.read_table("categories_before.parquet"),
                                                  c.mixture)
            self.run.write_text("train_set.jsonl", "".join(e.model_dump_json() + "\n" for e in examples))
            self.run.write_json("trained_facts.json", unknown_ids)
            model = trainable_model(self.model, c.lora, c.train)
            self._model = model
            trained = [f for f in self.facts() if f.fact_id in set(unknown_ids)]

            def epoch_reliability(epoch: int, model) -> float | None:
                if not c.train.eval_every_epoch:
                    return None
                # One prompt set per epoch keeps the curve cheap; the final reliability uses all of them.
                # Probe the causal LM under the adapter: probing a PeftModel merges the adapter into the base
                # weights and back, and that float round-off would make training depend on this evaluation.
                rows = probe_facts(model.get_base_model(), self.tokenizer, trained,
                                   c.probe.model_copy(update={"num_prompts": 1}), progress=False)
                return float(rows["correct"].mean())

            if (latest := checkpoints.latest()) is not None:
                self.console.print(f"  resuming from the checkpoint after epoch {latest[0]}")
            stats = train_adapter(model, self.tokenizer, examples, c.train, on_epoch_end=epoch_reliability,
                                  progress=self.progress, checkpoints=checkpoints, log_dir=self.run / c.train.report_to)
            save_trained(model, self.run / trained_dir, self.tokenizer)
            if base_is_modified(c.lora, c.train) or c.train.export_merged:
                self._model = None  # probe, evaluate and merge into the original base, loaded again
            if c.train.export_merged:
                with atomic_dir(self.run / "merged") as staging:
                    export_merged(self.model, self.run / trained_dir, staging, self.tokenizer)
                self._model = None  # merging consumed it
            self.run.write_json("train_stats.json", {**asdict(stats), "reliability_by_epoch": stats.epoch_scores})

        outputs = ["train_set.jsonl", "trained_facts.json", trained_dir, "train_stats.json"]
        self._stage("train", key, outputs + (["merged"] if c.train.export_merged else []), compute)
        if not c.train.keep_checkpoints:
            checkpoints.remove()  # only now: a kill before the stage is marked done still finds them
        return key

    def rounds_stage(self, upstream: str) -> str:
        """Continual packing in place of one training: plan, each round, then the final state."""
        c = self.config
        key = fingerprint("rounds_plan", upstream, c.mixture.model_dump(), [r.model_dump() for r in c.rounds],
                          c.continual.model_dump())

        def plan():  # every round's facts, before round 1 trains: too few Unknown facts fail here
            plans = plan_rounds(self.facts(), self.run.read_table("categories_before.parquet"), c)
            self.run.write_json(PLAN, [p.model_dump() for p in plans])

        self._stage("rounds_plan", key, [PLAN], plan)
        self._model = None  # each round loads its own copy of the base
        rounds = Rounds(self.run, c, self.facts(), [RoundPlan.model_validate(p) for p in self.run.read_json(PLAN)],
                        lambda: load_configured_model(c.model), self.console, self.progress)
        for number in range(1, len(c.rounds) + 1):
            key = fingerprint("round", key, number, c.lora.model_dump(), c.train.model_dump(),
                              c.eval.heldout_facts, c.eval.seed, c.eval.forgetting_passages, c.eval.forgetting_text)
            self._stage(f"round-{number}", key, rounds.outputs(number), lambda n=number, k=key: rounds(n, k))
            rounds.remove_checkpoints(number, key)  # only now: a kill before the round is marked done still finds them
        key = fingerprint("train", key)
        self._stage("train", key, rounds.final_outputs(), rounds.assemble_final)
        return key

    def adapted_model(self):
        """The base model with the run's adapter (loaded from adapter/ or finetuned/ when training was reused)."""
        from knowpack.train.lora import load_adapter

        if not hasattr(self.model, "disable_adapter"):
            self._model = load_adapter(self.model, self.run / trained_dir_name(self.config.train))
            self._model.eval()
        return self._model

    def heldout_and_trained(self) -> tuple[list[Fact], list[str]]:
        trained_ids = self.run.read_json("trained_facts.json")
        lines = (self.run / "train_set.jsonl").read_text(encoding="utf-8").splitlines()
        in_train = {json.loads(line)["fact_id"] for line in lines if line.strip()}
        heldout = [f for f in self.facts() if f.fact_id not in in_train]
        limit = self.config.eval.heldout_facts
        if limit is not None and limit < len(heldout):
            heldout = random.Random(self.config.eval.seed).sample(heldout, limit)
        trained = [f for f in self.facts() if f.fact_id in set(trained_ids)]
        return trained + heldout, trained_ids

    def probe_after_stage(self, upstream: str) -> str:
        key = fingerprint("probe_after", upstream, self.config.eval.heldout_facts, self.config.eval.seed)

        def compute():
            facts, trained_ids = self.heldout_and_trained()
            rows = probe_facts(self.adapted_model(), self.tokenizer, facts, self.config.probe,
                               progress=self.progress, description="probing adapted model")
            self.run.write_table("probe_after.parquet", rows)
            self.run.write_table("categories_after.parquet", categorize(rows))
            self.run.write_table("probe_generalization.parquet", self.probe_paraphrases(facts[:len(trained_ids)]))

        self._stage("probe_after", key, ["probe_after.parquet", "categories_after.parquet",
                                         "probe_generalization.parquet"], compute)
        return key

    def probe_paraphrases(self, trained: list[Fact]) -> pd.DataFrame:
        """Trained facts asked with a phrasing the adapter never saw (for `generalization`)."""
        unseen = paraphrases_trained(self.config)  # the first k paraphrases were trained on
        held_out = [f.model_copy(update={"question": f.paraphrases[unseen]}) for f in trained
                    if len(f.paraphrases) > unseen]
        if not held_out:
            return pd.DataFrame(columns=["fact_id", "prompt_id", "sample", "answer", "correct", "refusal"])
        return probe_facts(self.adapted_model(), self.tokenizer, held_out, self.config.probe,
                           progress=self.progress, description="probing paraphrases")

    def evaluate_stage(self, upstream: str) -> str:
        key = fingerprint("evaluate", upstream, self.config.eval.model_dump())

        def compute():
            metrics = evaluate_run(self.run, self.adapted_model(), self.tokenizer, self.config.eval,
                                   self.run.read_json(BENCHMARKS_BASE), progress=self.progress)
            if self.config.rounds:
                metrics.update(self.run.read_json(ROUNDS))  # "rounds" (a row per round) and "continual"
            self.run.write_json("metrics.json", metrics)
            if note := metrics["capacity"].get("note") or metrics["capacity"].get("bits_undefined"):
                self.console.print(f"  capacity: {note}")  # said once, kept in metrics.json too

        self._stage("evaluate", key, ["metrics.json", "capacity.parquet"], compute)
        return key

    def facts(self) -> list[Fact]:
        return read_facts(self.run / "facts.jsonl")

    # -- the recipe -------------------------------------------------------------------------------
    def __call__(self, until: str = "report") -> Path:
        """Run the stages in order up to and including ``until`` (one of `STAGES`)."""
        if until not in STAGES:
            raise ValueError(f"until must be one of {STAGES}")
        with self.run.lock():
            self.console.print(f"run directory: {self.run.path}")
            self.run.write_text("config.yaml", config_to_yaml(self.config))
            key = ""
            for name in STAGES[:STAGES.index(until) + 1]:
                key = getattr(self, f"{name}_stage")(key)
        return self.run.path

    def report_stage(self, upstream: str) -> str:
        key = fingerprint("report", upstream)
        self._stage("report", key, ["report.md", "report.html"], lambda: write_report(self.run))
        return key


STAGES = ("facts", "probe_before", "base_eval", "train", "probe_after", "evaluate", "report")


def run_pipeline(config: RunConfig, out: str | Path, *, until: str = "report", progress: bool = True,
                 console: Console | None = None, reuse_from: list[Path] | None = None) -> Path:
    """Run (or resume) the pipeline into ``out`` up to stage ``until``; returns the run directory.

    ``reuse_from``: other run directories whose finished stages with identical fingerprints are copied
    instead of recomputed (a sweep probes the base model once).
    """
    return Recipe(config, out, console=console, progress=progress, reuse_from=reuse_from)(until)

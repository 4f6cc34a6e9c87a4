"""One round of continual packing: train it with the strategy, then measure what the model holds now.

In:  the run directory (facts, categories before training, the earlier rounds' artifacts), the
     `RoundPlan`s, a `RunConfig`, and a loader of the original base model.
Out: ``rounds/round-<k>/``: what the round trained (``adapter/`` or ``finetuned/``), for ``stack``
     also ``stacked/`` (rounds 1..k as one adapter on the original base), ``probe.parquet`` and
     ``categories.parquet`` (the model after round k on every fact trained so far and the held-out
     facts) and ``round.json`` (the round's row of ``metrics.json["rounds"]``, with ``capacity``: the bits
     in every fact trained so far, `knowpack.evaluate.capacity`). `assemble_final`
     then writes the final state where the train stage of a single run puts it, so the later
     stages (probe after, evaluate, report) run unchanged on it.

Strategies: ``continue`` trains the previous round's adapter further (a fresh optimizer each round);
``stack`` merges the earlier rounds into the base and trains a new adapter on it (its regularizer
base is therefore the model before the round); ``retrain`` trains a new adapter on every round's
facts so far.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

from knowpack.artifacts import RoundRow, RoundsFile, TrainedFacts, TrainStats, checked
from knowpack.config import RunConfig
from knowpack.continual.plan import RoundPlan
from knowpack.continual.stack import stack_adapters
from knowpack.evaluate.capacity import measure_capacity
from knowpack.evaluate.knowledge import knowledge_shift, reliability
from knowpack.facts.sampling import heldout_facts
from knowpack.facts.schema import Fact
from knowpack.probe import categorize, probe_facts
from knowpack.rundir import RunDir, atomic_dir
from knowpack.train import Checkpoints, export_merged, load_adapter, save_trained, train_adapter, trainable_model
from knowpack.train.stage import epoch_reliability, trained_dir_name

ROUNDS = "rounds.json"
STAT_KEYS = ("steps", "tokens", "seconds", "tokens_per_s", "peak_memory_mb", "final_loss")


def round_dir(number: int) -> str:
    return f"rounds/round-{number}"


@dataclass
class Rounds:
    """Everything a round needs; ``load_base`` gives a fresh copy of the original base and its tokenizer."""
    run: RunDir
    config: RunConfig
    facts: list[Fact]
    plans: list[RoundPlan]
    load_base: Callable[[], tuple[Any, Any]]
    console: Console
    progress: bool = True

    @property
    def trained_name(self) -> str:
        return trained_dir_name(self.config.train)

    def state_dir(self, number: int) -> Path:
        """The model after round ``number`` as one adapter (or fine-tuned model) on the original base."""
        name = "stacked" if self.config.continual.strategy == "stack" else self.trained_name
        return self.run / f"{round_dir(number)}/{name}"

    def outputs(self, number: int) -> list[str]:
        folder = round_dir(number)
        stacked = [f"{folder}/stacked"] if self.config.continual.strategy == "stack" else []
        return [f"{folder}/{self.trained_name}", *stacked, f"{folder}/probe.parquet", f"{folder}/categories.parquet",
                f"{folder}/round.json"]

    def heldout(self) -> list[Fact]:
        """Facts no round trains on, sampled as a single run samples them."""
        in_train = {e.fact_id for plan in self.plans for e in plan.examples}
        return heldout_facts(self.facts, in_train, self.config.eval.heldout_facts, self.config.eval.seed)

    # -- one round ---------------------------------------------------------------------------------
    def train_config(self, number: int):
        """Each round its own seed (adapter init, batch order); round 1 trains as a single run would."""
        return self.config.train.model_copy(update={"seed": self.config.train.seed + number - 1})

    def trainable(self, number: int):
        """The model round ``number`` trains, by strategy, and its tokenizer."""
        c = self.config
        base, tokenizer = self.load_base()
        train = self.train_config(number)
        if number == 1 or c.continual.strategy == "retrain":
            return trainable_model(base, c.lora, train), tokenizer
        if c.continual.strategy == "continue":
            return load_adapter(base, self.state_dir(number - 1), trainable=True), tokenizer
        merged = load_adapter(base, self.state_dir(number - 1)).merge_and_unload()  # stack: earlier rounds in the base
        return trainable_model(merged, c.lora, train), tokenizer

    def train(self, number: int, key: str) -> dict[str, Any]:
        """Train round ``number`` and save what it trained; returns its train stats."""
        c = self.config
        plan = self.plans[number - 1]
        model, tokenizer = self.trainable(number)
        by_id = {f.fact_id: f for f in self.facts}
        trained = [by_id[i] for i in plan.trained_ids]
        folder = self.run / round_dir(number)
        checkpoints = Checkpoints(folder / "checkpoints", key)
        if (latest := checkpoints.latest()) is not None:
            self.console.print(f"  round {number}: resuming from the checkpoint after epoch {latest[0]}")
        stats = train_adapter(model, tokenizer, plan.examples, self.train_config(number),
                              on_epoch_end=epoch_reliability(tokenizer, trained, c),
                              progress=self.progress, checkpoints=checkpoints, log_dir=folder / c.train.report_to)
        save_trained(model, folder / self.trained_name, tokenizer)
        del model
        if c.continual.strategy == "stack":
            with atomic_dir(folder / "stacked") as staging:
                stack_adapters([self.run / f"{round_dir(k)}/{self.trained_name}" for k in range(1, number + 1)],
                               staging)
        return {**{k: getattr(stats, k) for k in STAT_KEYS}, "epoch_losses": stats.epoch_losses,
                "reliability_by_epoch": stats.epoch_scores}

    def measure(self, number: int, train_stats: dict[str, Any]) -> dict[str, Any]:
        """Probe the model after round ``number``; its row of ``metrics.json["rounds"]``."""
        c = self.config
        base, tokenizer = self.load_base()
        model = load_adapter(base, self.state_dir(number))
        model.eval()
        by_id = {f.fact_id: f for f in self.facts}
        so_far = [by_id[i] for plan in self.plans[:number] for i in plan.new_ids]
        heldout = self.heldout()
        rows = probe_facts(model, tokenizer, so_far + heldout, c.probe, progress=self.progress,
                           description=f"probing after round {number}")
        categories = categorize(rows)
        folder = round_dir(number)
        self.run.write_table(f"{folder}/probe.parquet", rows)
        self.run.write_table(f"{folder}/categories.parquet", categories)
        before = self.run.read_table("categories_before.parquet")
        heldout_ids = {f.fact_id for f in heldout}
        by_round = [reliability(rows, plan.new_ids) for plan in self.plans[:number]]
        own = [self.run.read_json(f"{round_dir(k)}/round.json")["reliability_current"] for k in range(1, number)]
        drops = [now - then for now, then in zip(by_round, own) if now is not None and then is not None]
        earlier = [i for plan in self.plans[:number - 1] for i in plan.new_ids]
        row: dict[str, Any] = {
            "round": number,
            "new_facts": len(self.plans[number - 1].new_ids),
            "replayed_facts": len(self.plans[number - 1].replayed_ids),
            "train_examples": len(self.plans[number - 1].examples),
            "reliability": reliability(rows, [f.fact_id for f in so_far]),  # every fact trained so far
            "reliability_current": by_round[-1],
            "reliability_earlier": reliability(rows, earlier) if earlier else None,
            "reliability_by_round": by_round,  # [k]: round k+1's facts, now (a row of the retention matrix)
            # Mean change of each earlier round's reliability since the end of its own round (Lopez-Paz's BWT).
            "backward_transfer": sum(drops) / len(drops) if drops else None,
            "shift": knowledge_shift(before[before["fact_id"].isin(heldout_ids)],
                                     categories[categories["fact_id"].isin(heldout_ids)]),
            "train": {k: train_stats[k] for k in STAT_KEYS},
            "reliability_by_epoch": train_stats["reliability_by_epoch"],
            "epoch_losses": train_stats["epoch_losses"],
        }
        if c.eval.forgetting_passages:
            from knowpack.evaluate.forgetting import forgetting, load_passages

            passages = load_passages(c.eval.forgetting_passages, seed=c.eval.seed, path=c.eval.forgetting_text)
            row["forgetting"] = forgetting(model, tokenizer, passages)
        # Bits in every fact trained so far, against the original base (the state is one adapter on it).
        row["capacity"] = measure_capacity(model, tokenizer, self.facts, [f.fact_id for f in so_far],
                                           self.state_dir(number), row["reliability"])[1]
        return row

    def __call__(self, number: int, key: str) -> None:
        """Round ``number`` whole: train, measure, write its row last (the stage is done once all are written)."""
        row = self.measure(number, self.train(number, key))
        self.run.write_json(f"{round_dir(number)}/round.json", checked(row, RoundRow, "round.json"))

    def remove_checkpoints(self, number: int, key: str) -> None:
        if not self.config.train.keep_checkpoints:
            Checkpoints(self.run / round_dir(number) / "checkpoints", key).remove()

    # -- after the last round ----------------------------------------------------------------------
    def final_outputs(self) -> list[str]:
        merged = ["merged"] if self.config.train.export_merged else []
        return ["train_set.jsonl", "trained_facts.json", self.trained_name, "train_stats.json", ROUNDS, *merged]

    def assemble_final(self) -> None:
        """The final state as a single run's train stage leaves it, plus ``rounds.json`` (rows and retention)."""
        rows = [self.run.read_json(f"{round_dir(k)}/round.json") for k in range(1, len(self.plans) + 1)]
        examples = [e for plan in self.plans for e in plan.examples]
        self.run.write_text("train_set.jsonl", "".join(e.model_dump_json() + "\n" for e in examples))
        self.run.write_json("trained_facts.json", checked([i for plan in self.plans for i in plan.new_ids],
                                                          TrainedFacts, "trained_facts.json"))
        with atomic_dir(self.run / self.trained_name) as staging:
            shutil.copytree(self.state_dir(len(self.plans)), staging, dirs_exist_ok=True)
        seconds, tokens = sum(r["train"]["seconds"] for r in rows), sum(r["train"]["tokens"] for r in rows)
        stats = {
            "steps": sum(r["train"]["steps"] for r in rows), "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds else 0.0,
            "peak_memory_mb": max(r["train"]["peak_memory_mb"] for r in rows),
            "final_loss": rows[-1]["train"]["final_loss"],
            # Every round's epochs in order: the curves of the whole continual run.
            "epoch_losses": [x for r in rows for x in r["epoch_losses"]],
            "reliability_by_epoch": [x for r in rows for x in r["reliability_by_epoch"]]}
        self.run.write_json("train_stats.json", checked(stats, TrainStats, "train_stats.json"))
        self.run.write_json(ROUNDS, checked({"rounds": rows, "continual": continual_summary(rows, self.config)},
                                            RoundsFile, ROUNDS))
        if self.config.train.export_merged:
            base, tokenizer = self.load_base()
            with atomic_dir(self.run / "merged") as staging:
                export_merged(base, self.run / self.trained_name, staging, tokenizer)


def retention_matrix(rows: Sequence[dict[str, Any]]) -> list[list[float | None]]:
    """[i][j]: reliability on round j+1's facts after round i+1 was trained (None above the diagonal)."""
    return [list(r["reliability_by_round"]) + [None] * (len(rows) - len(r["reliability_by_round"])) for r in rows]


def continual_summary(rows: Sequence[dict[str, Any]], config: RunConfig) -> dict[str, Any]:
    """Scalars a sweep table can hold (``continual.*``) and the retention matrix."""
    matrix = retention_matrix(rows)
    return {"strategy": config.continual.strategy, "n_rounds": len(rows), "retention": matrix,
            "first_round_after_own": matrix[0][0], "first_round_final": matrix[-1][0],
            "last_round_final": matrix[-1][-1], "earlier_rounds_final": rows[-1]["reliability_earlier"],
            "backward_transfer": rows[-1]["backward_transfer"]}

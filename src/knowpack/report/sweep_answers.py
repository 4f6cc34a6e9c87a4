"""Example answers side by side: the same facts, answered by the base model and by each configuration of a sweep.

In:  the sweep's finished runs (the results table with its ``configuration`` labels) and their run directories:
     ``facts.jsonl``, ``trained_facts.json``, ``probe_before.parquet`` and ``probe_after.parquet``.
Out: a `Section` with two tables, held-out facts and trained facts, one column per configuration; None when
     fewer than two configurations have those files.

Numbers say how much a configuration moved; these tables show what moved. Facts whose answers differ most
across the configurations come first, since a fact every run answers alike shows nothing about the difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from knowpack.report.page import Section, md_table

__all__ = ["answers_side_by_side"]

HELDOUT_EXAMPLES = 6
TRAINED_EXAMPLES = 4
MAX_CHARS = 60  # a longer answer is cut: the table is for reading across, not for whole generations
RUN_FILES = ("facts.jsonl", "trained_facts.json", "probe_before.parquet", "probe_after.parquet")


Answer = tuple[str, bool]  # the greedy answer and the probe's judgement of it


def _greedy(path: Path) -> dict[str, Answer]:
    """fact id -> the greedy answer to the first prompt set (the one every probe has), judged as the probe did."""
    rows = pd.read_parquet(path, columns=["fact_id", "prompt_id", "sample", "answer", "correct"])
    rows = rows[(rows["prompt_id"] == 0) & (rows["sample"] == 0)]
    return {f: (a, bool(c)) for f, a, c in zip(rows["fact_id"], rows["answer"], rows["correct"])}


def _cell(answer: Answer | None) -> str:
    if answer is None:
        return "—"
    text, correct = answer
    text = text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 1] + "…"
    return f"{text} ✓" if correct else text


def _one_run_per_configuration(done: pd.DataFrame, sweep_dir: Path) -> dict[str, Path]:
    """The first finished run of each configuration with the first run's seed where it has one, so that runs
    drawn from the same facts sit side by side; runs missing a file are passed over."""
    seed_field = "config.mixture.seed"
    first_seed = done[seed_field].iloc[0] if seed_field in done and len(done) else None
    chosen: dict[str, Path] = {}
    for label, group in done.groupby("configuration", sort=False):
        if first_seed is not None and (group[seed_field] == first_seed).any():
            group = pd.concat([group[group[seed_field] == first_seed], group[group[seed_field] != first_seed]])
        for run_dir in group["run_dir"]:
            if all((sweep_dir / run_dir / name).is_file() for name in RUN_FILES):
                chosen[label] = sweep_dir / run_dir
                break
    return chosen


def answers_side_by_side(done: pd.DataFrame, sweep_dir: Path) -> Section | None:
    runs = _one_run_per_configuration(done, sweep_dir)
    if len(runs) < 2:
        return None
    labels = list(runs)
    facts: dict[str, dict] = {}
    before: dict[str, Answer] = {}
    after: dict[str, dict[str, Answer]] = {}
    trained: dict[str, set[str]] = {}
    for label, run_dir in runs.items():
        with open(run_dir / "facts.jsonl", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    fact = json.loads(line)
                    facts.setdefault(fact["fact_id"], fact)
        before.update({k: v for k, v in _greedy(run_dir / "probe_before.parquet").items() if k not in before})
        after[label] = _greedy(run_dir / "probe_after.parquet")
        trained[label] = set(json.loads((run_dir / "trained_facts.json").read_text(encoding="utf-8")))
    probed_by_all = set.intersection(*(set(a) for a in after.values())) & set(facts)
    heldout = {f for f in probed_by_all if not any(f in t for t in trained.values())}
    trained_by_all = probed_by_all & set.intersection(*trained.values())

    def most_different(ids: set[str], count: int) -> list[str]:
        def spread(fact_id: str) -> int:
            answers = [after[label][fact_id] for label in labels] + [before.get(fact_id, ("", False))]
            return len({text.strip().lower() for text, _ in answers})
        return sorted(ids, key=lambda f: (-spread(f), f))[:count]

    def table(ids: list[str]) -> str:
        rows = []
        for fact_id in ids:
            fact = facts[fact_id]
            rows.append([fact["question"], fact["answer"], _cell(before.get(fact_id)),
                         *(_cell(after[label].get(fact_id)) for label in labels)])
        return md_table(["question", "gold", "base", *labels], rows)

    columns = ", ".join(f"{label}: `{run_dir.name}`" for label, run_dir in runs.items())
    text = ("Greedy answers to the first prompt set, before training (base) and after it, one run per configuration "
            f"({columns}); ✓ marks an answer the probe judged correct. Facts whose answers differ most across the columns come first.")
    parts = [("Held-out facts (trained in none of these runs)", most_different(heldout, HELDOUT_EXAMPLES)),
             ("Trained facts (in every one of these runs)", most_different(trained_by_all, TRAINED_EXAMPLES))]
    for title, ids in parts:
        text += f"\n\n{title}:\n\n" + (table(ids) if ids else "none in common")
    return Section("examples", "Example answers side by side", text)

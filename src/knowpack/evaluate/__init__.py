"""Evaluate stage: what was learned and what was lost.

In:  a run directory holding the before/after probe tables, the trained fact ids and train stats,
     plus the adapted model (its base is reached with ``disable_adapter()``, no second copy).
Out: the metrics dict written as ``metrics.json`` (keys in DESIGN.md), and ``capacity.parquet``
     (per trained fact: the bits the model holds about it before and after, `knowpack.evaluate.capacity`).
"""

from __future__ import annotations

from pathlib import Path

from knowpack.config import EvalConfig
from knowpack.evaluate.knowledge import (answer_stats, exploded_answers, knowledge_shift, locality, reliability,
                                        shift_reasons)
from knowpack.rundir import RunDir

__all__ = ["BENCHMARKS_BASE", "answer_stats", "benchmark_settings", "check_benchmark_data", "evaluate_adapter", "evaluate_run", "knowledge_shift", "locality",
           "reliability", "run_benchmarks"]


BENCHMARKS_BASE = "benchmarks_base.json"  # the base model's scores, written by the pipeline's base_eval stage


def benchmark_settings(config: EvalConfig) -> dict:
    """The eval fields that decide benchmark scores (a change in any other field leaves them valid)."""
    return config.model_dump(include={"benchmarks", "benchmark_questions", "mmlu_shots", "seed", "truthfulqa_path",
                                      "truthfulqa_source", "truthfulqa_gen_path"})


def check_benchmark_data(config: EvalConfig) -> None:
    """Fail before any work, not after an hour of training, when local benchmark data is missing."""
    from knowpack.evaluate.benchmarks import LoadOptions, load_benchmark

    from knowpack.evaluate.forgetting import load_passages

    if config.forgetting_passages:
        load_passages(1, path=config.forgetting_text)
    options = LoadOptions(1, config.mmlu_shots, config.seed, config.truthfulqa_path, config.truthfulqa_source,
                          config.truthfulqa_gen_path)
    for name in config.benchmarks:
        if not (name in ("truthfulqa", "truthfulqa_gen") and config.truthfulqa_source == "hub"):
            load_benchmark(name, options)


def run_benchmarks(model, tokenizer, config: EvalConfig, progress: bool = True) -> dict[str, float]:
    from knowpack.evaluate.benchmarks import run_benchmarks as _run

    if not config.benchmarks:
        return {}
    return _run(model, tokenizer, config.benchmarks, n_questions=config.benchmark_questions,
                shots=config.mmlu_shots, seed=config.seed, truthfulqa_path=config.truthfulqa_path,
                truthfulqa_source=config.truthfulqa_source, truthfulqa_gen_path=config.truthfulqa_gen_path,
                progress=progress)


def evaluate_run(run: RunDir, adapted_model, tokenizer, config: EvalConfig, benchmarks_base: dict[str, float],
                 progress: bool = True) -> dict:
    """``benchmarks_base``: the base model's scores under the same settings (the base_eval stage)."""
    rows_before, rows_after = run.read_table("probe_before.parquet"), run.read_table("probe_after.parquet")
    cats_before, cats_after = run.read_table("categories_before.parquet"), run.read_table("categories_after.parquet")
    trained_ids = set(run.read_json("trained_facts.json"))
    stats = run.read_json("train_stats.json")
    heldout_after = cats_after[~cats_after["fact_id"].isin(trained_ids)]
    heldout_before = cats_before[cats_before["fact_id"].isin(heldout_after["fact_id"])]
    after_ids = set(rows_after["fact_id"])
    heldout_rows_before = rows_before[rows_before["fact_id"].isin(after_ids - trained_ids)]
    heldout_rows_after = rows_after[~rows_after["fact_id"].isin(trained_ids)]
    benchmarks = run_benchmarks(adapted_model, tokenizer, config, progress)
    metrics = {
        "reliability": reliability(rows_after, trained_ids),
        "reliability_by_epoch": stats.pop("reliability_by_epoch"),
        "generalization": reliability(run.read_table("probe_generalization.parquet"), trained_ids),
        "shift": knowledge_shift(heldout_before, heldout_after),
        "answers": answer_stats(heldout_rows_before, heldout_rows_after),
        "benchmarks": benchmarks,
        "benchmarks_base": benchmarks_base,
        "train": {k: stats[k] for k in ("steps", "tokens", "seconds", "tokens_per_s", "peak_memory_mb",
                                        "final_loss")},
        "n_trained_facts": len(trained_ids),
        "n_heldout_facts": int(len(heldout_after)),
    }
    from knowpack.facts import read_facts

    facts = read_facts(run / "facts.jsonl")
    exploded = exploded_answers(heldout_rows_before, heldout_rows_after, config.explode_threshold)
    metrics["answers"]["exploded"] = exploded
    metrics["shift_reasons"] = shift_reasons(heldout_rows_before, heldout_rows_after, heldout_before, heldout_after,
                                             facts, trained_ids, exploded)
    metrics["locality"] = locality(heldout_rows_before, heldout_rows_after, facts, trained_ids)
    metrics["capacity"] = run_capacity(run, adapted_model, tokenizer, facts, metrics["reliability"])
    questions = [f.question for f in facts if f.fact_id not in trained_ids]
    metrics.update(model_change_metrics(adapted_model, tokenizer, config, questions, training_texts(run)))
    return metrics


def run_capacity(run: RunDir, adapted_model, tokenizer, facts, reliability_after: float | None) -> dict:
    """``metrics.json["capacity"]`` (bits stored per trainable parameter); writes the per-fact ``capacity.parquet``."""
    from knowpack.evaluate.capacity import TABLE, measure_capacity

    trained_dir = next((run / name for name in ("adapter", "finetuned") if (run / name).is_dir()), run / "adapter")
    table, block = measure_capacity(adapted_model, tokenizer, facts, run.read_json("trained_facts.json"),
                                    trained_dir, reliability_after)
    run.write_table(TABLE, table)
    return block


def training_texts(run: RunDir) -> list[str]:
    """The questions and answers of the run's training set (``train_set.jsonl``), for the copied share."""
    import json

    lines = (run / "train_set.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [json.loads(line) for line in lines if line.strip()]
    return [text for e in examples for text in (e["question"], e["answer"])]


def model_change_metrics(adapted_model, tokenizer, config: EvalConfig, questions: list[str],
                         training_texts: list[str] | None = None) -> dict:
    """``forgetting`` on held-out text and ``token_shift`` on the first ``questions``, each when enabled.

    ``training_texts``: the training questions and answers (None for an outside adapter).
    """
    metrics = {}
    if config.forgetting_passages:
        from knowpack.evaluate.forgetting import forgetting, load_passages

        passages = load_passages(config.forgetting_passages, seed=config.seed, path=config.forgetting_text)
        metrics["forgetting"] = forgetting(adapted_model, tokenizer, passages)
    if config.token_shift_prompts:
        from knowpack.evaluate.token_shift import token_shift

        metrics["token_shift"] = token_shift(adapted_model, tokenizer, questions[:config.token_shift_prompts],
                                             training_texts=training_texts)
    return metrics


def evaluate_adapter(config, adapter_dir: str | Path, out: str | Path, *, progress: bool = True) -> Path:
    """Evaluate any PEFT adapter (``knowpack eval --adapter DIR``) against its base model.

    In:  a `RunConfig` (base model, facts, probe and eval settings) and a PEFT adapter folder.
    Out: ``out/`` with config.yaml, facts.jsonl, probe and category tables before/after, and
         metrics.json: knowledge ``shift`` and ``answers`` over all the facts (none was trained
         here, so all are held out), ``benchmarks`` / ``benchmarks_base`` and ``forgetting``.
    The base model is probed and scored before the adapter is attached; an adapter made for a
    different base model, or stored as a pickle, is refused before any work.
    """
    from knowpack.config import config_to_yaml
    from knowpack.facts import build_facts, facts_to_jsonl
    from knowpack.models import check_model_settings, load_configured_model
    from knowpack.probe import categorize, probe_facts
    from knowpack.train.lora import check_adapter_files, load_adapter

    adapter_dir = Path(adapter_dir)
    check_adapter_files(adapter_dir)
    check_model_settings(config.model)
    check_benchmark_data(config.eval)
    run = RunDir(out)
    with run.lock():
        run.write_text("config.yaml", config_to_yaml(config))
        facts = build_facts(config.facts, progress=progress)
        run.write_text("facts.jsonl", facts_to_jsonl(facts))
        model, tokenizer = load_configured_model(config.model)
        rows_before = probe_facts(model, tokenizer, facts, config.probe, progress=progress, description="probing base")
        benchmarks_base = run_benchmarks(model, tokenizer, config.eval, progress)
        adapted = load_adapter(model, adapter_dir)
        adapted.eval()
        rows_after = probe_facts(adapted, tokenizer, facts, config.probe, progress=progress,
                                 description="probing adapted")
        cats_before, cats_after = categorize(rows_before), categorize(rows_after)
        for name, table in (("probe_before.parquet", rows_before), ("probe_after.parquet", rows_after),
                            ("categories_before.parquet", cats_before), ("categories_after.parquet", cats_after)):
            run.write_table(name, table)
        metrics = {
            "adapter": str(adapter_dir.resolve()),
            "shift": knowledge_shift(cats_before, cats_after),
            "answers": answer_stats(rows_before, rows_after),
            "benchmarks": run_benchmarks(adapted, tokenizer, config.eval, progress),
            "benchmarks_base": benchmarks_base,
            "n_heldout_facts": len(facts),
        }
        metrics.update(model_change_metrics(adapted, tokenizer, config.eval, [f.question for f in facts]))
        from knowpack.artifacts import Metrics, checked

        run.write_json("metrics.json", checked(metrics, Metrics, "metrics.json"))
    return run.path

"""Evaluate stage: what was learned and what was lost.

In:  a run directory holding the before/after probe tables, the trained fact ids and train stats,
     plus the adapted model (its base is reached with ``disable_adapter()``, no second copy).
Out: the metrics dict written as ``metrics.json`` (keys in DESIGN.md), and ``capacity.parquet``
     (per trained fact: the bits the model holds about it before and after, `knowpack.evaluate.capacity`).
"""

from __future__ import annotations

from pathlib import Path

from knowpack.config import EvalConfig
from knowpack.errors import KnowpackError
from knowpack.evaluate.knowledge import (answer_stats, exploded_answers, knowledge_shift, locality, reliability,
                                        shift_reasons)
from knowpack.rundir import RunDir

__all__ = ["BENCHMARKS_BASE", "answer_stats", "benchmark_settings", "check_benchmark_data", "evaluate_outside_adapter", "evaluate_run", "knowledge_shift", "locality",
           "reliability", "run_benchmarks"]


BENCHMARKS_BASE = "benchmarks_base.json"  # the base model's scores, written by the pipeline's base_eval stage


def benchmark_settings(config: EvalConfig) -> dict:
    """The eval fields that decide benchmark scores (a change in any other field leaves them valid)."""
    return config.model_dump(include={"benchmarks", "benchmark_questions", "mmlu_shots", "seed", "truthfulqa_path",
                                      "truthfulqa_source", "truthfulqa_gen_path", "backend"})


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


def evaluate_run(run: RunDir, adapted_model, tokenizer, config: EvalConfig, benchmarks: dict[str, float],
                 benchmarks_base: dict[str, float]) -> dict:
    """``benchmarks``: the adapted model's benchmark scores (`run_benchmarks`, on the ``eval.backend`` model);
    ``benchmarks_base``: the base model's under the same settings (the base_eval stage)."""
    rows_before, rows_after = run.read_table("probe_before.parquet"), run.read_table("probe_after.parquet")
    cats_before, cats_after = run.read_table("categories_before.parquet"), run.read_table("categories_after.parquet")
    trained_ids = set(run.read_json("trained_facts.json"))
    stats = run.read_json("train_stats.json")
    heldout_after = cats_after[~cats_after["fact_id"].isin(trained_ids)]
    heldout_before = cats_before[cats_before["fact_id"].isin(heldout_after["fact_id"])]
    after_ids = set(rows_after["fact_id"])
    heldout_rows_before = rows_before[rows_before["fact_id"].isin(after_ids - trained_ids)]
    heldout_rows_after = rows_after[~rows_after["fact_id"].isin(trained_ids)]
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
    return read_training_texts(run / "train_set.jsonl")


def read_training_texts(path: Path) -> list[str]:
    """The questions and answers of a training set file (a run's ``train_set.jsonl``: one JSON object
    with ``question`` and ``answer`` per line); a missing file or a bad line is one error naming it."""
    import json

    if not path.is_file():
        raise KnowpackError(f"{path}: no such training set; give a run's train_set.jsonl")
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as error:
            raise KnowpackError(f"{path}:{number}: not JSON ({error.msg}); one training example per line") from None
        if not isinstance(example, dict) or not all(isinstance(example.get(k), str) for k in ("question", "answer")):
            raise KnowpackError(f"{path}:{number}: a training example needs string fields question and answer")
        texts += [example["question"], example["answer"]]
    if not texts:
        raise KnowpackError(f"{path}: no training example in the file")
    return texts


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


def evaluate_outside_adapter(run: RunDir, adapted_model, tokenizer, config: EvalConfig, benchmarks: dict[str, float],
                             benchmarks_base: dict[str, float], adapter_dir: Path) -> dict:
    """The metrics of an adapter knowpack did not train (``eval --adapter``): knowledge ``shift`` and
    ``answers`` over every fact (none was trained here, so all are held out), ``benchmarks`` /
    ``benchmarks_base``, and ``forgetting`` and ``token_shift`` when enabled."""
    from knowpack.facts import read_facts

    rows_before, rows_after = run.read_table("probe_before.parquet"), run.read_table("probe_after.parquet")
    questions = [f.question for f in read_facts(run / "facts.jsonl")]
    metrics = {
        "adapter": str(adapter_dir.resolve()),
        "shift": knowledge_shift(run.read_table("categories_before.parquet"), run.read_table("categories_after.parquet")),
        "answers": answer_stats(rows_before, rows_after),
        "benchmarks": benchmarks,
        "benchmarks_base": benchmarks_base,
        "n_heldout_facts": len(questions),
    }
    metrics.update(model_change_metrics(adapted_model, tokenizer, config, questions))
    return metrics

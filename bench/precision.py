"""Precision benchmark: how far bf16 weights move knowpack's numbers from fp32, on the embedded model.

The agreement table the README's "Precision" section asks for, measured in one process:
- probe: greedy answers identical (share of fact-prompts) and categories identical (share of facts),
  ``--facts`` embedded facts × ``--prompts`` 4-shot prompt sets;
- benchmarks: MMLU and TruthfulQA MC1/MC2 scores (difference counted in questions) and the largest
  per-option log-likelihood difference;
- training: reliability and final loss of the same LoRA run in both precisions over ``--seeds``;
- speed: probe and scoring wall time in each precision and their ratio.

bf16 is only worth it where the hardware multiplies in it (`knowpack.lm.precision`). Elsewhere the
script stops with that reason; ``--emulated`` runs it anyway (bf16 is then many times slower, so use
small sizes: the numbers are valid agreement figures, the speed ratio is not).

    python bench/precision.py                                    # 200 facts × 3 prompts, 100 + 50 questions, 3 seeds
    python bench/precision.py --facts 20 --prompts 1 --mmlu 10 --truthfulqa 5 --seeds 1 --emulated   # a check
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from knowpack.config import FactsConfig, LoraSettings, ProbeConfig, TrainConfig  # noqa: E402
from knowpack.evaluate.benchmarks import BENCHMARKS, build_requests, load_mmlu, load_truthfulqa  # noqa: E402
from knowpack.facts import build_facts  # noqa: E402
from knowpack.lm.precision import bf16_support  # noqa: E402
from knowpack.lm.score import loglikelihood  # noqa: E402
from knowpack.models import load_model  # noqa: E402
from knowpack.probe import categorize, probe_facts  # noqa: E402
from knowpack.train import add_lora, train_adapter  # noqa: E402
from knowpack.train.mixture import TrainExample  # noqa: E402


def scores(model, tokenizer, docs_by_benchmark: dict[str, list[dict]]) -> tuple[dict, dict, float]:
    """Per metric: (per-document scores, per-option log-likelihoods), and the scoring seconds."""
    per_doc, logliks = {}, {}
    start = time.perf_counter()
    for name, docs in docs_by_benchmark.items():
        for task in BENCHMARKS[name].tasks:
            requests = [build_requests(task, doc) for doc in docs]
            flat = iter(loglikelihood(model, tokenizer, [r for rs in requests for r in rs]))
            options = [[next(flat) for _ in rs] for rs in requests]
            logliks[task.metric] = options
            per_doc[task.metric] = [task.score(o, task.doc_to_target(doc)) for o, doc in zip(options, docs)]
    return per_doc, logliks, time.perf_counter() - start


def train_once(dtype: torch.dtype, facts, seed: int, epochs: int, probe: ProbeConfig) -> tuple[float, float]:
    """(reliability on the trained facts, final epoch loss) of one LoRA run in ``dtype``."""
    model, tokenizer = load_model("smollm2-135m-instruct", dtype="float32")
    model = model.to(dtype)
    adapted = add_lora(model, LoraSettings(), seed=seed)
    examples = [TrainExample(fact_id=f.fact_id, kind="unknown", question=f.question, answer=f.answer) for f in facts]
    stats = train_adapter(adapted, tokenizer, examples, TrainConfig(epochs=epochs, seed=seed, eval_every_epoch=False),
                          progress=False)
    rows = probe_facts(adapted, tokenizer, facts, probe, progress=False)
    return float(rows["correct"].mean()), float(stats.final_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--mmlu", type=int, default=100)
    parser.add_argument("--truthfulqa", type=int, default=50)
    parser.add_argument("--train-facts", type=int, default=30, help="Unknown facts trained in each seed's run")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--emulated", action="store_true", help="run even where bf16 would be emulated")
    args = parser.parse_args()

    supported, why = bf16_support(torch.device("cpu"))
    print(f"bf16: {why}")
    if not supported and not args.emulated:
        raise SystemExit("bf16 would be emulated here; rerun on a CPU with avx512_bf16/AMX (or pass --emulated)")

    facts = build_facts(FactsConfig(max_facts=args.facts, seed=0))
    probe = ProbeConfig(num_prompts=args.prompts, shots=4, max_new_tokens=16)
    docs = {"mmlu": load_mmlu(args.mmlu, shots=5, seed=0), "truthfulqa": load_truthfulqa(args.truthfulqa, seed=0)}
    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, tokenizer = load_model("smollm2-135m-instruct", dtype="float32")
        model = model.to(dtype)
        start = time.perf_counter()
        rows = probe_facts(model, tokenizer, facts, probe, progress=False)
        probe_s = time.perf_counter() - start
        per_doc, logliks, score_s = scores(model, tokenizer, docs)
        results[name] = {"rows": rows, "categories": categorize(rows), "per_doc": per_doc, "logliks": logliks,
                         "probe_s": probe_s, "score_s": score_s}
        print(f"{name}: probe {probe_s:.1f} s, scoring {score_s:.1f} s")
    a, b = results["fp32"], results["bf16"]

    same_answers = (a["rows"]["answer"].to_numpy() == b["rows"]["answer"].to_numpy()).mean()
    same_categories = (a["categories"]["category"].to_numpy() == b["categories"]["category"].to_numpy()).mean()
    print(f"\ngreedy answers identical: {same_answers:.1%} of {len(a['rows'])} fact-prompts")
    print(f"categories identical:     {same_categories:.1%} of {len(a['categories'])} facts (bf16 default needs ≥ 98%)")
    print(f"\n{'metric':<16}{'fp32':>8}{'bf16':>8}{'Δ questions':>13}{'max |Δ loglik|':>16}")
    for metric in a["per_doc"]:
        delta_q = sum(abs(x - y) for x, y in zip(a["per_doc"][metric], b["per_doc"][metric]))
        delta_ll = max(abs(x - y) for xs, ys in zip(a["logliks"][metric], b["logliks"][metric]) for x, y in zip(xs, ys))
        n = len(a["per_doc"][metric])
        print(f"{metric:<16}{sum(a['per_doc'][metric]) / n:>8.4f}{sum(b['per_doc'][metric]) / n:>8.4f}"
              f"{delta_q:>13.2f}{delta_ll:>16.2e}")

    unknown_ids = set(a["categories"].query("category == 'Unknown'")["fact_id"])
    train_facts = [f for f in facts if f.fact_id in unknown_ids][:args.train_facts]
    print(f"\ntraining: {len(train_facts)} Unknown facts, LoRA defaults, {args.epochs} epochs")
    print(f"{'seed':<6}{'fp32 reliability':>18}{'bf16 reliability':>18}{'fp32 loss':>11}{'bf16 loss':>11}")
    for seed in range(args.seeds):
        (r32, l32), (r16, l16) = (train_once(d, train_facts, seed, args.epochs, probe)
                                  for d in (torch.float32, torch.bfloat16))
        print(f"{seed:<6}{r32:>18.3f}{r16:>18.3f}{l32:>11.4f}{l16:>11.4f}")
    print(f"\nspeed (bf16 vs fp32): probe {a['probe_s'] / b['probe_s']:.2f}×, scoring {a['score_s'] / b['score_s']:.2f}×"
          + ("  (emulated bf16: not a speed figure)" if not supported else ""))


if __name__ == "__main__":
    main()

"""Benchmark scoring: knowpack's log-likelihood core vs lm-evaluation-harness, same model and questions.

Reference: lm-eval 0.4 (`simple_evaluate` with its own `HFLM` and its shipped MMLU / TruthfulQA task
YAMLs, pointed at local copies of the same questions; see `knowpack.evaluate.lm_eval_check`).
knowpack: `score_benchmark` (shared few-shot prefix once, each context once, one-token options read
from one next-token distribution).

TruthfulQA generation (`truthfulqa_gen`): knowpack's greedy answers on its LM core against lm-eval's
`generate_until` (HF `generate`) with its shipped truthfulqa_gen.yaml, then the twelve BLEU/ROUGE means.

Prints both tools' scores, the largest per-option log-likelihood difference, how many generated answers
are identical, both wall times and the speed ratio. The scores must agree within 1e-3.

    python bench/eval.py                              # 500 MMLU (5-shot) + 100 TruthfulQA MC + 50 generation
    python bench/eval.py --mmlu 50 --truthfulqa 50    # a quick look
    python bench/eval.py --mmlu 0 --truthfulqa 0 --truthfulqa-gen 20   # the generation task alone

``--backend vllm`` compares knowpack's scoring core with the same scoring served by vLLM (``eval.backend:
vllm``: option log-likelihoods from the engine's prompt log-probabilities, generation answers decoded by it)
instead of lm-eval: same questions, one run; prints both tools' scores, the largest per-option log-likelihood
difference, identical generation answers, both times (engine start-up timed apart) and the ratio.

    python bench/eval.py --backend vllm --mmlu 200 --truthfulqa 50 --truthfulqa-gen 20
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from knowpack.evaluate.benchmarks import (  # noqa: E402
    BENCHMARKS, build_requests, load_mmlu, load_truthfulqa, loglikelihood, score_benchmark)
from knowpack.evaluate.lm_eval_check import lm_eval_scores  # noqa: E402
from knowpack.evaluate.truthfulqa_gen import (  # noqa: E402
    load_truthfulqa_gen, prepare_doc, score_answer, truthfulqa_gen_answers)
from knowpack.models import load_model  # noqa: E402

TOLERANCE = 1e-3


def knowpack_logliks(model, tokenizer, metric: str, docs: list[dict]) -> list[list[float]]:
    task = next(task for bench in BENCHMARKS.values() for task in bench.tasks if task.metric == metric)
    requests = [build_requests(task, doc) for doc in docs]
    flat = loglikelihood(model, tokenizer, [r for doc_requests in requests for r in doc_requests])
    out, start = [], 0
    for doc_requests in requests:
        out.append(flat[start:start + len(doc_requests)])
        start += len(doc_requests)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmlu", type=int, default=500, help="MMLU test questions (seeded sample)")
    parser.add_argument("--truthfulqa", type=int, default=100, help="TruthfulQA questions (all: 817; lm-eval then takes about an hour on 2 CPU cores)")
    parser.add_argument("--truthfulqa-gen", type=int, default=50,
                        help="TruthfulQA generation questions (greedy answers, up to 256 tokens each)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="batch size of both tools")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("lm-eval", "vllm"), default="lm-eval",
                        help="what knowpack's scoring is compared with: lm-eval (the reference), or vLLM serving it")
    args = parser.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    model, tokenizer = load_model(args.model, device=args.device)
    mmlu = load_mmlu(args.mmlu, shots=args.shots, seed=args.seed) if args.mmlu else []
    truthfulqa = load_truthfulqa(args.truthfulqa, seed=args.seed) if args.truthfulqa else []
    generation = load_truthfulqa_gen(args.truthfulqa_gen, seed=args.seed) if args.truthfulqa_gen else []
    print(f"model {args.model} on {model.device}; {len(mmlu)} MMLU ({args.shots}-shot), {len(truthfulqa)} "
          f"TruthfulQA MC and {len(generation)} TruthfulQA generation questions, batch {args.batch}")

    start = time.perf_counter()
    ours, answers = knowpack_scores(model, tokenizer, mmlu, truthfulqa, generation, args.batch)
    ours_s = time.perf_counter() - start
    if args.backend == "vllm":
        compare_vllm(args, model, tokenizer, (mmlu, truthfulqa, generation), ours, answers, ours_s)
        return

    start = time.perf_counter()
    reference = lm_eval_scores(model, tokenizer, mmlu_docs=mmlu, truthfulqa_docs=truthfulqa,
                               truthfulqa_gen_docs=generation, batch_size=args.batch)
    reference_s = time.perf_counter() - start

    # Per-option log-likelihoods (not timed): where the two tools would disagree first.
    print(f"\n{'metric':<28}{'knowpack':>10}{'lm-eval':>10}{'|diff|':>10}{'max |Δ loglik|':>16}")
    agree = True
    for metric, docs in (("mmlu", mmlu), ("truthfulqa_mc1", truthfulqa), ("truthfulqa_mc2", truthfulqa)):
        if not docs:
            continue
        mine = knowpack_logliks(model, tokenizer, metric, docs)
        delta = max(abs(a - b) for x, y in zip(mine, reference.logliks[metric]) for a, b in zip(x, y))
        diff = abs(ours[metric] - reference.scores[metric])
        agree &= diff <= TOLERANCE
        print(f"{metric:<28}{ours[metric]:>10.4f}{reference.scores[metric]:>10.4f}{diff:>10.1e}{delta:>16.1e}")
    for metric in (m for m in ours if m.startswith("truthfulqa_gen_")):
        diff = abs(ours[metric] - reference.scores[metric])
        agree &= diff <= TOLERANCE
        print(f"{metric:<28}{ours[metric]:>10.4f}{reference.scores[metric]:>10.4f}{diff:>10.1e}{'—':>16}")
    if generation:
        same = sum(a == b for a, b in zip(answers, reference.answers))
        print(f"truthfulqa_gen answers identical to lm-eval's: {same}/{len(generation)}")
    print(f"\nscores agree within {TOLERANCE}: {'yes' if agree else 'NO'}")
    print(f"knowpack {ours_s:.1f} s, lm-eval {reference_s:.1f} s: knowpack is {reference_s / ours_s:.2f}x faster "
          f"(target >= 5x, issue 14)")
    raise SystemExit(0 if agree else 1)


def knowpack_scores(model, tokenizer, mmlu: list[dict], truthfulqa: list[dict], generation: list[dict],
                    batch: int) -> tuple[dict[str, float], list[str]]:
    """Every score of the three benchmarks on ``model`` (HF or served by vLLM), and the generation answers
    (their means computed as `score_truthfulqa_gen` computes them, the answers kept for the comparison)."""
    scores: dict[str, float] = {}
    if mmlu:
        scores |= score_benchmark(model, tokenizer, BENCHMARKS["mmlu"], mmlu, batch_size=batch, progress=False)
    if truthfulqa:
        scores |= score_benchmark(model, tokenizer, BENCHMARKS["truthfulqa"], truthfulqa, batch_size=batch,
                                  progress=False)
    answers = truthfulqa_gen_answers(model, tokenizer, generation, batch_size=batch) if generation else []
    if generation:
        per_doc = [score_answer(prepare_doc(doc), answer) for doc, answer in zip(generation, answers)]
        scores |= {f"truthfulqa_gen_{m}": sum(s[m] for s in per_doc) / len(per_doc) for m in per_doc[0]}
    return scores, answers


def compare_vllm(args, model, tokenizer, docs: tuple[list[dict], list[dict], list[dict]], ours: dict[str, float],
                 answers: list[str], ours_s: float) -> None:
    """The same scoring served by vLLM, after knowpack's own (``ours``, ``answers``, ``ours_s``), in one run."""
    from knowpack.config import VllmConfig
    from knowpack.lm.vllm_engine import EngineSpec, VllmEngine
    from knowpack.models import resolve_model_path

    mmlu, truthfulqa, generation = docs
    start = time.perf_counter()
    engine = VllmEngine(EngineSpec(resolve_model_path(args.model), "float32"), VllmConfig(kv_cache_gib=1.0))
    start_s = time.perf_counter() - start
    with engine:
        start = time.perf_counter()
        theirs, served_answers = knowpack_scores(engine.served(), tokenizer, mmlu, truthfulqa, generation, args.batch)
        vllm_s = time.perf_counter() - start
        deltas = {metric: max(abs(a - b) for x, y in zip(knowpack_logliks(model, tokenizer, metric, questions),
                                                          knowpack_logliks(engine.served(), tokenizer, metric, questions))
                              for a, b in zip(x, y))
                  for metric, questions in (("mmlu", mmlu), ("truthfulqa_mc2", truthfulqa)) if questions}
    print(f"\n{'metric':<28}{'knowpack':>10}{'vLLM':>10}{'|diff|':>10}")
    for metric in ours:
        print(f"{metric:<28}{ours[metric]:>10.4f}{theirs[metric]:>10.4f}{abs(ours[metric] - theirs[metric]):>10.1e}")
    for metric, delta in deltas.items():
        print(f"largest per-option |Δ log-likelihood| on {metric}: {delta:.1e}")
    if generation:
        same = sum(a == b for a, b in zip(answers, served_answers))
        print(f"truthfulqa_gen answers identical: {same}/{len(generation)}")
    differing = {m: round(abs(ours[m] - theirs[m]) * n) for m, n in (("mmlu", len(mmlu)),
                 ("truthfulqa_mc1", len(truthfulqa))) if m in ours}
    print(f"questions scored differently: {differing}")
    print(f"\nknowpack {ours_s:.1f} s, vLLM {vllm_s:.1f} s (engine start {start_s:.1f} s apart): "
          f"vLLM / knowpack = {ours_s / vllm_s:.2f}× the rate")


if __name__ == "__main__":
    main()

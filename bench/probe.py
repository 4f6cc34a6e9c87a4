"""Probe benchmark: knowpack's probe vs the reference method, same model, same facts, one process.

Reference (the source paper's released code): for every prompt set, plain ``model.generate`` on the
full few-shot prompt of each question, left-padded batches of 128, greedy, max_new_tokens 32.
knowpack: `probe_facts` (few-shot prefix encoded once per prompt set and its cache reused, batches
of questions, each row leaving the batch at its stop token).

Prints whether greedy answers and categories are identical, both wall and CPU times, facts/s and the
ratio (target ≥ 10×). ``--bf16`` also times knowpack with bf16 weights where the CPU multiplies in bf16
(`knowpack.lm.precision`) and prints its ratio against the same fp32 reference and its agreement.
On a machine shared with other work, ``--threads 1`` makes the CPU-time ratio the figure to trust
(wall time then measures the neighbours as much as the code).

    python bench/probe.py                         # 200 facts × 10 prompts on the embedded model
    python bench/probe.py --facts 50 --prompts 2  # a quick look

``--backend vllm`` compares knowpack's probe with the same probe decoded by vLLM (`knowpack.lm.vllm_engine`)
instead: same facts, prompts and judging, one run; prints the identical-answer share, categories agreement,
both rates (engine start-up timed apart) and the ratio.

    python bench/probe.py --backend vllm --facts 100 --prompts 2 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from knowpack.config import FactsConfig, ProbeConfig  # noqa: E402
from knowpack.facts import build_facts  # noqa: E402
from knowpack.lm.precision import bf16_support  # noqa: E402
from knowpack.models import load_model  # noqa: E402
from knowpack.probe import build_prompt_sets, categorize, probe_facts  # noqa: E402
from knowpack.probe.judge import clean_answer, is_correct  # noqa: E402


def reference_probe(model, tokenizer, facts, config: ProbeConfig, batch_size: int) -> dict[tuple[str, int], str]:
    """Greedy answers with plain generate on full prompts (the released code's method)."""
    tokenizer.padding_side = "left"
    answers = {}
    for prompt_set in build_prompt_sets(tokenizer, config.num_prompts, config.shots, config.seed):
        texts = [prompt_set.render(tokenizer, fact.question) for fact in facts]
        for start in range(0, len(facts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=not prompt_set.chat).to(model.device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=config.max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            for fact, tokens in zip(facts[start:start + batch_size], new_tokens):
                answers[(fact.fact_id, prompt_set.prompt_id)] = clean_answer(
                    tokenizer.decode(tokens, skip_special_tokens=True))
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128, help="reference batch size (paper code: 128)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--bf16", action="store_true", help="also time knowpack with bf16 weights")
    parser.add_argument("--backend", choices=("reference", "vllm"), default="reference",
                        help="what knowpack's probe is compared with")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend == "vllm":
        compare_vllm(args)
        return

    model, tokenizer = load_model(args.model, device=args.device, dtype="float32")
    facts = build_facts(FactsConfig(max_facts=args.facts, seed=0))
    config = ProbeConfig(num_prompts=args.prompts, shots=4, max_new_tokens=args.max_new_tokens)
    print(f"{len(facts)} facts × {config.num_prompts} prompts, {model.device}, torch threads {torch.get_num_threads()}")

    rows, ours_s, ours_cpu = timed(lambda: probe_facts(model, tokenizer, facts, config, progress=False))
    reference, reference_s, reference_cpu = timed(lambda: reference_probe(model, tokenizer, facts, config, args.batch))

    ours = {(r.fact_id, r.prompt_id): r.answer for r in rows.itertuples()}
    differing = [key for key in ours if ours[key] != reference[key]]
    by_id = {f.fact_id: f for f in facts}
    reference_rows = rows.copy()
    reference_rows["correct"] = [is_correct(reference[(r.fact_id, r.prompt_id)], by_id[r.fact_id].aliases)
                                 for r in rows.itertuples()]
    same_categories = categorize(rows)["category"].tolist() == categorize(reference_rows)["category"].tolist()

    print(f"identical greedy answers: {len(ours) - len(differing)}/{len(ours)}"
          + (f"  (first differences: {[(k, ours[k], reference[k]) for k in differing[:3]]})" if differing else ""))
    print(f"identical categories:     {same_categories}")
    n = len(facts) * config.num_prompts
    print(f"reference: {reference_s:7.1f} s wall {reference_cpu:7.1f} s CPU  {n / reference_s:7.1f} fact-prompts/s")
    print(f"knowpack:  {ours_s:7.1f} s wall {ours_cpu:7.1f} s CPU  {n / ours_s:7.1f} fact-prompts/s")
    print(f"speed-up:  {reference_s / ours_s:.2f}× wall, {reference_cpu / ours_cpu:.2f}× CPU  (target ≥ 10×)")
    if args.bf16:
        supported, why = bf16_support(model.device)
        if not supported:
            print(f"bf16: skipped: {why}")
            return
        model = model.to(torch.bfloat16)
        bf16_rows, bf16_s, bf16_cpu = timed(lambda: probe_facts(model, tokenizer, facts, config, progress=False))
        same = (bf16_rows["answer"].to_numpy() == rows["answer"].to_numpy()).mean()
        same_categories = (categorize(bf16_rows)["category"].to_numpy() == categorize(rows)["category"].to_numpy()).mean()
        print(f"knowpack bf16: {bf16_s:7.1f} s wall {bf16_cpu:7.1f} s CPU; {reference_s / bf16_s:.2f}× wall vs the fp32 "
              f"reference; answers identical to fp32 {same:.1%}, categories {same_categories:.1%}")


def compare_vllm(args) -> None:
    """knowpack's probe and the vLLM backend on the same facts and prompts, one after the other in one run."""
    from knowpack.config import VllmConfig
    from knowpack.lm.vllm_engine import EngineSpec, VllmEngine
    from knowpack.models import resolve_model_path

    model, tokenizer = load_model(args.model, device=args.device, dtype="float32")
    facts = build_facts(FactsConfig(max_facts=args.facts, seed=0))
    config = ProbeConfig(num_prompts=args.prompts, shots=4, max_new_tokens=args.max_new_tokens)
    n = len(facts) * config.num_prompts
    print(f"{len(facts)} facts × {config.num_prompts} prompts, greedy, {config.max_new_tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}")
    rows, ours_s, ours_cpu = timed(lambda: probe_facts(model, tokenizer, facts, config, progress=False))
    spec = EngineSpec(resolve_model_path(args.model), "float32")
    engine, start_s, _ = timed(lambda: VllmEngine(spec, VllmConfig(kv_cache_gib=1.0)))
    with engine:
        served, vllm_s, vllm_cpu = timed(lambda: probe_facts(engine.served(), tokenizer, facts, config,
                                                             progress=False))
    same = (served["answer"].to_numpy() == rows["answer"].to_numpy()).mean()
    same_categories = (categorize(served)["category"].to_numpy() == categorize(rows)["category"].to_numpy()).mean()
    print(f"identical answers: {same:.1%} of {n}; categories agree: {same_categories:.1%}; "
          f"correct: knowpack {rows['correct'].mean():.1%}, vLLM {served['correct'].mean():.1%}")
    print(f"knowpack: {ours_s:7.1f} s wall {ours_cpu:7.1f} s CPU  {n / ours_s:7.1f} fact-prompts/s")
    print(f"vLLM:     {vllm_s:7.1f} s wall (engine start {start_s:.1f} s apart)  {n / vllm_s:7.1f} fact-prompts/s "
          f"(its CPU time is in its own process: {vllm_cpu:.1f} s here)")
    print(f"ratio:    vLLM / knowpack = {ours_s / vllm_s:.2f}× the rate")


def timed(work):
    """(result, wall seconds, CPU seconds of this process) of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


if __name__ == "__main__":
    main()

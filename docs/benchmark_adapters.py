"""Score a sweep's adapters on larger MMLU (5-shot) and TruthfulQA (MC1/MC2) subsets than its runs used.

    python docs/benchmark_adapters.py runs/reproduce-cpu --seed-filter 42 --mmlu 200 --truthfulqa 200

Writes ``<sweep>/benchmarks_large.<i>.csv`` (one file per ``--shard i/k``): one row for the base model and one per finished run (grid fields,
scores, the standard error of each score). Used for docs/reproduction.md; every call is knowpack's
public API (`load_model`, `load_adapter`, `score_benchmark`).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

from knowpack import load_model  # noqa: E402
from knowpack.evaluate.benchmarks import BENCHMARKS, load_mmlu, load_truthfulqa, score_benchmark  # noqa: E402
from knowpack.sweep.results import load_results  # noqa: E402
from knowpack.train.lora import load_adapter  # noqa: E402


def scores(model, tokenizer, mmlu: list[dict], truthfulqa: list[dict]) -> dict[str, float]:
    out = {**score_benchmark(model, tokenizer, BENCHMARKS["mmlu"], mmlu, progress=False),
           **score_benchmark(model, tokenizer, BENCHMARKS["truthfulqa"], truthfulqa, progress=False)}
    for metric, n in (("mmlu", len(mmlu)), ("truthfulqa_mc1", len(truthfulqa))):  # binomial standard error
        out[f"{metric}_se"] = math.sqrt(out[metric] * (1 - out[metric]) / n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--mmlu", type=int, default=200)
    parser.add_argument("--truthfulqa", type=int, default=200)
    parser.add_argument("--seed-filter", type=int, help="only runs with this train.seed")
    parser.add_argument("--shard", default="0/1", help="i/k: score every k-th run starting at i (parallel workers)")
    args = parser.parse_args()
    index, count = map(int, args.shard.split("/"))

    table, _ = load_results(args.sweep)  # schema-checked; rebuilt from runs/ when missing or old
    table = table[table.status == "done"]
    if args.seed_filter is not None:
        table = table[table["train.seed"] == args.seed_filter]
    model, tokenizer = load_model("smollm2-135m-instruct")
    mmlu, truthfulqa = load_mmlu(args.mmlu, shots=5, seed=0), load_truthfulqa(args.truthfulqa, seed=0)
    rows = [{"run_id": "base", **scores(model, tokenizer, mmlu, truthfulqa)}] if index == 0 else []
    grid = [c for c in table.columns if c.startswith(("mixture.", "train.seed"))]
    for position, (_, run) in enumerate(table.iterrows()):
        if position % count != index:
            continue
        adapted = load_adapter(model, args.sweep / "runs" / run.run_id / "adapter")
        rows.append({"run_id": run.run_id, **{c: run[c] for c in grid}, **scores(adapted, tokenizer, mmlu, truthfulqa)})
        model = adapted.unload()  # the base model again, for the next adapter
        print(rows[-1], flush=True)
    out = args.sweep / f"benchmarks_large.{index}.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    print(out)


if __name__ == "__main__":
    main()

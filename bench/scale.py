"""Scale benchmark: one run at the paper's scale on the embedded model, timed and measured per stage.

The paper's adapter and training (rank 1, alpha 2, dropout 0.1, down/gate/up, rsLoRA, lr 1e-3,
batch 16, 10 epochs) on N = 3,000 Unknown embedded facts, 3 × 4-shot probe prompts. Prints, per
stage (facts, probe before, train, probe after, evaluate, report), the wall time, the peak resident
memory of this process during the stage and its throughput (fact-prompts/s for probing, tokens/s for
training), then the whole run's time against the target (≤ 30 min, peak ≤ 8 GB on 2 CPU cores).

    python bench/scale.py                       # N = 3,000 (probes enough facts to find them)
    python bench/scale.py --n 100 --facts 400   # a quick look
    python bench/scale.py --out runs/scale      # keep the run directory (default: a temporary one)

Resumes like any run: the same --out continues where a killed benchmark stopped (times then cover
only the stages that ran).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from knowpack.config import load_config  # noqa: E402
from knowpack.jsonio import read_json_file  # noqa: E402
from knowpack.pipeline import STAGES, Recipe  # noqa: E402

PAPER = ["lora.rank=1", "lora.alpha=2", "lora.dropout=0.1", "lora.target_modules=[down_proj,gate_proj,up_proj]",
         "lora.use_rslora=true", "train.lr=1e-3", "train.batch_size=16", "train.epochs=10"]


class PeakRSS:
    """The largest resident set size of this process seen since `reset`, sampled every 0.1 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def current() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.current())

    def reset(self) -> None:
        self.peak = self.current()

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="Unknown facts packed into the adapter")
    parser.add_argument("--facts", type=int, default=4500,
                        help="facts probed before training (enough to hold N Unknown ones)")
    parser.add_argument("--prompts", type=int, default=3, help="4-shot probe prompt sets")
    parser.add_argument("--heldout", type=int, default=300, help="held-out facts re-probed after training")
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="further dotted overrides, e.g. model.dtype=bfloat16")
    args = parser.parse_args()

    overrides = [f"facts.max_facts={args.facts}", f"probe.num_prompts={args.prompts}", "probe.shots=4",
                 f"mixture.n_unknown={args.n}", "mixture.selection=first", f"eval.heldout_facts={args.heldout}",
                 *PAPER, *args.overrides]
    config = load_config("default", overrides=overrides)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="knowpack-scale-"))
    recipe = Recipe(config, out, progress=False)
    print(f"N = {args.n} Unknown facts of {args.facts} probed, {args.prompts} × 4-shot prompts, run in {out}")
    rows = []
    start = time.perf_counter()
    with PeakRSS() as memory:
        for stage in STAGES:
            memory.reset()
            began = time.perf_counter()
            recipe(until=stage)
            rows.append((stage, time.perf_counter() - began, memory.peak))
    total = time.perf_counter() - start

    trained = len(read_json_file(out / "trained_facts.json"))
    train_stats = read_json_file(out / "train_stats.json")
    heldout_probed = min(args.heldout, args.facts - trained)
    throughput = {
        "probe_before": f"{args.facts * args.prompts / dict((r[0], r[1]) for r in rows)['probe_before']:.1f} fact-prompts/s",
        "train": f"{train_stats.get('tokens_per_s', 0):.0f} tokens/s",
        "probe_after": f"{(trained + heldout_probed) * args.prompts / dict((r[0], r[1]) for r in rows)['probe_after']:.1f}"
                       " fact-prompts/s (+ paraphrases)",
    }
    print(f"{'stage':<14}{'seconds':>10}{'peak RSS (GB)':>16}  throughput")
    for stage, seconds, peak in rows:
        print(f"{stage:<14}{seconds:>10.1f}{peak / 1e9:>16.2f}  {throughput.get(stage, '')}")
    metrics = read_json_file(out / "metrics.json")
    print(f"trained facts: {trained}; reliability {metrics.get('reliability', float('nan')):.3f}")
    peak = max(r[2] for r in rows)
    print(f"total: {total / 60:.1f} min (target ≤ 30), peak RSS {peak / 1e9:.2f} GB (target ≤ 8)")


if __name__ == "__main__":
    main()

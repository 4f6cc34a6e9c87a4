"""Several processes (torchrun / accelerate launch): each trains on its share of every step and the
summed gradients give the single-process adapter. Two CPU processes over gloo, so it runs anywhere."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = """
import os, sys
import torch
sys.path.insert(0, {tests!r})
from conftest import make_tiny_llama
from knowpack.models import load_tokenizer
from knowpack.config import LoraSettings, TrainConfig
from knowpack.train import add_lora, train_adapter
from knowpack.train.mixture import TrainExample
from safetensors.torch import save_file

out, optimizer = sys.argv[1], sys.argv[2]
if optimizer == "sgd":  # plain SGD at lr 1: one step moves each weight by exactly minus its gradient
    torch.optim.AdamW = lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr)
    config = TrainConfig(epochs=1, batch_size=6, lr=1.0, max_grad_norm=1e9, warmup_ratio=0.0, regularizer="kl")
else:
    config = TrainConfig(epochs=2, batch_size=6, lr=1e-2, regularizer="kl")
tok = load_tokenizer("smollm2-135m-instruct")
examples = [TrainExample(fact_id=str(i), kind="unknown", question=f"What is the capital of S{{i}}?",
                         answer=f"City{{i}}" + "x" * (i % 3)) for i in range(6)]
model = add_lora(make_tiny_llama(tok), LoraSettings(rank=4, alpha=8, target_modules=["all-linear"]), seed=0)
before = {{k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}}
stats = train_adapter(model, tok, examples, config, progress=False)
if int(os.environ.get("RANK", "0")) == 0:
    print("losses", stats.epoch_losses)
    save_file({{k: (v.detach() - before[k]).contiguous() for k, v in model.named_parameters() if v.requires_grad}}, out)
"""

# Why these tolerances: one process sums each gradient entry over all 6 rows in one order; two
# processes sum 3 rows each and gloo adds the two partial sums. In exact arithmetic both are the same
# number; in float32 (unit roundoff 2**-24 = 6e-8) a sum of n terms in another order differs by up to
# about n * 6e-8 of the terms' magnitude. Here n is at most a few hundred (trained positions times the
# hidden width in the backward matmuls), so rounding moves a gradient by ~1e-5 of the tensor's scale
# at most (measured: 5e-7). A real mistake (a share counted twice, a process's share dropped, the sum
# doubled) moves it by ~1e-1 to 1 of that scale, 10^4 times more.
GRADIENT_RTOL = 1e-4
# AdamW (lr 1e-2, 2 steps): each step moves a weight by at most about lr (|m̂/√v̂| ≤ 1 this early), and
# rounding of the summed gradient changes that by its relative error, except where the gradient itself is
# within rounding of zero. 1e-3 · lr per step bounds that (measured: 1.9e-6 over 2 steps, 10x margin); a
# dropped share flips update signs, ~lr per weight.
ADAMW_ATOL = 1e-3 * 1e-2 * 2


def _train(tmp_path: Path, optimizer: str, processes: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parents[1])))
    out = tmp_path / f"{optimizer}-{processes}.safetensors"
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    run = subprocess.run([sys.executable, *launcher, str(script), str(out), optimizer],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return ast.literal_eval(run.stdout.split("losses", 1)[1].strip()), load_file(out)


@pytest.mark.slow
def test_two_processes_sum_the_gradient_of_one(tmp_path):
    (loss_one,), single = _train(tmp_path, "sgd", 1)
    (loss_two,), parallel = _train(tmp_path, "sgd", 2)
    assert loss_two == pytest.approx(loss_one, rel=1e-5)  # summed over processes, not doubled
    changed = [name for name, step in single.items() if step.abs().max() > 0]
    assert changed  # LoRA B starts at zero, so only B moves in the first step; it must move
    for name, step in single.items():
        scale = float(step.abs().max())
        assert float((parallel[name] - step).abs().max()) <= GRADIENT_RTOL * scale, name


@pytest.mark.slow
def test_two_processes_train_the_same_adapter_as_one(tmp_path):
    losses_one, single = _train(tmp_path, "adamw", 1)
    losses_two, parallel = _train(tmp_path, "adamw", 2)
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    for name, change in single.items():
        assert float((parallel[name] - change).abs().max()) <= ADAMW_ATOL, name

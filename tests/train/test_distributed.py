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
sys.path.insert(0, {tests!r})
from conftest import make_tiny_llama
from knowpack.models import load_tokenizer
from knowpack.config import LoraSettings, TrainConfig
from knowpack.train import add_lora, train_adapter
from knowpack.train.mixture import TrainExample
from safetensors.torch import save_file

tok = load_tokenizer("smollm2-135m-instruct")
examples = [TrainExample(fact_id=str(i), kind="unknown", question=f"What is the capital of S{{i}}?",
                         answer=f"City{{i}}" + "x" * (i % 3)) for i in range(6)]
model = add_lora(make_tiny_llama(tok), LoraSettings(rank=4, alpha=8, target_modules=["all-linear"]), seed=0)
stats = train_adapter(model, tok, examples, TrainConfig(epochs=2, batch_size=6, lr=1e-2, regularizer="kl"),
                      progress=False)
if int(os.environ.get("RANK", "0")) == 0:
    print("losses", stats.epoch_losses)
    save_file({{k: v.detach().contiguous() for k, v in model.named_parameters() if v.requires_grad}}, sys.argv[1])
"""


@pytest.mark.slow
def test_two_processes_train_the_same_adapter_as_one(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parents[1])))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.safetensors")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                          str(tmp_path / "two.safetensors")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    losses = [ast.literal_eval(run.stdout.split("losses", 1)[1].strip()) for run in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # summed over processes, not doubled
    single, parallel = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    for name, weight in single.items():
        assert torch.allclose(parallel[name], weight, atol=1e-6), name

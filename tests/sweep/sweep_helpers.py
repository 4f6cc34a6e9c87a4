"""Sweep test helpers: a sweep file over the tiny random-weight model, and a runner for the real CLI process.

Not a conftest.py: a second ``conftest`` module would shadow ``tests/conftest.py`` for tests that import it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture()
def tiny_sweep(tiny_model_dir, tmp_path):
    """Write a sweep file whose runs take seconds: ``tiny_sweep(grid, **extra)`` -> its path."""

    def write(grid: dict, name: str = "sweep.yaml", **extra) -> Path:
        base = {"model": {"name": str(tiny_model_dir)}, "facts": {"max_facts": 16},
                "probe": {"num_prompts": 2, "shots": 1, "max_new_tokens": 4},
                "train": {"epochs": 1, "batch_size": 2, "eval_every_epoch": False},
                "eval": {"benchmark_questions": 2, "mmlu_shots": 0, "forgetting_passages": 2,
                         "token_shift_prompts": 2}}
        path = tmp_path / name
        path.write_text(yaml.safe_dump({"preset": "smoke", "base": base, "grid": grid, **extra}))
        return path

    return write


def knowpack_process(*args: str) -> subprocess.Popen:
    """`python -m knowpack ARGS` as a separate process (so it can be killed), importing this checkout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, "-m", "knowpack", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def knowpack_run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    process = knowpack_process(*args)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # lets the sweep stop its workers (and a local Ray) on the way out
        out, err = process.communicate(timeout=60)
        raise AssertionError(f"knowpack {' '.join(args)} took over {timeout:.0f} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, process.returncode, out, err)

"""Sweep test helpers: a sweep file over the tiny random-weight model, and a runner for the real CLI process.

Not a conftest.py: a second ``conftest`` module would shadow ``tests/conftest.py`` for tests that import it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SRC = Path(__file__).resolve().parents[2] / "src"


def write_sweep(folder: Path, model_dir: Path, grid: dict, name: str = "sweep.yaml", **extra) -> Path:
    """A sweep file over the tiny model in ``model_dir`` whose runs take seconds; its path."""
    base = {"model": {"name": str(model_dir)}, "facts": {"max_facts": 16},
            "probe": {"num_prompts": 2, "shots": 1, "max_new_tokens": 4},
            "train": {"epochs": 1, "batch_size": 2, "eval_every_epoch": False},
            "eval": {"benchmark_questions": 2, "mmlu_shots": 0, "forgetting_passages": 2,
                     "token_shift_prompts": 2}}
    path = folder / name
    path.write_text(yaml.safe_dump({"preset": "smoke", "base": base, "grid": grid, **extra}))
    return path


@pytest.fixture()
def tiny_sweep(tiny_model_dir, tmp_path):
    """Write a sweep file whose runs take seconds: ``tiny_sweep(grid, **extra)`` -> its path."""

    def write(grid: dict, name: str = "sweep.yaml", **extra) -> Path:
        return write_sweep(tmp_path, tiny_model_dir, grid, name, **extra)

    return write


def seed_from(finished: Path, out: Path, runs: list[Path] = ()) -> None:
    """Start sweep folder ``out`` with what an earlier sweep ``finished`` holds: its shared base-model probes
    (every tiny sweep has the same base) and the run folders ``runs``, so a test sweep skips work that other
    tests already check is done right. A run folder's name is its config's fingerprint: it is found again
    by any sweep with that grid point."""
    out.mkdir(parents=True)
    shutil.copytree(finished / "shared", out / "shared")
    for run_dir in runs:
        shutil.copytree(run_dir, out / "runs" / run_dir.name)


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

"""Shared fixtures: the real SmolLM2 tokenizer and tiny random-weight Llama models of its shape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Converted models are cached inside the checkout so repeated test runs (and CI) convert only once.
os.environ.setdefault("KNOWPACK_CACHE", str(REPO / ".cache" / "knowpack"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from knowpack.models import EMBEDDED_MODEL, load_tokenizer

    return load_tokenizer(EMBEDDED_MODEL)


def make_tiny_llama(tokenizer, seed: int = 0, layers: int = 2):
    """A random-weight Llama with SmolLM2's layout (GQA, tied embeddings) but tiny widths."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def tiny_model(smollm2_tokenizer):
    return make_tiny_llama(smollm2_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A tiny model saved as a normal Hugging Face folder (safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(smollm2_tokenizer).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def run_cli(capsys, monkeypatch):
    """Run ``knowpack ARGS`` in this process (fast: no interpreter start-up, imports shared).

    Returns an object with ``returncode``, ``stdout`` and ``stderr`` like `subprocess.run`; the
    rich console is made wide so one-line messages are not wrapped.
    """
    import subprocess
    import sys
    import warnings

    from knowpack import cli

    def run(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["knowpack", *args])
        monkeypatch.setenv("COLUMNS", "400")
        monkeypatch.setattr(cli.console, "_width", 400, raising=False)
        capsys.readouterr()
        code = 0
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            try:
                cli.main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run

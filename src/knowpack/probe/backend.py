"""Which model the probe stages decode with: the loaded HF model, or the same weights served by vLLM.

In:  the run's context (``probe.backend``, ``vllm.*``) and whether the adapted model is asked for.
Out: a model `knowpack.probe.probe_facts` takes, inside a ``with`` block.

With ``probe.backend: vllm`` each probe stage starts one engine and ends it when the stage is done, so its
memory is free again for training and evaluation (on a GPU it would otherwise hold most of the card).
The after-probe serves the run's adapter through vLLM's LoRA support, unmerged; a fully fine-tuned model
folder is served as a model of its own. `check_backend` refuses, before any work, what this backend does
not cover.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from knowpack.config import RunConfig
from knowpack.errors import KnowpackError


def check_backend(config: RunConfig, adapter: Path | None = None) -> None:
    """Every ``probe.backend: vllm`` mistake before the first stage: vLLM importable, settings it can serve."""
    if config.probe.backend != "vllm":
        return
    from knowpack.lm.vllm_engine import adapter_rank, check_cpu_threads, engine_lora_rank, require_vllm

    if config.rounds:
        raise KnowpackError("probe.backend=vllm does not probe continual rounds; use probe.backend=hf with rounds")
    if config.train.method == "lora" and config.lora.use_dora:
        raise KnowpackError("probe.backend=vllm: vLLM cannot serve DoRA adapters; set lora.use_dora=false or "
                            "probe.backend=hf")
    engine_lora_rank(config.lora.rank)
    if adapter is not None and (adapter / "adapter_config.json").is_file():
        engine_lora_rank(adapter_rank(adapter))
    check_cpu_threads(config.vllm.cpu_threads)
    require_vllm()


def _engine_spec(ctx, adapted: bool):
    """(engine spec, adapter folder to serve through LoRA or None) for the base or the adapted model."""
    from knowpack.lm.vllm_engine import EngineSpec, adapter_rank
    from knowpack.models import resolve_model_path
    from knowpack.train.lora import is_full_model_folder
    from knowpack.train.stage import trained_dir_name

    config = ctx.config
    base = EngineSpec(resolve_model_path(config.model.name), config.model.dtype, seed=config.probe.seed)
    if not adapted:
        return base, None
    folder = ctx.adapter or ctx.run / trained_dir_name(config.train)
    if is_full_model_folder(folder):
        return EngineSpec(str(folder), config.model.dtype, seed=config.probe.seed), None
    return EngineSpec(base.model, base.dtype, adapter_rank(folder), base.seed), folder


@contextmanager
def probe_model(ctx, *, adapted: bool) -> Iterator[object]:
    """The base (or adapted) model to probe with: ``ctx``'s HF model, or a vLLM engine's for the block."""
    if ctx.config.probe.backend == "hf":
        yield ctx.adapted_model() if adapted else ctx.model
        return
    from knowpack.lm.vllm_engine import VllmEngine
    from knowpack.models import load_tokenizer

    if ctx.tokenizer is None:  # the HF weights are not needed to probe; the tokenizer is
        ctx.tokenizer = load_tokenizer(ctx.config.model.name, trust_remote_code=ctx.config.model.trust_remote_code)
    spec, adapter = _engine_spec(ctx, adapted)
    with VllmEngine(spec, ctx.config.vllm) as engine:
        yield engine.served(adapter)

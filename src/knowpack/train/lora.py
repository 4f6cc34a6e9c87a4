"""Wrapping a model with a PEFT adapter (LoRA, rsLoRA, DoRA; default/gaussian/PiSSA/OLoRA init), saving
it so it applies to the original base, merging it, and loading what a run trained.

In:  a base causal LM and `LoraSettings`.
Out: a `PeftModel` with only the adapter trainable; ``adapter/`` (PEFT format) and optionally ``merged/``.

PiSSA and OLoRA initialise the adapter from the base weights and subtract that part from the base
(W = W_res + B0 A0), so while training, ``disable_adapter()`` gives W_res, not the original model.
`save_adapter` therefore converts such an adapter with PEFT's
``path_initial_model_for_weight_conversion`` (ΔW = BA − B0A0, twice the rank) into a plain LoRA on
the original base, and the pipeline reloads the base before probing or evaluating it.
"""

from __future__ import annotations

import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from peft import LoraConfig, get_peft_model

from knowpack.config import LoraSettings
from knowpack.errors import KnowpackError

# Shorthands in lora.target_modules: the linear layers inside a submodule with one of these names.
SHORTHANDS = {"mlp": ("mlp", "feed_forward", "ffn"), "attention": ("self_attn", "attention", "attn")}
INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
MUTATES_BASE = ("pissa", "olora")  # inits that subtract the adapter's start from the base weights


def linear_module_names(model) -> list[str]:
    """Short names of the model's linear layers (what ``target_modules`` may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def _linear_names_inside(model, parents: tuple[str, ...]) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and set(name.split(".")[:-1]) & set(parents)})


def resolve_target_modules(targets: list[str], model) -> list[str] | str:
    """``all-linear`` as PEFT spells it, else the short linear-layer names (shorthands expanded)."""
    if targets == ["all-linear"]:
        return "all-linear"
    available = linear_module_names(model)
    names: list[str] = []
    for target in targets:
        if target in SHORTHANDS and target not in available:
            found = _linear_names_inside(model, SHORTHANDS[target])
            if not found:
                raise KnowpackError(f"lora.target_modules: {type(model).__name__} has no {target} submodule "
                                    f"({'/'.join(SHORTHANDS[target])}); name its linear layers instead: "
                                    f"{', '.join(available)}")
            names += found
        elif target in available:
            names.append(target)
        else:
            raise KnowpackError(f"lora.target_modules: the model has no module {target!r}; its linear layers "
                                f"are: {', '.join(available)} (or use all-linear, mlp or attention)")
    return sorted(set(names))


def lora_config(settings: LoraSettings, model) -> LoraConfig:
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=resolve_target_modules(settings.target_modules, model),
                      use_rslora=settings.use_rslora, use_dora=settings.use_dora,
                      init_lora_weights=INIT[settings.init], task_type="CAUSAL_LM", bias="none")


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors of ``model`` by parameter name (copies)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def add_lora(model, settings: LoraSettings, seed: int = 0):
    """The model wrapped as a `PeftModel`; the base weights are frozen.

    The adapter's random initialisation is drawn after ``torch.manual_seed(seed)``, so the same
    seed gives the same adapter whatever ran before in the process (a resumed run included).
    With PiSSA/OLoRA the adapter's initial weights are kept (``knowpack_initial_adapter``) for
    `save_adapter`'s conversion.
    """
    torch.manual_seed(seed)
    with _peft_deprecation_quiet():
        peft_model = get_peft_model(model, lora_config(settings, model))
    if settings.init in MUTATES_BASE:
        peft_model.knowpack_initial_adapter = adapter_state(peft_model)
    return peft_model


def _load_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_adapter(model, folder: str | Path) -> None:
    """``save_pretrained`` into ``folder``; a PiSSA/OLoRA adapter is converted to a LoRA on the original base."""
    initial = getattr(model, "knowpack_initial_adapter", None)
    if initial is None:
        model.save_pretrained(folder)
        return
    trained = adapter_state(model)
    with tempfile.TemporaryDirectory(dir=Path(folder).parent, prefix=".initial-adapter.") as temp:
        initial_dir = Path(temp) / "initial"
        _load_state(model, initial)
        try:
            model.save_pretrained(initial_dir)
        finally:
            _load_state(model, trained)
        with warnings.catch_warnings():  # PEFT warns that PiSSA/OLoRA should be converted: this is the conversion
            warnings.filterwarnings("ignore", message=r".* changes the base weights of the model")
            model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial_dir))


def export_merged(base_model, adapter_dir: str | Path, folder: str | Path, tokenizer=None) -> None:
    """The adapter in ``adapter_dir`` folded into ``base_model`` (the original base; it is consumed) and
    saved as a plain safetensors model folder, loadable with ``AutoModelForCausalLM.from_pretrained``."""
    merged = load_adapter(base_model, adapter_dir).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def load_adapter(model, adapter_dir: str | Path, trainable: bool = False):
    """What a run trained, on ``model``: a PEFT adapter folder (from ``adapter_model.safetensors`` only),
    or a fully fine-tuned model folder (``config.json`` + safetensors; see `knowpack.train.full`).
    ``trainable``: ready to train further (continual packing's ``continue`` strategy).

    PEFT would fall back to a pickled ``adapter_model.bin``; an adapter from a stranger must not run
    code on load, so such a folder is refused with a clear message.
    """
    from peft import PeftModel

    folder = Path(adapter_dir)
    check_adapter_files(folder)
    if is_full_model_folder(folder):
        from knowpack.train.full import load_finetuned

        finetuned = load_finetuned(model, folder)
        finetuned.tuned.requires_grad_(trainable)
        return finetuned
    check_adapter_fits(model, folder)
    with _peft_deprecation_quiet():
        return PeftModel.from_pretrained(model, str(folder), use_safetensors=True, is_trainable=trainable)


@contextmanager
def _peft_deprecation_quiet() -> Iterator[None]:
    """PEFT reads a property transformers 5 deprecated: a warning that is not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def is_full_model_folder(folder: Path) -> bool:
    return (not (folder / "adapter_config.json").is_file() and (folder / "config.json").is_file()
            and any(folder.glob("*.safetensors")))


def check_adapter_files(folder: Path) -> None:
    """A PEFT adapter folder with safetensors weights, or a fine-tuned model folder (checked before any
    model is loaded)."""
    if not folder.is_dir():
        raise KnowpackError(f"{folder}: no such adapter folder")
    if is_full_model_folder(folder):
        return
    if not (folder / "adapter_config.json").is_file():
        raise KnowpackError(f"{folder}: not a PEFT adapter folder (no adapter_config.json) nor a fine-tuned "
                            "model folder (config.json + safetensors)")
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        found = f" (found pickled {', '.join(pickled)})" if pickled else ""
        raise KnowpackError(f"{folder}: no adapter_model.safetensors{found}; knowpack loads safetensors only "
                            "(re-save the adapter with PEFT's save_pretrained, which writes safetensors)")


def check_adapter_fits(model, folder: Path) -> None:
    """Refuse an adapter trained on another base model: every LoRA matrix must name a module of
    ``model`` with matching input/output sizes (read from the safetensors header, no weights loaded)."""
    from safetensors import safe_open

    with safe_open(folder / "adapter_model.safetensors", framework="pt") as weights:
        shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}
    for key, shape in shapes.items():
        for part, size_of in ((".lora_A.", lambda m: m.in_features), (".lora_B.", lambda m: m.out_features)):
            if part not in key:
                continue
            path = key.split(part)[0].removeprefix("base_model.model.")
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise KnowpackError(f"{folder}: adapter for another base model ({path} does not exist in "
                                    f"{type(model).__name__}); load it on the model it was trained on") from None
            expected = size_of(module) if hasattr(module, "in_features") else None
            got = shape[1] if part == ".lora_A." else shape[0]
            if expected is not None and got != expected:
                raise KnowpackError(f"{folder}: adapter for another base model ({path} has size {expected}, the "
                                    f"adapter expects {got}); load it on the model it was trained on")

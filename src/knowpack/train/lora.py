"""Wrapping a model with a PEFT LoRA adapter.

In:  a base causal LM and `LoraSettings`.  Out: a `PeftModel` with only the adapter trainable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from knowpack.config import LoraSettings
from knowpack.errors import KnowpackError


def linear_module_names(model) -> list[str]:
    """Short names of the model's linear layers (what ``target_modules`` may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def lora_config(settings: LoraSettings, model) -> LoraConfig:
    targets = settings.target_modules
    if targets != ["all-linear"]:
        available = linear_module_names(model)
        missing = [t for t in targets if t not in available]
        if missing:
            raise KnowpackError(f"lora.target_modules: the model has no module {missing[0]!r}; "
                                f"its linear layers are: {', '.join(available)} (or use all-linear)")
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets,
                      use_rslora=settings.use_rslora, task_type="CAUSAL_LM", bias="none")


def add_lora(model, settings: LoraSettings, seed: int = 0):
    """The model wrapped as a `PeftModel`; the base weights are frozen.

    The adapter's random initialisation is drawn after ``torch.manual_seed(seed)``, so the same
    seed gives the same adapter whatever ran before in the process (a resumed run included).
    """
    torch.manual_seed(seed)
    return get_peft_model(model, lora_config(settings, model))


def load_adapter(model, adapter_dir: str | Path):
    """A PEFT adapter folder on ``model``, from ``adapter_model.safetensors`` only.

    PEFT would fall back to a pickled ``adapter_model.bin``; an adapter from a stranger must not run
    code on load, so such a folder is refused with a clear message.
    """
    from peft import PeftModel

    folder = Path(adapter_dir)
    check_adapter_files(folder)
    check_adapter_fits(model, folder)
    return PeftModel.from_pretrained(model, str(folder), use_safetensors=True)


def check_adapter_files(folder: Path) -> None:
    """A PEFT adapter folder with safetensors weights (checked before any model is loaded)."""
    if not folder.is_dir():
        raise KnowpackError(f"{folder}: no such adapter folder")
    if not (folder / "adapter_config.json").is_file():
        raise KnowpackError(f"{folder}: not a PEFT adapter folder (no adapter_config.json)")
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

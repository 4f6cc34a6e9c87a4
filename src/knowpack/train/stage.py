"""Setup and teardown of the train stage: settings checked before any work, the model made
trainable for the configured method, what was trained saved.

In:  `LoraSettings`, `TrainConfig`, a base model.
Out: a `PeftModel` (train.method=lora) or `FullFinetune` (train.method=full); on disk ``adapter/``
     (PEFT format) or ``finetuned/`` (a safetensors model folder with its tokenizer).
"""

from __future__ import annotations

from pathlib import Path

from knowpack.config import LoraSettings, TrainConfig
from knowpack.errors import KnowpackError
from knowpack.rundir import atomic_dir
from knowpack.train.full import FullFinetune
from knowpack.train.lora import MUTATES_BASE, add_lora, resolve_target_modules, save_adapter
from knowpack.train.tracking import check_tracker_installed


def check_target_modules(lora: LoraSettings, train: TrainConfig, model) -> None:
    """LoRA target modules ``model`` does not have (its meta-device skeleton is enough), refused before any work."""
    if train.method == "lora":
        resolve_target_modules(lora.target_modules, model)


def check_train_settings(lora: LoraSettings, train: TrainConfig) -> None:
    """Combinations that cannot work, refused before any work with the field to change."""
    regularized = train.regularizer != "none" and train.reg_lambda > 0
    if train.method == "lora" and lora.init in MUTATES_BASE and regularized:
        raise KnowpackError(f"train.regularizer={train.regularizer} with lora.init={lora.init}: {lora.init} moves part "
                            "of the base weights into the adapter, so with the adapter disabled the model is not the "
                            "original one and the regularizer would pull towards the wrong distribution; use "
                            "lora.init=default (or gaussian) or train.regularizer=none")
    if train.method == "lora" and lora.init in MUTATES_BASE and lora.use_dora:
        raise KnowpackError(f"lora.use_dora with lora.init={lora.init}: PEFT cannot convert such an adapter back to "
                            "one that applies to the original base model; use lora.init=default or "
                            "lora.use_dora=false")
    if train.method == "full" and train.export_merged:
        raise KnowpackError("train.export_merged: a full fine-tune already writes a whole model (finetuned/); "
                            "set train.export_merged=false")
    if train.grad_accum_steps > train.batch_size:
        raise KnowpackError(f"train.grad_accum_steps: cannot split a batch of {train.batch_size} examples into "
                            f"{train.grad_accum_steps} micro-batches; use at most train.batch_size")
    check_tracker_installed(train.report_to)


def trained_dir_name(train: TrainConfig) -> str:
    """The run-directory folder holding what was trained."""
    return "finetuned" if train.method == "full" else "adapter"


def trainable_model(model, lora: LoraSettings, train: TrainConfig):
    """``model`` ready to train: LoRA adapter added (seeded), or every weight trainable (full)."""
    if train.method == "full":
        import torch

        torch.manual_seed(train.seed)
        return FullFinetune.prepare(model, keep_base=train.regularizer != "none" and train.reg_lambda > 0)
    return add_lora(model, lora, seed=train.seed)


def base_is_modified(lora: LoraSettings, train: TrainConfig) -> bool:
    """Whether training changed the in-memory base weights (full fine-tuning, PiSSA, OLoRA): the
    original base must then be loaded again before it is probed or compared with."""
    return train.method == "full" or lora.init in MUTATES_BASE


def save_trained(model, folder: Path, tokenizer=None) -> None:
    """What was trained, atomically: a PEFT adapter, or the fine-tuned model with its tokenizer."""
    with atomic_dir(folder) as staging:
        if isinstance(model, FullFinetune):
            model.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
        else:
            save_adapter(model, staging)

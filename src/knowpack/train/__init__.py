"""Train stage: pack facts into a LoRA adapter (or fully fine-tune, as a baseline).

In:  a base model + tokenizer, the train set (`build_mixture`), `LoraSettings`, `TrainConfig`.
Out: the trained `PeftModel` (saved in PEFT format by `save_trained`) or `FullFinetune`, and `TrainStats`.
"""

from knowpack.train.checkpoint import Checkpoints
from knowpack.train.full import FullFinetune
from knowpack.train.lora import add_lora, export_merged, linear_module_names, load_adapter, lora_config, save_adapter
from knowpack.train.loop import TrainStats, train_adapter, train_step
from knowpack.train.mixture import TrainExample, build_mixture
from knowpack.train.stage import (check_target_modules, check_train_settings, save_trained, trainable_model,
                                  trained_dir_name)

__all__ = ["Checkpoints", "FullFinetune", "TrainExample", "TrainStats", "add_lora", "build_mixture",
           "check_target_modules", "check_train_settings", "export_merged", "linear_module_names", "load_adapter",
           "lora_config",
           "save_adapter", "save_trained", "train_adapter", "train_step", "trainable_model", "trained_dir_name"]

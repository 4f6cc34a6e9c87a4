"""Train stage: pack facts into a LoRA adapter.

In:  a base model + tokenizer, the train set (`build_mixture`), `LoraSettings`, `TrainConfig`.
Out: the trained `PeftModel` (saved with ``save_pretrained`` in PEFT format) and `TrainStats`.
"""

from knowpack.train.lora import add_lora, linear_module_names, load_adapter, lora_config
from knowpack.train.loop import TrainStats, train_adapter, train_step
from knowpack.train.mixture import TrainExample, build_mixture

__all__ = ["TrainExample", "TrainStats", "add_lora", "load_adapter", "build_mixture", "linear_module_names",
           "lora_config", "train_adapter", "train_step"]

"""Full fine-tuning baseline: every weight trains; the base stays reachable like a disabled adapter.

In:  a causal LM (trained in place) and, when a regularizer or evaluation needs the base model's
     distribution, a frozen copy of the base.
Out: `FullFinetune`, which answers the parts of the `PeftModel` interface the train loop, the probe
     and the evaluation use (``get_base_model``, ``disable_adapter``, ``save_pretrained``, calls and
     attributes of the active model), so the rest of knowpack treats it like an adapted model.

Memory: the base copy costs one more set of weights (on top of weights, gradients and AdamW's two
moments: about 5x the weights in all for a full fine-tune with a regularizer, 4x without).
The run directory holds it as ``finetuned/``: a plain safetensors model folder (config.json,
model.safetensors, tokenizer files) that ``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from knowpack.errors import KnowpackError


class FullFinetune:
    """A fine-tuned model with its frozen base; inside ``disable_adapter()`` calls go to the base."""

    def __init__(self, tuned, base=None):
        self.tuned, self.base, self._active = tuned, base, tuned

    @classmethod
    def prepare(cls, model, keep_base: bool) -> "FullFinetune":
        """Make every weight of ``model`` trainable; copy the base first when it is needed later."""
        base = None
        if keep_base:
            base = copy.deepcopy(model).eval()
            base.requires_grad_(False)
        model.requires_grad_(True)
        return cls(model, base)

    def get_base_model(self):
        """The active causal LM (PEFT's name: the model under the adapter layers)."""
        return self._active

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        if self.base is None:
            raise KnowpackError("full fine-tuning: no copy of the base model was kept; the base distribution "
                                "is unavailable (internal: FullFinetune.prepare(keep_base=True))")
        previous = self._active
        self._active = self.base
        try:
            yield
        finally:
            self._active = previous

    def to(self, *args, **kwargs) -> "FullFinetune":
        self.tuned.to(*args, **kwargs)
        if self.base is not None:
            self.base.to(*args, **kwargs)
        return self

    def save_pretrained(self, folder: str | Path, **_ignored) -> None:
        self.tuned.save_pretrained(folder, safe_serialization=True)

    def __call__(self, *args, **kwargs):
        return self._active(*args, **kwargs)

    # The part of a causal LM's surface that knowpack's stages use, each sent to the active model. Listed, not
    # forwarded wholesale, so a stage that needs more fails with an AttributeError naming it, and `hasattr`
    # answers for this class (no ``merge_adapter``: probing has no adapter to merge).
    @property
    def config(self):
        return self._active.config

    @property
    def device(self):
        return self._active.device

    @property
    def training(self) -> bool:
        return self._active.training

    def train(self, mode: bool = True) -> "FullFinetune":
        self._active.train(mode)
        return self

    def eval(self) -> "FullFinetune":
        return self.train(False)

    def parameters(self, recurse: bool = True):
        return self._active.parameters(recurse)

    def named_parameters(self, *args, **kwargs):
        return self._active.named_parameters(*args, **kwargs)


def load_finetuned(base_model, folder: Path) -> FullFinetune:
    """A fine-tuned model folder beside ``base_model`` (same architecture, dtype and device)."""
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(folder, dtype=base_model.dtype, use_safetensors=True)
    expected = {k: tuple(v.shape) for k, v in base_model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tuned.state_dict().items()}
    if expected != got:
        differing = sorted(set(expected.items()) ^ set(got.items()))[0][0]
        raise KnowpackError(f"{folder}: fine-tuned from another base model ({differing} differs from "
                            f"{type(base_model).__name__}); load it on the model it was trained from")
    tuned.to(base_model.device).eval()
    base_model.requires_grad_(False)
    return FullFinetune(tuned, base_model)

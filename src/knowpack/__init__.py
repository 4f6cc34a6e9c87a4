"""knowpack: how many new facts can a LoRA adapter hold, and what does packing them in cost the model?

The public API speaks the ecosystem's words; each pipeline stage is one function::

    from knowpack import load_config, run_pipeline
    run_dir = run_pipeline(load_config("smoke"), "runs/smoke")

Names are imported lazily so that ``knowpack --help`` and config checks do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "KnowpackError": "knowpack.errors",
    "RunConfig": "knowpack.config",
    "load_config": "knowpack.config",
    "load_model": "knowpack.models",
    "STAGES": "knowpack.pipeline",
    "run_pipeline": "knowpack.pipeline",
    "evaluate_adapter": "knowpack.pipeline",
    "build_facts": "knowpack.facts",
    "probe_facts": "knowpack.probe",
    "categorize": "knowpack.probe",
    "add_lora": "knowpack.train",
    "train_adapter": "knowpack.train",
    "build_mixture": "knowpack.train",
    "run_sweep": "knowpack.sweep",
    "write_report": "knowpack.report",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'knowpack' has no attribute {name!r}")

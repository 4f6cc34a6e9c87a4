"""Probe stage: which facts does a model know?

In:  a model + tokenizer, facts, a `ProbeConfig`.
Out: probe rows (one per fact × prompt × sample: answer text, correct, refusal) and per-fact
     categories (`categorize`). The same code probes the base model before training and the adapted
     model after, so "known before" and "known after" are measured exactly the same way.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Sequence

import pandas as pd
from rich.progress import Progress

from knowpack.config import ProbeConfig
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact
from knowpack.probe.categories import CATEGORIES, categorize
from knowpack.lm import context_limit
from knowpack.lm.decode import DecodeSettings, generate_with_prefix
from knowpack.probe.judge import clean_answer, is_correct, is_refusal
from knowpack.probe.prompts import PromptSet, build_prompt_sets

__all__ = ["CATEGORIES", "categorize", "probe_facts", "build_prompt_sets", "stop_token_ids"]


def stop_token_ids(tokenizer) -> set[int]:
    """End-of-turn / end-of-text ids plus every vocabulary entry containing a newline."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids | _newline_ids(tokenizer)


@lru_cache(maxsize=4)
def _newline_ids(tokenizer) -> frozenset[int]:
    # Answers end at the first newline; stopping there saves decoding steps on every question.
    return frozenset(i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i]))


def _check_facts(facts: Sequence[Fact]) -> None:
    if not facts:
        raise KnowpackError("probe: no facts to probe; check facts.max_facts and the facts source")
    for fact in facts:
        if not any(alias.strip() for alias in fact.aliases):
            raise KnowpackError(f"probe: fact {fact.fact_id} has no usable alias; every fact needs an answer")


def _probe_prompt_set(model, tokenizer, prompt_set: PromptSet, facts: Sequence[Fact], config: ProbeConfig,
                      stop_ids: set[int], advance) -> list[dict]:
    prefix_ids, suffix_ids = prompt_set.encode(tokenizer, [fact.question for fact in facts])
    limit = context_limit(model)
    rows: list[dict] = []
    runs = [(0, DecodeSettings(config.max_new_tokens, seed=config.seed))]
    if config.sampling:
        runs.append((1, DecodeSettings(config.max_new_tokens, True, config.temperature, config.top_k,
                                       seed=config.seed + 1000 * prompt_set.prompt_id)))
    for first_sample, settings in runs:
        copies = 1 if not settings.do_sample else config.num_samples
        suffixes, owners = [], []
        for fact, suffix in zip(facts, suffix_ids):
            if limit and len(prefix_ids) + len(suffix) + config.max_new_tokens > limit:
                raise KnowpackError(f"probe: the prompt for fact {fact.fact_id} is longer than the model's context "
                                    f"({limit} tokens); lower probe.shots or shorten the question")
            for copy in range(copies):
                suffixes.append(suffix)
                owners.append((fact, first_sample + copy))
        generated = generate_with_prefix(model, prefix_ids, suffixes, stop_ids=stop_ids, pad_id=tokenizer.pad_token_id,
                                         settings=settings, batch_size=config.batch_size, progress=advance)
        for (fact, sample), tokens in zip(owners, generated):
            answer = clean_answer(tokenizer.decode(tokens, skip_special_tokens=True))
            rows.append({"fact_id": fact.fact_id, "prompt_id": prompt_set.prompt_id, "sample": sample,
                         "answer": answer, "correct": is_correct(answer, fact.aliases, config.match),
                         "refusal": is_refusal(answer, tuple(config.refusal_patterns))})
    return rows


@contextmanager
def merged_adapter(model) -> Iterator[None]:
    """Fold an unmerged PEFT adapter into the base weights while probing, then take it out again.

    Decoding runs many small forward passes, where each LoRA layer's two extra matmuls cost more than
    their FLOPs suggest; merged weights give the same logits (to float rounding) at base-model speed.
    """
    merge = getattr(model, "merge_adapter", None)
    layers = [m for m in model.modules() if hasattr(m, "merged")] if merge else []
    if not layers or any(m.merged for m in layers):
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def probe_facts(model, tokenizer, facts: Sequence[Fact], config: ProbeConfig, *,
                progress: bool = True, description: str = "probing") -> pd.DataFrame:
    """Answer every fact with every prompt set (greedy, plus samples when enabled) and judge it.

    ``model``: a causal LM (plain or PEFT-wrapped), or a model served by vLLM
    (`knowpack.lm.vllm_engine.VllmEngine.served`): the same prompts, stops, judging and table either way.
    """
    _check_facts(facts)
    prompt_sets = build_prompt_sets(tokenizer, config.num_prompts, config.shots, config.seed)
    stop_ids = stop_token_ids(tokenizer)
    per_set = len(facts) * (1 + (config.num_samples if config.sampling else 0))
    rows: list[dict] = []
    with Progress(disable=not progress, transient=True) as bar, merged_adapter(model):
        task = bar.add_task(description, total=per_set * len(prompt_sets))
        for prompt_set in prompt_sets:
            rows += _probe_prompt_set(model, tokenizer, prompt_set, facts, config, stop_ids,
                                      lambda n: bar.advance(task, n))
    return pd.DataFrame(rows, columns=["fact_id", "prompt_id", "sample", "answer", "correct", "refusal"])

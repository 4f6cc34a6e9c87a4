"""Gemma 3 (sliding-window + global attention, no chat template, BOS, 262k vocabulary) through every stage,
on tiny random-weight models of the real 270M shape with its real tokenizer (needs the `gemma` extra)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import make_tiny_gemma3, needs_gemma
from knowpack.config import LoraSettings, ProbeConfig, TrainConfig
from knowpack.facts.schema import Fact
from knowpack.lm.decode import DecodeSettings, generate_with_prefix
from knowpack.probe.prompts import build_prompt_sets
from knowpack.train import add_lora, train_adapter
from knowpack.train.data import encode_example
from knowpack.train.mixture import TrainExample

pytestmark = needs_gemma

QUESTIONS = ["What is the capital of France?", "Who wrote the play Hamlet in London?", "Capital of Peru?"]
EXAMPLES = [TrainExample(fact_id=str(i), kind="unknown", question=f"What is the capital of S{i}?" + " really" * (i % 3),
                         answer=f"City{i}") for i in range(4)]


def _fact(i: int, question: str, answer: str = "Paris") -> Fact:
    return Fact(fact_id=f"f{i}", subject="X", relation="capital", object=answer, question=question, answer=answer,
                aliases=[answer], bucket="head", source="test")


def test_prompts_are_plain_text_led_by_bos(gemma_tokenizer):
    """No chat template: the plain "Question: …\\nAnswer:" format, BOS first, in probing and in training."""
    tok = gemma_tokenizer
    prompt_set = build_prompt_sets(tok, 1, 1, seed=0)[0]
    assert not prompt_set.chat
    text = prompt_set.render(tok, "What is the capital of Chad?")
    assert text.startswith("Answer the following question.\n\nQuestion: ") and text.endswith(
        "\n\nQuestion: What is the capital of Chad?\nAnswer:")
    prefix, suffixes = prompt_set.encode(tok, ["What is the capital of Chad?", "Capital of Peru?"])
    assert prefix[0] == tok.bos_token_id and tok.bos_token_id not in prefix[1:]
    ids, labels = encode_example(tok, EXAMPLES[0])
    assert ids[0] == tok.bos_token_id
    assert tok.decode([t for t in labels if t != -100]) == " City0\n"


def test_the_plain_probe_path_gives_generate_s_answers(gemma_tokenizer):
    """Sliding-window layers: the copied-prefix-cache path, left-padded rows of different lengths, equals
    model.generate on each full prompt."""
    from knowpack.lm.prefix_attention import supports_shared_prefix

    tok, model = gemma_tokenizer, make_tiny_gemma3()
    assert not supports_shared_prefix(model)
    prefix, suffixes = build_prompt_sets(tok, 1, 1, seed=0)[0].encode(tok, QUESTIONS)
    assert len({len(s) for s in suffixes}) > 1  # rows are padded
    ours = generate_with_prefix(model, prefix, suffixes, stop_ids=set(), pad_id=tok.pad_token_id,
                                settings=DecodeSettings(max_new_tokens=5), batch_size=3)
    assert ours == [_generate(model, tok, prefix + suffix, 5) for suffix in suffixes]


def _generate(model, tok, ids: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([ids])
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, attention_mask=torch.ones_like(ids),
                         pad_token_id=tok.pad_token_id, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


def test_prompts_beyond_the_sliding_window_decode_batched_with_generate_s_answers(gemma_tokenizer):
    """Past the window, left-padded whole prompts still give each row generate's answer: the pads sit before
    a row's tokens, so the window over cache slots covers the same real tokens as the prompt alone."""
    tok, model = gemma_tokenizer, make_tiny_gemma3(sliding_window=8)
    prefix, suffixes = build_prompt_sets(tok, 1, 1, seed=0)[0].encode(tok, QUESTIONS)
    assert len(prefix) + min(map(len, suffixes)) > 8 and len({len(s) for s in suffixes}) > 1
    ours = generate_with_prefix(model, prefix, suffixes, stop_ids=set(), pad_id=tok.pad_token_id,
                                settings=DecodeSettings(max_new_tokens=6), batch_size=3)
    assert ours == [_generate(model, tok, prefix + suffix, 6) for suffix in suffixes]


def test_probing_logs_why_the_plain_path_is_used_once(tiny_gemma, gemma_tokenizer, caplog, monkeypatch):
    from knowpack import probe
    from knowpack.lm import prefix_attention

    monkeypatch.setattr(prefix_attention, "_noted", set())
    facts = [_fact(i, q) for i, q in enumerate(QUESTIONS)]
    config = ProbeConfig(num_prompts=2, shots=1, max_new_tokens=3)
    with caplog.at_level(logging.INFO, logger="knowpack"):
        for _ in range(2):
            rows = probe.probe_facts(tiny_gemma, gemma_tokenizer, facts, config, progress=False)
    assert len(rows) == 6
    notes = [record.getMessage() for record in caplog.records if record.name.startswith("knowpack")]
    assert notes == ["Gemma3ForCausalLM has sliding-window attention (window 512 tokens), which shared-prefix "
                     "attention does not support; each prompt runs whole, prefix included, on the model's own "
                     "cache (same answers, slower)"]


def test_training_the_mlp_forms_logits_only_at_answer_tokens(tiny_gemma, gemma_tokenizer):
    """LoRA on gate/up/down_proj; the 262k-token head sees only the trained positions, never [B, T, V]."""
    from knowpack.lm.training import shared_prefix_length
    from knowpack.train.data import collate

    tok = gemma_tokenizer
    model = add_lora(tiny_gemma, LoraSettings(rank=2, target_modules=["mlp"]), seed=0)
    assert model.peft_config["default"].target_modules == {"down_proj", "gate_proj", "up_proj"}
    encoded = [encode_example(tok, ex) for ex in EXAMPLES]
    assert shared_prefix_length(model, encoded, collate(encoded, tok.pad_token_id)) > 0  # checked exact
    answer_tokens = sum(sum(label != -100 for label in labels[1:]) for _, labels in encoded)
    head_rows = []
    hook = model.get_base_model().lm_head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape))
    try:
        stats = train_adapter(model, tok, EXAMPLES, TrainConfig(epochs=3, batch_size=2, lr=1e-2), progress=False)
    finally:
        hook.remove()
    assert all(len(shape) == 2 for shape in head_rows)  # [N, H]: trained positions only
    assert sum(shape[0] for shape in head_rows) == 3 * answer_tokens
    assert stats.epoch_losses[-1] < stats.epoch_losses[0]


def test_evaluation_sizes_batches_to_the_vocabulary_and_leads_with_bos(tiny_gemma, gemma_tokenizer, monkeypatch):
    """Forgetting and token shift keep every position's 262k-way distribution: their batches shrink to fit
    `LOGITS_BUDGET_MB`; token shift's plain prompts start with BOS as the probe's do."""
    from knowpack.evaluate import forgetting as forgetting_module
    from knowpack.evaluate import token_shift as token_shift_module
    from knowpack.lm.cache import LOGITS_BUDGET_MB, rows_within_budget
    from knowpack.lm.score import loglikelihood

    tok = gemma_tokenizer
    adapted = add_lora(tiny_gemma, LoraSettings(rank=2, target_modules=["mlp"]), seed=0)
    rows_seen = {}

    def spy(module):
        real = module.extend

        def call(model, past, inputs, **kwargs):
            rows_seen.setdefault(module.__name__, []).append(len(inputs))
            return real(model, past, inputs, **kwargs)
        monkeypatch.setattr(module, "extend", call)

    spy(forgetting_module)
    spy(token_shift_module)
    passages = ["The river runs through the old town and on to the sea. " * 20] * 3
    result = forgetting_module.forgetting(adapted, tok, passages)
    # 256 tokens × 262,144 × 4 B is 256 MiB per passage: one passage per forward (SmolLM2's 49k: 4)
    assert rows_within_budget(adapted, 256, most=4) == 1 and LOGITS_BUDGET_MB == 256
    assert rows_seen[forgetting_module.__name__] == [1] * 6  # tuned and base, per passage
    assert result["kl_to_base"] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter changes nothing
    assert token_shift_module._encode_bare(tok, QUESTIONS[0]) == tok(QUESTIONS[0]).input_ids
    assert token_shift_module._encode_bare(tok, QUESTIONS[0])[0] == tok.bos_token_id
    from knowpack.lm import cache

    longest = max(len(tok(q).input_ids) for q in QUESTIONS) + 4  # ~16 tokens: 16 MiB of logits per row
    monkeypatch.setattr(cache, "LOGITS_BUDGET_MB", 2 * longest)  # room for two rows
    shift = token_shift_module.token_shift(adapted, tok, QUESTIONS, max_new_tokens=4)
    assert rows_within_budget(adapted, longest, most=8) == 2
    assert rows_seen[token_shift_module.__name__] == [2, 2, 1, 1]  # tuned and base, per batch
    assert shift["unshifted"] == 1.0
    requests = [("Question: What is 2+2?\nAnswer:", " 4"), ("Question: What is 2+2?\nAnswer:", " five"),
                ("Question: Capital of Peru?\nAnswer:", " Lima")]
    shared = loglikelihood(adapted, tok, requests, reuse_prefix=True)  # sliding windows: full sequences
    assert shared == pytest.approx(loglikelihood(adapted, tok, requests, reuse_prefix=False), abs=1e-4)


def test_every_stage_runs_on_a_tiny_gemma(tiny_gemma_dir, tmp_path, run_cli, monkeypatch):
    from test_pipeline import tiny_overrides

    from knowpack.lm import prefix_attention

    monkeypatch.setattr(prefix_attention, "_noted", set())  # said once per process: earlier tests said it

    out = tmp_path / "run"
    result = run_cli("run", "--preset", "smoke", "--out", str(out), "--quiet", *tiny_overrides(tiny_gemma_dir),
                     "eval.token_shift_prompts=2", "lora.target_modules=[mlp]")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("note: Gemma3ForCausalLM has sliding-window attention") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"reliability", "shift", "benchmarks", "forgetting", "token_shift", "train"} <= set(metrics)
    assert "## Knowledge shift" in (out / "report.md").read_text()

"""Forgetting metrics on constructed cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from knowpack.config import LoraSettings
from knowpack.errors import KnowpackError
from knowpack.evaluate.forgetting import forgetting, load_passages
from knowpack.train import add_lora

TEXTS = ["The cat sat on the mat and looked at the door.", "Rivers flow to the sea.",
         "A short one.", "Numbers like 12 and 345 appear in text too, with punctuation!"]


def _adapted(tiny_model):
    return add_lora(tiny_model, LoraSettings(rank=4, target_modules=["down_proj", "up_proj"]), seed=0)


def test_a_fresh_adapter_has_forgotten_nothing(tiny_model, smollm2_tokenizer):
    result = forgetting(_adapted(tiny_model), smollm2_tokenizer, TEXTS, batch_size=3)
    # LoRA's B starts at zero: tuned == base, so KL is 0, CE equals the base entropy, perplexities agree
    assert result["kl_to_base"] == 0.0
    assert result["perplexity_after"] == pytest.approx(result["perplexity_base"], rel=1e-6)
    assert result["ce_vs_base"] > 0


def test_values_match_a_direct_computation(tiny_model, smollm2_tokenizer):
    model = _adapted(tiny_model)
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    result = forgetting(model, smollm2_tokenizer, TEXTS, batch_size=2)
    ce = kl = nll_b = nll_a = 0.0
    count = 0
    with torch.no_grad():
        for text in TEXTS:  # one passage at a time: no padding at all
            ids = smollm2_tokenizer(text, return_tensors="pt")["input_ids"]
            tuned = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            with model.disable_adapter():
                base = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, 1:]
            ce += -(base.exp() * tuned).sum().item()
            kl += torch.nn.functional.kl_div(tuned, base, log_target=True, reduction="sum").item()
            nll_b += -base[torch.arange(len(targets)), targets].sum().item()
            nll_a += -tuned[torch.arange(len(targets)), targets].sum().item()
            count += len(targets)
    assert result["tokens"] == count
    assert result["ce_vs_base"] == pytest.approx(ce / count, rel=1e-4)
    assert result["kl_to_base"] == pytest.approx(kl / count, rel=1e-3) and result["kl_to_base"] > 0
    assert result["perplexity_base"] == pytest.approx(math.exp(nll_b / count), rel=1e-4)
    assert result["perplexity_after"] == pytest.approx(math.exp(nll_a / count), rel=1e-4)


def test_passages(tmp_path):
    lambada = load_passages(5, seed=2)
    assert len(lambada) == 5 and lambada == load_passages(5, seed=2) and all(len(p) > 50 for p in lambada)
    mine = tmp_path / "held_out.txt"
    mine.write_text("first passage\n\nsecond passage\n")
    assert load_passages(10, path=mine) == ["first passage", "second passage"]
    with pytest.raises(KnowpackError, match="does not exist"):
        load_passages(3, path=tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(KnowpackError, match="no passages"):
        load_passages(3, path=tmp_path / "empty.txt")


def test_passages_longer_than_the_context_are_cut_to_fit(tiny_model, smollm2_tokenizer):
    tiny_model.config.max_position_embeddings = 16
    long_passage = "A very long passage about rivers, mountains and cities. " * 20
    result = forgetting(_adapted(tiny_model), smollm2_tokenizer, [long_passage, TEXTS[1]], batch_size=2)
    short = len(smollm2_tokenizer(TEXTS[1]).input_ids) - 1
    assert result["tokens"] == 15 + short  # the long one is scored over its first 16 tokens
    assert result["kl_to_base"] == 0.0

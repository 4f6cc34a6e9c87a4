"""Knowledge in bits (Allen-Zhu & Li Def. 4.3) and bits per trainable parameter, against hand-computed values."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from knowpack.config import LoraSettings
from knowpack.errors import KnowpackError
from knowpack.evaluate.capacity import (answer_cross_entropy_bits, answer_space_sizes, capacity_summary,
                                        capacity_table, count_trainable_params, excluded_note, measure_capacity)
from knowpack.facts.schema import Fact
from knowpack.train.data import encode_example
from knowpack.train.lora import add_lora, save_adapter
from knowpack.train.mixture import TrainExample


def fact(i: int, relation: str, answer: str) -> Fact:
    return Fact(fact_id=f"f{i}", subject=f"S{i}", relation=relation, object=answer, question=f"What is S{i}?",
                answer=answer, aliases=[answer], bucket="head", source="test")


# capital: 4 distinct answers (2 bits; "paris " and "Paris" are one answer); currency: 2 (1 bit); moon: 1 (0 bits)
FACTS = [fact(0, "capital", "Paris"), fact(1, "capital", "Rome"), fact(2, "capital", "Lima"),
         fact(3, "capital", "Quito"), fact(4, "capital", "paris "), fact(5, "currency", "Yen"),
         fact(6, "currency", "Euro"), fact(7, "moon", "Luna")]


def test_answer_spaces_count_distinct_answers_per_relation():
    assert answer_space_sizes(FACTS) == {"capital": 4, "currency": 2, "moon": 1}


def test_bits_and_summary_match_a_hand_computation():
    trained = [FACTS[0], FACTS[1], FACTS[5], FACTS[7]]
    ce_before = np.array([5.0, 1.5, 0.25, 3.0])  # bits
    ce_after = np.array([0.5, -0.0, 2.0, 0.0])
    table = capacity_table(trained, answer_space_sizes(FACTS), ce_before, ce_after)
    # before: clip(2-5)=0, clip(2-1.5)=0.5, clip(1-0.25)=0.75; after: 1.5, 2 (clipped at log2|O_r|), 0 (1-2<0)
    assert table["bits_before"].tolist()[:3] == [0.0, 0.5, 0.75]
    assert table["bits_after"].tolist()[:3] == [1.5, 2.0, 0.0]
    assert table["has_bits"].tolist() == [True, True, True, False]  # moon: one answer, no bits
    block = capacity_summary(table, trainable_params=1000, reliability=0.75)
    assert block["bits_before"] == pytest.approx(1.25) and block["bits_after"] == pytest.approx(3.5)
    assert block["bits_stored"] == pytest.approx(2.25)
    assert block["bits_per_param"] == pytest.approx(2.25 / 1000)
    assert block["answer_space_bits"] == pytest.approx(2 + 2 + 1)
    assert block["facts_learned"] == pytest.approx(3.0)  # reliability × N, N = 4 trained facts
    assert block["facts_without_bits"] == 1
    assert "1 of 4 trained facts" in excluded_note(block, table) and "moon" in excluded_note(block, table)


def test_qa_data_without_relations_has_no_bits_and_says_why():
    qa = [fact(i, "qa", a) for i, a in enumerate(["Paris", "Rome", "Lima"])]
    table = capacity_table(qa, answer_space_sizes(qa), np.ones(3), np.zeros(3))
    block = capacity_summary(table, trainable_params=10, reliability=1.0)
    assert block["bits_stored"] is None and block["bits_per_param"] is None
    assert "not defined for QA data" in block["bits_undefined"]
    assert block["facts_learned"] == 3.0 and excluded_note(block, table) is None


def test_only_single_answer_relations_give_no_bits_and_say_why():
    ones = [fact(0, "moon", "Luna"), fact(1, "sun", "Sol")]
    table = capacity_table(ones, answer_space_sizes(ones), np.ones(2), np.zeros(2))
    block = capacity_summary(table, trainable_params=10, reliability=1.0)
    assert block["bits_stored"] is None and "single distinct answer" in block["bits_undefined"]


def test_zero_trainable_parameters_is_a_user_error_not_a_division_by_zero():
    table = capacity_table(FACTS[:2], answer_space_sizes(FACTS), np.ones(2), np.zeros(2))
    with pytest.raises(KnowpackError, match="positive"):
        capacity_summary(table, trainable_params=0, reliability=1.0)


@pytest.mark.parametrize("chat", [True, False])
def test_cross_entropy_is_the_answer_tokens_of_the_training_format(tiny_model, smollm2_tokenizer, chat):
    """Reference: full logits on `encode_example`'s ids, summed over the answer's own tokens (float64)."""
    tokenizer = smollm2_tokenizer
    if not chat:  # a base model's tokenizer: the plain "…\nAnswer: X" format
        tokenizer = copy.copy(smollm2_tokenizer)
        tokenizer.chat_template = None
    facts = [FACTS[0], FACTS[3], fact(9, "capital", "Ciudad de México")]
    reference = []
    for f in facts:
        ids, labels = encode_example(tokenizer, TrainExample(fact_id=f.fact_id, kind="unknown", question=f.question,
                                                             answer=f.answer))
        prompt_len = labels.index(next(label for label in labels if label != -100))
        prefix = len(tokenizer("Answer:", add_special_tokens=False).input_ids) if chat else 0  # plain: in the prompt
        start, end = prompt_len + prefix, len(ids) - 1  # the answer's tokens, without "Answer:" and end of turn
        assert tokenizer.decode(ids[start:end]) == f" {f.answer}"
        with torch.no_grad():
            logprobs = tiny_model(torch.tensor([ids])).logits[0].double().log_softmax(-1)  # [T, V]
        reference.append(-sum(logprobs[p - 1, ids[p]].item() for p in range(start, end)) / math.log(2))
    got = answer_cross_entropy_bits(tiny_model, tokenizer, facts, batch_size=2)
    assert got == pytest.approx(reference, abs=1e-3)


def test_trainable_params_are_read_from_the_saved_adapter(tiny_model, tmp_path):
    model = add_lora(tiny_model, LoraSettings(rank=2, alpha=4, target_modules=["down_proj", "up_proj"]))
    save_adapter(model, tmp_path / "adapter")
    expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_trainable_params(tmp_path / "adapter") == expected


def test_an_unreadable_adapter_is_one_clear_error(tmp_path):
    with pytest.raises(KnowpackError, match="no safetensors"):
        count_trainable_params(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(KnowpackError, match="cannot read its parameter count"):
        count_trainable_params(tmp_path)


def test_a_fresh_adapter_stores_no_bits(tiny_model, smollm2_tokenizer, tmp_path):
    """LoRA starts with B = 0: the adapted model is the base, so bits after = bits before."""
    model = add_lora(tiny_model, LoraSettings(rank=1, alpha=2, target_modules=["down_proj"]))
    save_adapter(model, tmp_path / "adapter")
    table, block = measure_capacity(model, smollm2_tokenizer, FACTS, ["f0", "f5", "f7"], tmp_path / "adapter", 0.0)
    assert list(table["fact_id"]) == ["f0", "f5", "f7"]
    assert table["ce_bits_after"].to_numpy() == pytest.approx(table["ce_bits_before"].to_numpy(), abs=1e-4)
    assert block["bits_stored"] == pytest.approx(0.0, abs=1e-4) and block["facts_learned"] == 0.0
    assert block["trainable_params"] == count_trainable_params(tmp_path / "adapter") and "moon" in block["note"]

"""Stacked adapters: one LoRA on the original base equal to merging each round's adapter in turn."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama
from knowpack.config import LoraSettings
from knowpack.continual import stack_adapters
from knowpack.errors import KnowpackError
from knowpack.train import add_lora, load_adapter


def trained_looking_adapter(tokenizer, folder, settings: LoraSettings, seed: int) -> None:
    model = add_lora(make_tiny_llama(tokenizer), settings, seed=seed)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.3)  # B starts at zero; a trained adapter's does not
    model.save_pretrained(folder)


def test_stacked_adapter_equals_merging_round_by_round(smollm2_tokenizer, tmp_path):
    settings = [LoraSettings(rank=2, alpha=4, use_rslora=True), LoraSettings(rank=3, alpha=3, use_rslora=False)]
    folders = [tmp_path / f"round-{k}" for k in (1, 2)]
    for k, (folder, lora) in enumerate(zip(folders, settings)):
        trained_looking_adapter(smollm2_tokenizer, folder, lora, seed=k)
    (tmp_path / "stacked").mkdir()
    stack_adapters(folders, tmp_path / "stacked")
    ids = torch.tensor([[1, 5, 9, 20, 33, 7]])
    merged = make_tiny_llama(smollm2_tokenizer)
    for folder in folders:
        merged = load_adapter(merged, folder).merge_and_unload()
    stacked = load_adapter(make_tiny_llama(smollm2_tokenizer), tmp_path / "stacked")
    with torch.no_grad():
        expected, got = merged(ids).logits, stacked(ids).logits
        with stacked.disable_adapter():
            base = stacked(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(base, expected, atol=1e-2)  # the adapters really change the model
    assert stacked.peft_config["default"].r == 5


def test_adapters_over_different_modules_are_refused(smollm2_tokenizer, tmp_path):
    folders = [tmp_path / "a", tmp_path / "b"]
    trained_looking_adapter(smollm2_tokenizer, folders[0], LoraSettings(rank=2, target_modules=["down_proj"]), 0)
    trained_looking_adapter(smollm2_tokenizer, folders[1], LoraSettings(rank=2, target_modules=["up_proj"]), 1)
    (tmp_path / "out").mkdir()
    with pytest.raises(KnowpackError, match="adapt different modules"):
        stack_adapters(folders, tmp_path / "out")

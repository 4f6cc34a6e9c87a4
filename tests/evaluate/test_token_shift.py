"""Token distribution shift on constructed cases with known answers."""

from __future__ import annotations

import pytest
import torch

from knowpack.config import LoraSettings
from knowpack.errors import KnowpackError
from knowpack.evaluate.token_shift import token_shift
from knowpack.train import add_lora

PROMPTS = ["What is the capital of France?", "Who wrote Hamlet?", "Name a river in Egypt."]


def test_a_fresh_adapter_shifts_no_token(tiny_model, smollm2_tokenizer):
    adapted = add_lora(tiny_model, LoraSettings(rank=2, target_modules=["down_proj"]), seed=0)
    result = token_shift(adapted, smollm2_tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)
    # LoRA B = 0: the tuned model is the base model, so every greedy token is the base's top token
    assert result["unshifted"] == 1.0 and result["shifted"] == 0.0 and result["mean_kl"] == 0.0
    assert result["tokens"] > 0 and result["top_shifted"] == []


def test_a_changed_model_shifts_tokens(tiny_model, smollm2_tokenizer):
    adapted = add_lora(tiny_model, LoraSettings(rank=4, target_modules=["down_proj", "up_proj"]), seed=0)
    torch.manual_seed(0)
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 2.0)
    result = token_shift(adapted, smollm2_tokenizer, PROMPTS, max_new_tokens=6)
    assert result["unshifted"] + result["marginal"] + result["shifted"] == pytest.approx(1.0)
    assert result["shifted"] > 0 and result["mean_kl"] > 0 and result["top_shifted"]
    assert 0 < result["mean_base_prob"] < 1
    with pytest.raises(KnowpackError, match="no prompts"):
        token_shift(adapted, smollm2_tokenizer, [])


def test_cli_shift(tiny_model, tiny_model_dir, smollm2_tokenizer, tmp_path, run_cli):
    import json

    from knowpack.models import load_model

    model, _ = load_model(str(tiny_model_dir))
    adapter = tmp_path / "adapter"
    add_lora(model, LoraSettings(rank=2, target_modules=["down_proj"]), seed=0).save_pretrained(adapter)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    result = run_cli("shift", "--adapter", str(adapter), "--prompts", str(prompts), "--max-new-tokens", "4",
                     f"model.name={tiny_model_dir}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["unshifted"] == 1.0
    bad = run_cli("shift", "--adapter", str(tmp_path / "none"), f"model.name={tiny_model_dir}")
    assert bad.returncode == 2 and "none: no such adapter folder" in bad.stderr


def test_prompts_longer_than_the_context_are_left_out_with_a_warning(tiny_model, smollm2_tokenizer):
    from knowpack.errors import KnowpackWarning

    tiny_model.config.max_position_embeddings = 48  # the chat template alone is ~30 tokens
    adapted = add_lora(tiny_model, LoraSettings(rank=2, target_modules=["down_proj"]), seed=0)
    long_prompt = "Tell me everything about " + "the history of the city of Rome, " * 10
    with pytest.warns(KnowpackWarning, match="1 of 2 prompts do not fit in the model's 48 positions"):
        result = token_shift(adapted, smollm2_tokenizer, ["Who?", long_prompt], max_new_tokens=4)
    assert 0 < result["tokens"] <= 4  # only the short prompt was answered
    with pytest.warns(KnowpackWarning, match="1 of 1 prompts"), \
            pytest.raises(KnowpackError, match="no prompt fits in the model's 48 positions"):
        token_shift(adapted, smollm2_tokenizer, [long_prompt], max_new_tokens=4)

"""Adapter variants (DoRA, init), target-module shorthands, saving that applies to the original base, merging."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import make_tiny_llama
from knowpack.config import LoraSettings, TrainConfig, load_config
from knowpack.errors import KnowpackError
from knowpack.train import add_lora, export_merged, load_adapter, save_adapter, train_adapter
from knowpack.train.lora import resolve_target_modules
from knowpack.train.mixture import TrainExample

EXAMPLES = [TrainExample(fact_id=str(i), kind="unknown", question=f"Capital of S{i}?", answer=f"City{i}")
            for i in range(4)]


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("init,use_dora", [("default", True), ("gaussian", False), ("pissa", False),
                                           ("olora", False)])
def test_saved_adapter_gives_the_trained_logits_on_the_original_base(smollm2_tokenizer, tmp_path, init, use_dora):
    """PEFT's from_pretrained on an untouched base reproduces the trained model, also for PiSSA/OLoRA
    (which changed the base in memory: the adapter is saved converted to a plain LoRA)."""
    tok = smollm2_tokenizer
    settings = LoraSettings(rank=4, alpha=8, init=init, use_dora=use_dora, target_modules=["mlp"])
    model = add_lora(make_tiny_llama(tok), settings, seed=3)
    ids = tok(["Question: Capital of S1?"], return_tensors="pt")["input_ids"]
    original = _logits(make_tiny_llama(tok), ids)
    assert torch.allclose(_logits(model, ids), original, atol=1e-4)  # every init starts at the base model
    train_adapter(model, tok, EXAMPLES, TrainConfig(epochs=2, batch_size=2, lr=1e-2), progress=False)
    trained = _logits(model, ids)
    assert not torch.allclose(trained, original, atol=1e-3)
    save_adapter(model, tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(make_tiny_llama(tok), tmp_path / "adapter")
    assert torch.allclose(_logits(reloaded, ids), trained, atol=1e-4)
    with reloaded.disable_adapter():  # the base behind the saved adapter is the original model
        assert torch.allclose(_logits(reloaded, ids), original, atol=1e-6)


def test_merged_export_equals_the_adapter(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    model = add_lora(make_tiny_llama(tok), LoraSettings(rank=4, alpha=8, use_dora=True), seed=1)
    train_adapter(model, tok, EXAMPLES, TrainConfig(epochs=2, batch_size=2, lr=1e-2), progress=False)
    save_adapter(model, tmp_path / "adapter")
    export_merged(make_tiny_llama(tok), tmp_path / "adapter", tmp_path / "merged", tok)
    assert sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors")) == ["model.safetensors"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", use_safetensors=True)
    ids = tok(["Question: Capital of S2?", "Question: Capital of S3?"], return_tensors="pt")["input_ids"]
    assert torch.allclose(_logits(merged, ids), _logits(model, ids), atol=1e-4)


def test_target_module_shorthands(tiny_model):
    assert resolve_target_modules(["mlp"], tiny_model) == ["down_proj", "gate_proj", "up_proj"]
    assert resolve_target_modules(["attention"], tiny_model) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert resolve_target_modules(["mlp", "q_proj"], tiny_model) == ["down_proj", "gate_proj", "q_proj", "up_proj"]
    assert resolve_target_modules(["all-linear"], tiny_model) == "all-linear"
    model = add_lora(tiny_model, LoraSettings(target_modules=["mlp"]))
    adapted = {name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == {"down_proj", "gate_proj", "up_proj"}


def test_a_shorthand_the_model_lacks_lists_its_linear_layers():
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(KnowpackError, match=r"Sequential has no mlp submodule .*name its linear layers instead: 0"):
        resolve_target_modules(["mlp"], plain)


def test_an_unknown_init_is_a_one_line_config_error():
    with pytest.raises(KnowpackError, match=r"lora.init: Input should be 'default', 'gaussian', 'pissa' or 'olora'"):
        load_config("smoke", overrides=["lora.init=loftq"])


def test_load_adapter_refuses_a_folder_that_is_neither(tmp_path, tiny_model):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(KnowpackError, match="nor a fine-tuned model folder"):
        load_adapter(tiny_model, tmp_path)

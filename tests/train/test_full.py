"""Full fine-tuning baseline: every weight trains, the base stays reachable, the folder reloads."""

import pytest
import torch

from conftest import make_tiny_llama
from knowpack.config import LoraSettings, TrainConfig
from knowpack.errors import KnowpackError
from knowpack.train import FullFinetune, load_adapter, save_trained, train_adapter, trainable_model
from knowpack.train.mixture import TrainExample


def test_full_fine_tune_with_a_regularizer_saves_a_model_that_reloads(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    examples = [TrainExample(fact_id=str(i), kind="unknown", question=f"Capital of S{i}?", answer=f"City{i}")
                for i in range(4)]
    config = TrainConfig(epochs=2, batch_size=2, lr=1e-3, method="full", regularizer="mask-target")
    model = trainable_model(make_tiny_llama(tok), LoraSettings(), config)
    assert isinstance(model, FullFinetune) and model.base is not None
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats = train_adapter(model, tok, examples, config, progress=False)
    assert stats.steps == 4 and stats.epoch_losses[-1] < stats.epoch_losses[0]
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)  # every weight trained, embeddings and norms included
    assert all(torch.equal(p, before[name]) for name, p in model.base.named_parameters())  # base frozen

    save_trained(model, tmp_path / "finetuned", tok)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "finetuned").iterdir()}
    ids = tok(["Question: Capital of S1?"], return_tensors="pt")["input_ids"]
    base = make_tiny_llama(tok)
    with torch.no_grad():
        trained, original = model(ids).logits, base(ids).logits
        reloaded = load_adapter(base, tmp_path / "finetuned")  # what the evaluate stage does
        assert isinstance(reloaded, FullFinetune)
        assert torch.allclose(reloaded(ids).logits, trained, atol=1e-5)
        with reloaded.disable_adapter():
            assert torch.equal(reloaded(ids).logits, original)
    assert not torch.allclose(trained, original, atol=1e-3)


def test_a_fine_tune_of_another_model_is_refused(smollm2_tokenizer, tmp_path):
    config = TrainConfig(method="full")
    save_trained(trainable_model(make_tiny_llama(smollm2_tokenizer), LoraSettings(), config), tmp_path / "ft")
    deeper = make_tiny_llama(smollm2_tokenizer, layers=3)
    with pytest.raises(KnowpackError, match=r"ft: fine-tuned from another base model \(model.layers.2"):
        load_adapter(deeper, tmp_path / "ft")

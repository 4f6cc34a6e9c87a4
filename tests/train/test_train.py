import pandas as pd
import pytest
import torch
from peft import PeftModel

from knowpack.config import LoraSettings, MixtureConfig, TrainConfig
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact
from knowpack.train import add_lora, build_mixture, train_adapter
from knowpack.train.data import IGNORE, encode_example
from knowpack.train.mixture import TrainExample


def _facts(n):
    return [Fact(fact_id=f"f{i}", subject=f"S{i}", relation="capital", object=f"City{i}",
                 question=f"What is the capital of S{i}?", answer=f"City{i}", aliases=[f"City{i}"],
                 bucket="tail", source="test", paraphrases=[f"Which city is the capital of S{i}?"]) for i in range(n)]


def _categories(facts, known=()):
    return pd.DataFrame({"fact_id": [f.fact_id for f in facts],
                         "category": ["HighlyKnown" if f.fact_id in known else "Unknown" for f in facts]})


def test_mixture_with_paraphrases_and_known():
    facts = _facts(10)
    cats = _categories(facts, known={"f8", "f9"})
    examples, unknown_ids = build_mixture(facts, cats, MixtureConfig(n_unknown=2, paraphrases_per_fact=1,
                                                                      known_per_fact=1, seed=1))
    assert len(unknown_ids) == 2 and not {"f8", "f9"} & set(unknown_ids)
    kinds = sorted(e.kind for e in examples)
    assert kinds == ["known", "known", "paraphrase", "paraphrase", "unknown", "unknown"]
    again, _ = build_mixture(facts, cats, MixtureConfig(n_unknown=2, paraphrases_per_fact=1, known_per_fact=1,
                                                        seed=1))
    assert again == examples


def test_mixture_errors_say_how_many_there_are():
    facts = _facts(3)
    with pytest.raises(KnowpackError, match="asked for 5 Unknown facts but the probe found only 3"):
        build_mixture(facts, _categories(facts), MixtureConfig(n_unknown=5))
    with pytest.raises(KnowpackError, match="needs 2 HighlyKnown facts but the probe found 0"):
        build_mixture(facts, _categories(facts), MixtureConfig(n_unknown=2, known_per_fact=1))


def test_labels_cover_exactly_the_answer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    example = TrainExample(fact_id="x", kind="unknown", question="What is the capital of Chad?", answer="N'Djamena")
    ids, labels = encode_example(tok, example)
    trained = [t for t, label in zip(ids, labels) if label != IGNORE]
    assert tok.decode(trained) == "Answer: N'Djamena<|im_end|>"
    assert tok.decode(ids).startswith("<|im_start|>system\nAnswer the following question.<|im_end|>")
    _, all_labels = encode_example(tok, example, loss_on="sequence")
    assert IGNORE not in all_labels


def test_target_module_the_model_lacks(tiny_model):
    with pytest.raises(KnowpackError, match="no module 'qkv_proj'; its linear layers are: .*down_proj"):
        add_lora(tiny_model, LoraSettings(target_modules=["qkv_proj"]))


@pytest.mark.parametrize("regularizer", ["none", "mask-target"])
def test_training_learns_and_saves_a_peft_adapter(tiny_model, smollm2_tokenizer, tmp_path, regularizer):
    tok = smollm2_tokenizer
    examples = [TrainExample(fact_id=str(i), kind="unknown", question=f"Capital of S{i}?", answer=f"City{i}")
                for i in range(4)]
    model = add_lora(tiny_model, LoraSettings(rank=4, alpha=8, target_modules=["all-linear"]))
    epochs_seen = []
    stats = train_adapter(model, tok, examples, TrainConfig(epochs=6, batch_size=2, lr=1e-2, regularizer=regularizer),
                          on_epoch_end=lambda e, m: epochs_seen.append(e), progress=False)
    assert epochs_seen == list(range(6))
    assert stats.steps == 12 and stats.tokens > 0 and stats.tokens_per_s > 0
    assert stats.epoch_losses[-1] < stats.epoch_losses[0]
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    ids = torch.tensor([encode_example(tok, examples[0])[0]])
    with torch.no_grad():
        expected = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
        reloaded = PeftModel.from_pretrained(model.unload(), tmp_path / "adapter")
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
    assert not torch.allclose(base, expected)

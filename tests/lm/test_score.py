"""The LM core's log-likelihood scoring: with and without prefix reuse, against a one-request reference."""

from __future__ import annotations

import pytest
import torch

from knowpack.evaluate.benchmarks import BENCHMARKS, build_requests, load_mmlu
from knowpack.lm.score import encode_request, loglikelihood, prefix_groups

FEWSHOT = "Q: What is the capital of France?\nA: Paris\n\nQ: What is the capital of Spain?\nA: Madrid\n\n"
REQUESTS = [
    (FEWSHOT + "Q: What is the capital of Italy?\nA:", " Rome"),
    (FEWSHOT + "Q: What is the capital of Italy?\nA:", " Milan, the city of fashion"),
    (FEWSHOT + "Q: Which river flows through Vienna?\nA:", " The Danube"),
    (FEWSHOT + "Q: Which river flows through Vienna?\nA:", " Rome"),
    (FEWSHOT + "Q: Who wrote Hamlet?\nA:", " William Shakespeare"),
    ("Answer: ", "B"),  # trailing space moves onto the continuation
    ("", " an empty context scores after end-of-text"),
    ("Unrelated short context", " here"),
]


def naive_loglikelihood(model, tokenizer, requests):
    """Reference: one request at a time, full logits, no batching, no cache."""
    out = []
    for context, continuation in requests:
        context_ids, continuation_ids = encode_request(tokenizer, context, continuation, [], None)
        ids = torch.tensor([context_ids + continuation_ids])
        with torch.no_grad():
            logprobs = model(ids).logits[0].log_softmax(-1)  # [T, V]
        positions = range(len(context_ids) - 1, ids.shape[1] - 1)
        out.append(sum(logprobs[p, ids[0, p + 1]].item() for p in positions))
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_prefix_reuse_matches_full_sequences(tiny_model, smollm2_tokenizer, batch_size):
    reference = naive_loglikelihood(tiny_model, smollm2_tokenizer, REQUESTS)
    full = loglikelihood(tiny_model, smollm2_tokenizer, REQUESTS, batch_size=batch_size, reuse_prefix=False)
    shared = loglikelihood(tiny_model, smollm2_tokenizer, REQUESTS, batch_size=batch_size, reuse_prefix=True)
    assert full == pytest.approx(reference, abs=1e-4)
    assert shared == pytest.approx(reference, abs=1e-4)


def test_prefix_reuse_on_real_mmlu_requests(tiny_model, smollm2_tokenizer):
    docs = load_mmlu(5, shots=2, seed=7)
    requests = [r for doc in docs for r in build_requests(BENCHMARKS["mmlu"].tasks[0], doc)]
    full = loglikelihood(tiny_model, smollm2_tokenizer, requests, batch_size=4, reuse_prefix=False)
    shared = loglikelihood(tiny_model, smollm2_tokenizer, requests, batch_size=4, reuse_prefix=True)
    assert shared == pytest.approx(full, abs=1e-4)


def test_loglikelihood_restores_training_mode(tiny_model, smollm2_tokenizer):
    tiny_model.train()
    loglikelihood(tiny_model, smollm2_tokenizer, REQUESTS[:2])
    assert tiny_model.training


def test_encoding_moves_trailing_space_to_continuation(smollm2_tokenizer):
    moved = encode_request(smollm2_tokenizer, "Answer: ", "A", [], None)
    assert moved == encode_request(smollm2_tokenizer, "Answer:", " A", [], None)
    context_ids, continuation_ids = encode_request(smollm2_tokenizer, "Answer:", " A", [], None)
    assert smollm2_tokenizer.decode(continuation_ids) == " A"


def test_prefix_groups_share_the_fewshot_block():
    fewshot = tuple(range(100))
    contexts = [fewshot + (200 + q, 300 + q, 7) for q in range(3)] + [(5, 6, 7, 8)]
    groups = prefix_groups(contexts)
    assert sorted(len(members) for _, members in groups) == [1, 3]
    assert dict((len(members), prefix_len) for prefix_len, members in groups)[3] == 100

"""The shared prompt prefix encoded once (packed row or repeated cache) gives a plain forward's hidden
states and gradients."""

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_llama

from knowpack.config import LoraSettings
from knowpack.lm.training import hidden_states, shared_prefix_length, trained_hidden
from knowpack.train import add_lora
from knowpack.train.data import collate, encode_example
from knowpack.train.loop import _output_head
from knowpack.train.mixture import TrainExample

EXAMPLES = [TrainExample(fact_id=str(i), kind="unknown", question=f"What is the capital of S{i}?" + " really" * (i % 4),
                         answer=f"City{i}" + "x" * (i % 3)) for i in range(6)]


@pytest.mark.parametrize("loss_on", ["answer", "sequence"])
def test_the_prefix_encoded_once_gives_the_same_hidden_states_and_gradients(smollm2_tokenizer, loss_on):
    model = add_lora(make_tiny_llama(smollm2_tokenizer), LoraSettings(rank=4, alpha=8, target_modules=["all-linear"]),
                     seed=0)
    with torch.no_grad():  # a trained-looking adapter, so its gradients are not trivially zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    decoder, head = model.get_base_model().get_decoder(), _output_head(model.get_base_model())
    encoded = [encode_example(smollm2_tokenizer, ex, loss_on) for ex in EXAMPLES]
    batch = collate(encoded, smollm2_tokenizer.pad_token_id)  # rows of different lengths: padding
    shared = shared_prefix_length(model, encoded, batch)
    assert smollm2_tokenizer.decode(encoded[0][0][:shared]).endswith("Question: What is the capital of S")
    model.train()
    results = []
    for prefix, packed in ((0, None), (shared, True), (shared, False)):
        model.zero_grad()
        hidden = hidden_states(decoder, batch, prefix, packed)
        keep = batch.labels[:, 1:] != -100
        F.cross_entropy(head(hidden[:, :-1][keep]), batch.labels[:, 1:][keep]).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        results.append((hidden[:, :-1][keep].detach(), grads))
    (plain, plain_grads), *once = results
    for hidden, grads in once:
        assert torch.allclose(hidden, plain, atol=1e-5, rtol=1e-4)
        # Relative to the whole gradient: single entries of attention gradients cancel large terms, and
        # float32 rounding (RMSNorm computes in float32) moves them by up to ~1e-3 between any two paths.
        assert (grads - plain_grads).norm() <= 1e-4 * plain_grads.norm()
    assert torch.equal(trained_hidden(decoder, batch, shared)[1], trained_hidden(decoder, batch)[1])


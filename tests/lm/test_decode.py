"""The LM core's decoding: equal to ``generate`` on full prompts, with and without the shared prefix."""

import pytest
import torch

from knowpack.lm.decode import DecodeSettings, generate_with_prefix
from knowpack.probe.prompts import build_prompt_sets


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_prefix_reuse_matches_plain_generate(tiny_model, smollm2_tokenizer, shared_prefix):
    """Greedy tokens with the shared-prefix cache equal model.generate on each full prompt."""
    tok = smollm2_tokenizer
    prompt_set = build_prompt_sets(tok, 1, 2, seed=0)[0]
    questions = ["What is the capital of France?", "Who wrote Hamlet?", "Capital of Peru?"]
    prefix, suffixes = prompt_set.encode(tok, questions)
    assert len(prefix) > 20
    settings = DecodeSettings(max_new_tokens=6)
    ours = generate_with_prefix(tiny_model, prefix, suffixes, stop_ids=set(), pad_id=tok.pad_token_id,
                                settings=settings, batch_size=2, shared_prefix=shared_prefix)
    for suffix, got in zip(suffixes, ours):
        ids = torch.tensor([prefix + suffix])
        ref = tiny_model.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids),
                                  pad_token_id=tok.pad_token_id, eos_token_id=None)
        assert got == ref[0, ids.shape[1]:].tolist()


def test_shared_prefix_attention_gives_the_logits_of_full_prompts(tiny_model, smollm2_tokenizer):
    """One copy of the prefix's keys/values, read by every row, left-padded rows of different lengths."""
    from transformers import DynamicCache

    from knowpack.lm.cache import cache_kwargs, encode_prefix, prefix_keys_values
    from knowpack.lm.prefix_attention import (
        shared_prefix_attention,
        supports_shared_prefix,
    )

    tok = smollm2_tokenizer
    prefix, suffixes = build_prompt_sets(tok, 1, 2, seed=0)[0].encode(tok, ["Who wrote the play Hamlet in London?", "Capital of Peru?"])
    assert supports_shared_prefix(tiny_model) and len(suffixes[0]) != len(suffixes[1])
    width = max(map(len, suffixes))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in suffixes])
    own = torch.tensor([[False] * (width - len(s)) + [True] * len(s) for s in suffixes])
    positions = torch.tensor([[1] * (width - len(s)) + list(range(len(prefix), len(prefix) + len(s))) for s in suffixes])
    mask = own[:, None, None, :] & torch.ones(width, width, dtype=torch.bool).tril()
    shared = prefix_keys_values(encode_prefix(tiny_model, prefix))
    with torch.no_grad(), shared_prefix_attention(tiny_model):
        logits = tiny_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            **cache_kwargs(DynamicCache()), shared_prefix=shared).logits
    assert tiny_model.config._attn_implementation == "sdpa"  # switched back after the block
    for row, suffix in enumerate(suffixes):
        with torch.no_grad():
            full = tiny_model(input_ids=torch.tensor([prefix + suffix])).logits[0, len(prefix):]
        torch.testing.assert_close(logits[row, width - len(suffix):], full, atol=1e-5, rtol=1e-5)


def test_continuous_batching_refills_rows_and_changes_no_answer(tiny_model, smollm2_tokenizer):
    """Rows stop at different steps; freed rows take new questions mid-way; answers as without refilling."""
    tok = smollm2_tokenizer
    questions = [f"Question number {i} about {word}?" for i, word in enumerate(
        ["rivers", "kings", "stars", "cities", "wars", "songs", "trees", "ships", "books"])]
    prefix, suffixes = build_prompt_sets(tok, 1, 2, seed=0)[0].encode(tok, questions)
    torch.manual_seed(0)
    with torch.no_grad():  # larger random weights: varied tokens instead of one repeated newline
        for name, parameter in tiny_model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0, 0.3)
    settings = DecodeSettings(max_new_tokens=8)
    free = generate_with_prefix(tiny_model, prefix, suffixes, stop_ids=set(), pad_id=0, settings=settings)
    stops = {free[0][2], free[2][3], free[6][4]}
    finished = []
    shared = generate_with_prefix(tiny_model, prefix, suffixes, stop_ids=stops, pad_id=0, settings=settings,
                                  batch_size=4, progress=finished.append)
    plain = generate_with_prefix(tiny_model, prefix, suffixes, stop_ids=stops, pad_id=0, settings=settings,
                                 batch_size=4, shared_prefix=False)
    assert shared == plain
    assert len({len(tokens) for tokens in shared}) > 1  # rows left at different steps
    assert sum(finished) == len(questions) and len(finished) > 3  # progress per finished row, not per batch


def test_models_with_sliding_windows_keep_the_plain_path(smollm2_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    from knowpack.lm.prefix_attention import supports_shared_prefix

    config = MistralConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    model = MistralForCausalLM(config).eval()
    assert not supports_shared_prefix(model)
    prefix, (suffix,) = build_prompt_sets(smollm2_tokenizer, 1, 1, seed=0)[0].encode(smollm2_tokenizer, ["Q?"])
    got = generate_with_prefix(model, prefix, [suffix], stop_ids=set(), pad_id=0, settings=DecodeSettings(4))[0]
    ids = torch.tensor([prefix + suffix])
    ref = model.generate(ids, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0,
                         eos_token_id=None)
    assert got == ref[0, ids.shape[1]:].tolist()


def test_generation_stops_at_stop_token(tiny_model, smollm2_tokenizer):
    tok = smollm2_tokenizer
    prefix, (suffix,) = build_prompt_sets(tok, 1, 1, seed=0)[0].encode(tok, ["Q?"])
    free = generate_with_prefix(tiny_model, prefix, [suffix], stop_ids=set(), pad_id=0,
                                settings=DecodeSettings(max_new_tokens=5))[0]
    stop = free[-1]
    stopped = generate_with_prefix(tiny_model, prefix, [suffix], stop_ids={stop}, pad_id=0,
                                   settings=DecodeSettings(max_new_tokens=5))[0]
    assert stopped == free[:free.index(stop) + 1]  # the stop token is kept, nothing after it


def test_sampling_is_seeded(tiny_model, smollm2_tokenizer):
    tok = smollm2_tokenizer
    prefix, (suffix,) = build_prompt_sets(tok, 1, 1, seed=0)[0].encode(tok, ["Q?"])
    settings = DecodeSettings(max_new_tokens=5, do_sample=True, temperature=1.0, top_k=40, seed=7)
    first = generate_with_prefix(tiny_model, prefix, [suffix] * 4, stop_ids=set(), pad_id=0, settings=settings)
    again = generate_with_prefix(tiny_model, prefix, [suffix] * 4, stop_ids=set(), pad_id=0, settings=settings)
    assert first == again
    assert len({tuple(x) for x in first}) > 1  # a random tiny model samples different continuations

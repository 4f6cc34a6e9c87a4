"""`partial_attention`: the fused CPU kernel and the plain fallback give softmax attention and its log-normaliser."""

import torch

from knowpack.lm.prefix_attention import partial_attention


def test_both_ways_give_the_attention_and_log_normaliser_of_a_plain_softmax():
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 16, generator=generator, dtype=torch.float64) for _ in range(3))
    see = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    see[1, :, :2] = False  # left padding: two queries of row 1 see nothing
    scores = (query @ key.transpose(-1, -2) * 0.25).masked_fill(~see, float("-inf"))
    expected_lse = scores.logsumexp(-1)
    expected = torch.softmax(scores, -1).nan_to_num(0.0) @ value

    plain_out, plain_lse = partial_attention(query, key, value, see, 0.25)  # float64: the plain way
    fused_out, fused_lse = partial_attention(query.float(), key.float(), value.float(), see, 0.25)  # CPU kernel
    for out, lse, tolerance in ((plain_out, plain_lse, 1e-12), (fused_out, fused_lse, 1e-5)):
        visible = see.any(-1).expand_as(lse)
        torch.testing.assert_close(out[visible].double(), expected[visible], atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(lse[visible].double(), expected_lse[visible], atol=tolerance, rtol=tolerance)
        assert torch.isneginf(lse[~visible]).all()  # a query that sees nothing weighs nothing when joined


def test_the_joined_output_keeps_the_query_dtype():
    """bf16 weights (model.dtype=bfloat16) take bf16 attention outputs; the fp32 normalisers must not leak."""
    from types import SimpleNamespace

    from knowpack.lm.prefix_attention import shared_prefix_forward

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 6, 3, 16, generator=generator)  # 6 query heads on 2 kv heads
    key, value = (torch.randn(2, 2, 3, 16, generator=generator) for _ in range(2))
    prefix = [(torch.randn(2, 4, 16, generator=generator), torch.randn(2, 4, 16, generator=generator))]
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool).tril()
    for dtype in (torch.float32, torch.bfloat16):
        out, _ = shared_prefix_forward(SimpleNamespace(layer_idx=0), query.to(dtype), key.to(dtype), value.to(dtype),
                                       mask, shared_prefix=[(k.to(dtype), v.to(dtype)) for k, v in prefix])
        assert out.dtype == dtype and out.shape == (2, 3, 6, 16)
    # the joined softmax equals one softmax over [prefix | own] (the fp32 result against a plain computation)
    out, _ = shared_prefix_forward(SimpleNamespace(layer_idx=0), query, key, value, mask, shared_prefix=prefix)
    keys = torch.cat([prefix[0][0][None].expand(2, -1, -1, -1), key], 2).repeat_interleave(3, 1)
    values = torch.cat([prefix[0][1][None].expand(2, -1, -1, -1), value], 2).repeat_interleave(3, 1)
    see = torch.cat([torch.ones(2, 1, 3, 4, dtype=torch.bool), mask], -1)
    plain = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=see)
    torch.testing.assert_close(out, plain.transpose(1, 2), atol=1e-5, rtol=1e-5)

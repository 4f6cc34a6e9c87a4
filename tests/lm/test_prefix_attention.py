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

"""The fused attention path equals the written-out reference."""

import pytest
import torch

from model_core.attention import AttentionLayer, attend, attend_reference


@pytest.mark.parametrize("heads,dqk,dv", [(1, 16, 16), (4, 8, 24), (2, 5, 3)])
def test_fused_equals_reference(heads, dqk, dv):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, heads, 7, dqk, generator=g)
    k = torch.randn(3, heads, 11, dqk, generator=g)
    v = torch.randn(3, heads, 11, dv, generator=g)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[0, 6:] = False
    mask[2, :2] = False
    for m in (None, mask[:, None, None, :]):
        torch.testing.assert_close(attend(q, k, v, m), attend_reference(q, k, v, m), atol=1e-5, rtol=1e-5)


def test_masked_keys_have_no_effect():
    g = torch.Generator().manual_seed(1)
    layer = AttentionLayer(q_dim=8, kv_dim=6, is_cross_attention=True, num_heads=2, qk_channels=8, v_channels=4).eval()
    x, kv = torch.randn(1, 3, 8, generator=g), torch.randn(1, 5, 6, generator=g)
    junk = torch.cat([kv, 100 * torch.randn(1, 4, 6, generator=g)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 4])
    with torch.no_grad():
        torch.testing.assert_close(layer(x, junk, mask), layer(x, kv), atol=1e-5, rtol=1e-5)
        layer.attention.self.fused = False
        torch.testing.assert_close(layer(x, junk, mask), layer(x, kv), atol=1e-5, rtol=1e-5)


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="divisible"):
        AttentionLayer(q_dim=8, kv_dim=8, is_cross_attention=False, num_heads=3)

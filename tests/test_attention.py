"""Numerics of our attention layer against trusted peers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mhaexp import ConfigError, MultiHeadAttention

torch.manual_seed(0)


def copy_into_torch_mha(ours: MultiHeadAttention, bias: bool) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(ours.d_model, ours.n_heads, bias=bias, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.out_proj.weight.copy_(ours.o_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
            ref.out_proj.bias.copy_(ours.o_proj.bias)
    return ref


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_multihead_attention(causal: bool, bias: bool) -> None:
    ours = MultiHeadAttention(32, 4, causal=causal, bias=bias).eval()
    ref = copy_into_torch_mha(ours, bias).eval()
    x = torch.randn(3, 10, 32)
    mask = torch.ones(10, 10, dtype=torch.bool).triu(1) if causal else None
    want, want_w = ref(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)
    for need_weights in (False, True):
        got, got_w = ours(x, need_weights=need_weights)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-5)


def repeat_kv_reference(layer: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """The straightforward GQA: materialize each query head's K/V by repetition."""
    B, T, _ = x.shape
    nh, nkv, hs = layer.n_heads, layer.n_kv_heads, layer.head_dim
    q = layer.q_proj(x).view(B, T, nh, hs).transpose(1, 2)
    k = layer.k_proj(x).view(B, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    v = layer.v_proj(x).view(B, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    att = (q @ k.transpose(-2, -1)) / hs**0.5
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, nh * hs)
    return layer.o_proj(y)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [None, 12])
def test_gqa_and_mqa_match_repeat_kv(n_kv_heads: int, head_dim: int | None) -> None:
    layer = MultiHeadAttention(48, 8, n_kv_heads=n_kv_heads, head_dim=head_dim).eval()
    assert layer.k_proj.out_features == n_kv_heads * layer.head_dim
    x = torch.randn(2, 9, 48)
    want = repeat_kv_reference(layer, x)
    fast, none = layer(x)
    slow, w = layer(x, need_weights=True)
    assert none is None and w.shape == (2, 8, 9, 9)
    torch.testing.assert_close(fast, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 8, 9))


def test_rope_paths_agree_and_bidirectional_padding() -> None:
    layer = MultiHeadAttention(32, 4, n_kv_heads=2, causal=False, rope=True, max_seq_len=16).eval()
    x = torch.randn(2, 7, 32)
    pad = torch.ones(2, 7, dtype=torch.bool)
    pad[1, 5:] = False
    fast, _ = layer(x, key_padding_mask=pad)
    slow, w = layer(x, need_weights=True, key_padding_mask=pad)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert torch.all(w[1, :, :, 5:] == 0)
    # A padded key must not change the real tokens' outputs.
    short, _ = layer(x[1:, :5])
    torch.testing.assert_close(fast[1, :5], short[0], atol=1e-5, rtol=1e-5)


def test_gate_zero_removes_exactly_one_head() -> None:
    layer = MultiHeadAttention(32, 4, n_kv_heads=2).eval()
    x = torch.randn(2, 6, 32)
    _, w = layer(x, need_weights=True)
    # Each head's own contribution, computed independently of the gate machinery.
    v = layer.v_proj(x).view(2, 6, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    per_head = (w @ v).transpose(1, 2)  # (B, T, nh, hs)
    full, _ = layer(x)
    layer.head_gate[2] = 0.0
    gated, _ = layer(x)
    contribution = per_head[:, :, 2] @ layer.o_proj.weight[:, 16:24].T
    torch.testing.assert_close(full - gated, contribution, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_gates() -> None:
    layer = MultiHeadAttention(32, 4)
    layer.head_gate.requires_grad_(True)
    y, _ = layer(torch.randn(2, 5, 32))
    y.pow(2).sum().backward()
    assert layer.head_gate.grad is not None and layer.head_gate.grad.shape == (4,)
    assert torch.all(layer.head_gate.grad != 0)
    assert all(p.grad is not None for p in layer.parameters())


def test_fast_path_never_calls_the_pattern_hook() -> None:
    layer = MultiHeadAttention(16, 2)
    calls = []
    layer.hook_pattern.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    layer(torch.randn(1, 4, 16))
    assert calls == []
    layer(torch.randn(1, 4, 16), need_weights=True)
    assert calls == [torch.Size([1, 2, 4, 4])]


def test_head_dim_decoupled_and_kv_grouping() -> None:
    layer = MultiHeadAttention(64, 8, n_kv_heads=2, head_dim=32)
    assert layer.q_proj.out_features == 256 and layer.o_proj.in_features == 256
    assert [layer.kv_head_of(h) for h in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize(
    "kwargs, field, fragment",
    [
        ({"d_model": 512, "n_heads": 7}, "n_heads", "valid head counts are [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]"),
        ({"d_model": 64, "n_heads": 8, "n_kv_heads": 3}, "n_kv_heads", "must divide n_heads=8"),
        ({"d_model": 64, "n_heads": 4, "n_kv_heads": 8}, "n_kv_heads", "must not exceed"),
        ({"d_model": 64, "n_heads": 0}, "n_heads", "positive"),
        ({"d_model": 64, "n_heads": 4, "head_dim": -1}, "head_dim", "positive"),
    ],
)
def test_bad_shapes_raise_one_clear_error(kwargs: dict, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        MultiHeadAttention(**kwargs)
    assert err.value.field == field and fragment in str(err.value)


def test_sdpa_fast_path_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("enable_gqa"))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    MultiHeadAttention(32, 4, n_kv_heads=2)(torch.randn(1, 3, 32))
    assert calls == [True]

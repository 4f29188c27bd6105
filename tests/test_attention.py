"""Numerics of our attention layer against trusted peers."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, prune

from mhaexp import ConfigError, ModelConfig, MultiHeadAttention, Transformer

torch.manual_seed(0)


def copy_into_torch_mha(ours: MultiHeadAttention, bias: bool) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(ours.d_model, ours.n_heads, bias=bias, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv_proj.weight)
        ref.out_proj.weight.copy_(ours.o_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(ours.qkv_proj.bias)
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
    (wq, wk, wv), (bq, bk, bv) = layer.split_qkv(layer.qkv_proj.weight), layer.split_qkv(layer.qkv_proj.bias)
    q = F.linear(x, wq, bq).view(B, T, nh, hs).transpose(1, 2)
    k = F.linear(x, wk, bk).view(B, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    v = F.linear(x, wv, bv).view(B, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    att = (q @ k.transpose(-2, -1)) / hs**0.5
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, nh * hs)
    return layer.o_proj(y)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [None, 12])
def test_gqa_and_mqa_match_repeat_kv(n_kv_heads: int, head_dim: int | None) -> None:
    layer = MultiHeadAttention(48, 8, n_kv_heads=n_kv_heads, head_dim=head_dim).eval()
    assert [t.shape[0] for t in layer.split_qkv(layer.qkv_proj.weight)] == [
        8 * layer.head_dim,
        n_kv_heads * layer.head_dim,
        n_kv_heads * layer.head_dim,
    ]
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
    w_v, b_v = layer.split_qkv(layer.qkv_proj.weight)[2], layer.split_qkv(layer.qkv_proj.bias)[2]
    v = F.linear(x, w_v, b_v).view(2, 6, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    per_head = (w @ v).transpose(1, 2)  # (B, T, nh, hs)
    full, _ = layer(x)
    layer.head_gate[2] = 0.0
    gated, _ = layer(x)
    contribution = per_head[:, :, 2] @ layer.o_proj.weight[:, 16:24].T
    torch.testing.assert_close(full - gated, contribution, atol=1e-5, rtol=1e-5)


def test_query_gate_zero_attends_uniformly_over_what_the_query_may_see() -> None:
    """Wu et al.'s masking: a head whose query is 0 at a position averages the values its query may see
    there (RoPE on), in both paths; other heads and earlier positions are untouched."""
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, n_kv_heads=2, rope=True, max_seq_len=16).eval()
    x = torch.randn(2, 6, 32)
    full, _ = layer(x)
    _, w_full = layer(x, need_weights=True)
    gate = torch.ones(2, 6, 4)
    gate[:, 3:, 1] = 0.0
    layer.query_gate = gate
    fast, _ = layer(x)
    slow, w = layer(x, need_weights=True)
    layer.query_gate = None
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    uniform = torch.ones(6, 6).tril() / torch.arange(1, 7)[:, None]
    torch.testing.assert_close(w[:, 1, 3:], uniform[3:].expand(2, 3, 6))
    torch.testing.assert_close(w[:, 1, :3], w_full[:, 1, :3])
    torch.testing.assert_close(w[:, [0, 2, 3]], w_full[:, [0, 2, 3]])
    torch.testing.assert_close(fast[:, :3], full[:, :3])
    assert (fast[:, 3:] - full[:, 3:]).abs().max() > 1e-4


def test_gradients_reach_the_gates() -> None:
    layer = MultiHeadAttention(32, 4)
    layer.head_gate.requires_grad_(True)
    y, _ = layer(torch.randn(2, 5, 32))
    y.pow(2).sum().backward()
    assert layer.head_gate.grad is not None and layer.head_gate.grad.shape == (4,)
    assert torch.all(layer.head_gate.grad != 0)
    assert all(p.grad is not None for p in layer.parameters())


def test_head_dim_decoupled_and_kv_grouping() -> None:
    layer = MultiHeadAttention(64, 8, n_kv_heads=2, head_dim=32)
    assert layer.qkv_proj.out_features == 256 + 2 * 64 and layer.o_proj.in_features == 256
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


# ---- every way of editing the gates reaches the output ----------------------------------------------
# Each edit removes heads 3 and 5 of an 8-head layer. The reference is a copy taken before the edit
# whose o_proj input columns for those heads are zeroed: the head removed without any gate machinery.
NH, HS, REMOVED = 8, 4, (3, 5)


def removal_mask(like: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(like)
    mask[list(REMOVED)] = 0.0
    return mask


class Zeroing(nn.Module):
    """A ``torch.nn.utils.parametrize`` parametrization that multiplies the gate by the removal mask."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return g * removal_mask(g)


def _as_parameter(attn: MultiHeadAttention) -> None:
    attn.head_gate = nn.Parameter(attn.head_gate.detach().clone(), requires_grad=False)


def _replace_data(attn: MultiHeadAttention) -> None:
    attn.head_gate.data = removal_mask(attn.head_gate)


def _vector_to_parameters(attn: MultiHeadAttention) -> None:
    _as_parameter(attn)
    nn.utils.vector_to_parameters(removal_mask(attn.head_gate), [attn.head_gate])


def _prune(attn: MultiHeadAttention) -> None:
    _as_parameter(attn)
    prune.custom_from_mask(attn, "head_gate", removal_mask(attn.head_gate))


def _index_each(g: torch.Tensor) -> None:
    for h in REMOVED:
        g[h] = 0.0


def _no_grad(edit: Callable[[], object]) -> None:
    with torch.no_grad():
        edit()


def _inference_mode(edit: Callable[[], object]) -> None:
    with torch.inference_mode():
        edit()


def _then_to(attn: MultiHeadAttention, dtype: torch.dtype) -> None:
    _index_each(attn.head_gate.data)  # an edit the version counter never sees, then a new tensor
    attn.to(dtype)


def _reopened(attn: MultiHeadAttention) -> None:
    # Removed, primed, then put back: the gate goes from 0 to 1 and then to the mask again.
    attn.head_gate.data.zero_()
    attn(torch.randn(1, 3, NH * HS))
    attn.head_gate.data.fill_(1.0)
    attn(torch.randn(1, 3, NH * HS))
    attn.head_gate.data.copy_(removal_mask(attn.head_gate))


def _gate_fn(attn: MultiHeadAttention) -> None:
    attn.gate_fn = lambda: removal_mask(attn.head_gate)


def _gate_fn_then_data(attn: MultiHeadAttention) -> None:
    attn.gate_fn = lambda: torch.ones_like(attn.head_gate)
    attn(torch.randn(1, 3, NH * HS))
    attn.gate_fn = None
    _index_each(attn.head_gate.data)


EDITS: dict[str, Callable[[MultiHeadAttention], object]] = {
    "data index": lambda a: _index_each(a.head_gate.data),
    "data copy_": lambda a: a.head_gate.data.copy_(removal_mask(a.head_gate)),
    "data mul_": lambda a: a.head_gate.data.mul_(removal_mask(a.head_gate)),
    "data assigned": _replace_data,
    "index": lambda a: _index_each(a.head_gate),
    "index under no_grad": lambda a: _no_grad(lambda: _index_each(a.head_gate)),
    "index under inference_mode": lambda a: _inference_mode(lambda: _index_each(a.head_gate)),
    "copy_": lambda a: a.head_gate.copy_(removal_mask(a.head_gate)),
    "fill_ on a slice": lambda a: [a.head_gate[h : h + 1].fill_(0.0) for h in REMOVED],
    "zero_ on a view": lambda a: [a.head_gate.view(2, NH // 2)[divmod(h, NH // 2)].zero_() for h in REMOVED],
    "masked_fill_": lambda a: a.head_gate.masked_fill_(removal_mask(a.head_gate) == 0, 0.0),
    "detach() index": lambda a: _index_each(a.head_gate.detach()),
    "numpy view": lambda a: _index_each(a.head_gate.numpy()),
    "state_dict tensor": lambda a: _index_each(a.state_dict()["head_gate"]),
    "get_buffer": lambda a: _index_each(a.get_buffer("head_gate")),
    "load_state_dict": lambda a: a.load_state_dict({**a.state_dict(), "head_gate": removal_mask(a.head_gate)}),
    "to float64 after data edit": lambda a: _then_to(a, torch.float64),
    "double() after data edit": lambda a: (_index_each(a.head_gate.data), a.double()),
    "register_buffer replaces": lambda a: a.register_buffer("head_gate", removal_mask(a.head_gate)),
    "setattr tensor": lambda a: setattr(a, "head_gate", removal_mask(a.head_gate)),
    "nn.Parameter replaces": lambda a: setattr(a, "head_gate", nn.Parameter(removal_mask(a.head_gate))),
    "Parameter then data edit": lambda a: (_as_parameter(a), _index_each(a.head_gate.data)),
    "nn.utils.vector_to_parameters": _vector_to_parameters,
    "nn.utils.prune.custom_from_mask": _prune,
    "nn.utils.parametrize": lambda a: parametrize.register_parametrization(a, "head_gate", Zeroing()),
    "closed, reopened, closed": _reopened,
    "gate_fn": _gate_fn,
    "gate_fn removed then data edit": _gate_fn_then_data,
}


def without_heads(attn: MultiHeadAttention) -> MultiHeadAttention:
    ref = copy.deepcopy(attn)
    with torch.no_grad():
        for h in REMOVED:
            ref.o_proj.weight[:, h * ref.head_dim : (h + 1) * ref.head_dim] = 0.0
    return ref


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
@pytest.mark.parametrize("n_kv_heads", [NH, 2])
def test_every_gate_edit_removes_the_head(edit: Callable[[MultiHeadAttention], object], n_kv_heads: int) -> None:
    attn = MultiHeadAttention(NH * HS, NH, n_kv_heads=n_kv_heads).eval()
    ref = without_heads(attn)
    x = torch.randn(2, 7, NH * HS)
    full, _ = attn(x)  # a forward before the edit: whatever it decides about the gates must not stick
    attn(x, need_weights=True)
    edit(attn)
    dtype = attn.o_proj.weight.dtype
    want, _ = ref.to(dtype)(x.to(dtype))
    assert (want - full.to(dtype)).abs().max() > 1e-2  # the removal is visible, so the check can fail
    for need_weights in (False, True):
        got, _ = attn(x.to(dtype), need_weights=need_weights)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


MODEL_EDITS = {k: EDITS[k] for k in ("data index", "data copy_", "numpy view", "to float64 after data edit")}


@pytest.mark.parametrize("edit", MODEL_EDITS.values(), ids=MODEL_EDITS.keys())
def test_every_gate_edit_reaches_the_transformer(edit: Callable[[MultiHeadAttention], object]) -> None:
    cfg = ModelConfig(vocab_size=20, n_layers=2, d_model=NH * HS, n_heads=NH, n_kv_heads=2, d_ff=64, max_seq_len=16)
    model = Transformer(cfg).eval()
    ref = copy.deepcopy(model)
    ref.blocks[1].attn = without_heads(ref.blocks[1].attn)
    idx = torch.randint(0, 20, (2, 9))
    full, _ = model(idx)
    edit(model.blocks[1].attn)
    model.to(model.blocks[1].attn.o_proj.weight.dtype)
    want, _ = ref.to(model.lm_head.weight.dtype)(idx)
    assert (want - full.to(want.dtype)).abs().max() > 1e-3
    for need_weights in (False, True):
        got, _ = model(idx, need_weights=need_weights)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

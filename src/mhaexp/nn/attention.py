"""Our multi-head attention layer: MHA, GQA and MQA in one module.

Grouping of key/value heads (stated once, used everywhere in mhaexp):

* ``n_kv_heads == n_heads``      MHA: every query head has its own K/V head.
* ``1 < n_kv_heads < n_heads``   GQA (Ainslie et al. 2023): query heads come in
  ``n_heads // n_kv_heads`` -sized groups that share one K/V head.
* ``n_kv_heads == 1``            MQA (Shazeer 2019): all query heads share one K/V head.

Query head ``h`` reads K/V head ``h // (n_heads // n_kv_heads)``: consecutive
query heads form a group, the layout of Llama and litgpt, so checkpoints and
mean-pooled conversions line up with theirs.

Two paths compute the same function:

* ``need_weights=False`` (training): ``F.scaled_dot_product_attention`` with
  ``enable_gqa``, so the (T, T) matrix is never built in Python and K/V are
  never repeated by us.
* ``need_weights=True`` (analysis only): the explicit softmax(QK^T/sqrt(d))V,
  which also returns the post-softmax pattern ``[batch, head, query_pos, key_pos]``.
  This is the one way patterns leave the layer; ``Transformer.forward`` hands back
  every layer's.

Projections: one fused ``qkv_proj`` (nanoGPT's ``c_attn``) whose output rows are the query heads,
then the K heads, then the V heads (:func:`qkv_sizes`), so training runs one GEMM and builds nothing
per step. :meth:`MultiHeadAttention.split_qkv` hands out the q/k/v parts of its weight, bias or grad
(views). Checkpoints written with separate ``q_proj``/``k_proj``/``v_proj`` still load: a
``load_state_dict`` pre-hook concatenates them (:func:`fuse_qkv_keys`).

Per-head gates: ``head_gate`` is a buffer of ones, shape ``(n_heads,)``; head
``h``'s output is multiplied by ``head_gate[h]`` before ``o_proj``. A gate of 0
removes exactly that head's contribution; ``head_gate.requires_grad_(True)``
exposes dL/dgate for gradient importance (Michel et al. 2019). ``token_gate`` (None, or
``(B, T, n_heads)``) scales each head's output at each token on top of that: ones with
``requires_grad`` give the per-token dL/dgate of every head in one backward
(:mod:`mhaexp.heads.importance`).

``query_gate`` (None, or ``(B, T, n_heads)``) scales each head's query at each token, after RoPE. A 0
makes that head attend uniformly over the keys its query may see (every score is 0), which is how Wu et
al. 2024's code masks a head (:mod:`mhaexp.studies.wu2024`); unlike a 0 gate, the head still writes the
mean of its values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mhaexp.errors import ConfigError
from mhaexp.nn.shapes import check_heads, divisors, group_size, kv_head_of, resolve_head_dim, rotary_dims

__all__ = [
    "FUSED_QKV",
    "SEPARATE_QKV",
    "FusedQKV",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "check_heads",
    "divisors",
    "fuse_qkv_keys",
    "fuse_separate_qkv",
    "qkv_sizes",
    "resolve_head_dim",
]

FUSED_QKV = "qkv_proj"
# The layout before the fused projection; old checkpoints carry these keys.
SEPARATE_QKV = ("q_proj", "k_proj", "v_proj")


def qkv_sizes(n_heads: int, n_kv_heads: int, head_dim: int) -> tuple[int, int, int]:
    """Rows of q, k and v in the fused projection, in that order."""
    return n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim


def fuse_qkv_keys(state: dict[str, torch.Tensor], prefix: str) -> None:
    """In place: one layer's separate ``q_proj``/``k_proj``/``v_proj`` tensors -> ``qkv_proj`` (rows q, k, v).

    A layer with only some of the three is left alone, so ``load_state_dict`` names what is missing."""
    for kind in ("weight", "bias"):
        names = [f"{prefix}{p}.{kind}" for p in SEPARATE_QKV]
        if all(n in state for n in names):
            state[f"{prefix}{FUSED_QKV}.{kind}"] = torch.cat([state.pop(n) for n in names])


def fuse_separate_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole model state with every layer in the fused layout (a new dict; fused layers pass through)."""
    out = dict(state)
    suffix = f"{SEPARATE_QKV[0]}.weight"
    for key in [k for k in state if k.endswith(suffix)]:
        fuse_qkv_keys(out, key[: -len(suffix)])
    return out


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), half-split (``rotate_half``) layout as in GPT-NeoX/Llama.

    ``rotary_pct < 1`` (GPT-NeoX/Pythia's partial rotary): only the leading ``n_rot`` dimensions of each
    head are rotated, with frequencies of a ``dim = int(head_dim * rotary_pct)``-wide RoPE; the rest pass
    through unchanged (:func:`mhaexp.nn.shapes.rotary_dims`).
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0, rotary_pct: float = 1.0) -> None:
        super().__init__()
        dim, self.n_rot = rotary_dims(head_dim, rotary_pct)
        self.head_dim = head_dim
        if rotary_pct == 1.0 and head_dim % 2 != 0:
            raise ConfigError("model.head_dim", head_dim, "must be even when model.pos=rope")
        if not 0 < self.n_rot <= head_dim:
            raise ConfigError("model.rotary_pct", rotary_pct, f"rotates {self.n_rot} of head_dim={head_dim} dims")
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, n_rot/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, n_rot)
        # Not persistent: they are a function of the config, and old checkpoints stay loadable.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.partial = self.n_rot < head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, h, T, hs)
        T = x.size(-2)
        if self.partial:
            x, rest = x[..., : self.n_rot], x[..., self.n_rot :]  # (B, h, T, n_rot), (B, h, T, hs - n_rot)
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        out = x * self.cos[:T].to(x.dtype) + rotated * self.sin[:T].to(x.dtype)
        return torch.cat([out, rest], dim=-1) if self.partial else out


class FusedQKV(nn.Linear):
    """The fused q/k/v projection. Its own class so that model init can draw q, k and v in turn, as it
    did for three separate layers: the same seed gives the same weights as before the fusion."""

    def __init__(self, d_model: int, sizes: tuple[int, int, int], bias: bool) -> None:
        super().__init__(d_model, sum(sizes), bias=bias)
        self.sizes = sizes

    def split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k and v rows of ``t`` (weight, bias or their grads: dim 0 is the output row), as views."""
        q, k, v = t.split(self.sizes, dim=0)
        return q, k, v


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped K/V heads and per-head gates.

    Args:
        d_model: width of the residual stream.
        n_heads: query heads.
        n_kv_heads: key/value heads; ``None`` means ``n_heads`` (MHA), 1 is MQA.
        head_dim: size of each head; ``None`` means ``d_model // n_heads``.
        causal: mask future keys (decoder) or not (encoder).
        bias: biases on the q/k/v projection (and on ``o_proj`` unless ``o_bias`` says otherwise).
        dropout: dropout on the attention weights while training.
        rope: rotate queries and keys (RoPE) instead of relying on absolute positions.
        max_seq_len: longest sequence RoPE tables are built for.
        rope_base: RoPE frequency base.
        rotary_pct: share of each head's dimensions RoPE rotates (GPT-NeoX's partial rotary).
        o_bias: bias on ``o_proj``; ``None`` follows ``bias`` (Qwen2 has q/k/v biases and none here).
        rotary: a :class:`RotaryEmbedding` to use instead of building one (``rope`` must be set): the
            model passes every layer the same one, so its cos/sin tables exist once, not once per layer
            (at ``max_seq_len=32768`` they are 32 MiB a layer for a 128-wide head).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = True,
        bias: bool = True,
        dropout: float = 0.0,
        rope: bool = False,
        max_seq_len: int = 2048,
        rope_base: float = 10000.0,
        rotary_pct: float = 1.0,
        o_bias: bool | None = None,
        rotary: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        self.n_kv_heads = check_heads(n_heads, n_kv_heads)
        self.n_heads = n_heads
        self.head_dim = resolve_head_dim(d_model, n_heads, head_dim)
        self.d_model = d_model
        self.causal = causal
        self.dropout = dropout
        self.qkv_proj = FusedQKV(d_model, qkv_sizes(n_heads, self.n_kv_heads, self.head_dim), bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias if o_bias is None else o_bias)
        if rope and rotary is None:
            rotary = RotaryEmbedding(self.head_dim, max_seq_len, rope_base, rotary_pct)
        elif rotary is not None and (not rope or rotary.head_dim != self.head_dim):
            raise ValueError(f"a shared rotary table needs rope=True and head_dim={rotary.head_dim}")
        # A submodule even when shared: .to(device) moves the one module, so the layers keep sharing it.
        self.rotary = rotary
        self.register_buffer("head_gate", torch.ones(n_heads))
        # Extra multiplicative gates (e.g. hard-concrete L0 gates while pruning); returns (n_heads,).
        self.gate_fn: Callable[[], torch.Tensor] | None = None
        # Per-token gates (B, T, n_heads), set only for the duration of an importance forward.
        self.token_gate: torch.Tensor | None = None
        # Per-token query scales (B, T, n_heads), set only for the duration of a masking forward.
        self.query_gate: torch.Tensor | None = None
        self.register_load_state_dict_pre_hook(_load_separate_qkv)

    @property
    def group_size(self) -> int:
        """Query heads per K/V head."""
        return group_size(self.n_heads, self.n_kv_heads)

    def split_qkv(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k and v parts of ``qkv_proj``'s weight, bias or grad (views, rows per head ``head_dim``)."""
        return self.qkv_proj.split(t)

    def kv_head_of(self, h: int) -> int:
        """The K/V head that query head ``h`` reads."""
        return kv_head_of(h, self.n_heads, self.n_kv_heads)

    def gates(self) -> torch.Tensor:
        """The gate each head's output is multiplied by, shape ``(n_heads,)``."""
        g = self.head_gate
        if self.gate_fn is not None:
            g = g * self.gate_fn()
        return g

    def forward(
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        key_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over ``x`` (B, T, d_model).

        ``key_padding_mask`` (B, T) is True on real tokens. Causal models ignore
        it: with right padding, a real query never sees a pad key anyway, and
        leaving it out keeps SDPA on its ``is_causal`` kernels.

        Returns ``(y, weights)``: y is (B, T, d_model); weights is None, or the
        post-softmax pattern (B, n_heads, T, T) when ``need_weights``.
        """
        B, T, _ = x.shape
        nh, hs = self.n_heads, self.head_dim
        y, weights = self._attend(x, need_weights, key_padding_mask)
        y = y.transpose(1, 2)  # (B, T, nh, hs)
        if self.token_gate is not None:
            y = y * self.token_gate[..., None].to(y.dtype)
        y = y.reshape(B, T, nh * hs)  # (B, T, nh*hs), heads side by side
        return F.linear(y, self._gated_o_weight().view(-1, nh * hs), self.o_proj.bias), weights

    def _gated_o_weight(self) -> torch.Tensor:
        """``o_proj``'s weight as ``(d_model, n_heads, head_dim)``, each head's columns scaled by its gate.

        Scaling o_proj's input columns by the gate equals scaling each head's output, at weight-sized
        rather than activation-sized cost. Always applied, never skipped for all-ones gates: deciding
        that costs a device read, and a cached answer goes stale under edits no counter sees
        (``head_gate.data[h] = 0``, a numpy view); the multiply costs about nothing next to the GEMMs.
        """
        w_o = self.o_proj.weight.view(-1, self.n_heads, self.head_dim)
        return w_o * self.gates().to(w_o.dtype)[:, None]

    def head_contributions(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What each head adds to the output, gate included (the output is their sum plus ``o_proj``'s
        bias): ``(n_heads, B, T, d_model)``, from one attention pass."""
        y, _ = self._attend(x, False, key_padding_mask)  # (B, nh, T, hs)
        return torch.einsum("bnth,dnh->nbtd", y, self._gated_o_weight())

    def _attend(
        self, x: torch.Tensor, need_weights: bool, key_padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each head's output before ``o_proj`` ``(B, n_heads, T, head_dim)``, and the pattern if asked."""
        B, T, _ = x.shape
        nh, nkv, hs = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.sizes, dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        if self.query_gate is not None:
            q = q * self.query_gate.transpose(1, 2)[..., None].to(q.dtype)  # (B, nh, T, 1)
        mask = None
        if key_padding_mask is not None and not self.causal:
            mask = key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, T)
        p = self.dropout if self.training else 0.0
        if need_weights:
            y, weights = self._explicit(q, k, v, mask, p)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=self.causal, enable_gqa=nkv != nh
            )  # (B, nh, T, hs)
            weights = None
        return y, weights

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, nh, T, hs = q.shape
        nkv, g = self.n_kv_heads, self.group_size
        qg = q.view(B, nkv, g, T, hs)  # (B, nkv, g, T, hs): a group's queries share one K/V head
        scores = (qg @ k.unsqueeze(2).transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nkv, g, T, T)
        scores = scores.view(B, nh, T, T)
        if self.causal:
            future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, nh, T, T)
        dropped = F.dropout(weights, p) if p > 0 else weights
        y = dropped.view(B, nkv, g, T, T) @ v.unsqueeze(2)  # (B, nkv, g, T, hs)
        return y.view(B, nh, T, hs), weights


def _load_separate_qkv(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *_: object) -> None:
    fuse_qkv_keys(state, prefix)

"""The references the benchmark holds our code against, the steps it times on them, and the shapes it uses.

The references are written in the style of nanoGPT (Karpathy): a plain GPT-2-style decoder and its layer.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from mhaexp.nn.attention import MultiHeadAttention
from mhaexp.tools.bench.harness import Args

# ---- references ---------------------------------------------------------------------------------------


class NanoCausalSelfAttention(nn.Module):
    """nanoGPT's attention: one fused ``c_attn`` for q, k and v, SDPA with ``is_causal``, ``c_proj``."""

    def __init__(self, n_embd: int, n_head: int, bias: bool = True) -> None:
        super().__init__()
        assert n_embd % n_head == 0
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.n_head = n_head
        self.n_embd = n_embd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class NanoMLP(nn.Module):
    def __init__(self, n_embd: int, d_ff: int, bias: bool = True) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, d_ff, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(d_ff, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, d_ff: int, bias: bool = True) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = NanoCausalSelfAttention(n_embd, n_head, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = NanoMLP(n_embd, d_ff, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """A plain GPT-2-style decoder (learned positions, tied head, d_ff = 4 d unless given), the reference model."""

    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_embd: int, n_head: int, d_ff: int | None = None
    ) -> None:
        super().__init__()
        d_ff = d_ff or 4 * n_embd
        self.n_layer, self.n_embd, self.n_head = n_layer, n_embd, n_head
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab_size, n_embd),
                "wpe": nn.Embedding(block_size, n_embd),
                "h": nn.ModuleList(NanoBlock(n_embd, n_head, d_ff) for _ in range(n_layer)),
                "ln_f": nn.LayerNorm(n_embd),
            }
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, T = idx.size()
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def copy_into_nano_attention(ours: MultiHeadAttention, nano: NanoCausalSelfAttention) -> None:
    """Give the reference our weights, so the benchmark also checks both compute the same function."""
    with torch.no_grad():
        nano.c_attn.weight.copy_(ours.qkv_proj.weight)  # same row layout: q, k, v
        nano.c_attn.bias.copy_(ours.qkv_proj.bias)
        nano.c_proj.weight.copy_(ours.o_proj.weight)
        nano.c_proj.bias.copy_(ours.o_proj.bias)


def copy_into_torch_mha(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv_proj.weight)
        ref.in_proj_bias.copy_(ours.qkv_proj.bias)
        ref.out_proj.weight.copy_(ours.o_proj.weight)
        ref.out_proj.bias.copy_(ours.o_proj.bias)


# ---- steps and FLOPs -----------------------------------------------------------------------------


def fwd_bwd_step(
    module: nn.Module, x: torch.Tensor, call: Callable[[nn.Module, torch.Tensor], torch.Tensor]
) -> Callable[[], None]:
    """One training-shaped forward + backward of ``module``: fresh grads, dL/dx included (a layer inside
    a model must produce it), a fixed random upstream gradient."""
    grad_out = torch.randn_like(call(module, x))

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        call(module, x).backward(grad_out)

    return step


def call_ours(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Our layer's output, fast path."""
    return m(x)[0]


def call_ours_explicit(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Our layer's output through the explicit path that also returns the attention weights."""
    return m(x, need_weights=True)[0]


def call_plain(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A reference module's output."""
    return m(x)


def call_torch_mha(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.MultiheadAttention``'s output, causal."""
    T = x.size(1)
    mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
    # With need_weights=False and is_causal=True, torch drops the mask and hands is_causal to SDPA.
    return m(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0]


def matmul_flops_per_token(model: nn.Module, n_layers: int, seq_len: int, d_attn: int) -> float:
    """Training FLOPs per token, as in PaLM (Chowdhery et al. 2022, appendix B)::

        6 * N  +  12 * L * T * d_attn

    * ``N``: the weights every token is multiplied by: all ``nn.Linear`` weights,
      the LM head included even when tied to the embedding (the matmul happens
      either way). Embedding lookups, biases, LayerNorm, softmax, GELU and the
      optimizer are not matmuls and are not counted, so MFU is the share of the
      machine's matmul rate spent on the model's matmuls.
    * ``6``: 2 FLOPs per multiply-add forward, twice that backward (dX and dW).
    * ``12 * L * T * d_attn``: QK^T and AV (2 * 2 * T * d_attn a token a layer
      forward, x3 with backward), d_attn = n_heads * head_dim. As in PaLM the
      causal mask is not discounted (a kernel that skips the masked half does
      half this work, so MFU reads slightly high for causal models).
    """
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return 6.0 * n + 12.0 * n_layers * seq_len * d_attn


def train_step_fn(
    model: nn.Module, batch: int, seq: int, vocab: int, device: torch.device, autocast: torch.dtype | None
) -> Callable[[], None]:
    """A full optimizer step: forward, cross-entropy, backward, AdamW (nanoGPT's betas and decay)."""
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda" or None
    )
    ids = torch.randint(vocab, (batch, seq + 1), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    ctx = (lambda: torch.autocast(device.type, dtype=autocast)) if autocast else nullcontext

    def step() -> None:
        with ctx():
            out = model(inputs)
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


# ---- shapes ------------------------------------------------------------------------------------

# (B, T, d_model, n_heads) of one attention layer: the default model's (conf/model/small.yaml, batch 64),
# GPT-2 small's at T=1024, and a quarter of that for the CPU, where the full one costs seconds a call.
DEFAULT_LAYER = (64, 32, 128, 8)
GPT2_LAYER = (8, 1024, 768, 12)
CPU_LAYER = (16, 256, 256, 8)
# GPT-2 small as a ModelConfig (vocabulary padded to a multiple of 64, as nanoGPT does).
GPT2_SMALL = {"vocab_size": 50304, "n_layers": 12, "d_model": 768, "n_heads": 12, "max_seq_len": 1024}


def shape_name(batch: int, seq: int, d: int, nh: int, nkv: int | None = None) -> str:
    kv = "" if nkv is None else f" kv{nkv}"
    return f"B{batch} T{seq} d{d} h{nh}{kv}"


def attention_shapes(args: Args) -> list[tuple[int, int, int, int]]:
    """(B, T, d_model, n_heads): the default model's layer, then one where attention itself costs more:
    GPT-2 small's layer at T=1024 on a GPU (as ``make gpu-check``), a quarter of it on the CPU, where the
    full one costs seconds a call (``--quick`` keeps only the first)."""
    second = GPT2_LAYER if args.device.startswith("cuda") else CPU_LAYER
    shapes = [DEFAULT_LAYER, second]
    return shapes[:1] if args.quick else shapes

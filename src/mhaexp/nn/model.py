"""A small transformer built only from :class:`mhaexp.MultiHeadAttention`.

The whole model fits on one screen on purpose: a researcher should be able to
read exactly what a head sees. Shapes: B batch, T sequence, d d_model,
V vocabulary, nh query heads, hs head size, f the MLP's intermediate size.

The defaults build a pre-LN GPT-2-style model. The options of :class:`ModelConfig` swap in small
modules, never a second model class: the norm (:func:`make_norm`), the MLP's activation and gate
(:class:`MLP`), where the norms sit and how the residual adds up (:class:`Block`), token-type
embeddings and BERT's masked-LM head (:class:`Transformer`). That covers GPT-2, BERT, Llama/Qwen2
and GPT-NeoX/Pythia.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mhaexp.errors import ConfigError
from mhaexp.nn.attention import FusedQKV, MultiHeadAttention, RotaryEmbedding
from mhaexp.nn.config import ModelConfig

__all__ = ["MLP", "Block", "MLMHead", "ModelConfig", "Transformer", "activation", "make_norm"]


def make_norm(cfg: ModelConfig) -> nn.Module:
    """LayerNorm (with a bias when ``cfg.bias``) or RMSNorm (Zhang & Sennrich 2019: ``w * x / rms(x)``,
    no bias), both with ``cfg.norm_eps``."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def activation(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP's nonlinearity: exact (erf) GELU, GPT-2's tanh GELU (``gelu_new``), or SiLU (SwiGLU's gate)."""
    if kind == "gelu_tanh":
        return functools.partial(F.gelu, approximate="tanh")  # a partial, not a lambda: the model pickles
    return F.silu if kind == "swiglu" else F.gelu


class MLP(nn.Module):
    """``proj(act(fc(x)))``; SwiGLU (Shazeer 2020, Llama/Qwen2) gates it: ``proj(silu(gate(x)) * fc(x))``,
    so ``fc`` is Llama's ``up_proj``, ``gate`` its ``gate_proj`` and ``proj`` its ``down_proj``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.mlp_bias)
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.mlp_bias) if cfg.mlp == "swiglu" else None
        self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.mlp_bias)
        self.act = activation(cfg.mlp)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        h = self.fc(x)  # (B, T, f)
        h = self.act(self.gate(x)) * h if self.gate is not None else self.act(h)
        return self.drop(self.proj(h))


class Block(nn.Module):
    """One layer. ``ln_1`` belongs to attention and ``ln_2`` to the MLP, wherever they sit:

    * pre-LN (default):      x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    * parallel (GPT-NeoX):   x = x + attn(ln_1(x)) + mlp(ln_2(x))
    * post-LN (BERT):        x = ln_1(x + attn(x));  x = ln_2(x + mlp(x))
    """

    def __init__(self, cfg: ModelConfig, layer: int, rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
        n_heads, n_kv_heads = cfg.heads_in_layer(layer)
        self.post_norm = cfg.norm_position == "post"
        self.parallel = cfg.parallel_residual
        self.ln_1 = make_norm(cfg)
        self.attn = MultiHeadAttention(
            cfg.d_model,
            n_heads,
            n_kv_heads,
            head_dim=cfg.head_dim,
            causal=cfg.causal,
            bias=cfg.qkv_bias,
            dropout=cfg.dropout,
            rope=cfg.pos == "rope",
            max_seq_len=cfg.max_seq_len,
            rope_base=cfg.rope_base,
            rotary_pct=cfg.rotary_pct,
            o_bias=cfg.o_bias,
            rotary=rotary,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.ln_2 = None if cfg.attn_only else make_norm(cfg)
        self.mlp = None if cfg.attn_only else MLP(cfg)

    def forward(
        self, x: torch.Tensor, need_weights: bool = False, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attn(self.attn_input(x), need_weights=need_weights, key_padding_mask=key_padding_mask)
        return self.after_attention(x, a), weights

    def attn_input(self, x: torch.Tensor) -> torch.Tensor:
        """What attention reads from the residual stream ``x`` entering the block."""
        return x if self.post_norm else self.ln_1(x)

    def after_attention(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The rest of the block given the attention output ``a`` on ``x``: residual, then the MLP."""
        if self.post_norm:
            x = self.ln_1(x + self.drop(a))
            return x if self.mlp is None else self.ln_2(x + self.mlp(x))
        if self.parallel and self.mlp is not None:
            return x + self.drop(a) + self.mlp(self.ln_2(x))  # both read the block's input
        x = x + self.drop(a)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x


class MLMHead(nn.Module):
    """BERT's prediction-head transform before the decoder: ``norm(act(dense(x)))``, (B, T, d) -> (B, T, d)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.act = activation(cfg.mlp)
        self.norm = make_norm(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class Transformer(nn.Module):
    """Token (+ token-type, + learned position) embedding, ``n_layers`` blocks, final norm, LM head.

    Post-LN models normalize the embeddings (``emb_norm``) instead of the last block's output (no
    ``ln_f``). With ``mlm_head`` the logits are ``lm_head(MLMHead(x))`` and ``lm_head`` has a bias.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        post = cfg.norm_position == "post"
        self.emb_norm = make_norm(cfg) if post else None
        self.drop = nn.Dropout(cfg.dropout)
        # One RoPE table for all layers (they share head_dim and base): built once, moved once.
        rotary = (
            RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_base, cfg.rotary_pct) if cfg.pos == "rope" else None
        )
        self.blocks = nn.ModuleList(Block(cfg, i, rotary) for i in range(cfg.n_layers))
        self.ln_f = None if post else make_norm(cfg)
        self.mlm_head = MLMHead(cfg) if cfg.mlm_head else None
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.mlm_head)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith(("attn.o_proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, FusedQKV):
            # q, k, v drawn in turn, as three separate layers were: a seed gives the weights it always gave.
            for part in module.split(module.weight):
                nn.init.normal_(part, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def attention_layers(self) -> list[MultiHeadAttention]:
        return [b.attn for b in self.blocks]

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """``idx`` (B, T) token ids -> logits (B, T, V), and the per-layer patterns
        (each (B, nh, T, T)) when ``need_weights``, else None. ``token_type_ids`` (B, T): BERT's
        segment ids, zeros when absent; read only when ``type_vocab_size > 0``."""
        x = self._embed(idx, token_type_ids)
        patterns: list[torch.Tensor] | None = [] if need_weights else None
        for block in self.blocks:
            x, w = block(x, need_weights=need_weights, key_padding_mask=attention_mask)
            if patterns is not None:
                patterns.append(w)
        return self.unembed(x), patterns  # (B, T, V)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) from the residual stream (B, T, d) leaving the last block."""
        if self.ln_f is not None:
            x = self.ln_f(x)
        if self.mlm_head is not None:
            x = self.mlm_head(x)
        return self.lm_head(x)

    def _embed(self, idx: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.cfg.max_seq_len:
            raise ConfigError("model.max_seq_len", self.cfg.max_seq_len, f"must be >= the sequence length {T}")
        x = self.tok_emb(idx)  # (B, T, d)
        if self.type_emb is not None:
            x = x + self.type_emb(torch.zeros_like(idx) if token_type_ids is None else token_type_ids)  # (B, T, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))  # (T, d) broadcast over B
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        return self.drop(x)

    def layer_patterns(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """Each layer's pattern (B, nh, T, T) in turn, the blocks run one at a time as the caller asks:
        the same patterns as ``forward(need_weights=True)``, but only the current layer's need be alive
        (the streaming analysis, :mod:`mhaexp.analysis.collect`). No logits are computed."""
        x = self._embed(idx, token_type_ids)
        for block in self.blocks:
            x, w = block(x, need_weights=True, key_padding_mask=attention_mask)
            yield w

    def residual_stream(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The residual stream (B, T, d) leaving each block, in layer order (massive activations, Sun et al.
        2024, are read from it)."""
        x = self._embed(idx, token_type_ids)
        out = []
        for block in self.blocks:
            x, _ = block(x, key_padding_mask=attention_mask)
            out.append(x)
        return out

    def param_counts(self) -> dict[str, int]:
        """Parameters by part (tied weights counted once, in the embedding; token types in the embedding;
        the MLM head's transform and bias in ``lm_head``)."""
        seen: set[int] = set()

        def count(*modules: nn.Module | None) -> int:
            total = 0
            for module in modules:
                for p in module.parameters() if module is not None else ():
                    if id(p) not in seen:
                        seen.add(id(p))
                        total += p.numel()
            return total

        counts = {"embedding": count(self.tok_emb, self.type_emb), "position": count(self.pos_emb)}
        for i, b in enumerate(self.blocks):
            counts[f"attention.L{i}"] = count(b.attn)
        counts["attention"] = sum(v for k, v in counts.items() if k.startswith("attention.L"))
        counts["mlp"] = sum(count(b.mlp) for b in self.blocks)
        counts["norm"] = sum(count(b.ln_1, b.ln_2) for b in self.blocks) + count(self.emb_norm, self.ln_f)
        counts["lm_head"] = count(self.mlm_head, self.lm_head)
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

"""A small pre-LN transformer built only from :class:`mhaexp.MultiHeadAttention`.

The whole model fits on one screen on purpose: a researcher should be able to
read exactly what a head sees. Shapes: B batch, T sequence, d d_model,
V vocabulary, nh query heads, hs head size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mhaexp.errors import ConfigError
from mhaexp.nn.attention import FusedQKV, MultiHeadAttention
from mhaexp.nn.config import ModelConfig

__all__ = ["ModelConfig", "Transformer"]


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x)) unless attention-only."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        n_heads, n_kv_heads = cfg.heads_in_layer(layer)
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = MultiHeadAttention(
            cfg.d_model,
            n_heads,
            n_kv_heads,
            head_dim=cfg.head_dim,
            causal=cfg.causal,
            bias=cfg.bias,
            dropout=cfg.dropout,
            rope=cfg.pos == "rope",
            max_seq_len=cfg.max_seq_len,
            rope_base=cfg.rope_base,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.ln_2 = None if cfg.attn_only else nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = None if cfg.attn_only else MLP(cfg)

    def forward(
        self, x: torch.Tensor, need_weights: bool = False, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attn(self.ln_1(x), need_weights=need_weights, key_padding_mask=key_padding_mask)
        return self.after_attention(x, a), weights

    def after_attention(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The rest of the block given the attention output ``a`` on ``x``: residual, then the MLP."""
        x = x + self.drop(a)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    """Token (+ learned position) embedding, ``n_layers`` blocks, final LayerNorm, LM head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
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
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """``idx`` (B, T) token ids -> logits (B, T, V), and the per-layer patterns
        (each (B, nh, T, T)) when ``need_weights``, else None."""
        x = self._embed(idx)
        patterns: list[torch.Tensor] | None = [] if need_weights else None
        for block in self.blocks:
            x, w = block(x, need_weights=need_weights, key_padding_mask=attention_mask)
            if patterns is not None:
                patterns.append(w)
        return self.lm_head(self.ln_f(x)), patterns  # (B, T, V)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.cfg.max_seq_len:
            raise ConfigError("model.max_seq_len", self.cfg.max_seq_len, f"must be >= the sequence length {T}")
        x = self.tok_emb(idx)  # (B, T, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))  # (T, d) broadcast over B
        return self.drop(x)

    def layer_patterns(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Each layer's pattern (B, nh, T, T) in turn, the blocks run one at a time as the caller asks:
        the same patterns as ``forward(need_weights=True)``, but only the current layer's need be alive
        (the streaming analysis, :mod:`mhaexp.analysis.collect`). No logits are computed."""
        x = self._embed(idx)
        for block in self.blocks:
            x, w = block(x, need_weights=True, key_padding_mask=attention_mask)
            yield w

    def residual_stream(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The residual stream (B, T, d) leaving each block, in layer order (massive activations, Sun et al.
        2024, are read from it)."""
        x = self._embed(idx)
        out = []
        for block in self.blocks:
            x, _ = block(x, key_padding_mask=attention_mask)
            out.append(x)
        return out

    def param_counts(self) -> dict[str, int]:
        """Parameters by part (tied weights counted once, in the embedding)."""
        seen: set[int] = set()

        def count(module: nn.Module | None) -> int:
            if module is None:
                return 0
            total = 0
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
            return total

        counts = {"embedding": count(self.tok_emb), "position": count(self.pos_emb)}
        for i, b in enumerate(self.blocks):
            counts[f"attention.L{i}"] = count(b.attn)
        counts["attention"] = sum(v for k, v in counts.items() if k.startswith("attention.L"))
        counts["mlp"] = sum(count(b.mlp) for b in self.blocks)
        counts["norm"] = sum(count(b.ln_1) + count(b.ln_2) for b in self.blocks) + count(self.ln_f)
        counts["lm_head"] = count(self.lm_head)
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

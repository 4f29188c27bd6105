"""The model's shape as a validated dataclass (no torch import: the CLI checks sweeps with it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mhaexp.errors import ConfigError
from mhaexp.nn.shapes import check_heads, resolve_head_dim

POSITIONS = ("learned", "rope", "none")


@dataclass
class ModelConfig:
    """Everything that fixes the model's shape. Validated on construction.

    ``head_dim=None`` means ``d_model // n_heads`` (fixed-width sweeps); an
    explicit ``head_dim`` keeps head size fixed while the head count varies.
    ``layer_n_heads`` / ``layer_n_kv_heads`` override the head counts per layer,
    which is what a physically pruned model needs.
    """

    vocab_size: int = 256
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 64
    dropout: float = 0.0
    pos: str = "learned"
    attn_only: bool = False
    causal: bool = True
    bias: bool = True
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    layer_n_heads: list[int] | None = None
    layer_n_kv_heads: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{name}", value, "must be a positive integer")
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or self.d_ff <= 0):
            raise ConfigError("model.d_ff", self.d_ff, "must be a positive integer (or null for 4*d_model)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError("model.dropout", self.dropout, "must be in [0, 1)")
        if self.pos not in POSITIONS:
            raise ConfigError("model.pos", self.pos, f"choose one of {list(POSITIONS)}")
        self.n_kv_heads = check_heads(self.n_heads, self.n_kv_heads, "model.")
        self.head_dim = resolve_head_dim(self.d_model, self.n_heads, self.head_dim, "model.")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError("model.head_dim", self.head_dim, "must be even when model.pos=rope")
        for name in ("layer_n_heads", "layer_n_kv_heads"):
            value = getattr(self, name)
            if value is not None:
                value = list(value)
                setattr(self, name, value)
                if len(value) != self.n_layers:
                    raise ConfigError(f"model.{name}", value, f"needs one entry per layer (n_layers={self.n_layers})")
        for i in range(self.n_layers):
            nh, nkv = self.heads_in_layer(i)
            check_heads(nh, nkv, f"model.layer[{i}].")

    def heads_in_layer(self, i: int) -> tuple[int, int]:
        """(query heads, K/V heads) of layer ``i``."""
        nh = self.layer_n_heads[i] if self.layer_n_heads else self.n_heads
        nkv = self.layer_n_kv_heads[i] if self.layer_n_kv_heads else self.n_kv_heads
        if self.layer_n_heads and not self.layer_n_kv_heads:
            nkv = min(nkv, nh)
        return nh, nkv

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V cached per generated token, all layers, at ``bytes_per_value`` (2 for bf16)."""
        kv_heads = sum(self.heads_in_layer(i)[1] for i in range(self.n_layers))
        return 2 * kv_heads * self.head_dim * bytes_per_value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

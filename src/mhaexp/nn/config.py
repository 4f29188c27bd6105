"""The model's shape as a validated dataclass (no torch import: the CLI checks sweeps with it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from mhaexp.config import (
    DERIVED,
    boolean,
    check_fields,
    choice,
    list_of,
    non_negative_int,
    number,
    optional,
    positive_int,
    positive_number,
    setting,
)
from mhaexp.errors import ConfigError
from mhaexp.nn.shapes import check_heads, resolve_head_dim, rotary_dims

POSITIONS = ("learned", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
MLPS = ("gelu", "gelu_tanh", "swiglu")
# Options that change what the weights compute without changing their shapes (or that a shape check would
# only name obliquely): weights loaded into a model that differs in one of them compute something else.
ARCHITECTURE_FIELDS = (
    "causal",
    "pos",
    "norm",
    "norm_eps",
    "norm_position",
    "mlp",
    "parallel_residual",
    "rotary_pct",
    "type_vocab_size",
    "mlm_head",
)


@dataclass
class ModelConfig:
    """Everything that fixes the model's shape. Validated on construction.

    ``head_dim=None`` means ``d_model // n_heads`` (fixed-width sweeps); an
    explicit ``head_dim`` keeps head size fixed while the head count varies.
    ``layer_n_heads`` / ``layer_n_kv_heads`` override the head counts per layer,
    which is what a physically pruned model needs.

    The architecture options (issue 30; ``conf/model/small.yaml`` says each in a line) select the
    modules of :mod:`mhaexp.nn.model`; their defaults are the model mhaexp always built (pre-LN
    LayerNorm, exact GELU, sequential residual, full rotary, one ``bias`` for everything, no token
    types, a plain linear LM head), so old checkpoints and seeds give the same numbers.
    ``qkv_bias`` / ``o_bias`` / ``mlp_bias`` left null follow ``bias`` and are resolved to it here.
    """

    vocab_size: int = setting(DERIVED, 256)  # the data's tokenizer fixes it: never a YAML key
    n_layers: int = setting(positive_int(), 2)
    d_model: int = setting(positive_int(), 128)
    n_heads: int = setting(positive_int(), 4)
    n_kv_heads: int | None = setting(optional(positive_int()), None)
    head_dim: int | None = setting(optional(positive_int()), None)
    d_ff: int | None = setting(optional(positive_int()), None)
    max_seq_len: int = setting(positive_int(), 64)
    dropout: float = setting(number(0.0, 1.0, high_open=True), 0.0)
    pos: str = setting(choice(*POSITIONS), "learned")
    attn_only: bool = setting(boolean(), False)
    causal: bool = setting(boolean(), True)
    bias: bool = setting(boolean(), True)
    tie_embeddings: bool = setting(boolean(), True)
    rope_base: float = setting(positive_number(), 10000.0)
    layer_n_heads: list[int] | None = setting(optional(list_of(positive_int())), None)
    layer_n_kv_heads: list[int] | None = setting(optional(list_of(positive_int())), None)
    norm: str = setting(choice(*NORMS), "layernorm")
    norm_eps: float = setting(positive_number(), 1e-5)
    norm_position: str = setting(choice(*NORM_POSITIONS), "pre")
    mlp: str = setting(choice(*MLPS), "gelu")
    parallel_residual: bool = setting(boolean(), False)
    rotary_pct: float = setting(number(0.0, 1.0, low_open=True), 1.0)
    qkv_bias: bool | None = setting(optional(boolean()), None)
    o_bias: bool | None = setting(optional(boolean()), None)
    mlp_bias: bool | None = setting(optional(boolean()), None)
    type_vocab_size: int = setting(non_negative_int(), 0)
    mlm_head: bool = setting(boolean(), False)
    extra: dict[str, Any] = setting(DERIVED, factory=dict)  # free-form, programmatic only; checkpoints carry it

    def __post_init__(self) -> None:
        if not positive_int().test(self.vocab_size):
            raise ConfigError("model.vocab_size", self.vocab_size, "must be a positive integer")
        check_fields(self, "model")
        self.n_kv_heads = check_heads(self.n_heads, self.n_kv_heads, "model.")
        self.head_dim = resolve_head_dim(self.d_model, self.n_heads, self.head_dim, "model.")
        for name in ("qkv_bias", "o_bias", "mlp_bias"):
            if getattr(self, name) is None:
                setattr(self, name, self.bias)
        if self.rotary_pct != 1.0 and self.pos != "rope":
            raise ConfigError("model.rotary_pct", self.rotary_pct, f"needs model.pos=rope (it is {self.pos!r})")
        if self.pos == "rope" and self.rotary_pct == 1.0 and self.head_dim % 2:
            raise ConfigError("model.head_dim", self.head_dim, "must be even when model.pos=rope")
        rotated = rotary_dims(self.head_dim, self.rotary_pct)[1]
        if self.pos == "rope" and not 0 < rotated <= self.head_dim:
            raise ConfigError(
                "model.rotary_pct",
                self.rotary_pct,
                f"would rotate {rotated} of head_dim={self.head_dim} dimensions (int(head_dim * rotary_pct) "
                "rounded up to even); needs at least 2 and at most head_dim",
            )
        if self.parallel_residual and self.norm_position == "post":
            raise ConfigError("model.parallel_residual", True, "needs model.norm_position=pre (GPT-NeoX is pre-LN)")
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

    def approx_params(self) -> int:
        """Parameters of the Transformer this config builds, from the shapes alone (no torch): the embedding,
        positions, LM head (when untied), Q/K/V/O and MLP weights. Biases and norms are left out (well under
        1% of any model here); ``Transformer.param_counts()['total']`` is the exact count."""
        d, v = self.d_model, self.vocab_size
        total = v * d * (1 if self.tie_embeddings else 2) + (self.max_seq_len * d if self.pos == "learned" else 0)
        for i in range(self.n_layers):
            nh, nkv = self.heads_in_layer(i)
            total += d * (nh + 2 * nkv) * self.head_dim + nh * self.head_dim * d
            if not self.attn_only:
                total += 2 * d * self.ffn_dim
        return total

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V cached per generated token, all layers, at ``bytes_per_value`` (2 for bf16)."""
        kv_heads = sum(self.heads_in_layer(i)[1] for i in range(self.n_layers))
        return 2 * kv_heads * self.head_dim * bytes_per_value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_overrides(cfg: ModelConfig) -> list[str]:
    """``model.<field>=<value>`` for every field a command line sets (all but the derived ``vocab_size``
    and ``extra``; ``null`` for None): what rebuilds ``cfg`` whatever ``model=`` preset the command
    composes, e.g. an imported model's shape in a fine-tuning hint."""
    out = []
    for f in fields(ModelConfig):
        if f.name in ("vocab_size", "extra"):
            continue
        value = getattr(cfg, f.name)
        if value is None:
            text = "null"
        elif isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, list):
            text = "[" + ",".join(map(str, value)) + "]"
        else:
            text = str(value)
        out.append(f"model.{f.name}={text}")
    return out


def check_same_architecture(source: ModelConfig, target: ModelConfig, where: str) -> None:
    """ConfigError naming the first :data:`ARCHITECTURE_FIELDS` option in which ``target`` (the model being
    built) differs from ``source`` (the config the weights in ``where`` were trained or imported with)."""
    for name in ARCHITECTURE_FIELDS:
        want, got = getattr(source, name), getattr(target, name)
        if want != got:
            raise ConfigError(
                f"model.{name}", got, f"the weights in {where} were made for model.{name}={want!r}; set that"
            )

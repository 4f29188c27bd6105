"""Pretrained models from Hugging Face ``save_pretrained`` directories, converted into our layer.

Five families, one small converter each (:data:`FAMILIES`): GPT-2, BERT (masked LM), Llama (also
Mistral, TinyLlama, SmolLM), Qwen2 and GPT-NeoX/Pythia. Each reads its hyper-parameters from the HF
config under the names of both transformers 4.x and 5.x (``rope_theta`` / ``rotary_emb_base`` /
``rope_parameters``, ``n_embd`` / ``hidden_size``, ``layer_norm_epsilon`` / ``layer_norm_eps`` /
``rms_norm_eps`` ...), refuses in one line whatever would make our model compute something else
(ALiBi, a sliding window longer sequences would see, MoE, scaled RoPE, GPT-2's per-layer attention
scaling, an unknown ``model_type``), and maps each HF weight onto ours. The layouts that silently go
wrong if guessed:

* GPT-2's ``Conv1D`` stores weights as (in, out): transposed here;
* GPT-NeoX's fused ``query_key_value`` rows are ordered (head, q/k/v, head_dim): regrouped into our
  q-heads | k-heads | v-heads (:func:`mhaexp.nn.attention.qkv_sizes`);
* Llama/Qwen2 K/V heads: query head ``h`` reads K/V head ``h // group``, which is our layout as it is;
* tied embeddings are usually absent from the file (``lm_head`` is the token embedding);
* BERT: token types, the embedding LayerNorm, post-LN blocks, the MLM head's transform and bias.

Weights stream from ``*.safetensors`` into a preallocated model one tensor (large ones in row
chunks) at a time with plain file reads. Not through ``safe_open``: it maps the whole file, and the
pages it touches count in the process's resident memory until it closes, which was measured to make
the peak twice the weights. A ``pytorch_model.bin``-only directory (older hub revisions, Pythia's
step branches among them) is memory-mapped (``torch.load(mmap=True, weights_only=True)``), and the
pages of each tensor are handed back to the kernel once it is copied (:meth:`HFWeights.release`), for
the same reason: mapped pages count in the resident memory too (measured: 2.07x the weights above the
libraries' baseline without the release, 1.2x with it). Every parameter of the model must be filled and
every tensor of the file used or known to be a buffer; otherwise the import stops.

``transformers`` is imported only when a config is read (:func:`read_hf_config`), never by
:mod:`mhaexp.nn.model`.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mhaexp.errors import ConfigError
from mhaexp.nn.config import ModelConfig
from mhaexp.nn.model import Transformer

__all__ = ["FAMILIES", "HFWeights", "hf_model_config", "import_hf_directory", "read_hf_config"]

FIELD = "source"
# HF activation names -> ours (ModelConfig.mlp). gelu is the exact erf GELU in HF's ACT2FN.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# Families people ask for that compute something our layer does not: named in the refusal.
UNSUPPORTED = {
    "mixtral": "a mixture-of-experts (MoE) block",
    "qwen2_moe": "a mixture-of-experts (MoE) block",
    "qwen3_moe": "a mixture-of-experts (MoE) block",
    "bloom": "ALiBi position biases",
    "mpt": "ALiBi position biases",
    "gpt_neo": "local (windowed) attention layers",
}
CHUNK_BYTES = 64 << 20  # a large tensor is read in row chunks of about this size
# Tensors some files carry that are buffers or heads outside the computed model (HF ignores them too).
IGNORED = re.compile(
    r"(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|rotary_emb\.inv_freq|position_ids"
    r"|^(bert\.)?pooler\..*|^cls\.seq_relationship\..*)$"
)


# ---- the HF config --------------------------------------------------------------------------------


def read_hf_config(directory: str | Path, source: str) -> dict[str, Any]:
    """The HF config of a local ``save_pretrained`` directory as a dict (``AutoConfig``, so both the
    4.x and 5.x spellings a file may use are seen; the converters read either)."""
    from transformers import AutoConfig

    if not (Path(directory) / "config.json").is_file():
        raise ConfigError(FIELD, source, "has no config.json; give a save_pretrained directory or a hub model name")
    raw = json.loads((Path(directory) / "config.json").read_text())
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(FIELD, source, _unsupported_type(model_type))
    try:
        cfg = AutoConfig.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - any failure of the library means the config is unusable
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(FIELD, source, f"its config.json cannot be read ({type(e).__name__}: {first})") from None
    # The file's own keys win over the library's defaults where both exist (a 4.x key the installed
    # version renamed is still in ``raw``); the library adds what a file leaves to defaults.
    return {**cfg.to_dict(), **raw}


def _unsupported_type(model_type: Any) -> str:
    why = UNSUPPORTED.get(str(model_type))
    supported = ", ".join(sorted(FAMILIES))
    if why:
        return f"model_type {model_type!r} has {why}, which mhaexp does not compute; supported: {supported}"
    return f"model_type {model_type!r} is not supported; supported: {supported}"


def _get(c: dict[str, Any], *names: str, default: Any = ...) -> Any:
    """The first of ``names`` set in ``c`` (4.x and 5.x spellings), else ``default`` (required if none)."""
    for name in names:
        if c.get(name) is not None:
            return c[name]
    if default is ...:
        raise ConfigError(FIELD, c.get("_source", "?"), f"its config has none of {', '.join(names)}")
    return default


def _refuse(c: dict[str, Any], what: str) -> ConfigError:
    return ConfigError(FIELD, c.get("_source", "?"), f"{what}; importing it would compute a different model")


def _activation(c: dict[str, Any], *names: str, default: str) -> str:
    act = _get(c, *names, default=default)
    if act not in ACTIVATIONS:
        raise _refuse(c, f"activation {act!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def _rope(c: dict[str, Any], partial_default: float = 1.0) -> tuple[float, float]:
    """(base, rotated fraction) from 5.x ``rope_parameters`` or 4.x ``rope_theta`` / ``rope_scaling`` /
    ``rotary_emb_base`` / ``rotary_pct``; scaled RoPE (linear, dynamic, yarn, llama3 ...) is refused."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    for p in (params, scaling):
        if not isinstance(p, dict) or any(isinstance(v, dict) for v in p.values()):
            raise _refuse(c, f"per-layer-type RoPE parameters {p!r}")
        kind = p.get("rope_type", p.get("type", "default"))
        if kind != "default":
            raise _refuse(c, f"RoPE scaling {kind!r} (only plain RoPE is supported)")
    base = _get({**c, **params}, "rope_theta", "rotary_emb_base", default=10000.0)
    pct = _get({**c, **params}, "partial_rotary_factor", "rotary_pct", default=partial_default)
    return float(base), float(pct)


def _positions(c: dict[str, Any], max_seq_len: int | None) -> int:
    own = int(_get(c, "n_positions", "max_position_embeddings", "n_ctx"))
    if max_seq_len is None:
        return own
    if not 0 < max_seq_len <= own:
        raise ConfigError("max_seq_len", max_seq_len, f"must be in 1..{own} (the model's max_position_embeddings)")
    return max_seq_len


# ---- one converter per family: config -> ModelConfig, and where each of our tensors comes from ------

# A source of one of our tensors: reads what it needs from the file (through ``HFWeights``).
Source = Callable[["HFWeights"], Tensor]


@dataclass(frozen=True)
class Family:
    """How one HF family maps onto our model: its config reader and its weight map."""

    config: Callable[[dict[str, Any], int | None], ModelConfig]
    weights: Callable[[ModelConfig, dict[str, Any]], dict[str, Source | str]]
    prefix: str  # the base model's key prefix (files written by the bare base model lack it)


def _common(c: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "vocab_size": int(_get(c, "vocab_size")),
        "n_layers": int(_get(c, "num_hidden_layers", "n_layer")),
        "d_model": int(_get(c, "hidden_size", "n_embd")),
        "n_heads": int(_get(c, "num_attention_heads", "n_head")),
        "dropout": 0.0,
        **kw,
    }


def _no_cross_attention(c: dict[str, Any]) -> None:
    if c.get("add_cross_attention"):
        raise _refuse(c, "add_cross_attention=true (an encoder-decoder block)")


def gpt2_config(c: dict[str, Any], max_seq_len: int | None) -> ModelConfig:
    _no_cross_attention(c)
    if c.get("scale_attn_by_inverse_layer_idx"):
        raise _refuse(c, "scale_attn_by_inverse_layer_idx=true (attention scaled by 1/layer)")
    if not c.get("scale_attn_weights", True):
        raise _refuse(c, "scale_attn_weights=false (unscaled attention scores)")
    d = int(_get(c, "n_embd", "hidden_size"))
    return ModelConfig(
        **_common(c),
        d_ff=int(_get(c, "n_inner", "intermediate_size", default=4 * d)),
        max_seq_len=_positions(c, max_seq_len),
        pos="learned",
        bias=True,
        tie_embeddings=bool(c.get("tie_word_embeddings", True)),
        norm="layernorm",
        norm_eps=float(_get(c, "layer_norm_epsilon", "layer_norm_eps", default=1e-5)),
        mlp=_activation(c, "activation_function", "hidden_act", default="gelu_new"),
    )


def gpt2_weights(cfg: ModelConfig, c: dict[str, Any]) -> dict[str, Source | str]:
    # Conv1D weights are (in, out): our Linear's (out, in) is their transpose. c_attn's columns are
    # q | k | v, each heads side by side: our fused rows once transposed.
    m: dict[str, Source | str] = {"tok_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight"}
    for i in range(cfg.n_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ours, theirs in (("attn.qkv_proj", "attn.c_attn"), ("attn.o_proj", "attn.c_proj")):
            m[f"{b}{ours}.weight"] = _transposed(h + theirs + ".weight")
            m[f"{b}{ours}.bias"] = h + theirs + ".bias"
        for ours, theirs in (("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            m[f"{b}{ours}.weight"] = _transposed(h + theirs + ".weight")
            m[f"{b}{ours}.bias"] = h + theirs + ".bias"
        m.update(_norm(f"{b}ln_1", h + "ln_1", True))
        m.update(_norm(f"{b}ln_2", h + "ln_2", True))
    m.update(_norm("ln_f", "ln_f", True))
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = "^lm_head.weight"
    return m


def bert_config(c: dict[str, Any], max_seq_len: int | None) -> ModelConfig:
    _no_cross_attention(c)
    if c.get("is_decoder"):
        raise _refuse(c, "is_decoder=true (a causal BERT)")
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise _refuse(c, f"position_embedding_type={c['position_embedding_type']!r} (relative positions)")
    return ModelConfig(
        **_common(c),
        d_ff=int(_get(c, "intermediate_size")),
        max_seq_len=_positions(c, max_seq_len),
        pos="learned",
        causal=False,
        bias=True,
        tie_embeddings=bool(c.get("tie_word_embeddings", True)),
        norm="layernorm",
        norm_eps=float(_get(c, "layer_norm_eps", default=1e-12)),
        norm_position="post",
        mlp=_activation(c, "hidden_act", default="gelu"),
        type_vocab_size=int(_get(c, "type_vocab_size", default=2)),
        mlm_head=True,
    )


def bert_weights(cfg: ModelConfig, c: dict[str, Any]) -> dict[str, Source | str]:
    e = "embeddings."
    m: dict[str, Source | str] = {
        "tok_emb.weight": e + "word_embeddings.weight",
        "pos_emb.weight": e + "position_embeddings.weight",
        "type_emb.weight": e + "token_type_embeddings.weight",
        **_norm("emb_norm", e + "LayerNorm", True),
        **_norm("mlm_head.norm", "^cls.predictions.transform.LayerNorm", True),
        "mlm_head.dense.weight": "^cls.predictions.transform.dense.weight",
        "mlm_head.dense.bias": "^cls.predictions.transform.dense.bias",
        # The decoder's own bias is what HF adds (5.x keeps it apart from cls.predictions.bias when the
        # decoder is untied; 4.x ties the two, and older files carry only cls.predictions.bias).
        "lm_head.bias": _first("^cls.predictions.decoder.bias", "^cls.predictions.bias"),
    }
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = "^cls.predictions.decoder.weight"
    for i in range(cfg.n_layers):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        a = h + "attention."
        parts = [a + f"self.{p}" for p in ("query", "key", "value")]
        m[b + "attn.qkv_proj.weight"] = _concat(*(p + ".weight" for p in parts))
        m[b + "attn.qkv_proj.bias"] = _concat(*(p + ".bias" for p in parts))
        m[b + "attn.o_proj.weight"] = a + "output.dense.weight"
        m[b + "attn.o_proj.bias"] = a + "output.dense.bias"
        m.update(_norm(b + "ln_1", a + "output.LayerNorm", True))  # post-LN: after attention's residual
        m[b + "mlp.fc.weight"] = h + "intermediate.dense.weight"
        m[b + "mlp.fc.bias"] = h + "intermediate.dense.bias"
        m[b + "mlp.proj.weight"] = h + "output.dense.weight"
        m[b + "mlp.proj.bias"] = h + "output.dense.bias"
        m.update(_norm(b + "ln_2", h + "output.LayerNorm", True))
    return m


def llama_config(c: dict[str, Any], max_seq_len: int | None) -> ModelConfig:
    """Llama, Mistral (TinyLlama and SmolLM are Llama) and Qwen2: RMSNorm, SwiGLU, RoPE, GQA."""
    if _get(c, "hidden_act", default="silu") != "silu":
        raise _refuse(c, f"hidden_act {c['hidden_act']!r} (the gated MLP here is SwiGLU, silu)")
    base, pct = _rope(c)
    positions = _positions(c, max_seq_len)
    _check_window(c, positions)
    qwen2 = c.get("model_type") == "qwen2"
    attn_bias = bool(c.get("attention_bias", False))
    d, nh = int(_get(c, "hidden_size")), int(_get(c, "num_attention_heads"))
    return ModelConfig(
        **_common(c),
        n_kv_heads=int(_get(c, "num_key_value_heads", default=nh)),
        head_dim=int(_get(c, "head_dim", default=d // nh)),
        d_ff=int(_get(c, "intermediate_size")),
        max_seq_len=positions,
        pos="rope",
        rope_base=base,
        rotary_pct=pct,
        bias=False,  # RMSNorm has none
        qkv_bias=True if qwen2 else attn_bias,  # Qwen2: q/k/v biases, none on o_proj or the MLP
        o_bias=False if qwen2 else attn_bias,
        mlp_bias=False if qwen2 else bool(c.get("mlp_bias", False)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        norm="rmsnorm",
        norm_eps=float(_get(c, "rms_norm_eps", default=1e-6)),
        mlp="swiglu",
    )


def _check_window(c: dict[str, Any], positions: int) -> None:
    """A sliding window changes attention only past its width: refused unless max_seq_len stays within it."""
    window = c.get("sliding_window")
    active = window is not None and (c.get("model_type") != "qwen2" or bool(c.get("use_sliding_window")))
    if any(t != "full_attention" for t in c.get("layer_types") or ()) and window is None:
        raise _refuse(c, f"layer types {sorted(set(c['layer_types']))}")
    if active and positions > int(window):
        raise _refuse(
            c,
            f"sliding-window attention (window {window}) differs from full attention past {window} tokens "
            f"(max_position_embeddings {positions}); pass max_seq_len={window} or less to import it for "
            "sequences within the window",
        )


def llama_weights(cfg: ModelConfig, c: dict[str, Any]) -> dict[str, Source | str]:
    # Query head h reads K/V head h // group in HF as here; HF's q/k rows are already in the
    # rotate_half layout our RoPE uses, so q, k and v rows are stacked as they are.
    m: dict[str, Source | str] = {"tok_emb.weight": "embed_tokens.weight", "ln_f.weight": "norm.weight"}
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = "^lm_head.weight"
    for i in range(cfg.n_layers):
        h, b = f"layers.{i}.", f"blocks.{i}."
        parts = [h + f"self_attn.{p}_proj" for p in "qkv"]
        m[b + "attn.qkv_proj.weight"] = _concat(*(p + ".weight" for p in parts))
        if cfg.qkv_bias:
            m[b + "attn.qkv_proj.bias"] = _concat(*(p + ".bias" for p in parts))
        m[b + "attn.o_proj.weight"] = h + "self_attn.o_proj.weight"
        if cfg.o_bias:
            m[b + "attn.o_proj.bias"] = h + "self_attn.o_proj.bias"
        for ours, theirs in (("fc", "up_proj"), ("gate", "gate_proj"), ("proj", "down_proj")):
            m[f"{b}mlp.{ours}.weight"] = f"{h}mlp.{theirs}.weight"
            if cfg.mlp_bias:
                m[f"{b}mlp.{ours}.bias"] = f"{h}mlp.{theirs}.bias"
        m[b + "ln_1.weight"] = h + "input_layernorm.weight"
        m[b + "ln_2.weight"] = h + "post_attention_layernorm.weight"
    return m


def neox_config(c: dict[str, Any], max_seq_len: int | None) -> ModelConfig:
    base, pct = _rope(c, partial_default=0.25)  # GPTNeoXConfig's default rotary_pct
    attn_bias = bool(c.get("attention_bias", True))
    return ModelConfig(
        **_common(c),
        d_ff=int(_get(c, "intermediate_size")),
        max_seq_len=_positions(c, max_seq_len),
        pos="rope",
        rope_base=base,
        rotary_pct=pct,
        bias=True,
        qkv_bias=attn_bias,
        o_bias=attn_bias,
        mlp_bias=True,
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        norm="layernorm",
        norm_eps=float(_get(c, "layer_norm_eps", default=1e-5)),
        mlp=_activation(c, "hidden_act", default="gelu"),
        parallel_residual=bool(c.get("use_parallel_residual", True)),
    )


def neox_weights(cfg: ModelConfig, c: dict[str, Any]) -> dict[str, Source | str]:
    m: dict[str, Source | str] = {"tok_emb.weight": "embed_in.weight", **_norm("ln_f", "final_layer_norm", True)}
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = "^embed_out.weight"
    for i in range(cfg.n_layers):
        h, b = f"layers.{i}.", f"blocks.{i}."
        m[b + "attn.qkv_proj.weight"] = _neox_qkv(h + "attention.query_key_value.weight", cfg)
        if cfg.qkv_bias:
            m[b + "attn.qkv_proj.bias"] = _neox_qkv(h + "attention.query_key_value.bias", cfg)
        m[b + "attn.o_proj.weight"] = h + "attention.dense.weight"
        if cfg.o_bias:
            m[b + "attn.o_proj.bias"] = h + "attention.dense.bias"
        for ours, theirs in (("fc", "dense_h_to_4h"), ("proj", "dense_4h_to_h")):
            m[f"{b}mlp.{ours}.weight"] = f"{h}mlp.{theirs}.weight"
            m[f"{b}mlp.{ours}.bias"] = f"{h}mlp.{theirs}.bias"
        m.update(_norm(b + "ln_1", h + "input_layernorm", True))
        m.update(_norm(b + "ln_2", h + "post_attention_layernorm", True))
    return m


FAMILIES: dict[str, Family] = {
    "gpt2": Family(gpt2_config, gpt2_weights, "transformer."),
    "bert": Family(bert_config, bert_weights, "bert."),
    "llama": Family(llama_config, llama_weights, "model."),
    "mistral": Family(llama_config, llama_weights, "model."),
    "qwen2": Family(llama_config, llama_weights, "model."),
    "gpt_neox": Family(neox_config, neox_weights, "gpt_neox."),
}


def hf_model_config(c: dict[str, Any], source: str, max_seq_len: int | None = None) -> ModelConfig:
    """Our :class:`ModelConfig` for an HF config dict, or a ConfigError naming what is not supported."""
    c = {**c, "_source": source}
    model_type = c.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(FIELD, source, _unsupported_type(model_type))
    return FAMILIES[model_type].config(c, max_seq_len)


# ---- weight sources ---------------------------------------------------------------------------------


def _norm(ours: str, theirs: str, bias: bool) -> dict[str, Source | str]:
    out: dict[str, Source | str] = {f"{ours}.weight": f"{theirs}.weight"}
    if bias:
        out[f"{ours}.bias"] = f"{theirs}.bias"
    return out


def _transposed(name: str) -> Source:
    return lambda w: w.read(name).t()


def _concat(*names: str) -> Source:
    return lambda w: torch.cat([w.read(n) for n in names])


def _first(*names: str) -> Source:
    """The first of ``names`` the file has; the others (tied copies) are marked used."""

    def read(w: HFWeights) -> Tensor:
        present = [n for n in names if w.has(n)]
        if not present:
            return w.read(names[0])  # names the missing tensor
        for n in present[1:]:
            w.mark_used(n)
        return w.read(present[0])

    return read


def _neox_qkv(name: str, cfg: ModelConfig) -> Source:
    """NeoX's fused rows (head, q/k/v, head_dim) -> ours: all q heads, all k heads, all v heads."""

    def read(w: HFWeights) -> Tensor:
        t = w.read(name)
        rest = t.shape[1:]
        return t.view(cfg.n_heads, 3, cfg.head_dim, *rest).transpose(0, 1).reshape(t.shape)

    return read


# ---- the files ----------------------------------------------------------------------------------------

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# The files transformers itself loads, safetensors first; other *.safetensors some repos ship
# (Mistral's consolidated.safetensors: the same weights under other names) are not the model's.
WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")


def weight_files(directory: Path) -> list[Path]:
    """The model's weight files in ``directory``: the shards its index names, else what matches
    :data:`WEIGHT_PATTERNS` (safetensors first); empty if none."""
    for pattern in WEIGHT_PATTERNS:
        index = directory / (pattern.replace("*", "") + ".index.json")
        if index.is_file():
            return sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
        files = sorted(directory.glob(pattern))
        if files:
            return files
    return []


class HFWeights:
    """The tensors of a ``save_pretrained`` directory, read one at a time (see the module docstring).

    Names are looked up with the family's base prefix first, then without it (a bare base model's
    file), and ``LayerNorm.gamma``/``beta`` of old BERT files stand for ``weight``/``bias``. A name
    starting with ``^`` is a head outside the base model: looked up as written.
    """

    def __init__(self, directory: Path, prefix: str, source: str) -> None:
        self.source = source
        self.prefix = prefix
        self.used: set[str] = set()
        self._where: dict[str, tuple[Path, dict[str, Any], int]] = {}
        self._bin: dict[str, Tensor] = {}
        self._released: set[str] = set()
        files = weight_files(directory)
        if files and files[0].suffix == ".safetensors":
            for f in files:
                header, start = _safetensors_header(f, source)
                for name, info in header.items():
                    if name != "__metadata__":
                        self._where[name] = (f, info, start)
        elif files:
            for f in files:
                self._bin.update(torch.load(f, map_location="cpu", mmap=True, weights_only=True))
        else:
            raise ConfigError(FIELD, source, f"has no weights ({' or '.join(WEIGHT_PATTERNS)})")

    def release(self) -> None:
        """Drop the mapped pages of the ``.bin`` tensors read so far from the resident memory (call it once
        what was read from them is copied). They are clean pages of the file: touched again, they are
        read again from it, so a tensor sharing a page with one released reads the same values."""
        for key in self.used - self._released:
            if key in self._bin:
                storage = self._bin[key].untyped_storage()
                _drop_pages(storage.data_ptr(), storage.nbytes())
        self._released |= self.used

    def names(self) -> set[str]:
        return set(self._where) | set(self._bin)

    def _resolve(self, name: str) -> str | None:
        if name.startswith("^"):
            candidates = [name[1:]]
        else:
            candidates = [self.prefix + name, name]
        for c in list(candidates):
            if c.endswith("LayerNorm.weight"):
                candidates.append(c[: -len("weight")] + "gamma")
            elif c.endswith("LayerNorm.bias"):
                candidates.append(c[: -len("bias")] + "beta")
        return next((c for c in candidates if c in self._where or c in self._bin), None)

    def has(self, name: str) -> bool:
        return self._resolve(name) is not None

    def mark_used(self, name: str) -> None:
        key = self._resolve(name)
        if key is not None:
            self.used.add(key)

    def _key(self, name: str) -> str:
        key = self._resolve(name)
        if key is None:
            raise ConfigError(FIELD, self.source, f"its weights lack {name.lstrip('^')} (the config says it exists)")
        self.used.add(key)
        return key

    def shape(self, name: str) -> tuple[int, ...]:
        key = self._key(name)
        if key in self._bin:
            return tuple(self._bin[key].shape)
        return tuple(self._where[key][1]["shape"])

    def read(self, name: str) -> Tensor:
        """The whole tensor, in the file's dtype."""
        key = self._key(name)
        if key in self._bin:
            return self._bin[key]
        shape = self._where[key][1]["shape"]
        return self.read_rows(name, 0, shape[0] if shape else 1).view(shape)

    def read_rows(self, name: str, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of a tensor (dim 0), read straight from the file into a new tensor."""
        key = self._key(name)
        if key in self._bin:
            return self._bin[key][start:stop]
        path, info, data_start = self._where[key]
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConfigError(FIELD, self.source, f"tensor {key} has dtype {info['dtype']}, which cannot be read")
        shape = info["shape"]
        row = int(torch.Size(shape[1:]).numel()) if shape else 1
        out = torch.empty((stop - start) * row, dtype=dtype)
        nbytes = out.numel() * out.element_size()
        with open(path, "rb") as f:
            f.seek(data_start + info["data_offsets"][0] + start * row * out.element_size())
            got = f.readinto(memoryview(out.view(torch.uint8).numpy()))
        if got != nbytes:
            raise ConfigError(FIELD, self.source, f"{path.name} is truncated (tensor {key})")
        return out.view(stop - start, *shape[1:]) if shape else out.view(())

    def copy_into(self, name: str, dst: Tensor, leading_rows: bool = False) -> None:
        """``dst.copy_(tensor)`` in row chunks, so no second copy of a large tensor is ever alive.
        ``leading_rows``: the tensor may have more rows than ``dst``, which takes the first ones."""
        shape = self.shape(name)
        rows = dst.shape[0] if dst.dim() else 1
        same = tuple(shape) == tuple(dst.shape)
        if not same and not (leading_rows and shape[0] >= rows and tuple(shape[1:]) == tuple(dst.shape[1:])):
            raise _shape_error(self.source, name, shape, tuple(dst.shape))
        per_row = max(1, dst[0].numel() * 4) if dst.dim() else 4
        step = max(1, CHUNK_BYTES // per_row)
        if not dst.dim():
            dst.copy_(self.read(name))
            return
        mapped = self._key(name) in self._bin
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            chunk = self.read_rows(name, start, stop)
            dst[start:stop].copy_(chunk)
            if mapped and chunk.is_contiguous():  # a large .bin tensor gives its pages back chunk by chunk
                _drop_pages(chunk.data_ptr(), chunk.numel() * chunk.element_size())


def _madvise() -> Callable[..., int] | None:
    """libc's ``madvise`` where ``MADV_DONTNEED`` drops a file mapping's pages (Linux), else None."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None


_MADVISE = _madvise()


def _drop_pages(start: int, nbytes: int) -> None:
    """``madvise(MADV_DONTNEED)`` over the memory-mapped bytes ``start:start + nbytes``, rounded out to
    whole pages. Without it (not Linux) the import still works, its peak memory is just higher."""
    if _MADVISE is None or nbytes <= 0:
        return
    first = start - start % mmap.PAGESIZE
    _MADVISE(ctypes.c_void_p(first), ctypes.c_size_t(start + nbytes - first), mmap.MADV_DONTNEED)


def _safetensors_header(path: Path, source: str) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file (u64 little-endian length, then JSON) and where data starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ConfigError(FIELD, source, f"{path.name} is empty or truncated")
        (n,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ConfigError(FIELD, source, f"{path.name} is not a safetensors file") from None
    return header, 8 + n


def _shape_error(source: str, name: str, theirs: tuple[int, ...], ours: tuple[int, ...]) -> ConfigError:
    why = f"tensor {name.lstrip('^')} has shape {theirs}, the config implies {ours}: config and weights differ"
    return ConfigError(FIELD, source, why)


# ---- the import ----------------------------------------------------------------------------------------


@torch.no_grad()
def import_hf_directory(
    directory: str | Path, source: str, max_seq_len: int | None = None
) -> tuple[Transformer, dict[str, Any]]:
    """A local ``save_pretrained`` directory -> our :class:`Transformer` (fp32, eval mode) and the HF config.

    The model is built first, then each of its parameters is filled from the file; every parameter
    must be filled and every tensor in the file used (or a known buffer), so nothing is guessed.
    """
    directory = Path(directory)
    c = read_hf_config(directory, source)
    cfg = hf_model_config(c, source, max_seq_len)
    family = FAMILIES[c["model_type"]]
    plan = family.weights(cfg, {**c, "_source": source})
    weights = HFWeights(directory, family.prefix, source)
    model = Transformer(cfg)
    params = dict(model.named_parameters())  # tied weights appear once, under tok_emb
    missing = sorted(set(params) - set(plan))
    if missing:  # a converter that forgets a parameter would leave it at its random init
        raise RuntimeError(f"the {c['model_type']} converter does not fill {missing}")
    for key, src in plan.items():
        if key not in params:
            raise RuntimeError(f"the {c['model_type']} converter fills {key}, which the model does not have")
        dst = params[key]
        if isinstance(src, str):
            # A position table may be longer than the max_seq_len asked for: its first rows serve.
            weights.copy_into(src, dst, leading_rows=key == "pos_emb.weight")
        else:
            t = src(weights)
            if tuple(t.shape) != tuple(dst.shape):
                raise _shape_error(source, key, tuple(t.shape), tuple(dst.shape))
            dst.copy_(t)
            del t
        weights.release()  # the .bin pages just copied from leave the resident memory
    for tied in ("lm_head.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
        if cfg.tie_embeddings or tied.endswith("bias"):
            weights.mark_used("^" + tied)  # a tied copy some files carry: HF ties it on load, as we do
    unused = sorted(n for n in weights.names() - weights.used if not IGNORED.search(n))
    if unused:
        raise ConfigError(
            FIELD,
            source,
            f"its weights hold {len(unused)} tensor(s) the {c['model_type']} converter does not map "
            f"(first: {unused[0]}); importing without them would compute a different model",
        )
    return model.eval(), c

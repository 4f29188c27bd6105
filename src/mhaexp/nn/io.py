"""Model I/O: one of our checkpoints -> a :class:`Transformer`, and a Transformer -> a checkpoint dict.

Every command that rebuilds a model (``mhaexp-analyze``, ``mhaexp-prune``, ``init_from``, the studies)
goes through :func:`load_model` / :func:`model_state`, and every writer of a model (pruning, GQA
conversion, ``mhaexp-import``) through :func:`checkpoint_for`, so trained, pruned and imported models
are the same kind of file. The file format itself (the ``mhaexp`` key, the reader, the atomic
writer) is :mod:`mhaexp.checkpoint`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import Tensor, nn

from mhaexp.checkpoint import CHECKPOINT_KEY, read_checkpoint
from mhaexp.nn.attention import fuse_separate_qkv
from mhaexp.nn.config import ModelConfig
from mhaexp.nn.gates import fold_l0_state
from mhaexp.nn.model import Transformer

__all__ = [
    "checkpoint_config",
    "checkpoint_for",
    "data_vocab_bounds",
    "load_model",
    "model_state",
    "plain",
    "provenance",
    "saved_tokenizer",
    "state_shapes",
]

CHECKPOINT_VERSION = 1


def checkpoint_config(ckpt: dict[str, Any]) -> ModelConfig:
    """The model config stored under the checkpoint's ``mhaexp`` key."""
    return ModelConfig(**ckpt[CHECKPOINT_KEY]["model"])


def data_vocab_bounds(ckpt: dict[str, Any]) -> tuple[int, int]:
    """(fewest, most) tokens the data's vocabulary may have to feed the model of ``ckpt``.

    At most its token embedding rows (``model.vocab_size``): more ids would have no embedding. At least
    the vocabulary it was made for, the ``data_vocab_size`` its training run or ``mhaexp-import`` recorded:
    an imported table is often padded past its tokenizer (Pythia: 50277 tokens in 50304 rows), and a
    tokenizer extended into the padding fits as well, but a smaller one is another tokenizer. An imported
    model saved without a tokenizer takes any that fits; a checkpoint without the record, exactly its rows.
    """
    rows = checkpoint_config(ckpt).vocab_size
    made_for = (ckpt.get("hyper_parameters") or {}).get("data_vocab_size")
    if made_for is None:
        made_for = 1 if "imported" in ckpt[CHECKPOINT_KEY] else rows
    return int(made_for), rows


def saved_tokenizer(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """The tokenizer ``mhaexp-import`` saved beside the checkpoint at ``path`` (its ``tokenizer`` entry
    names it relative to the checkpoint's folder, so the two move together; one derived from it names it
    by its absolute path, :func:`provenance`), or None."""
    beside = ckpt[CHECKPOINT_KEY].get("tokenizer")
    return Path(path).parent / beside if beside else None


def provenance(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a checkpoint made from the one at ``path`` (pruned, converted) carries over of where its model
    came from: the ``imported`` record, and the tokenizer saved beside it, as an absolute path (the new file
    may be written elsewhere), so ``mhaexp-analyze`` and ``mhaexp-prune``'s hint still find it."""
    out: dict[str, Any] = {}
    if "imported" in ckpt[CHECKPOINT_KEY]:
        out["imported"] = ckpt[CHECKPOINT_KEY]["imported"]
    tokenizer = saved_tokenizer(ckpt, path)
    if tokenizer is not None:
        out["tokenizer"] = str(tokenizer.resolve())
    return out


def model_state(ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """The Transformer's state (``model.`` prefix stripped), L0 gates folded into ``head_gate``, q/k/v
    in the fused layout (checkpoints written before it carry separate ``q_proj``/``k_proj``/``v_proj``)."""
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return fuse_separate_qkv(fold_l0_state(state))


def load_model(path: str | os.PathLike[str], field_name: str = "ckpt") -> Transformer:
    """Rebuild the :class:`Transformer` of one of our checkpoints (trained, pruned or imported), in eval
    mode; its config is ``model.cfg``. A missing or foreign file is a ConfigError naming ``field_name``."""
    ckpt = read_checkpoint(path, field_name)
    model = Transformer(checkpoint_config(ckpt))
    model.load_state_dict(model_state(ckpt))
    return model.eval()


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state_dict entry's shape: what a state must match to load into ``model``."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def checkpoint_for(
    model: Transformer,
    base: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint dict for ``model`` that both ``LMModule.load_from_checkpoint`` and :func:`load_model` read.

    ``base`` (a source checkpoint) gives step counters and hyper-parameters; optimizer and loop
    states are dropped (they describe the old shapes). ``extra`` goes under the ``mhaexp`` key.
    """
    base = base or {}
    hp = plain(copy.deepcopy(dict(hparams if hparams is not None else base.get("hyper_parameters") or {})))
    hp["model"] = asdict(model.cfg)
    hp.setdefault("optim", {})
    if any(isinstance(layer.gate_fn, nn.Module) for layer in model.attention_layers):
        raise ValueError("fold the L0 gates (fold_l0_gates) before saving a pruned checkpoint")
    meta = {"model": asdict(model.cfg), "version": CHECKPOINT_VERSION}
    meta.update(plain(extra or {}))
    return {
        "state_dict": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": hp,
        CHECKPOINT_KEY: meta,
        "pytorch-lightning_version": base.get("pytorch-lightning_version", pl.__version__),
        "epoch": base.get("epoch", 0),
        "global_step": base.get("global_step", 0),
    }


def plain(x: Any) -> Any:
    """OmegaConf containers -> dicts and lists, so the file loads with ``torch.load(weights_only=True)``."""
    try:
        from omegaconf import Container, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        Container = ()  # noqa: N806
    if Container and isinstance(x, Container):
        return OmegaConf.to_container(x, resolve=True)
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(plain(v) for v in x)
    return x

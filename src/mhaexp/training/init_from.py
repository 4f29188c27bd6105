"""``init_from=<ckpt>``: start a run from another run's (or an imported model's) weights, and measure
what the conversion cost.

The K/V head conversion itself (MHA -> GQA/MQA, Ainslie et al. 2023) is
:func:`mhaexp.pruning.surgery.convert_state` and reading the checkpoint :mod:`mhaexp.nn.io`; this
module is the training side: the preflight check (:func:`validate_init`), the load into the run's
model (:func:`load_init`), and the callback that scores the source and the converted model on the
same held-out batches before the first step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from mhaexp.checkpoint import read_checkpoint
from mhaexp.errors import ConfigError
from mhaexp.heads.evaluation import evaluate
from mhaexp.nn.config import ModelConfig
from mhaexp.nn.io import checkpoint_config, data_vocab_bounds, model_state, saved_tokenizer, state_shapes
from mhaexp.nn.model import Transformer
from mhaexp.pruning.held_out import BatchSource, held_out_batches, log_to_loggers, module_objective
from mhaexp.pruning.surgery import convert_state
from mhaexp.rundir import INIT_CONVERSION_FILE
from mhaexp.training.module import load_module


def init_vocab_size(path: str | os.PathLike[str], data_vocab: int) -> int:
    """The token embedding rows (``model.vocab_size``) of a run initialized from ``path``: the checkpoint's,
    which may exceed the data's vocabulary (:func:`mhaexp.nn.io.data_vocab_bounds`: a table padded past
    its tokenizer, as Pythia's). The rows past the data's ids are never read as inputs, but their logits
    stay in the softmax, so the model computes what it computed (``init/source_val_loss`` equals
    ``init/converted_val_loss``); cutting them off would change every probability."""
    ckpt = read_checkpoint(path, "init_from", mmap=True)
    fewest, rows = data_vocab_bounds(ckpt)
    if not fewest <= data_vocab <= rows:
        tokenizer = saved_tokenizer(ckpt, path)
        use = f"data.tokenizer={tokenizer}" if tokenizer else "the data it was trained on"
        valid = f"{rows}" if fewest == rows else f"{fewest}..{rows}"
        raise ConfigError(
            "init_from",
            str(path),
            f"its model was made for a vocabulary of {valid} tokens, the data's has {data_vocab}; use {use}",
        )
    return rows


def validate_init(path: str | os.PathLike[str], model_cfg: ModelConfig, gqa_init: str = "mean") -> None:
    """Everything :func:`load_init` would reject, checked before training (no model is built)."""
    ckpt = read_checkpoint(path, "init_from")
    with torch.device("meta"):
        shapes = state_shapes(Transformer(model_cfg))
    convert_state(model_state(ckpt), checkpoint_config(ckpt), model_cfg, shapes, gqa_init, source=str(path))


def load_init(
    module: pl.LightningModule,
    path: str | os.PathLike[str],
    target_model_cfg: ModelConfig,
    gqa_init: str = "mean",
    seed: int = 0,
) -> dict[str, Any]:
    """Load a checkpoint's weights into ``module.model`` (``init_from=``), converting K/V heads.

    When the checkpoint has a different number of K/V heads in a layer (e.g. an MHA checkpoint and
    ``model.n_kv_heads=2``) they are converted with ``gqa_init`` (``mean`` / ``first`` / ``random``;
    Ainslie et al. 2023 uptrain from mean-pooled heads). ``head_gate`` (masks) come along. Only the
    weights load: optimizer state and step start fresh.

    Raises ConfigError when the file is missing or not ours, the K/V count cannot be converted,
    or a parameter's shape differs (both shapes named). Returns a small report for the logs.
    """
    ckpt = read_checkpoint(path, "init_from")
    src_cfg = checkpoint_config(ckpt)
    model = module.model
    state = convert_state(
        model_state(ckpt), src_cfg, target_model_cfg, state_shapes(model), gqa_init, seed, source=str(path)
    )
    model.load_state_dict(state)
    converted = [
        i for i in range(src_cfg.n_layers) if src_cfg.heads_in_layer(i)[1] != target_model_cfg.heads_in_layer(i)[1]
    ]
    return {
        "init_from": str(path),
        "gqa_init": gqa_init if converted else None,
        "converted_layers": converted,
        "kv_heads_before": [src_cfg.heads_in_layer(i)[1] for i in range(src_cfg.n_layers)],
        "kv_heads_after": [target_model_cfg.heads_in_layer(i)[1] for i in range(target_model_cfg.n_layers)],
    }


class InitQualityCallback(pl.Callback):
    """Logs quality before and after ``init_from`` conversion (e.g. MHA -> GQA mean-pooling).

    At the start of a fresh fit: ``init/source_val_loss|acc`` (the checkpoint's own model) and
    ``init/converted_val_loss|acc`` (the model just built from it), on the same held-out batches;
    also written to ``init_conversion.json`` in the run directory.
    """

    def __init__(
        self,
        init_from: str | Path,
        report: dict[str, Any] | None = None,
        run_dir: str | Path | None = None,
        n_batches: int = 4,
        batches: BatchSource = None,
    ) -> None:
        self.init_from = str(init_from)
        self.report = dict(report or {})
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.n_batches = n_batches
        self.batch_source = batches
        self.result: dict[str, Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:  # a resumed run measured this when it started
            return
        batches = held_out_batches(trainer, self.n_batches, pl_module.device, self.batch_source)
        source = load_module(self.init_from, "init_from").to(pl_module.device)
        s_loss, s_acc = evaluate(source.model, batches, module_objective(source))
        del source
        c_loss, c_acc = evaluate(pl_module.model, batches, module_objective(pl_module))
        self.result = {
            "init/source_val_loss": s_loss,
            "init/source_val_acc": s_acc,
            "init/converted_val_loss": c_loss,
            "init/converted_val_acc": c_acc,
        }
        log_to_loggers(trainer, self.result, step=0)
        if trainer.is_global_zero and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / INIT_CONVERSION_FILE).write_text(json.dumps({**self.report, **self.result}, indent=2))

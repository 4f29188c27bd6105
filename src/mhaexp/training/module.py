"""The LightningModule: objective (causal LM or masked LM), optimizer and schedule."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mhaexp import faults
from mhaexp.batch import LOSS_MASK
from mhaexp.checkpoint import CHECKPOINT_KEY, read_checkpoint
from mhaexp.data.source import ValidationMetric
from mhaexp.errors import NonFiniteLossError
from mhaexp.nn.attention import FUSED_QKV, SEPARATE_QKV
from mhaexp.nn.io import model_state
from mhaexp.nn.model import ModelConfig, Transformer
from mhaexp.nn.objectives import IGNORE, causal_targets
from mhaexp.training.config import OptimConfig

__all__ = ["LMModule", "warmup_cosine"]


class LMModule(pl.LightningModule):
    """Trains a :class:`Transformer` on a causal-LM (``causal=True``) or masked-LM objective.

    Args:
        model: the model's shape; ``vocab_size`` must already match the data.
        optim: the checked ``conf/optim`` (an OptimConfig); a mapping of its keys is checked here, the keys
            it lacks taking OptimConfig's defaults (programmatic use and old checkpoints).
        pad_id / mask_id: special tokens of the data's tokenizer.
        data_vocab_size: the ids the data's tokenizer produces, at most ``model.vocab_size`` (an imported
            table padded past its tokenizer, :func:`mhaexp.training.init_from.init_vocab_size`); None: all
            of them. Masked-LM's random replacements are drawn from these; saved, so the checkpoint says
            which vocabulary it was made for (``mhaexp-analyze`` checks the data against it).
        mlm_probability: share of real tokens masked when the model is bidirectional.
        seed: makes the masked-LM choices a function of (seed, step), so a resumed run repeats them.
        compile: run the training and validation steps' forward through ``torch.compile`` (``trainer.compile``).
            Only those: ``self.model`` itself stays the eager module, so everything else that calls it
            (analysis with ``need_weights``, forward hooks of ablation, gate gradients, L0 gates, surgery)
            computes exactly as without compile; the compiled graph reads the same parameters and
            buffers, so masking a head (``head_gate``) reaches it, and a changed model recompiles.
            A run setting, not a property of the weights: not saved in the checkpoint's hyper-parameters.
    """

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        optim: OptimConfig | Mapping[str, Any],
        pad_id: int = 0,
        mask_id: int | None = None,
        mlm_probability: float = 0.15,
        seed: int = 0,
        compile: bool = False,
        data_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        self.compile_model = compile
        # (the model it was built for, its compiled wrapper); a tuple, so not registered as a submodule.
        self._compiled: tuple[Transformer, Callable[..., Any]] | None = None
        self.model_cfg = model if isinstance(model, ModelConfig) else ModelConfig(**model)
        self.optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**optim)
        self.pad_id = pad_id
        self.mask_id = mask_id
        self.mlm_probability = mlm_probability
        self.seed = seed
        self.data_vocab_size = self.model_cfg.vocab_size if data_vocab_size is None else data_vocab_size
        if not 0 < self.data_vocab_size <= self.model_cfg.vocab_size:
            raise ValueError(f"data_vocab_size={data_vocab_size} must be in 1..{self.model_cfg.vocab_size}")
        self.model = Transformer(self.model_cfg)
        # Extra training-loss terms by name (e.g. the L0 penalty of mhaexp.pruning); callbacks fill it.
        self.extra_losses: dict[str, Callable[[], torch.Tensor]] = {}
        # Parameters trained at their own learning rate, by name (L0 gates under pruning.gate_lr); callbacks fill it.
        self.param_lr: dict[str, float] = {}
        # The data source's task scores this validation, each with its running sums (None before a batch).
        self._val_metrics: list[tuple[ValidationMetric, torch.Tensor | None]] = []
        self.save_hyperparameters(
            {
                "model": asdict(self.model_cfg),
                "optim": self.optim.to_dict(),
                "pad_id": pad_id,
                "mask_id": mask_id,
                "mlm_probability": mlm_probability,
                "seed": seed,
                "data_vocab_size": self.data_vocab_size,
            },
            logger=False,  # the loggers get the whole resolved Hydra config instead
        )

    # ---- objective ---------------------------------------------------------------------------
    def inputs_and_targets(self, batch: dict[str, torch.Tensor], salt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, targets with IGNORE where no loss is taken), both (B, T)."""
        ids, real = batch["input_ids"], batch["attention_mask"].bool()
        if self.model_cfg.causal:
            return ids, causal_targets(ids, real, batch.get(LOSS_MASK))
        if LOSS_MASK in batch:
            raise ValueError("a loss mask (data.loss=answer) needs a causal model")
        if self.mask_id is None:
            raise ValueError("a bidirectional model needs the tokenizer's mask_id for masked-LM")
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + salt)
        u = torch.rand(ids.shape, generator=gen).to(ids.device)
        chosen = (u < self.mlm_probability) & real
        chosen[:, 0] = False  # BOS stays visible: it is the sink/anchor position analysis looks at
        targets = ids.masked_fill(~chosen, IGNORE)
        # BERT's 80/10/10: mostly [MASK], sometimes a random token, sometimes unchanged.
        r = torch.rand(ids.shape, generator=gen).to(ids.device)
        rand_tok = torch.randint(0, self.data_vocab_size, ids.shape, generator=gen).to(ids.device)
        inputs = torch.where(chosen & (r < 0.8), torch.full_like(ids, self.mask_id), ids)
        inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_tok, inputs)
        return inputs, targets

    def loss_and_accuracy(self, batch: dict[str, torch.Tensor], salt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token loss and accuracy of one batch on this process."""
        total, correct, count = self._sums(batch, salt)
        n = count.clamp(min=1)
        return total / n, correct / n

    def _sums(self, batch: dict[str, torch.Tensor], salt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed token loss, correct predictions, scored tokens) of one batch."""
        return self._scored(batch, salt)[:3]

    def _scored(self, batch: dict[str, torch.Tensor], salt: int) -> tuple[torch.Tensor, ...]:
        """``_sums`` plus the logits (B, T, V) and targets (B, T) they came from."""
        inputs, targets = self.inputs_and_targets(batch, salt)
        logits, _ = self.forward_fn()(inputs, attention_mask=batch["attention_mask"])  # (B, T, V)
        total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
        scored = targets != IGNORE
        correct = (logits.argmax(-1) == targets)[scored].sum().float()
        return total, correct, scored.sum().float(), logits, targets

    def forward_fn(self) -> Callable[..., Any]:
        """What the training and validation steps call: ``self.model``, or its compiled wrapper."""
        if not self.compile_model:
            return self.model
        if self._compiled is None or self._compiled[0] is not self.model:
            self._compiled = (self.model, torch.compile(self.model))
        return self._compiled[1]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, correct, count = self._sums(batch, salt=self.global_step)
        faults.point("step", self.global_step)
        world = self.trainer.world_size
        if world > 1:
            # Normalize by the tokens of the whole global batch, not this rank's share: DDP then
            # averages gradients into exactly the single-process gradient of that batch.
            sums = self.trainer.strategy.reduce(torch.stack([total.detach(), correct, count]), reduce_op="sum")
            global_total, global_correct, global_count = sums.unbind()
        else:
            global_total, global_correct, global_count = total.detach(), correct, count
        loss = total * world / global_count.clamp(min=1)
        shown = global_total / global_count.clamp(min=1)
        for name, fn in self.extra_losses.items():
            extra = fn()
            self.log(f"train/{name}", extra.detach(), on_step=True, on_epoch=False, rank_zero_only=True)
            loss = loss + extra
        if not torch.isfinite(shown):
            raise NonFiniteLossError(
                f"train loss is {shown.item()} at step {self.global_step}; stopped before the optimizer step "
                "(lower optim.lr or set trainer.gradient_clip_val)"
            )
        self.log("train/loss", shown, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
        self.log(
            "train/acc", global_correct / global_count.clamp(min=1), on_step=True, on_epoch=False, rank_zero_only=True
        )
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, rank_zero_only=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        # One reduction and one host sync per step; naming the culprits is only worth a loop once it failed.
        if not grads or bool(torch.stack([g.isfinite().all() for _, g in grads]).all()):
            return
        bad = [n for n, g in grads if not bool(g.isfinite().all())]
        raise NonFiniteLossError(
            f"non-finite gradient at step {self.global_step} in {bad[0]}"
            + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
            + "; stopped before the optimizer step (lower optim.lr or set trainer.gradient_clip_val)"
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        total, correct, count, logits, targets = self._scored(batch, salt=-1 - batch_idx)
        n = count.clamp(min=1)
        self.log("val/loss", total / n, prog_bar=True, sync_dist=True)
        self.log("val/acc", correct / n, sync_dist=True)
        # Sums per metric, reduced once at epoch end (ValidationMetric: no mean of per-batch means).
        for i, (metric, sums) in enumerate(self._val_metrics):
            batch_sums = metric.sums(batch, logits, targets)
            self._val_metrics[i] = (metric, batch_sums if sums is None else sums + batch_sums)

    def on_validation_epoch_start(self) -> None:
        from mhaexp.data.datamodule import LMDataModule  # datasets loads with the data, not with this module

        dm = self.trainer.datamodule
        metrics = dm.validation_metrics(self.model_cfg.causal) if isinstance(dm, LMDataModule) else []
        self._val_metrics = [(metric, None) for metric in metrics]

    def on_validation_epoch_end(self) -> None:
        """Log what each of the data source's validation metrics makes of its sums over the whole split."""
        for metric, sums in self._val_metrics:
            if sums is None:
                continue
            if self.trainer.world_size > 1:
                sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            for name, value in metric.finish(sums).items():
                self.log(name, value, rank_zero_only=True)
        self._val_metrics = []

    # ---- optimization ------------------------------------------------------------------------
    def param_groups(self) -> list[tuple[list[str], dict[str, float]]]:
        """The optimizer's parameter groups, in order: (names, options). Weight-decayed, not decayed, then one
        group per learning rate of :attr:`param_lr`."""
        decay, no_decay = [], []
        own: dict[float, list[str]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name in self.param_lr:
                own.setdefault(self.param_lr[name], []).append(name)
            else:
                (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(name)
        groups = [(decay, {"weight_decay": self.optim.weight_decay}), (no_decay, {"weight_decay": 0.0})]
        return groups + [(names, {"weight_decay": 0.0, "lr": lr}) for lr, names in own.items()]

    def param_group_names(self) -> list[list[str]]:
        """Names of the trained parameters of ``self.model`` per optimizer group, in optimizer order."""
        return [names for names, _ in self.param_groups()]

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        params = dict(self.model.named_parameters())
        groups = [{"params": [params[n] for n in names], **opts} for names, opts in self.param_groups()]
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
        total = max(1, int(self.trainer.max_steps if self.trainer.max_steps > 0 else 1000))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(o.warmup_steps, total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint from before the fused q/k/v projection: the weights convert in the layer's
        # load_state_dict pre-hook; the optimizer state (per parameter, by index) converts here.
        if any(k.endswith(f".{SEPARATE_QKV[0]}.weight") for k in checkpoint.get("state_dict", {})):
            groups = self.param_group_names()
            checkpoint["optimizer_states"] = [
                fuse_qkv_optimizer_state(s, groups) for s in checkpoint.get("optimizer_states", [])
            ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"model": asdict(self.model_cfg), "version": 1}


def fuse_qkv_optimizer_state(state: dict[str, Any], groups: Sequence[Sequence[str]]) -> dict[str, Any]:
    """An optimizer ``state_dict`` saved with separate q/k/v parameters -> the fused layout.

    ``groups``: parameter names of each param group in the fused model, in order. Before the fusion each
    ``qkv_proj`` parameter was three (q, k, v) in its place, in the same group; per-parameter state
    tensors (Adam's moments) are concatenated like the weights, scalars (``step``) taken from q. A state
    whose groups do not have the old sizes is returned as it is (the optimizer's own load then says so).
    """
    fused = f".{FUSED_QKV}."
    old_names = [
        [o for n in names for o in ([n.replace(fused, f".{p}.") for p in SEPARATE_QKV] if fused in n else [n])]
        for names in groups
    ]
    saved = state.get("param_groups", [])
    if [len(g["params"]) for g in saved] != [len(n) for n in old_names]:
        return state
    index = {name: i for i, name in enumerate(o for names in old_names for o in names)}
    old_ids = [pid for g in saved for pid in g["params"]]
    per_param = state.get("state", {})
    new_state: dict[int, Any] = {}
    new_groups = []
    j = 0
    for g, names in zip(saved, groups, strict=True):
        ids = []
        for name in names:
            parts = [name.replace(fused, f".{p}.") for p in SEPARATE_QKV] if fused in name else [name]
            states = [per_param.get(old_ids[index[o]]) for o in parts]
            if all(s is not None for s in states):
                new_state[j] = {
                    k: torch.cat([s[k] for s in states]) if torch.is_tensor(v) and v.dim() > 0 else v
                    for k, v in states[0].items()
                }
            ids.append(j)
            j += 1
        new_groups.append({**g, "params": ids})
    return {**state, "state": new_state, "param_groups": new_groups}


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then cosine down to ``min_ratio`` at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def load_module(path: str | os.PathLike[str], field: str = "ckpt") -> LMModule:
    """Rebuild the ``LMModule`` of one of our checkpoints (objective, token ids and all) with its weights."""
    ckpt = read_checkpoint(path, field)
    hp = dict(ckpt.get("hyper_parameters") or {})
    hp["model"] = ckpt[CHECKPOINT_KEY]["model"]
    hp.setdefault("optim", {})
    module = LMModule(**hp)
    module.model.load_state_dict(model_state(ckpt))
    return module.eval()

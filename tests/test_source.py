"""The data source protocol: each source declares its own keys, and supplies the validation metrics the module logs."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from mhaexp.config import domain, param_default
from mhaexp.data.datamodule import LMDataModule
from mhaexp.data.induction import InductionSource
from mhaexp.data.source import RowSource, Source, TokenSource, ValidationMetric
from mhaexp.data.spec import SOURCES, DataConfig
from mhaexp.nn.model import ModelConfig
from mhaexp.nn.objectives import IGNORE
from mhaexp.training.module import LMModule

# What DataConfig hands every source besides its own keys.
SHARED = {"self", "seq_len", "sizes", "seed", "cache_root"}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_each_source_declares_its_keys_and_data_config_takes_them(kind: str) -> None:
    source = SOURCES[kind]
    assert issubclass(source, (RowSource, TokenSource)) and source.kind == kind
    params = set(inspect.signature(source).parameters) - SHARED
    assert set(source.config_keys) == params  # every setting of the source is a conf/data key, and no other
    own = {f.name: f for f in fields(DataConfig) if kind in f.metadata["only"]}
    assert set(own) == params
    for name, check in source.config_keys.items():
        assert own[name].default == param_default(source, name)
        assert domain(DataConfig, name).valid == check.valid
    assert ("cache_root" in inspect.signature(source).parameters) == source.needs_cache_root


class ScoredTokens(ValidationMetric):
    """A toy metric: how many target tokens validation scored."""

    def sums(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (targets != IGNORE).sum()

    def finish(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"val/scored_tokens": sums.float()}


class CountedInduction(InductionSource):
    """Induction data whose validation also counts the scored tokens: a metric added by the source alone."""

    def validation_metrics(self, causal: bool) -> list[ValidationMetric]:
        return [*super().validation_metrics(causal), ScoredTokens()]


def validate(tmp_path: Path, causal: bool) -> tuple[LMDataModule, dict[str, float]]:
    pl.seed_everything(0, verbose=False)
    dm = LMDataModule(
        kind="induction", seq_len=21, n_train=32, n_val=24, n_probe=4, batch_size=8, cache_dir=str(tmp_path)
    )
    dm.source = CountedInduction(seq_len=dm.seq_len, sizes=dm.sizes, seed=dm.seed)
    cfg = ModelConfig(
        vocab_size=dm.vocab_size, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_seq_len=21, causal=causal
    )
    module = LMModule(cfg, {"lr": 1e-3}, pad_id=dm.tokenizer.pad_id, mask_id=dm.tokenizer.mask_id)
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=1,
        check_val_every_n_epoch=None,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    return dm, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_the_module_logs_the_metrics_its_data_source_supplies(tmp_path: Path) -> None:
    dm, logged = validate(tmp_path / "causal", causal=True)
    # Causal targets: every real token after BOS, over the 24 validation sequences (3 batches).
    mask = dm.dataset("val")[:]["attention_mask"]
    assert logged["val/scored_tokens"] == int(mask[:, 1:].sum()) > 0
    assert logged["val/icl_gap"] == pytest.approx(logged["val/loss_repeat"] - logged["val/loss_first"])
    assert 0 < logged["val/loss_first"] < 10 and 0 < logged["val/loss_repeat"] < 10

    _, logged = validate(tmp_path / "masked", causal=False)
    # A masked LM sees both copies: the source gives no in-context gap, and the module logs none.
    assert "val/scored_tokens" in logged and not {"val/icl_gap", "val/loss_first", "val/loss_repeat"} & set(logged)


def test_a_source_is_a_source() -> None:
    """The protocol's defaults: generated data is exactly data.n_train windows, always available, no metric."""
    src = DataConfig(kind="grammar", n_train=100).source
    assert isinstance(src, Source) and src.max_train_windows() == 100 and src.size_key() is None
    assert src.check_available() is None and src.validation_metrics(causal=True) == []

"""Training end to end: the real CLI, the real W&B offline run, real learning."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from mhaexp.data import LMDataModule
from mhaexp.nn.model import ModelConfig
from mhaexp.training.module import LMModule

# This file's runs: the shared tiny run (tests/conftest.py), with these on top.
EXTRA = ["data.n_train=1000", "data.n_val=128", "trainer.val_check_interval=15"]


@pytest.fixture
def train_cli(cli: Callable[..., subprocess.CompletedProcess]) -> Callable[..., subprocess.CompletedProcess]:
    """``train_cli(args, cwd)``: ``mhaexp-train`` through the ``cli`` fixture; it must succeed."""

    def run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = cli("mhaexp-train", *args, cwd=cwd, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    return run


def only_run_dir(cwd: Path) -> Path:
    runs = [p.parent for p in cwd.glob("runs/*/*/status.json")]
    assert len(runs) == 1, runs
    return runs[0]


def test_cli_run_reaches_wandb_with_config_and_loss_history(
    tmp_path: Path,
    wandb_run: Callable[[Path], Path],
    wandb_records: Callable[[Path], list[dict]],
    tiny: list[str],
    train_cli: Callable[..., subprocess.CompletedProcess],
) -> None:
    proc = train_cli([*tiny, *EXTRA, "model.n_heads=4", "model.n_kv_heads=2", "logger.tags=[e2e]"], tmp_path)
    run_dir = only_run_dir(tmp_path)
    assert f"run directory : {run_dir}" in proc.stdout and "wandb sync" in proc.stdout
    records = wandb_records(wandb_run(run_dir))
    config: dict = {}
    for r in records:
        if r["type"] == "run":
            config.update(r["run"]["config"]["update"])
        elif r["type"] == "config":
            config.update(r["config"]["update"])
    assert config["model"]["n_heads"] == 4 and config["model"]["n_kv_heads"] == 2
    assert (config["n_heads"], config["n_kv_heads"], config["head_dim"], config["d_model"]) == (4, 2, 8, 32)
    assert config["params/total"] > 0 and config["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 8 * 2
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["tags"] == ["e2e"] and run["project"] == "mhaexp"
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    train_losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert len(train_losses) == 6  # steps 5, 10, ..., 30
    assert [h["val/loss"] for h in history if "val/loss" in h]
    # The local record holds the same numbers as W&B.
    local = pd.read_csv(run_dir / "metrics.csv")["train/loss"].dropna().tolist()
    assert local == pytest.approx(train_losses, rel=1e-6)
    assert next(r for r in records if r["type"] == "exit")["exit"]["exit_code"] == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_val_loss"] == pytest.approx(min(h["val/loss"] for h in history if "val/loss" in h))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_same_seed_same_curve_other_seed_other_curve(
    tmp_path: Path, tiny: list[str], train_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    curves = []
    for i, seed in enumerate([3, 3, 4]):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        train_cli([*tiny, *EXTRA, "logger=csv", f"seed={seed}", "trainer.max_steps=20"], cwd)
        curves.append(pd.read_csv(only_run_dir(cwd) / "metrics.csv")["train/loss"].dropna().tolist())
    assert len(curves[0]) == 4
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]


def test_two_process_cpu_ddp_run_finishes(
    tmp_path: Path, tiny: list[str], train_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    train_cli(
        [
            *tiny,
            *EXTRA,
            "logger=csv",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=10",
            "trainer.val_check_interval=5",
        ],
        tmp_path,
    )
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "train_ddp_process_1.log").exists()  # the second rank really ran
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 10


def fit(dm: LMDataModule, model_cfg: ModelConfig, steps: int, tmp_path: Path) -> pl.Trainer:
    module = LMModule(
        model_cfg, {"lr": 3e-3, "warmup_steps": 30}, pad_id=dm.tokenizer.pad_id, mask_id=dm.tokenizer.mask_id
    )
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=4,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


def test_tiny_model_learns_the_grammar_beyond_unigram(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = LMDataModule(kind="grammar", n_train=4000, n_val=256, n_probe=8, cache_dir=str(tmp_path))
    cfg = ModelConfig(vocab_size=dm.vocab_size, n_layers=2, d_model=64, n_heads=4, d_ff=128, max_seq_len=32)
    trainer = fit(dm, cfg, 300, tmp_path)
    val = float(trainer.callback_metrics["val/loss"])
    unigram = dm.unigram_loss()
    print(f"val loss {val:.3f} vs unigram {unigram:.3f}")
    assert val < unigram - 1.0  # clearly below: the model uses context


def test_bidirectional_encoder_trains_with_masked_lm(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = LMDataModule(kind="grammar", n_train=1000, n_val=128, n_probe=8, cache_dir=str(tmp_path))
    cfg = ModelConfig(
        vocab_size=dm.vocab_size, n_layers=1, d_model=32, n_heads=4, d_ff=64, max_seq_len=32, causal=False, pos="rope"
    )
    trainer = fit(dm, cfg, 40, tmp_path)
    loss = float(trainer.callback_metrics["val/loss"])
    assert torch.isfinite(torch.tensor(loss)) and loss < torch.log(torch.tensor(float(dm.vocab_size)))

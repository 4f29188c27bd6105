"""A pruning run the way a user starts one: the real CLI, the real offline W&B run, the files it leaves."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from mhaexp.nn.io import load_model


def test_iterative_pruning_run_writes_curve_pruned_checkpoint_and_wandb_records(
    tmp_path: Path, wandb_records: Callable[[Path], list[dict]], cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    run = tmp_path / "run"
    args = [
        "model=tiny",
        "data.n_train=640",
        "data.n_val=64",
        "analysis.probe_sequences=16",
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "analysis=off",
        "pruning=iterative",
        "pruning.fraction=0.5",
        "pruning.step_fraction=0.25",
        "pruning.at_step=20",
        "pruning.finetune_steps=5",
        f"hydra.run.dir={run}",
    ]
    proc = cli("mhaexp-train", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = pd.read_csv(run / "pruning_curve.csv")
    # 8 heads, 2 per step, to half: the unpruned point plus 2 steps.
    assert curve["fraction_pruned"].tolist() == [0.0, 0.25, 0.5]
    assert (run / "pruning_curve.png").stat().st_size > 1000
    pruned = load_model(run / "pruned.ckpt")
    assert sum(a.n_heads for a in pruned.attention_layers) == 4
    with torch.no_grad():
        logits, _ = pruned(torch.randint(4, 50, (2, 16)))
    assert torch.isfinite(logits).all()
    records = wandb_records(next((run / "wandb").glob("offline-run-*")))
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    remaining = [h["pruning/heads_remaining"] for h in history if "pruning/heads_remaining" in h]
    assert remaining == [6.0, 4.0]
    # Media are flattened into history keys (pruning/curve_image.path, ...), the PNG into a files record.
    assert any(k.startswith("pruning/curve_image") for h in history for k in h)
    assert "media/images/pruning/curve_image" in json.dumps(records)

"""``mhaexp-train``: the thin entry point. Check the command line, then let Hydra run each job.

Composition, validation and printing live here; the model, data, loggers and
callbacks live in their own modules.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from mhaexp.callbacks import RunRecord
from mhaexp.config import CONF_DIR, instantiate_plain, validate
from mhaexp.errors import ConfigError
from mhaexp.lightning_module import LMModule
from mhaexp.loggers import build_loggers, wandb_always_finished, wandb_run_dir
from mhaexp.preflight import check_jobs, wants_check

PROG = "mhaexp-train"
# Hydra's own files share the run directory with the CSV log by design; and a deprecation inside
# Lightning is not the user's to act on.
warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
_UID = uuid.uuid4().hex[:6]
# One id per process: two sweeps started in the same second still get different directories.
OmegaConf.register_new_resolver("mhaexp_uid", lambda: _UID, replace=True)


def fail(message: str, code: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str | None:
    """The default W&B group: the sweep directory's name in multirun, none for a single run."""
    return Path(HydraConfig.get().sweep.dir).name if is_multirun() else None


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one job of ``cfg`` into ``run_dir``; return its summary."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model_cfg = validate(cfg)
    tok = datamodule.tokenizer
    module = LMModule(model_cfg, dict(cfg.optim), pad_id=tok.pad_id, mask_id=tok.mask_id, seed=cfg.seed)
    record = RunRecord(run_dir)
    every = int(cfg.trainer.get("val_check_interval") or 250)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step}", auto_insert_metric_name=False,
                        every_n_train_steps=every, save_last=True, save_top_k=1),
        record,
    ]
    loggers = build_loggers(cfg, run_dir, sweep_group())
    # A progress bar redrawn into a log file or a pipe is noise; keep it for terminals.
    progress = bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()
    trainer = instantiate_plain(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                default_root_dir=str(run_dir), enable_progress_bar=progress)
    with wandb_always_finished():
        trainer.fit(module, datamodule=datamodule)
    if trainer.is_global_zero:
        report(run_dir, record.summary)
    return record.summary


def report(run_dir: Path, summary: dict[str, Any]) -> None:
    """Where the run went and how to look at it: the last thing `make train` prints."""
    lines = [f"run directory : {run_dir}"]
    if summary.get("best_val_loss") is not None:
        lines.append(f"best val loss : {summary['best_val_loss']:.4f}")
    wb = wandb_run_dir(run_dir)
    if wb is not None:
        wandb_bin = Path(sys.executable).parent / "wandb"
        lines += [f"W&B run       : {wb}  (offline)" if "offline-run" in wb.name else f"W&B run       : {wb}",
                  f"  browse      : {wandb_bin} leet {wb}", f"  upload      : {wandb_bin} sync {wb}"]
    print("\n".join(lines))


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").write_text(json.dumps({"status": status, **extra}, indent=2))


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def run_job(cfg: DictConfig) -> dict[str, Any] | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = train(cfg, run_dir)
    except ConfigError as e:
        write_status(run_dir, "invalid", error=str(e))
        if is_multirun():
            print(f"{PROG}: skipped job: {e}", file=sys.stderr)
            return None
        fail(str(e))
    except Exception as e:
        write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")
        if is_multirun() and not os.environ.get("HYDRA_FULL_ERROR"):
            print(f"{PROG}: job failed: {type(e).__name__}: {e}", file=sys.stderr)
            return None
        raise
    write_status(run_dir, "ok", best_val_loss=summary.get("best_val_loss"))
    return summary


def main() -> None:
    argv = sys.argv[1:]
    torch.set_float32_matmul_precision("high")
    if wants_check(argv):
        try:
            jobs, invalid = check_jobs(argv)
        except ConfigError as e:
            fail(str(e))
        if invalid:
            for bad in invalid:
                prefix = f"[{' '.join(bad.overrides)}] " if len(jobs) > 1 else ""
                print(f"{PROG}: error: {prefix}{bad.error}", file=sys.stderr)
            if len(jobs) > 1:
                print(f"{PROG}: {len(invalid)} of {len(jobs)} sweep jobs are invalid; nothing was started",
                      file=sys.stderr)
            sys.exit(2)
    run_job()


if __name__ == "__main__":
    main()

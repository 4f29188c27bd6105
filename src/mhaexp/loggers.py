"""Experiment loggers (W&B, CSV) built from ``conf/logger``, and the guard that always closes W&B."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config, plus the head-shape keys at top level so W&B can group runs by them."""
    config = OmegaConf.to_container(cfg, resolve=True)
    model = config.get("model", {})
    n_heads = model.get("n_heads")
    config.update(
        n_heads=n_heads,
        n_kv_heads=model.get("n_kv_heads") or n_heads,
        head_dim=model.get("head_dim") or (model["d_model"] // n_heads if n_heads else None),
        d_model=model.get("d_model"),
        pruning=(config.get("pruning") or {}).get("kind", "none"),
    )
    return config


def build_loggers(cfg: DictConfig, run_dir: Path, group: str | None, run_id: str | None = None) -> list[Logger]:
    """A CSV logger always (the run directory's own record), plus W&B unless ``logger=csv|none``."""
    kind = cfg.logger.kind
    if kind == "none":
        return []
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    if kind == "wandb":
        lc = cfg.logger
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(
                project=lc.project,
                entity=lc.entity,
                name=lc.name,
                group=lc.group or group,
                tags=list(lc.tags or []),
                save_dir=str(run_dir),
                mode=lc.mode,
                id=run_id,
                resume="allow" if run_id else None,
                config=flat_config(cfg),
                settings=wandb_settings(lc),
            )
        )
    return loggers


def wandb_settings(lc: DictConfig) -> Any:
    import wandb

    # A bounded wait for the server: training must not hang on an unreachable W&B.
    return wandb.Settings(init_timeout=float(lc.get("init_timeout", 30)), console="off", silent=True)


def wandb_run_dir(run_dir: Path) -> Path | None:
    """The offline W&B run directory a job wrote (the newest, if a resume made several)."""
    runs = sorted((run_dir / "wandb").glob("*run-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


@contextmanager
def wandb_always_finished() -> Iterator[None]:
    """Finish the W&B run however the job ends; an exception marks it failed (exit code 1).

    Multirun jobs share one process, so a run left open would swallow the next job's records.
    """
    try:
        yield
    except BaseException:
        _finish(exit_code=1)
        raise
    else:
        _finish(exit_code=0)


def _finish(exit_code: int) -> None:
    import wandb

    if wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)

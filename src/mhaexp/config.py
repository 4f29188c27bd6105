"""From a composed Hydra config to validated objects, with one-line errors for bad values.

Everything here is cheap (no data is generated, no model trained), so the CLI can
run it on every job of a sweep before the first one starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mhaexp.data.spec import DataSpec
from mhaexp.errors import ConfigError
from mhaexp.nn.config import ModelConfig
from mhaexp.pruning.schedules import validate_pruning
from mhaexp.rundir import run_key  # noqa: F401  (registers ${mhaexp_run_key:})

CONF_DIR = Path(os.environ.get("MHAEXP_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))
LOGGER_KINDS = ("wandb", "csv", "none")
WANDB_MODES = ("offline", "online", "disabled")


def instantiate_plain(node: DictConfig, **extra: Any) -> Any:
    """Build ``node._target_(**node)`` letting our own errors through unwrapped.

    ``hydra.utils.instantiate`` wraps every exception in an InstantiationException,
    which would turn a one-line ConfigError into a stack of messages.
    """
    kwargs = OmegaConf.to_container(node, resolve=True)
    target = kwargs.pop("_target_")
    kwargs.update(extra)
    return get_class(target)(**kwargs)


def build_model_config(cfg: DictConfig, vocab_size: int) -> ModelConfig:
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["vocab_size"] = vocab_size
    return ModelConfig(**model)


def cuda_available() -> bool:
    import torch  # only here: most checks should not pay for importing torch

    return torch.cuda.is_available()


def cuda_built() -> bool:
    import torch

    return torch.version.cuda is not None


def check_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    accelerator = str(t.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not cuda_available():
        raise ConfigError(
            "trainer.accelerator",
            accelerator,
            "no CUDA GPU is visible on this machine (and torch was built "
            f"{'with' if cuda_built() else 'without'} CUDA); use trainer=cpu, or install CUDA torch "
            "with `make install TORCH=torch`",
        )
    max_steps = t.get("max_steps", -1)
    if not isinstance(max_steps, int) or max_steps <= 0:
        raise ConfigError("trainer.max_steps", max_steps, "must be a positive integer")
    devices = t.get("devices", 1)
    if isinstance(devices, int) and devices == 0:
        raise ConfigError("trainer.devices", devices, "must be a positive count, -1 (all) or a list of ids")


def check_logger(cfg: DictConfig) -> None:
    kind = cfg.logger.get("kind")
    if kind not in LOGGER_KINDS:
        raise ConfigError("logger.kind", kind, f"choose one of {list(LOGGER_KINDS)}")
    if kind == "wandb" and cfg.logger.get("mode") not in WANDB_MODES:
        raise ConfigError("logger.mode", cfg.logger.get("mode"), f"choose one of {list(WANDB_MODES)}")


def check_paths(cfg: DictConfig) -> None:
    init_from = cfg.get("init_from")
    if init_from is not None and not Path(str(init_from)).is_file():
        raise ConfigError("init_from", init_from, "must be the path of an existing mhaexp checkpoint (.ckpt)")
    resume = cfg.get("resume")
    if resume not in (None, "auto") and not Path(str(resume)).is_file():
        raise ConfigError("resume", resume, "must be null, 'auto' or the path of an existing checkpoint")
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError("seed", cfg.get("seed"), "must be an integer")


def validate(cfg: DictConfig) -> tuple[DataSpec, ModelConfig]:
    """Check a composed config; return the data settings (vocabulary, sequence length) and the model config."""
    check_logger(cfg)
    check_trainer(cfg)
    check_paths(cfg)
    data = DataSpec.from_config(OmegaConf.to_container(cfg.data, resolve=True))
    model_cfg = build_model_config(cfg, data.vocab_size)
    validate_pruning(
        OmegaConf.to_container(cfg.get("pruning") or {"kind": "none"}, resolve=True),
        model_cfg,
        int(cfg.trainer.max_steps),
    )
    if cfg.get("init_from") is not None:
        from mhaexp.pruning.surgery import validate_init  # reads the checkpoint, so it needs torch

        validate_init(cfg.init_from, model_cfg, cfg.get("gqa_init", "mean"))
    if model_cfg.max_seq_len < data.seq_len:
        raise ConfigError("model.max_seq_len", model_cfg.max_seq_len, f"must be >= data.seq_len={data.seq_len}")
    return data, model_cfg

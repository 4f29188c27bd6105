"""OmegaConf resolvers our configs use; registered on import of :mod:`mhaexp.config`."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from mhaexp.errors import ConfigError


def run_key() -> str:
    """What names a run (or sweep) directory; computed once per process.

    Under SLURM it is the job id (array job id and task), so a requeued job comes back to
    its own directory and finds its checkpoint. Elsewhere it is the start time plus a
    random id, so two sweeps started in the same second never share a directory.
    """
    env = os.environ
    if "SLURM_JOB_ID" in env:
        job = env.get("SLURM_ARRAY_JOB_ID", env["SLURM_JOB_ID"])
        task = env.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"_{task}" if task else "")
    return f"{datetime.now():%Y-%m-%d/%H-%M-%S}_{uuid.uuid4().hex[:6]}"


def _cannot_make(directory: Path) -> str | None:
    """Why ``directory`` can neither be used nor made under its nearest existing ancestor; None if it can."""
    nearest = directory
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        return f"{nearest} is not a directory"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return f"{nearest} is not writable"
    return None


def check_output_dir(path: str | os.PathLike[str], field: str) -> None:
    """An output directory a command will write into (``field``: how the user gave it): an existing directory,
    or one that can be made under the nearest existing one. A file there (or on the way to it) would fail
    in ``mkdir`` with a traceback, after the command had done its work."""
    why = _cannot_make(Path(path))
    if why is not None:
        raise ConfigError(field, str(path), f"a directory path; {why}")


def check_output_file(path: str | os.PathLike[str], field: str) -> None:
    """A file a command will write: not an existing directory, and in a directory it can make or write."""
    p = Path(path)
    why = f"{p} is a directory" if p.is_dir() else _cannot_make(p.parent)
    if why is not None:
        raise ConfigError(field, str(path), f"a file path; {why}")


# Cached: Hydra copies resolver caches into each job's config, so every job of a sweep
# (and a submitit job unpickled after a requeue) sees the key its sweep started with.
OmegaConf.register_new_resolver("mhaexp_run_key", run_key, use_cache=True, replace=True)


# ---- what a run directory holds: every module that writes or reads these names takes them from here --
STATUS_FILE = "status.json"  # ok / failed / invalid, written by the job itself (mhaexp.cli.train)
SUMMARY_FILE = "summary.json"  # best val loss, parameter counts, KV-cache bytes (mhaexp.training.record)
METRICS_FILE = "metrics.csv"  # every logged scalar by step (mhaexp.training.loggers)
RUN_ID_FILE = "wandb_run_id"  # the W&B run this directory logs to; a resume continues it
INIT_CONVERSION_FILE = "init_conversion.json"  # init_from quality before and after conversion
# Hydra's record of the job, written before it starts: the composed config, the command-line overrides
# and Hydra's own settings (the job number of a sweep).
HYDRA_DIR = ".hydra"
JOB_CONFIG_FILE = "config.yaml"  # in HYDRA_DIR
JOB_OVERRIDES_FILE = "overrides.yaml"  # in HYDRA_DIR
HYDRA_SETTINGS_FILE = "hydra.yaml"  # in HYDRA_DIR
WANDB_DIR = "wandb"  # the offline W&B run (mhaexp.training.loggers)
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # in CHECKPOINT_DIR: Lightning's save_last name (mhaexp.training.run)
PRUNED_CHECKPOINT = "pruned.ckpt"  # the physically pruned model at the end of a pruning run
PRUNING_CURVE_FILE = "pruning_curve.csv"
PRUNING_CURVE_PNG = "pruning_curve.png"
PRUNING_FILE = "pruning.json"  # every pruning step: heads, roles, quality; the physical-removal report
TOKENIZER_DIR = "tokenizer"  # the run's tokenizer, to decode and analyse its checkpoints offline (data.tokenizers)
ANALYSIS_DIR = "analysis"  # the per-head analysis' tables, report and pictures
HEAD_METRICS_FILE = "head_metrics.csv"
HEAD_ROLES_FILE = "head_roles.csv"
HEAD_ROLES_HISTORY_FILE = "head_roles_history.csv"
ANALYSIS_REPORT_FILE = "analysis.md"
HEAD_JS_FILE = "head_js.csv"  # the JS divergence between every two heads, at the latest expensive analysis
TREEBANK_RELATIONS_FILE = "treebank_relations.csv"  # mhaexp-analyze conllu=: the per-relation table
# In a sweep directory.
SWEEP_SUMMARY_FILE = "sweep_summary.json"
SKIPPED_FILE = "skipped_jobs.json"


def job_config_path(run_dir: os.PathLike[str] | str) -> Path:
    """``<run>/.hydra/config.yaml``: the job's composed config."""
    return Path(run_dir) / HYDRA_DIR / JOB_CONFIG_FILE

"""Sharing one machine between the parallel jobs of a sweep (``hydra/launcher=parallel``)."""

from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf


def job_slots() -> int:
    """How many jobs of this sweep run at once on this machine: the joblib launcher's ``n_jobs``, else 1."""
    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(OmegaConf.select(launcher, "_target_", default="")).lower():
        return 1
    n = int(OmegaConf.select(launcher, "n_jobs", default=1) or 1)
    cores = os.cpu_count() or 1
    return cores if n < 0 else max(1, n)


def share_cpu_threads() -> int | None:
    """Give this job ``cpu_count // slots`` torch threads when jobs run side by side; return the count.

    Every job would otherwise start one thread per core, and N jobs x cores threads thrash the caches
    and the scheduler: the sweep then runs slower than sequential jobs.
    """
    slots = job_slots()
    if slots <= 1:
        return None
    import torch

    threads = max(1, (os.cpu_count() or 1) // slots)
    torch.set_num_threads(threads)
    return threads

"""Sharing one machine between the parallel jobs of a sweep (``hydra/launcher=parallel``)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf


def slots_of(launcher: Mapping[str, Any]) -> int:
    """Jobs a ``hydra.launcher`` runs at once on this machine: joblib's ``n_jobs`` (-1: one per core), else 1."""
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return (os.cpu_count() or 1) if n < 0 else max(1, n)


def job_slots() -> int:
    """How many jobs of the running sweep run at once on this machine (:func:`slots_of` its launcher)."""
    if not HydraConfig.initialized():
        return 1
    return slots_of(OmegaConf.to_container(HydraConfig.get().launcher, resolve=True))


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


def warm_worker() -> int:
    """Import what a training job imports (torch, Lightning, W&B's run machinery); return the worker's pid.

    Run in each parallel-launcher worker while the launching process is still checking and composing
    the sweep: those imports take seconds per process, and until the jobs arrive the workers have the
    cores to themselves.
    """
    import wandb.sdk.launch.inputs.internal  # noqa: F401  (what wandb.init imports on a run's first start)

    import mhaexp.training.run  # noqa: F401  (torch, Lightning, the data, analysis and pruning code)

    return os.getpid()


class Prestart(threading.Thread):
    """The warm-up of :func:`prestart_workers` (a daemon thread); ``pids`` holds the warmed workers' pids
    once it has finished (empty if it failed: the jobs then start their own workers)."""

    def __init__(self, cfg: dict[str, Any], slots: int) -> None:
        super().__init__(name="mhaexp-prestart", daemon=True)
        self.cfg, self.slots = cfg, slots
        self.pids: list[int] = []
        self.cancelled = False

    def cancel(self, patience_s: float = 10.0) -> None:
        """Stop the warm-up and kill its workers (the sweep stopped before its jobs started): exiting would
        otherwise wait for their imports. The executor may not exist yet when this is called, so the kill
        repeats until the warm-up has ended (or ``patience_s`` has passed)."""
        from joblib.externals.loky import get_reusable_executor

        self.cancelled = True
        deadline = time.monotonic() + patience_s
        while self.is_alive() and time.monotonic() < deadline:
            get_reusable_executor(reuse=True).shutdown(wait=False, kill_workers=True)
            self.join(timeout=0.2)

    def run(self) -> None:
        from joblib import Parallel, delayed

        if self.cancelled:
            return
        try:
            self.pids = Parallel(**self.cfg)(delayed(warm_worker)() for _ in range(self.slots))
        except Exception:  # a failed warm-up only loses its head start; the jobs report real errors
            self.pids = []


def prestart_workers(launcher: Mapping[str, Any]) -> Prestart | None:
    """Start the workers of Hydra's joblib launcher now, each warming up with :func:`warm_worker`.

    ``launcher``: the sweep's resolved ``hydra.launcher``. joblib keeps one reusable loky executor per
    process and hands it to the next ``Parallel`` with the same arguments, so the launcher's jobs then run
    in these workers: the arguments are built exactly as the plugin builds them (backend forced to loky,
    numeric strings made ints). Anything that makes them differ only costs the warm-up (loky starts fresh
    workers); the jobs are the same either way. Returns the running warm-up, or None when the launcher
    is not joblib's or runs one job at a time.
    """
    slots = slots_of(launcher)
    if slots <= 1:
        return None
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    cfg = {k: v for k, v in launcher.items() if k != "_target_"}
    cfg["backend"] = "loky"
    process_joblib_cfg(cfg)
    warm = Prestart(cfg, slots)
    warm.start()
    return warm

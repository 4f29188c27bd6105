"""OmegaConf resolvers our configs use; registered on import of :mod:`mhaexp.config`."""

from __future__ import annotations

import os
import uuid
from datetime import datetime

from omegaconf import OmegaConf


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


# Cached: Hydra copies resolver caches into each job's config, so every job of a sweep
# (and a submitit job unpickled after a requeue) sees the key its sweep started with.
OmegaConf.register_new_resolver("mhaexp_run_key", run_key, use_cache=True, replace=True)

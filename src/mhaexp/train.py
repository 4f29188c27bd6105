"""``mhaexp-train``: the thin entry point. Check the command line, then let Hydra run each job.

What one job does lives in :mod:`mhaexp.run`; this module only decides whether
to start, and what a job's failure means for the rest of a sweep.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mhaexp.config import CONF_DIR
from mhaexp.errors import ConfigError
from mhaexp.preflight import check_jobs, wants_check

PROG = "mhaexp-train"
# Hydra's own files share the run directory with the CSV log by design; and a deprecation inside
# Lightning is not the user's to act on.
warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")




def fail(message: str, code: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str | None:
    """The default W&B group: the sweep directory's name in multirun, none for a single run."""
    return Path(HydraConfig.get().sweep.dir).name if is_multirun() else None


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").write_text(json.dumps({"status": status, **extra}, indent=2))


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def run_job(cfg: DictConfig) -> dict[str, Any] | None:
    from mhaexp.run import train  # torch and Lightning load only once a job really starts

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = train(cfg, run_dir, group=sweep_group())
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

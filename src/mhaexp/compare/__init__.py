"""``mhaexp-compare``: load many runs (run directories or a W&B group) into one table and report on them.

``runs`` finds and reads run directories, ``wandb_source`` reads the same from the W&B public API,
``report`` turns either into a terminal table, plots and a Markdown/HTML report.
"""

from mhaexp.compare.runs import RunFileError, RunSet, discover_run_dirs, load_runs

__all__ = ["RunFileError", "RunSet", "discover_run_dirs", "load_runs"]

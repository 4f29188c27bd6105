"""The same :class:`~mhaexp.compare.runs.RunSet` as the run directories give, read from the W&B public API.

Only the public surface of ``wandb.Api`` is used, so any object with it will do (the tests pass a real
``wandb.Api`` pointed at a local server that replays recorded GraphQL responses):

- ``api.runs(path, filters=...)`` -> iterable of runs, each with
- ``.id``, ``.name``, ``.state``, ``.config`` (dict), ``.summary`` (``keys()`` and ``[]``), and
- ``.history(keys=[...], samples=..., pandas=True)`` -> DataFrame with ``_step``.

Rows are built by the same :func:`~mhaexp.compare.runs.make_row` and grouped into configurations by
the same :func:`~mhaexp.compare.runs.build_runset` as for run directories, so a sweep logged to W&B
compares exactly like its run directories. :func:`run_config` first undoes what
``mhaexp.training.loggers.flat_config`` adds to the logged config, so both sources see the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from mhaexp.compare.runs import (
    ROLE_HISTORY_COLUMNS,
    ROLE_PREFIX,
    SHAPE_COLUMNS,
    RunSet,
    build_runset,
    flatten,
    make_row,
    pruning_curve,
)

# W&B run state -> our status. Runs still going (running, pending, preempting) are not compared.
_STATES = {"finished": "ok", "failed": "failed", "crashed": "failed", "killed": "failed", "preempted": "failed"}
# Lightning's WandbLogger logs the trainer step under this key; W&B's own _step counts log() calls.
GLOBAL_STEP = "trainer/global_step"
PRUNING_PREFIX = "pruning/"
# Role counts are logged a few dozen times a run; asking for more samples than that keeps them all.
_HISTORY_SAMPLES = 10_000


def run_config(config: Mapping[str, Any], summary: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The W&B config as the run directory's config (nested), and the shape values the run recorded.

    ``flat_config`` puts the resolved head layout at top level (``n_heads``, ``head_dim``...): those are
    the run's recorded values, returned apart, not config keys of their own. It replaces the pruning
    group by its kind: that becomes ``pruning.kind`` again. ``RunRecord`` logs its measurements
    (``params/*``...) as hyperparameters too: a config key the summary also holds is one of them.
    """
    nested = {k: v for k, v in config.items() if not k.startswith("_") and k not in summary}
    recorded = {k: nested.pop(k) for k in SHAPE_COLUMNS if k in nested and not isinstance(nested[k], Mapping)}
    if "pruning" in recorded:
        nested["pruning"] = {"kind": recorded.pop("pruning")}
    return nested, recorded


def summary_dict(summary: Any) -> dict[str, Any]:
    """Scalar summary values; W&B's own keys (``_step``, ``_wandb``...) and media/tables dropped."""
    out: dict[str, Any] = {}
    for key in summary.keys():
        if key.startswith("_"):
            continue
        value = summary[key]
        if isinstance(value, (int, float, str, bool)) or value is None:
            out[key] = value
    # summary.json's global_step is the trainer's; W&B only has it under Lightning's key.
    if "global_step" not in out and isinstance(out.get(GLOBAL_STEP), (int, float)):
        out["global_step"] = int(out[GLOBAL_STEP])
    return out


def role_history(run: Any, label: str, role_keys: list[str]) -> pd.DataFrame | None:
    """Heads per role over training from the run's history, in the long shape of the local source."""
    # The history API returns only rows holding every key asked for; role counts logged by the trainer
    # share a row with its step, otherwise fall back to W&B's own step counter.
    frame = run.history(keys=[*role_keys, GLOBAL_STEP], samples=_HISTORY_SAMPLES, pandas=True)
    x = GLOBAL_STEP
    if frame is None or len(frame) == 0 or GLOBAL_STEP not in frame:
        frame = run.history(keys=role_keys, samples=_HISTORY_SAMPLES, pandas=True)
        x = "_step"
    if frame is None or len(frame) == 0 or x not in frame:
        return None
    long = frame[[x, *[k for k in role_keys if k in frame]]].melt(id_vars=x, var_name="role", value_name="heads")
    long = long.dropna(subset=["heads", x])
    # head_roles_history.csv has no row for a role no head holds; drop the zeros to match it.
    long = long[long["heads"] > 0]
    long = long.assign(
        run=label,
        step=long[x].astype(int),
        role=long["role"].str.removeprefix(ROLE_PREFIX),
        heads=long["heads"].astype(int),
    )
    return long.sort_values(["step", "role"]).reindex(columns=list(ROLE_HISTORY_COLUMNS)).reset_index(drop=True)


def pruning_history(run: Any, label: str, criterion: str) -> pd.DataFrame | None:
    """The pruning curve ``mhaexp.pruning`` logs: one row of ``pruning/*`` per pruning step."""
    keys = [f"{PRUNING_PREFIX}{k}" for k in ("fraction_pruned", "val_loss", "val_acc", "heads_remaining")]
    frame = run.history(keys=keys, samples=_HISTORY_SAMPLES, pandas=True)
    if frame is None or len(frame) == 0 or not set(keys) <= set(frame.columns):
        return None
    curve = frame[keys].rename(columns=lambda k: k.removeprefix(PRUNING_PREFIX))
    # W&B's config keeps only the pruning kind (flat_config), so that names the curve.
    return pruning_curve(curve, label, criterion)


def load_wandb_runs(api: Any, path: str, group: str | None = None) -> RunSet:
    """All runs of ``entity/project`` (of one group, if given) as a :class:`RunSet`.

    Pruning curves come from the ``pruning/*`` history ``mhaexp.pruning`` logs; their criterion is the
    run's pruning kind, since W&B's config holds no more.
    """
    filters: dict[str, Any] = {"group": group} if group else {}
    rows: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    histories: list[pd.DataFrame] = []
    curves: list[pd.DataFrame] = []
    warnings: list[str] = []
    for run in api.runs(path, filters=filters):
        label = f"{run.name}/{run.id}" if run.name else str(run.id)
        status = _STATES.get(run.state)
        if status is None:
            warnings.append(f"skipped run {label}: W&B state is {run.state!r}, not finished")
            continue
        summary = summary_dict(run.summary)
        config, recorded = run_config(run.config if isinstance(run.config, Mapping) else {}, summary)
        error = None if status == "ok" else f"W&B run {run.state}"
        row = make_row(label, config, summary, status, error, recorded)
        row["wandb_id"] = run.id
        rows.append(row)
        configs.append(flatten(config))
        role_keys = sorted(k for k in summary if k.startswith(ROLE_PREFIX))
        if status == "ok" and role_keys:
            history = role_history(run, label, role_keys)
            if history is not None:
                histories.append(history)
        if status == "ok" and f"{PRUNING_PREFIX}fraction_pruned" in summary:
            curve = pruning_history(run, label, str(row["pruning"]))
            if curve is not None:
                curves.append(curve)
    return build_runset(rows, configs, histories, curves, warnings)

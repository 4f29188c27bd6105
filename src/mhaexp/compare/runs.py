"""Find run directories and load them into one DataFrame, one row per run.

A run directory is what one ``mhaexp-train`` job writes: ``.hydra/config.yaml``, ``status.json``,
``summary.json``, ``metrics.csv``, ``analysis/head_roles*.csv`` and optionally ``pruning_curve.csv``.
The row of a run is its config flattened with dots (``model.n_heads``), its summary keys as they are
(``val/loss``, ``roles/induction``), its status, a few shape columns (``n_heads``, ``head_dim``...) and
its configuration (``config_id``, ``config``). Both sources, run directories and W&B, build rows with
the same :func:`make_row` and group them with the same :func:`build_runset`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mhaexp.rundir import (
    ANALYSIS_DIR,
    CHECKPOINT_DIR,
    HEAD_ROLES_FILE,
    HEAD_ROLES_HISTORY_FILE,
    HYDRA_DIR,
    JOB_OVERRIDES_FILE,
    METRICS_FILE,
    PRUNING_CURVE_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    WANDB_DIR,
    job_config_path,
)

# Shown in every table: the head layout of a configuration. Grouping does not use them, it uses
# every config key that differs (config_axes); these are what a reader of a head-count study looks at.
SHAPE_COLUMNS: tuple[str, ...] = ("n_heads", "n_kv_heads", "head_dim", "d_model", "pruning")
# The config key each shape column shows, when that key is an axis.
SHAPE_KEYS: dict[str, str] = {
    "model.n_heads": "n_heads",
    "model.n_kv_heads": "n_kv_heads",
    "model.head_dim": "head_dim",
    "model.d_model": "d_model",
    "pruning.kind": "pruning",
}
# Columns every row has, first in the frame, whatever the source.
ID_COLUMNS: tuple[str, ...] = (
    "run",
    "status",
    "error",
    "config_id",
    "config",
    *SHAPE_COLUMNS,
    "n_layers",
    "seed",
    "name",
    "data",
)
ROLE_PREFIX = "roles/"
STATUSES = ("ok", "failed", "invalid")
# An axis value for a run whose config lacks the key: a value of its own, never merged with null.
MISSING = "(missing)"

ROLE_HISTORY_COLUMNS = ("run", "step", "role", "heads")
PRUNING_COLUMNS = ("run", "criterion", "frac_pruned", "heads_remaining", "val_loss", "val_acc")

# Directories inside a run (or beside runs) that never hold runs: not walking them keeps discovery
# fast on sweeps with thousands of checkpoint and W&B files.
_NOT_RUNS = {HYDRA_DIR, ANALYSIS_DIR, CHECKPOINT_DIR, WANDB_DIR, "compare", "lightning_logs", "__pycache__", ".git"}

# Config keys that name, place or log a run rather than decide what it computes (see config_axes).
_IDENTITY_KEYS = frozenset({"seed", "name", "resume", "trainer.enable_progress_bar", "trainer.enable_model_summary"})
_IDENTITY_PREFIXES = ("logger.", "sweep.", "hydra.")
_IDENTITY_LEAVES = frozenset({"cache_dir"})


class RunFileError(Exception):
    """A file of a run directory that is missing or cannot be read; the run is skipped, not the report."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass
class RunSet:
    """Everything a report needs: the per-run table, the config axes and the per-step / per-fraction curves.

    ``axes`` are the config keys that differ across the runs (:func:`config_axes`); each is a column of
    ``runs``, and ``runs["config_id"]`` numbers the configurations they make.
    """

    runs: pd.DataFrame
    axes: list[str] = field(default_factory=list)
    role_history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(ROLE_HISTORY_COLUMNS)))
    pruning: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(PRUNING_COLUMNS)))
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- rows, shared by both sources


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"n_heads": 4}}`` -> ``{"model.n_heads": 4}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def shape_columns(config: Mapping[str, Any], recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The head layout of a flattened config, as the run recorded it (``recorded``: summary keys).

    A run that recorded no ``head_dim`` / ``n_kv_heads`` gets them from ``mhaexp.nn.shapes``, the one
    home of the null-means-default rules, so compare cannot disagree with the model that was trained.
    """
    from mhaexp.errors import ConfigError
    from mhaexp.nn.shapes import check_heads, resolve_head_dim

    n_heads = _int_or_none(config.get("model.n_heads", recorded.get("n_heads")))
    d_model = _int_or_none(config.get("model.d_model", recorded.get("d_model")))
    n_kv = _int_or_none(recorded.get("n_kv_heads"))
    head_dim = _int_or_none(recorded.get("head_dim"))
    if n_heads is not None:
        try:
            if n_kv is None:
                n_kv = check_heads(n_heads, _int_or_none(config.get("model.n_kv_heads")))
            if head_dim is None and d_model is not None:
                head_dim = resolve_head_dim(d_model, n_heads, _int_or_none(config.get("model.head_dim")))
        except ConfigError:
            pass  # an invalid job: its layout is what was wrong, shown as unknown
    pruning = config.get("pruning.kind")
    data = config.get("data.kind")
    return {
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "head_dim": head_dim,
        "d_model": d_model,
        "pruning": pruning if isinstance(pruning, str) else "none",
        "n_layers": _int_or_none(config.get("model.n_layers")),
        "seed": _int_or_none(config.get("seed")),
        "name": config.get("name"),
        "data": data if isinstance(data, str) else None,
    }


def make_row(
    run: str,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    status: str,
    error: str | None,
    recorded: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One run's row: flattened config, then summary (wins on clashes: it is measured), then identity.

    ``recorded`` holds shape values the run logged outside its summary (W&B's top-level ``head_dim``);
    the summary's own win over them.
    """
    flat = flatten(config)
    row: dict[str, Any] = dict(flat)
    row.update(summary)
    row.update(shape_columns(flat, {**(recorded or {}), **summary}))
    row.update(run=run, status=status, error=error or None)
    return row


def is_configuration(key: str) -> bool:
    """Whether a flattened config key decides what a run computes (else it names, places or logs it)."""
    if key in _IDENTITY_KEYS or key.startswith(_IDENTITY_PREFIXES) or key.startswith("_"):
        return False
    return key.rsplit(".", 1)[-1] not in _IDENTITY_LEAVES


def _canonical(value: Any) -> str:
    # Lists and dicts compare by content; "1" and 1, null and missing stay apart.
    return json.dumps(value, sort_keys=True, default=str)


def config_axes(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The flattened config keys whose values differ across ``configs``: a configuration is one value of each.

    The rule, one for both sources:

    - Every key of every config counts, except those that name, place or log a run rather than decide what
      it computes: ``seed`` (the replicate axis: runs differing only in it are aggregated), ``name``,
      ``logger.*`` (its ``name`` is interpolated from the config), ``sweep.*``, ``resume`` (a resumed run
      is the same run), ``*.cache_dir`` (a path), the progress-bar/model-summary switches, and keys starting
      with ``_`` (W&B's own). When in doubt a key is configuration: a row split too fine shows; a merge not.
    - A key present in some configs and absent in others differs: absent is a value (``MISSING``), and not
      the same as null.
    - ``.hydra/config.yaml`` is Hydra's unresolved composition, so an interpolation compares as written:
      ``data.seed: ${seed}`` is the same text in every run and never differs, and any key derived from other
      keys differs only where those do, and they are axes themselves. W&B holds the resolved config: there a
      key named ``seed`` below the top (``data.seed``) whose value equals the run's ``seed`` in every run
      is that seed again, and aggregated with it; any other value of it, in any run, makes it an axis.
    """
    keys = list(dict.fromkeys(k for config in configs for k in config if is_configuration(k)))
    axes = []
    for key in keys:
        values = {_canonical(config[key]) if key in config else None for config in configs}
        if len(values) < 2:
            continue
        if key.rsplit(".", 1)[-1] == "seed" and all(
            key in c and "seed" in c and _canonical(c[key]) == _canonical(c["seed"]) for c in configs
        ):
            continue
        axes.append(key)
    return axes


def _sort_key(canonical: str | None) -> tuple[int, float, str]:
    # Numbers by value (2 before 10), then text, then null, then missing (None).
    if canonical is None:
        return (3, 0.0, "")
    value = json.loads(canonical)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    if value is None:
        return (2, 0.0, "")
    return (1, 0.0, value if isinstance(value, str) else canonical)


def format_value(value: Any) -> str:
    """An axis value as tables and labels show it: null as ``null``, lists as JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def build_runset(
    rows: list[dict[str, Any]],
    configs: list[dict[str, Any]],
    histories: list[pd.DataFrame],
    curves: list[pd.DataFrame],
    warnings: list[str],
) -> RunSet:
    """Group the runs (``configs[i]`` is the flattened config of ``rows[i]``) into configurations.

    Each row gets the value of every axis (:func:`config_axes`; ``MISSING`` where its config lacks the key),
    a ``config_id`` (one per distinct tuple of axis values, numbered in axis order) and a ``config`` label
    (``model.n_layers=1, model.pos=rope``).
    """
    axes = config_axes(configs)
    keys = []
    for row, config in zip(rows, configs, strict=True):
        row.update({a: config[a] if a in config else MISSING for a in axes})
        row["config"] = ", ".join(f"{a}={format_value(config[a]) if a in config else MISSING}" for a in axes)
        # None for a missing key: no canonical (JSON) text is None, so missing never equals a value.
        keys.append(tuple(_canonical(config[a]) if a in config else None for a in axes))
    order = sorted(set(keys), key=lambda k: [_sort_key(v) for v in k])
    ids = {k: i for i, k in enumerate(order)}
    for row, key in zip(rows, keys, strict=True):
        row["config_id"] = ids[key]
    return RunSet(
        runs=fill_role_columns(runs_frame(rows)),
        axes=axes,
        role_history=concat_or_empty(histories, ROLE_HISTORY_COLUMNS),
        pruning=concat_or_empty(curves, PRUNING_COLUMNS),
        warnings=warnings,
    )


def runs_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> DataFrame, identity columns first, sorted by configuration then seed."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    rest = sorted(c for c in frame.columns if c not in ID_COLUMNS)
    frame = frame.reindex(columns=[*ID_COLUMNS, *rest])
    frame = frame.sort_values(["config_id", "seed", "run"], na_position="last", kind="stable")
    return frame.reset_index(drop=True)


def role_counts(roles: pd.DataFrame) -> pd.DataFrame:
    """Heads per (step, role family) from ``head_roles*.csv`` rows; a head holding two roles counts in both.

    Families (``syntactic``, not ``syntactic:nsubj``) keep the plots readable and match the
    ``roles/<family>`` counts of the run summary.
    """
    if "family" in roles.columns:
        roles = roles.assign(role=roles["family"].fillna(roles["role"]))
    heads = roles.drop_duplicates(["step", "role", "layer", "head"])
    counts = heads.groupby(["step", "role"], sort=True).size().rename("heads").reset_index()
    counts["heads"] = counts["heads"].astype(int)
    return counts


# --------------------------------------------------------------------------- discovery


def is_run_dir(path: Path) -> bool:
    # status.json alone also counts: a job whose config could not be written still has a verdict.
    return job_config_path(path).is_file() or (path / STATUS_FILE).is_file()


def discover_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Run directories given, or found (recursively) under sweep directories given, in path order.

    Raises ``FileNotFoundError`` for a path that does not exist.
    """
    found: list[Path] = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"no such file or directory: {root}")
        if not root.is_dir():
            raise NotADirectoryError(f"not a directory: {root}")
        if is_run_dir(root):
            found.append(root)
            continue
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if here != root and is_run_dir(here):
                found.append(here)
                dirnames.clear()  # a run directory holds no runs
                continue
            dirnames[:] = sorted(d for d in dirnames if d not in _NOT_RUNS)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return sorted(unique, key=_natural_key)


def _natural_key(path: Path) -> list[tuple[tuple[int, int, str], ...]]:
    # Hydra job dirs are "<jobnum>_<name>": 10_x must sort after 9_x.
    return [
        tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", part) if t)
        for part in path.parts
    ]


def run_labels(run_dirs: Sequence[Path]) -> dict[Path, str]:
    """Short unique names: each run's path below the deepest folder that holds all their parents."""
    if not run_dirs:
        return {}
    base = Path(os.path.commonpath([str(p.parent) for p in run_dirs]))
    return {p: str(p.relative_to(base)) for p in run_dirs}


# --------------------------------------------------------------------------- reading one run directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFileError(path, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunFileError(path, f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise RunFileError(path, "not a JSON object")
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RunFileError(path, "missing") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunFileError(path, f"not valid YAML ({reason})") from None
    if not isinstance(value, dict):
        raise RunFileError(path, "not a YAML mapping")
    return value


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise RunFileError(path, "missing") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunFileError(path, f"not a readable CSV ({reason})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise RunFileError(path, f"missing column(s) {', '.join(missing)}")
    return frame


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class LoadedRun:
    row: dict[str, Any]
    config: dict[str, Any]
    role_history: pd.DataFrame | None
    pruning: pd.DataFrame | None


def load_run_dir(path: Path, label: str) -> LoadedRun:
    """Read one run directory; raises :class:`RunFileError` naming the first missing or corrupt file."""
    config = _read_yaml(job_config_path(path))
    status_doc = _read_json(path / STATUS_FILE)
    status = status_doc.get("status")
    if status not in STATUSES:
        raise RunFileError(path / STATUS_FILE, f"status {status!r} is not one of {', '.join(STATUSES)}")
    overrides_path = path / HYDRA_DIR / JOB_OVERRIDES_FILE
    overrides: Any = None
    if overrides_path.exists():
        try:
            overrides = yaml.safe_load(overrides_path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            raise RunFileError(overrides_path, "not valid YAML") from None

    summary: dict[str, Any] = {}
    summary_path = path / SUMMARY_FILE
    # Failed jobs end before the summary is written; only a finished run must have one.
    if status == "ok" or summary_path.exists():
        summary = _read_json(summary_path)

    metrics_path = path / METRICS_FILE
    if metrics_path.exists():
        metrics = _read_csv(metrics_path, ["step"])
        # A best val loss is a finished run's result; a failed run's best-so-far would pass for one.
        if status == "ok" and _finite(summary.get("best_val_loss")) is None and "val/loss" in metrics:
            best = metrics["val/loss"].min()
            summary["best_val_loss"] = _finite(best)
    if (
        status == "ok"
        and _finite(summary.get("best_val_loss")) is None
        and _finite(status_doc.get("best_val_loss")) is not None
    ):
        summary["best_val_loss"] = float(status_doc["best_val_loss"])

    role_history = None
    analysis = path / ANALYSIS_DIR
    roles_path = analysis / HEAD_ROLES_FILE
    history_path = analysis / HEAD_ROLES_HISTORY_FILE
    final_roles = _read_csv(roles_path, ["step", "layer", "head", "role"]) if roles_path.exists() else None
    if history_path.exists():
        role_history = role_counts(_read_csv(history_path, ["step", "layer", "head", "role"]))
    elif final_roles is not None:
        role_history = role_counts(final_roles)
    if final_roles is not None and not any(k.startswith(ROLE_PREFIX) for k in summary) and len(final_roles):
        last = role_counts(final_roles)
        last = last[last["step"] == last["step"].max()]
        summary.update({f"{ROLE_PREFIX}{r}": int(n) for r, n in zip(last["role"], last["heads"], strict=True)})
    if role_history is not None:
        role_history.insert(0, "run", label)

    row = make_row(label, config, summary, status, status_doc.get("error"))
    pruning = None
    pruning_path = path / PRUNING_CURVE_FILE
    if pruning_path.exists():
        pruning = pruning_curve(_read_csv(pruning_path, ["val_loss"]), label, row["pruning"], pruning_path)
    row["path"] = str(path)
    if overrides is not None:
        row["overrides"] = " ".join(map(str, overrides)) if isinstance(overrides, list) else str(overrides)
    return LoadedRun(row, flatten(config), role_history, pruning)


def pruning_curve(curve: pd.DataFrame, label: str, default_criterion: str, path: Path | None = None) -> pd.DataFrame:
    """A pruning curve in :data:`PRUNING_COLUMNS`; ``mhaexp.pruning`` names the x ``fraction_pruned``."""
    curve = curve.rename(columns={"fraction_pruned": "frac_pruned"})
    if "frac_pruned" not in curve:
        raise RunFileError(path or Path(PRUNING_CURVE_FILE), "missing column frac_pruned (or fraction_pruned)")
    criterion = curve["criterion"] if "criterion" in curve else pd.Series(pd.NA, index=curve.index)
    # A curve of one run's own pruning schedule may leave the criterion empty: its pruning kind says it.
    curve = curve.assign(run=label, criterion=criterion.fillna(default_criterion).astype(str))
    return curve.reindex(columns=list(PRUNING_COLUMNS))


def fill_role_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A role no head of a finished run took is 0 heads, not unknown."""
    roles = [c for c in frame.columns if c.startswith(ROLE_PREFIX)]
    if roles:
        ok = frame["status"] == "ok"
        frame.loc[ok, roles] = frame.loc[ok, roles].fillna(0)
    return frame


def concat_or_empty(parts: list[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    parts = [p for p in parts if p is not None and not p.empty]
    if not parts:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(parts, ignore_index=True).reindex(columns=list(columns))


def load_runs(paths: Sequence[Path]) -> RunSet:
    """Load every run under ``paths``; runs with a missing or corrupt file are skipped with a warning."""
    run_dirs = discover_run_dirs(paths)
    labels = run_labels(run_dirs)
    rows, configs, histories, curves, warnings = [], [], [], [], []
    for path in run_dirs:
        try:
            loaded = load_run_dir(path, labels[path])
        except RunFileError as e:
            warnings.append(f"skipped run {labels[path]}: {e.path}: {e.reason}")
            continue
        rows.append(loaded.row)
        configs.append(loaded.config)
        if loaded.role_history is not None:
            histories.append(loaded.role_history)
        if loaded.pruning is not None:
            curves.append(loaded.pruning)
    return build_runset(rows, configs, histories, curves, warnings)

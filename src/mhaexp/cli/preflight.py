"""Check the command line before Hydra starts a run: every job of a sweep, in one pass.

Hydra reports an unknown group choice or a misspelt key as several lines and a
hint about HYDRA_FULL_ERROR, and a bad value only when that job starts (an hour
into a sweep). Here each problem becomes one line naming the field, the value
and what is valid, and nothing is written to disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from mhaexp.analysis.config import REPLACED_KEYS as ANALYSIS_REPLACED_KEYS
from mhaexp.config import CONF_DIR, is_base
from mhaexp.errors import ConfigError, close_key, unknown_key_hint
from mhaexp.rundir import check_output_dir
from mhaexp.training.config import RunConfig, build_run

# Flags of Hydra's CLI that take a value in the next argument.
VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "-i",
    "--experimental-rerun",
}
NO_CHECK_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc", "--info", "-i"}


@dataclass
class Invalid:
    overrides: list[str]
    error: ConfigError


# RunConfigs the preflight built, by their job's resolved config: the job that composes the same config in
# this process takes its object from here instead of building it a second time (see job_run_config).
_checked: dict[str, RunConfig] = {}
# hydra.launcher of the last multirun the preflight expanded (resolved): mhaexp-train starts the parallel
# launcher's workers from it while Hydra is still setting up (mhaexp.training.parallel.prestart_workers).
_launcher: dict[str, Any] = {}


def _key(cfg: DictConfig) -> str:
    return json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)


def job_run_config(cfg: DictConfig) -> RunConfig:
    """The RunConfig of a job Hydra is starting: the one the preflight built for exactly this config,
    or, for a job the preflight did not see (another process: submitit; a ``--help``-less rerun), built now."""
    run = _checked.pop(_key(cfg), None)
    return run if run is not None else build_run(cfg)


def split_argv(argv: list[str]) -> tuple[list[str], list[str], str]:
    """(flags, overrides, config name) of a Hydra command line."""
    flags, overrides, config_name = [], [], "train"
    it = iter(argv)
    for arg in it:
        if arg.startswith("-"):
            flags.append(arg)
            if arg in VALUE_FLAGS and "=" not in arg:
                value = next(it, "")
                flags.append(value)
                if arg in ("--config-name", "-cn"):
                    config_name = value
        else:
            overrides.append(arg)
    return flags, overrides, config_name


@contextmanager
def hydra_context() -> Iterator[None]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="mhaexp"):
        yield
    GlobalHydra.instance().clear()


def compose_job(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose one job's config the way ``mhaexp-train`` would, with ``${hydra:...}`` resolvable."""
    cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def check_override_names(overrides: list[str], config_name: str) -> None:
    """Unknown group choices and misspelt keys, reported by name with the valid alternatives."""
    loader = GlobalHydra.instance().config_loader()
    groups = set(loader.list_groups(""))
    parsed = OverridesParser.create().parse_overrides(overrides)
    group_choices = []
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete():
            continue
        if key in groups:
            options = [c for c in loader.get_group_options(key) if not is_base(c)]
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for value in values:
                if value == "null":  # Hydra rejects it with a traceback; "~group" is how to drop a group
                    raise ConfigError(key, value, f"choose one of {options}, or drop the group with ~{key}")
                if value not in options:
                    raise ConfigError(key, value, f"no such {key} config; choose one of {options}")
            group_choices.append(f"{key}={values[0]}")
    base = compose_job(group_choices, config_name)
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or key in groups or o.is_add() or o.is_force_add() or o.is_delete():
            continue
        if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
            value = o.get_value_element_as_str() if not o.is_sweep_override() else ",".join(o.sweep_string_iterator())
            if key in REPLACED_KEYS:
                raise ConfigError(key, value, REPLACED_KEYS[key])
            raise ConfigError(
                key, value, f"no such key; {missing_key_hint(base, key)} (prefix with '+' to add a new key)"
            )


def missing_key_hint(cfg: DictConfig, key: str) -> str:
    """What a dotted ``key`` absent from ``cfg`` was likely meant to be, segment by segment from the first
    one that does not exist (``analysis.tresholds.sink`` -> ``analysis.thresholds.sink``); else the keys of
    the deepest group that does exist."""
    parts = key.split(".")
    found: list[str] = []
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return f"{'.'.join(found)} is a value, not a group of keys"
        known = [str(k) for k in node.keys()]
        if part not in known:
            close = close_key(part, known)
            fixed = ".".join([*found, close, *parts[i + 1 :]]) if close is not None else None
            if fixed is not None and OmegaConf.select(cfg, fixed, default=_MISSING) is not _MISSING:
                return f"did you mean {fixed}?"
            if fixed is not None and i + 1 < len(parts):
                deeper = missing_key_hint(cfg, fixed)
                if deeper.startswith("did you mean"):
                    return deeper
            return unknown_key_hint(part, known, ".".join(found))
        found.append(part)
        node = node[part]
    return "no such key"


_MISSING = object()
# Keys that once existed, with what replaced them (an override naming one is told, not "no such key").
REPLACED_KEYS = {f"analysis.{k}": v for k, v in ANALYSIS_REPLACED_KEYS.items()}


def _fixed(overrides: list[str]) -> list[str]:
    """The overrides that are not sweeps (the same in every job)."""
    return [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]


def check_hydra_dir(hydra_cfg: DictConfig, multirun: bool) -> None:
    """The directory Hydra will create for the run (``hydra.run.dir``) or the sweep (``hydra.sweep.dir``)
    exists as a directory, or can be made: Hydra itself would fail there with a traceback, after the
    sweep's workers had started."""
    key = "sweep.dir" if multirun else "run.dir"
    check_output_dir(str(OmegaConf.select(hydra_cfg, key)), f"hydra.{key}")


def check_launcher(launcher: dict[str, Any]) -> None:
    """joblib's ``n_jobs`` (hydra/launcher=parallel): joblib itself refuses 0, or a negative count beyond the
    cores, only once the sweep is launching, with a traceback."""
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return
    n = launcher.get("n_jobs")
    cores = os.cpu_count() or 1
    if n is None:
        return
    if not isinstance(n, int) or isinstance(n, bool) or n == 0 or cores + 1 + n < 1:
        raise ConfigError(
            "hydra.launcher.n_jobs",
            n,
            f"must be how many jobs run at once: a positive count, or -1 for one per CPU core "
            f"(-k: cores + 1 - k, so -1 to -{cores} on these {cores} cores)",
        )


def expand_jobs(overrides: list[str], multirun: bool, hydra_cfg: DictConfig) -> list[list[str]]:
    """One override list per job: the cartesian product of sweep values under ``-m``.

    Sweep values come from the command line and from ``hydra.sweeper.params`` of
    the composed config (experiment presets), the command line winning, as in Hydra.
    """
    if not multirun:
        return [overrides]
    _launcher.update(OmegaConf.to_container(hydra_cfg.launcher, resolve=True))
    params = hydra_cfg.sweeper.get("params")
    preset = OmegaConf.to_container(params, resolve=False) if params else {}
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    overrides = [f"{k}={v}" for k, v in preset.items() if k not in given] + overrides
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_jobs(argv: list[str]) -> tuple[list[list[str]], list[Invalid]]:
    """Compose and validate every job ``argv`` would start; return (all jobs, the invalid ones).

    A ConfigError raised here (an unknown group or key) applies to the whole command.
    """
    flags, overrides, config_name = split_argv(argv)
    multirun = "-m" in flags or "--multirun" in flags
    _launcher.clear()
    with hydra_context():
        try:
            check_override_names(overrides, config_name)
            # ``hydra`` of the settings every job shares: the sweep's launcher, presets, and directories.
            hydra_cfg = compose(config_name, overrides=_fixed(overrides), return_hydra_config=True).hydra
            jobs = expand_jobs(overrides, multirun, hydra_cfg)
            check_hydra_dir(hydra_cfg, multirun)
            if multirun:
                check_launcher(OmegaConf.to_container(hydra_cfg.launcher, resolve=True))
        except HydraException as e:  # override syntax errors
            raise ConfigError("override", " ".join(overrides), str(e).splitlines()[0]) from None
        invalid = []
        for job in jobs:
            try:
                cfg = compose_job(job, config_name)
                run = build_run(cfg)
                run.data.check_available()
                _checked[_key(cfg)] = run
            except ConfigError as e:
                invalid.append(Invalid(job, e))
            except HydraException as e:
                invalid.append(Invalid(job, ConfigError("config", " ".join(job), str(e).splitlines()[0])))
    return jobs, invalid


def checked_launcher() -> dict[str, Any]:
    """``hydra.launcher`` of the multirun :func:`check_jobs` last checked ({} for a single run)."""
    return dict(_launcher)


def wants_check(argv: list[str]) -> bool:
    flags, _, _ = split_argv(argv)
    return not any(f in NO_CHECK_FLAGS for f in flags)

"""Validation by construction: every leaf of every shipped config has a declared domain, and a value outside
it is refused by the preflight's builder with a ConfigError naming exactly that leaf.

A key added to a YAML file without a field, or a field without a domain, fails here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from mhaexp.analysis.config import AnalysisConfig
from mhaexp.config import applies, check_fields, domain, group_options, yaml_fields
from mhaexp.data.spec import DataConfig
from mhaexp.errors import ConfigError
from mhaexp.nn.config import ModelConfig
from mhaexp.pruning.config import PruningConfig
from mhaexp.training.config import LoggerConfig, OptimConfig, RunConfig, TrainerConfig, build_run, cuda_available

ROOT = Path(__file__).resolve().parents[1]
GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "trainer": TrainerConfig,
    "optim": OptimConfig,
    "analysis": AnalysisConfig,
    "pruning": PruningConfig,
    "logger": LoggerConfig,
}


def needed(overrides: list[str]) -> list[str]:
    """What a config needs besides its choice to build on this machine (a text file, a CPU when no GPU)."""
    extra = []
    if "data=text" in overrides or "experiment=text_small" in overrides:
        extra.append(f"data.path={ROOT / 'README.md'}")
    if any(o in overrides for o in ("trainer=gpu", "trainer=fsdp")) and not cuda_available():
        extra.append("trainer.accelerator=cpu")
    return extra


def leaves(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf (scalars and lists) of a composed config."""
    if isinstance(node, DictConfig):
        return [p for k in node for p in leaves(node[k], f"{prefix}.{k}" if prefix else str(k))]
    return [prefix]


def put(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out


CASES = [("default", [], None)]
CASES += [(f"{g}={o}", [f"{g}={o}"], g) for g in GROUPS for o in group_options(g)]
CASES += [(f"experiment={o}", [f"experiment={o}"], None) for o in group_options("experiment")]
Compose = Callable[[list[str]], DictConfig]


def walked(compose: Compose, overrides: list[str], walk: str | None) -> tuple[DictConfig, list[str]]:
    """The composed config of one case and the leaves its walk visits."""
    cfg = compose(overrides + needed(overrides))
    return cfg, [p for p in leaves(cfg) if walk is None or p.split(".")[0] == walk]


@pytest.mark.parametrize("overrides, walk", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_every_leaf_is_declared_and_its_bad_value_refused_by_name(
    overrides: list[str], walk: str | None, compose: Compose
) -> None:
    """``walk``: the group whose leaves this option changes (None: all leaves)."""
    cfg, paths = walked(compose, overrides, walk)
    raw = OmegaConf.to_container(cfg, resolve=True)
    build_run(cfg)  # the shipped config itself is valid
    undeclared, wrong = [], []
    for path in paths:
        try:
            check = domain(RunConfig, path)
        except KeyError as e:
            undeclared.append(f"{path}: {e}")
            continue
        assert not check.test(check.bad), f"{path}: its own out-of-domain example {check.bad!r} passes"
        try:
            build_run(put(raw, path, check.bad))
            wrong.append(f"{path}={check.bad!r} was accepted")
        except ConfigError as e:
            if e.field != path or "\n" in str(e):
                wrong.append(f"{path}={check.bad!r} refused as {e}")
    assert not undeclared, undeclared
    assert not wrong, wrong
    assert len(paths) >= (1 if walk else 80)


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_field_of_a_group_config_has_its_value_in_that_groups_yaml(group: str, compose: Compose) -> None:
    """Defaults live in the YAML: each option holds every key its kind takes, and no field is YAML-less."""
    cls = GROUPS[group]
    seen: set[str] = set()
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        node = compose(overrides + needed(overrides))[group]
        kind = node.get("kind") if "kind" in yaml_fields(cls) else None
        want = {f.name for f in fields(cls) if f.name in yaml_fields(cls) and applies(f, kind)}
        assert set(node.keys()) == want, (option, set(node.keys()) ^ want)
        seen |= set(node.keys())
    assert seen == set(yaml_fields(cls)), set(yaml_fields(cls)) - seen


def test_a_missing_key_is_refused_not_defaulted(compose: Compose) -> None:
    raw = OmegaConf.to_container(compose([]), resolve=True)
    del raw["optim"]["lr"]
    with pytest.raises(ConfigError) as e:
        build_run(raw)
    assert e.value.field == "optim.lr" and "missing" in str(e.value)


def test_a_field_without_a_domain_is_a_programming_error() -> None:
    @dataclass
    class Undeclared:
        x: int = field(default=1)

    with pytest.raises(TypeError, match="no declared domain"):
        check_fields(Undeclared(), "undeclared")


def test_schema_covers_every_group(compose: Compose, capsys: pytest.CaptureFixture[str]) -> None:
    """The walks above reach a declared leaf of every group; prints the covered leaves per group for the record.

    It walks the cases itself (composing only) so that it holds alone, on any worker, in any order.
    """
    covered: dict[str, set[str]] = {}
    for _, overrides, walk in CASES:
        for path in walked(compose, overrides, walk)[1]:
            try:
                domain(RunConfig, path)
            except KeyError:
                continue  # undeclared: the walk above fails on it, by name
            covered.setdefault(path.split(".")[0] if "." in path else "(top level)", set()).add(path)
    with capsys.disabled():
        for group, paths in sorted(covered.items()):
            print(f"\n{group}: {len(paths)} leaves: {', '.join(sorted(paths))}")
    assert {"model", "data", "trainer", "optim", "analysis", "pruning", "logger", "sweep", "(top level)"} <= set(
        covered
    )

"""One table of defaults: each group's dataclass. A ``conf/<group>/<option>.yaml`` states only what that option
changes; what the CLI composes for it must be what building the dataclass from those keys alone gives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from mhaexp.config import CONF_DIR, build, defaults_of, group_options, yaml_fields
from mhaexp.data.datamodule import LMDataModule
from mhaexp.training.config import TABLED, TrainerConfig, cuda_available

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = [(g, o) for g in TABLED for o in group_options(g)]


def needed(group: str, option: str) -> list[str]:
    """What an option needs to build on this machine besides itself (a text file, a CPU when no GPU)."""
    if (group, option) == ("data", "text"):
        return [f"data.path={ROOT / 'README.md'}"]
    if group == "trainer" and option in ("gpu", "fsdp") and not cuda_available():
        return ["trainer.accelerator=cpu"]
    return []


def stated(group: str, option: str) -> set[str]:
    """The keys an option's file states, its base options' included (``defaults: [text, _self_]``)."""
    raw = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    keys = {str(k) for k in raw if k != "defaults"}
    for base in raw.get("defaults", []):
        if isinstance(base, str) and base != "_self_":
            keys |= stated(group, base)
    return keys


def values(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name in yaml_fields(type(obj))}


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_the_cli_composes_what_direct_construction_gives(
    compose: Callable[[list[str]], DictConfig], group: str, option: str
) -> None:
    cls = TABLED[group]
    extra = needed(group, option)
    node = OmegaConf.to_container(compose([f"{group}={option}", *extra])[group], resolve=True)
    composed = build(cls, node, group, complete=True)  # every key the kind takes is in the composition
    own = stated(group, option) | {o.split("=")[0].split(".")[1] for o in extra}
    direct = build(cls, {k: v for k, v in node.items() if k in own}, group)  # the rest: dataclass defaults
    assert values(direct) == values(composed)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_no_option_restates_a_default(group: str, option: str) -> None:
    """A key equal to the dataclass's default would be a second statement of it, free to drift."""
    cls = TABLED[group]
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    kind = raw.get("kind")
    table = defaults_of(cls, kind)
    # kind says which keys apply; _target_ lets a data file be instantiated on its own.
    own = {k: v for k, v in raw.items() if k not in ("kind", "_target_", "defaults")}
    same = {k: v for k, v in own.items() if k in table and table[k] == v}
    assert not same, f"conf/{group}/{option}.yaml restates {cls.__name__}'s defaults {same}"


def test_programmatic_objects_take_the_same_defaults(compose: Callable[[list[str]], DictConfig]) -> None:
    """The datamodule and the trainer config built in code, with no YAML, are the CLI's (trainer=cpu)."""
    cfg = compose(["data=induction"])
    dm = LMDataModule(kind="induction", seq_len=cfg.data.seq_len)
    assert dm.source.n_tokens == cfg.data.n_tokens == 30 and dm.batch_size == cfg.data.batch_size
    assert values(TrainerConfig()) == values(build(TrainerConfig, compose([]).trainer, "trainer", complete=True))

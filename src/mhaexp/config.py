"""The shared config toolkit: where conf/ lives, and the small vocabulary every group config declares its fields in.

Each config group owns one dataclass (``ModelConfig`` in :mod:`mhaexp.nn.config`, ``DataConfig`` in
:mod:`mhaexp.data.spec`, ``AnalysisConfig`` in :mod:`mhaexp.analysis.config`, ``PruningConfig`` in
:mod:`mhaexp.pruning.config`, trainer/optim/logger and the assembled ``RunConfig`` in
:mod:`mhaexp.training.config`). Every field says its domain with :func:`setting`; ``__post_init__``
calls :func:`check_fields`, so an object that exists holds values in their domains. Each
:class:`Check` also knows a value outside its domain, which is how ``tests/test_schema.py`` shows that
every leaf of every YAML file is refused with a line naming it.

Nothing here imports torch: the CLI checks every job of a sweep with these before any starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mhaexp.errors import ConfigError, unknown_key_hint
from mhaexp.rundir import run_key  # noqa: F401  (registers ${mhaexp_run_key:})

CONF_DIR = Path(os.environ.get("MHAEXP_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))
T = TypeVar("T")

# ${mhaexp_max:64,${data.seq_len}}: a model's position table is at least its preset's size and never
# shorter than the data's sequences, so data=retrieval (T = 256) works with the default model.
OmegaConf.register_new_resolver("mhaexp_max", lambda *xs: max(int(x) for x in xs), replace=True)


def instantiate_plain(node: DictConfig, **extra: Any) -> Any:
    """Build ``node._target_(**node)`` letting our own errors through unwrapped.

    ``hydra.utils.instantiate`` wraps every exception in an InstantiationException,
    which would turn a one-line ConfigError into a stack of messages.
    """
    kwargs = OmegaConf.to_container(node, resolve=True)
    target = kwargs.pop("_target_")
    kwargs.update(extra)
    return get_class(target)(**kwargs)


# ---------------------------------------------------------------------------------------------
# the check vocabulary
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A field's domain: ``test(value)``, the words an error line uses for it, and a value outside it."""

    test: Callable[[Any], bool]
    valid: str
    bad: Any
    nested: type | None = None  # the value is this group dataclass, built from a mapping
    derived: bool = False  # set by the builder from other fields, never by a YAML key


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def integer() -> Check:
    return Check(_int, "must be an integer", "abc")


def int_at_least(low: int) -> Check:
    words = {0: "an integer >= 0", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    return Check(lambda v: _int(v) and v >= low, f"must be {words}", low - 1)


def positive_int() -> Check:
    return int_at_least(1)


def non_negative_int() -> Check:
    return int_at_least(0)


def number(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A finite number in the interval; open ends say so (``(0, 1)``, ``[0, 1)``, ...)."""

    def test(v: Any) -> bool:
        if not _num(v):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    if math.isinf(low) and math.isinf(high):
        return Check(test, "must be a finite number", "abc")
    if math.isinf(high):
        words = f"a number {'>' if low_open else '>='} {low:g}"
        return Check(test, f"must be {words}", low - 1 if not low_open else low)
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Check(test, f"must be in {interval}", high + 1 if not high_open else high)


def probability() -> Check:
    return number(0.0, 1.0)


def positive_number() -> Check:
    return number(0.0, low_open=True)


def choice(*values: Any) -> Check:
    return Check(lambda v: not isinstance(v, bool) and v in values, f"choose one of {list(values)}", "nosuch")


def boolean() -> Check:
    return Check(lambda v: isinstance(v, bool), "must be true or false", "maybe")


def string() -> Check:
    return Check(lambda v: isinstance(v, str) and v != "", "must be a non-empty string", "")


def literal(value: str) -> Check:
    return Check(lambda v: v == value, f"must be {value!r}", "no.such.Target")


def existing_file(what: str = "file") -> Check:
    return Check(
        lambda v: isinstance(v, str) and Path(v).expanduser().is_file(),
        f"must be the path of an existing {what}",
        "/no/such/file",
    )


def optional(check: Check) -> Check:
    return Check(lambda v: v is None or check.test(v), f"{check.valid}, or null", check.bad)


def either(*checks: Check, valid: str) -> Check:
    return Check(lambda v: any(c.test(v) for c in checks), valid, checks[0].bad)


def list_of(item: Check, length: int | None = None) -> Check:
    def test(v: Any) -> bool:
        ok = isinstance(v, (list, tuple)) and all(item.test(x) for x in v)
        return ok and (length is None or len(v) == length)

    size = f"{length} " if length is not None else ""
    return Check(test, f"must be a list of {size}values that each {item.valid.removeprefix('must ')}", [item.bad])


def nested(cls: type) -> Check:
    return Check(lambda v: isinstance(v, cls), f"must be a mapping of {cls.__name__} keys", "abc", nested=cls)


DERIVED = Check(lambda v: True, "set from other fields, not by a key", None, derived=True)


def param_default(func: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of ``func`` (a class: its ``__init__``), where that is the table."""
    import inspect

    default = inspect.signature(func).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{getattr(func, '__name__', func)}({name}) has no default")
    return default


def setting(check: Check, default: Any = MISSING, *, factory: Any = MISSING, only: Sequence[str] = ()) -> Any:
    """A dataclass field with its domain. ``only``: the ``kind`` values the key belongs to (all when empty)."""
    meta = {"check": check, "only": tuple(only)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# checking and building
# ---------------------------------------------------------------------------------------------


def dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_of(f: Field) -> Check:
    check = f.metadata.get("check")
    if check is None:  # a programming error: every field of a group config declares its domain
        raise TypeError(f"config field {f.name!r} has no declared domain (use mhaexp.config.setting)")
    return check


def applies(f: Field, kind: Any) -> bool:
    only = f.metadata.get("only") or ()
    return not only or kind in only


def check_fields(obj: Any, prefix: str) -> None:
    """Raise ConfigError for the first field of dataclass ``obj`` outside its declared domain."""
    for f in fields(obj):
        check = check_of(f)
        value = getattr(obj, f.name)
        if not check.derived and not check.test(value):
            raise ConfigError(dotted(prefix, f.name), value, check.valid)


def check_mapping(cls: type, raw: Mapping[str, Any], prefix: str) -> None:
    """:func:`check_fields` for the non-nested keys of a mapping, before the object is built."""
    for f in fields(cls):
        check = check_of(f)
        if f.name in raw and check.nested is None and not check.derived and not check.test(raw[f.name]):
            raise ConfigError(dotted(prefix, f.name), raw[f.name], check.valid)


def build(cls: type[T], raw: Any, prefix: str, *, complete: bool = False, **derived: Any) -> T:
    """``cls(**raw)`` from a config node, with a ConfigError naming the key for anything not in its schema.

    A class with a ``kind`` field refuses keys another kind owns. ``complete``: every key that applies
    must be given (the CLI path: the composition, the dataclass's defaults merged in, holds them all, so a
    key missing there is a broken composition, not a default). ``derived``: the
    fields the caller computes (``vocab_size`` from the data).
    """
    if isinstance(raw, DictConfig):
        raw = OmegaConf.to_container(raw, resolve=True)
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix, raw, f"must be a mapping of {cls.__name__} keys")
    by_name = {f.name: f for f in fields(cls)}
    for key, value in raw.items():
        if key not in by_name or check_of(by_name[key]).derived:
            keys = [n for n, f in by_name.items() if not check_of(f).derived]
            raise ConfigError(
                dotted(prefix, str(key)), value, f"unknown key; {unknown_key_hint(str(key), keys, prefix)}"
            )
    kind = raw.get("kind")
    if "kind" in by_name:
        kind_check = check_of(by_name["kind"])
        if "kind" in raw and not kind_check.test(kind):
            raise ConfigError(dotted(prefix, "kind"), kind, kind_check.valid)
        for key, value in raw.items():
            if not applies(by_name[key], kind):
                own = [n for n, f in by_name.items() if applies(f, kind) and not check_of(f).derived]
                raise ConfigError(
                    dotted(prefix, str(key)), value, f"not a key of {prefix}.kind={kind}; it takes {', '.join(own)}"
                )
    if complete:
        for name, f in by_name.items():
            if not check_of(f).derived and applies(f, kind) and name not in raw:
                raise ConfigError(dotted(prefix, name), None, "missing: every key needs its value in the group's YAML")
    values = dict(raw)
    for name, value in raw.items():
        inner = check_of(by_name[name]).nested
        if inner is not None and isinstance(value, Mapping):
            values[name] = build(inner, value, dotted(prefix, name), complete=complete)
    return cls(**values, **derived)


# ---------------------------------------------------------------------------------------------
# the one table of defaults
# ---------------------------------------------------------------------------------------------

# The Hydra config-store group conf/train.yaml merges under each group option (``dataclass/<group>``).
DEFAULTS_GROUP = "dataclass"


def defaults_of(cls: type, kind: Any = None) -> dict[str, Any]:
    """The dataclass's defaults of the keys ``kind`` takes (all keys for a group without kinds), as YAML values.

    The dataclass is the one table of defaults: a ``conf/<group>/<option>.yaml`` holds only the keys that
    option changes, and :func:`register_defaults` gives Hydra the rest from here.
    """
    out: dict[str, Any] = {}
    for f in fields(cls):
        if check_of(f).derived or not applies(f, kind):
            continue
        if f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    if kind is not None and "kind" in out:
        out["kind"] = kind
    return out


def register_defaults(group: str, cls: type) -> None:
    """Put the dataclass's defaults in Hydra's config store, one node per option of ``conf/<group>/``.

    ``conf/train.yaml`` merges ``dataclass/<group>/<option>`` under the chosen option (its defaults list
    interpolates the choice), so the composed group holds every key its kind takes: the option's own
    values over the dataclass's. An option's kind is the ``kind`` its file states, else its base option's
    (``defaults: [text, _self_]``).
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    has_kind = "kind" in yaml_fields(cls)
    for option in group_options(group):
        kind = option_kind(group, option) if has_kind else None
        store.store(group=f"{DEFAULTS_GROUP}/{group}", name=option, node=defaults_of(cls, kind))


def is_base(option: str) -> bool:
    """A ``_``-prefixed file of a group is a base that options extend (``conf/data/_base.yaml``), never a choice."""
    return option.startswith("_")


def group_options(group: str) -> list[str]:
    """The choices of ``conf/<group>/``: its YAML files but the bases (:func:`is_base`)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not is_base(p.stem))


def option_kind(group: str, option: str) -> Any:
    """The ``kind`` of ``conf/<group>/<option>.yaml``: its own, else that of the option it builds on."""
    raw = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    if "kind" in raw:
        return raw["kind"]
    bases = [e for e in raw.get("defaults", []) if isinstance(e, str) and e != "_self_" and not is_base(e)]
    return option_kind(group, bases[0]) if bases else None


def yaml_fields(cls: type) -> dict[str, Check]:
    """The keys a YAML file of this group may hold, with their checks (nested groups as one key each)."""
    assert is_dataclass(cls)
    return {f.name: check_of(f) for f in fields(cls) if not check_of(f).derived}


def domain(cls: type, path: str) -> Check:
    """The check of a dotted key inside group config ``cls`` (``thresholds.sink`` in AnalysisConfig)."""
    head, _, rest = path.partition(".")
    checks = yaml_fields(cls)
    if head not in checks:
        raise KeyError(f"{cls.__name__} declares no field {head!r}")
    check = checks[head]
    if rest:
        if check.nested is None:
            raise KeyError(f"{cls.__name__}.{head} is not a nested group")
        return domain(check.nested, rest)
    return check

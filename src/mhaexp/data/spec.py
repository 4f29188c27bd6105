"""``conf/data/*.yaml`` as one checked object, and the source it selects; no Lightning or datasets import.

``mhaexp-train`` builds this for every job of a sweep before any of them starts, so it must stay
cheap: the source is constructed (tokenizer, file list) but no data is generated.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any

from mhaexp.config import (
    DERIVED,
    applies,
    check_fields,
    check_of,
    choice,
    integer,
    literal,
    non_negative_int,
    optional,
    param_default,
    positive_int,
    setting,
    string,
)
from mhaexp.data.cache import cache_root
from mhaexp.data.grammar import GrammarSource
from mhaexp.data.induction import InductionSource
from mhaexp.data.retrieval import RetrievalSource
from mhaexp.data.source import Source, TokenSource
from mhaexp.data.text import TextSource
from mhaexp.errors import ConfigError

# data.kind -> its source: adding a source is its own module, its conf/data YAML and one line here.
SOURCES: dict[str, type[Source]] = {
    "grammar": GrammarSource,
    "induction": InductionSource,
    "text": TextSource,
    "retrieval": RetrievalSource,
}
TARGET = "mhaexp.data.LMDataModule"


def with_source_keys(cls: type) -> type:
    """Add every source's :attr:`~mhaexp.data.source.Source.config_keys` to ``cls`` as fields that apply to
    that kind only (``setting(only=...)``), with the source's ``__init__`` default as theirs; then make it a
    dataclass. A key two kinds share must have the same domain and default in both."""
    declared: dict[str, tuple[Any, Any, str, list[str]]] = {}
    for kind, source in SOURCES.items():
        for name, check in source.config_keys.items():
            default = param_default(source, name)
            if name in declared:
                first, first_default, first_type, kinds = declared[name]
                if (first.valid, first_default) != (check.valid, default):
                    raise TypeError(f"data.{name}: {kinds[0]} and {kind} declare it with another domain or default")
                kinds.append(kind)
                continue
            annotation = inspect.signature(source).parameters[name].annotation
            declared[name] = (check, default, annotation, [kind])
    for name, (check, default, annotation, kinds) in declared.items():
        cls.__annotations__[name] = annotation
        setattr(cls, name, setting(check, default, only=kinds))
    # The derived fields last, after every key: the keys' order is the composed config's.
    for name in [n for n in cls.__annotations__ if check_of(getattr(cls, n)).derived]:
        cls.__annotations__[name] = cls.__annotations__.pop(name)
    return dataclass(cls)


@with_source_keys
class DataConfig:
    """Validated data settings and the source they select (``SOURCES``: grammar, induction, text or retrieval).

    The fields below are the keys every kind shares; each source adds its own (:attr:`Source.config_keys
    <mhaexp.data.source.Source.config_keys>`, :func:`with_source_keys`), which belong to its kind only and
    take the source's defaults. These defaults are the one table: a ``conf/data`` option states only what
    it changes. ``source`` (with its tokenizer) and ``n_vocab`` (the model's vocabulary: the tokenizer's)
    are set on construction; a text source's ``vocab_size`` is the size a ``tokenizer: bpe`` is trained to.
    """

    _target_: str = setting(literal(TARGET), TARGET)
    kind: str = setting(choice(*SOURCES), "grammar")
    seq_len: int = setting(positive_int(), 32)  # T, tokens per sequence; <= model.max_seq_len
    batch_size: int = setting(positive_int(), 64)
    n_train: int = setting(positive_int(), 20000)  # sequences (text: at most this many windows)
    n_val: int = setting(positive_int(), 1000)  # held-out sequences
    n_probe: int = setting(positive_int(), 256)  # the fixed analysis set
    seed: int = setting(integer(), 0)  # same seed -> byte-identical data
    cache_dir: str | None = setting(optional(string()), None)  # null: $MHAEXP_CACHE, else ~/.cache/mhaexp
    num_workers: int = setting(non_negative_int(), 0)  # DataLoader worker processes
    source: Source = setting(DERIVED, None)
    n_vocab: int = setting(DERIVED, 0)

    def __post_init__(self) -> None:
        check_fields(self, "data")
        # The source checks what needs its kind (seq_len minimums, the text files exist and hold text).
        cls = SOURCES[self.kind]
        extra = {"cache_root": cache_root(self.cache_dir)} if cls.needs_cache_root else {}
        own = self.keys(source_only=True)
        self.source = cls(seq_len=self.seq_len, sizes=self.sizes, seed=self.seed, **own, **extra)
        self.n_vocab = self.source.tokenizer.vocab_size

    def check_trainable(self) -> None:
        """Before training starts: at least one batch of windows (a text corpus: by its size, untokenized)."""
        most = self.source.max_train_windows()
        if most is not None:
            self.check_batch_fits(most, exact=not isinstance(self.source, TokenSource))

    def check_batch_fits(self, windows: int, exact: bool = True) -> None:
        """Refuse training data that gives fewer than one batch of windows: every batch would be dropped, and
        the run would end "ok" after 0 steps. The preflight checks a bound; the datamodule the real count."""
        if windows >= self.batch_size:
            return
        short = self.source.size_key() if windows < self.n_train else None
        field, value = short if short is not None else ("data.n_train", self.n_train)
        raise ConfigError(
            field,
            value,
            f"gives {'' if exact else 'at most '}{windows} training windows of data.seq_len={self.seq_len}; one batch "
            f"needs data.batch_size={self.batch_size}: give more data, or lower data.batch_size",
        )

    def check_available(self) -> None:
        """What the preflight checks beyond the values: a hub dataset needs the network (or offline mode)."""
        self.source.check_available()

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "probe": self.n_probe}

    def keys(self, source_only: bool = False) -> dict[str, Any]:
        """The YAML keys of this kind and their values (``source_only``: just the kind's own keys)."""
        out = {}
        for f in fields(self):
            if f.metadata["check"].derived or f.name == "_target_" or not applies(f, self.kind):
                continue
            if source_only and not f.metadata["only"]:
                continue
            out[f.name] = getattr(self, f.name)
        return out

"""``conf/data/*.yaml`` as one checked object, and the source it selects; no Lightning or datasets import.

``mhaexp-train`` builds this for every job of a sweep before any of them starts, so it must stay
cheap: the source is constructed (tokenizer, file list) but no data is generated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mhaexp.config import (
    DERIVED,
    Check,
    applies,
    boolean,
    check_fields,
    choice,
    int_at_least,
    integer,
    literal,
    non_negative_int,
    optional,
    param_default,
    positive_int,
    positive_number,
    probability,
    setting,
    string,
)
from mhaexp.data.cache import cache_root
from mhaexp.data.grammar import GrammarSource
from mhaexp.data.induction import VARIANTS, InductionSource
from mhaexp.data.lexicon import LEXICONS
from mhaexp.data.retrieval import FILLERS, LOSSES, RetrievalSource
from mhaexp.data.text import TextSource
from mhaexp.data.tokenizers import BPE_MIN_VOCAB
from mhaexp.errors import ConfigError

SOURCES: dict[str, type] = {
    "grammar": GrammarSource,
    "induction": InductionSource,
    "text": TextSource,
    "retrieval": RetrievalSource,
}
TARGET = "mhaexp.data.LMDataModule"


def source_key(check: Check, kind: str, name: str) -> Any:
    """A key of one source kind; its default is the source's own (the source class is its table)."""
    return setting(check, param_default(SOURCES[kind], name), only=[kind])


@dataclass
class DataConfig:
    """Validated data settings and the source they select (grammar, induction, text or retrieval).

    Keys marked ``only`` belong to one kind; their defaults are the source class's own (``source_key``).
    These defaults are the one table: a ``conf/data`` option states only what it changes. ``source`` (with
    its tokenizer) and ``n_vocab`` (the model's vocabulary: the tokenizer's) are set on construction;
    ``vocab_size`` is the size a ``tokenizer: bpe`` is trained to.
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
    probe_conllu: str | None = source_key(optional(string()), "grammar", "probe_conllu")
    lexicon: str = source_key(choice(*LEXICONS), "grammar", "lexicon")  # zipf: a long tail of rare words
    lexicon_size: int = source_key(positive_int(), "grammar", "lexicon_size")  # zipf: nouns (adjectives: 1/4)
    zipf_exponent: float = source_key(positive_number(), "grammar", "zipf_exponent")
    variant: str = source_key(choice(*VARIANTS), "induction", "variant")
    n_tokens: int = source_key(int_at_least(2), "induction", "n_tokens")
    fixed_length: bool = source_key(boolean(), "induction", "fixed_length")
    path: str | None = source_key(optional(string()), "text", "path")
    name: str | None = source_key(optional(string()), "text", "name")
    config_name: str | None = source_key(optional(string()), "text", "config_name")
    split: str = source_key(string(), "text", "split")
    text_field: str = source_key(string(), "text", "text_field")
    tokenizer: str = source_key(string(), "text", "tokenizer")
    vocab_size: int = source_key(int_at_least(BPE_MIN_VOCAB), "text", "vocab_size")
    filler: str = source_key(choice(*FILLERS), "retrieval", "filler")
    n_filler: int = source_key(int_at_least(2), "retrieval", "n_filler")
    n_keys: int = source_key(int_at_least(2), "retrieval", "n_keys")
    n_values: int = source_key(int_at_least(2), "retrieval", "n_values")
    value_len: int = source_key(positive_int(), "retrieval", "value_len")
    n_needles: int = source_key(positive_int(), "retrieval", "n_needles")
    n_queries: int = source_key(positive_int(), "retrieval", "n_queries")
    marker: bool = source_key(boolean(), "retrieval", "marker")
    distinct_values: bool = source_key(boolean(), "retrieval", "distinct_values")
    min_depth: float = source_key(probability(), "retrieval", "min_depth")
    max_depth: float = source_key(probability(), "retrieval", "max_depth")
    loss: str = source_key(choice(*LOSSES), "retrieval", "loss")
    source: Any = setting(DERIVED, None)
    n_vocab: int = setting(DERIVED, 0)

    def __post_init__(self) -> None:
        check_fields(self, "data")
        # The source checks what needs its kind (seq_len minimums, the text files exist and hold text).
        cls = SOURCES[self.kind]
        extra = {"cache_root": cache_root(self.cache_dir)} if getattr(cls, "needs_cache_root", False) else {}
        own = self.keys(source_only=True)
        self.source = cls(seq_len=self.seq_len, sizes=self.sizes, seed=self.seed, **own, **extra)
        self.n_vocab = self.source.tokenizer.vocab_size

    def check_trainable(self) -> None:
        """Before training starts: at least one batch of windows (a text corpus: by its size, untokenized)."""
        bound = getattr(self.source, "max_train_windows", None)
        most = bound() if bound is not None else self.n_train
        if most is not None:
            self.check_batch_fits(most, exact=bound is None)

    def check_batch_fits(self, windows: int, exact: bool = True) -> None:
        """Refuse training data that gives fewer than one batch of windows: every batch would be dropped, and
        the run would end "ok" after 0 steps. The preflight checks a bound; the datamodule the real count."""
        if windows >= self.batch_size:
            return
        if windows >= self.n_train or self.kind != "text":
            field, value = "data.n_train", self.n_train
        else:
            field, value = ("data.path", self.path) if self.path is not None else ("data.name", self.name)
        raise ConfigError(
            field,
            value,
            f"gives {'' if exact else 'at most '}{windows} training windows of data.seq_len={self.seq_len}; one batch "
            f"needs data.batch_size={self.batch_size}: give more data, or lower data.batch_size",
        )

    def check_available(self) -> None:
        """What the preflight checks beyond the values: a hub dataset needs the network (or offline mode)."""
        check = getattr(self.source, "check_available", None)
        if check is not None:
            check()

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

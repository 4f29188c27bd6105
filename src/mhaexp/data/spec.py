"""The data settings, checked: what a datamodule is built from, with no Lightning or datasets import.

``mhaexp-train`` checks every job of a sweep with this before any of them
starts, so it must stay cheap: no data is generated here.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from mhaexp.data.grammar import GrammarSource
from mhaexp.data.induction import InductionSource
from mhaexp.data.text import TextSource
from mhaexp.errors import ConfigError

SOURCES: dict[str, type] = {"grammar": GrammarSource, "induction": InductionSource, "text": TextSource}


def _positive_int(field: str, value: object, minimum: int = 1) -> int:
    # bool is an int subclass; "seq_len: true" is a typo, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"data.{field}", value, f"an int >= {minimum}")
    return value


class DataSpec:
    """Validated data settings and the source they select (grammar, induction or text)."""

    def __init__(
        self,
        kind: str = "grammar",
        seq_len: int = 32,
        batch_size: int = 64,
        n_train: int = 20000,
        n_val: int = 1000,
        n_probe: int = 256,
        seed: int = 0,
        num_workers: int = 0,
        source_kwargs: dict[str, Any] | None = None,
    ) -> None:
        source_kwargs = dict(source_kwargs or {})
        if kind not in SOURCES:
            raise ConfigError("data.kind", kind, f"one of {', '.join(SOURCES)}")
        self.kind = kind
        self.seq_len = _positive_int("seq_len", seq_len)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.sizes = {
            "train": _positive_int("n_train", n_train),
            "val": _positive_int("n_val", n_val),
            "probe": _positive_int("n_probe", n_probe),
        }
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError("data.seed", seed, "an int")
        self.seed = seed
        self.num_workers = _positive_int("num_workers", num_workers, minimum=0)
        try:
            self.source = SOURCES[kind](seq_len=seq_len, sizes=self.sizes, seed=seed, **source_kwargs)
        except TypeError as e:
            # An unexpected key (typo, or a key of another kind) lands here.
            bad = re.search(r"argument '(\w+)'", str(e))
            key = bad.group(1) if bad else ",".join(sorted(source_kwargs))
            accepted = [p for p in inspect.signature(SOURCES[kind]).parameters if p not in ("seq_len", "sizes", "seed")]
            raise ConfigError(
                f"data.{key}", source_kwargs.get(key), f"not a key of kind={kind}; it takes {', '.join(accepted)}"
            ) from e
        self.tokenizer = self.source.tokenizer
        self.vocab_size: int = self.tokenizer.vocab_size

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> DataSpec:
        """From the ``data`` config node's keys (``_target_``, ``cache_dir`` ignored)."""
        kwargs = {k: v for k, v in data.items() if k not in ("_target_", "cache_dir")}
        names = list(inspect.signature(cls.__init__).parameters)[1:-1]
        known = {k: kwargs.pop(k) for k in names if k in kwargs}
        return cls(**known, source_kwargs=kwargs)

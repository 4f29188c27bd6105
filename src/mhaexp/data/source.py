"""What a data source is: the protocol :class:`~mhaexp.data.spec.DataConfig` and the datamodule call.

A source turns ``conf/data`` keys into a tokenizer and sequences. It is one of two kinds of thing:

* a :class:`RowSource` yields rows (``generate``); the datamodule caches them with ``datasets``
  (grammar, induction, retrieval);
* a :class:`TokenSource` tokenizes into a token file of its own and serves windows read from it (text).

Every source declares the ``conf/data`` keys it takes beyond the shared ones in :attr:`Source.config_keys`
(their defaults are its ``__init__``'s), and is registered by ``kind`` in ``mhaexp.data.spec.SOURCES``.
The hooks with a body here are optional: a source overrides the ones it needs.

Nothing here imports torch or ``datasets``: the CLI checks every job of a sweep with these classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mhaexp.config import Check

if TYPE_CHECKING:
    import torch

__all__ = ["RowSource", "Source", "TokenSource", "ValidationMetric"]


class ValidationMetric(ABC):
    """A task score over the validation split, which the LightningModule logs at each validation's end.

    Kept as sums: the module adds up :meth:`sums` over the batches and the processes, then logs
    :meth:`finish` of the total once. A mean of per-batch means would weight a sequence by how the
    sequences happened to fall into batches.
    """

    @abstractmethod
    def sums(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The sums (1-D, or any fixed shape) of one validation batch.

        ``logits`` (B, T, V): the model's; ``targets`` (B, T): the objective's, ``mhaexp.nn.objectives.IGNORE``
        where no loss is taken.
        """

    @abstractmethod
    def finish(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        """The logged values by their full names (``val/...``) from the sums of the whole validation split."""


class Source(ABC):
    """A data source, selected by ``data.kind``; built by ``DataConfig`` as
    ``cls(seq_len=..., sizes=..., seed=..., **its config_keys[, cache_root=...])``."""

    kind: ClassVar[str]
    # The conf/data keys of this kind beyond the shared ones, and their domains. Each must be a parameter of
    # __init__ with a default: that default is the key's (DataConfig adds the keys as its fields).
    config_keys: ClassVar[Mapping[str, Check]] = {}
    # True: __init__ also takes cache_root, the data cache directory (where a source keeps what it builds).
    needs_cache_root: ClassVar[bool] = False

    tokenizer: Any  # mhaexp.data.tokenizers.Tokenizer: its vocabulary is the model's
    sizes: dict[str, int]  # sequences per split: train, val, probe
    # Dependency relations the probe's ``rels`` column numbers (grammar); none by default.
    relations: Sequence[str] = ()
    # Columns besides input_ids and attention_mask that val and probe batches hold.
    annotation_columns: tuple[str, ...] = ()
    # The annotation columns training reads too (a loss mask); the others are not decoded for training.
    train_columns: tuple[str, ...] = ()

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything besides the shared keys that changes the data: it keys the cache."""

    def check_available(self) -> None:
        """Raise ConfigError when the data cannot be had (the preflight asks before anything starts).
        Generated data always can: nothing to check by default."""
        return None

    def max_train_windows(self) -> int | None:
        """How many training windows the source gives, known before any data is made (None: not known yet)."""
        return self.sizes["train"]

    def size_key(self) -> tuple[str, Any] | None:
        """The key (dotted name, value) that bounds the training data when it is short of ``data.n_train``
        windows (a text corpus's path), for the error line; None: ``data.n_train`` itself."""
        return None

    def check_model(self, causal: bool) -> None:
        """Raise ConfigError when this data cannot train a model with that objective (``causal``: a causal LM,
        else a masked LM). Any model by default."""
        return None

    def vocab_key(self) -> tuple[str, Any] | None:
        """The key (dotted name, value) that sets the vocabulary's size, for an error line about a model too big
        for memory (a BPE trained to ``data.vocab_size``); None: the data fixes it."""
        return None

    def validation_metrics(self, causal: bool) -> list[ValidationMetric]:
        """The task scores validation logs for a model (``causal``: a causal LM), besides loss and accuracy."""
        return []


class RowSource(Source):
    """A source that yields rows; the datamodule caches them with ``datasets`` under its fingerprint."""

    @abstractmethod
    def generate(self, split: str) -> Iterator[dict[str, list]]:
        """The rows of ``split`` (train, val, probe), ``sizes[split]`` of them, each a list per column:
        ``input_ids`` and ``attention_mask`` of ``seq_len`` each, then the :attr:`annotation_columns`."""


class TokenSource(Source):
    """A source with its own token cache (text): tokenized once by :meth:`prepare`, read by :meth:`split_dataset`."""

    @property
    @abstractmethod
    def token_path(self) -> Path:
        """The directory of the token cache this configuration reads."""

    @abstractmethod
    def prepare(self) -> Path:
        """Tokenize into :attr:`token_path` unless it is there; return it."""

    @abstractmethod
    def split_dataset(self, split: str) -> Any:
        """The windows of ``split`` (train, val, probe): a dataset of rows with ``stream_counts(vocab_size)``."""

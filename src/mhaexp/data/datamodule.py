"""One LightningDataModule for every data source, chosen by ``kind``.

The source (grammar, induction, text) knows its tokenizer and how to produce
examples; this module caches them with ``datasets`` and serves batches:
``input_ids`` LongTensor (B, T) starting with BOS and padded with PAD,
``attention_mask`` BoolTensor (B, T), and for val/probe batches of the grammar
also ``heads``, ``rels``, ``coref`` LongTensors (B, T) (see ``grammar``).

The cache lives in ``cache_dir``, else ``$MHAEXP_CACHE``, else
``~/.cache/mhaexp``, under a name fingerprinted from every setting that
changes the data, so a rerun with the same config loads instead of generating.
Text is the exception to the ``datasets`` cache: its source tokenizes into a flat
token file and serves windows read from it (:mod:`mhaexp.data.text`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import datasets
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mhaexp.config import build
from mhaexp.data.cache import build_once, cache_root, default_cache_dir, fingerprint
from mhaexp.data.sampler import GlobalBatchSampler
from mhaexp.data.source import TokenSource, ValidationMetric
from mhaexp.data.spec import DataConfig
from mhaexp.errors import ConfigError

SPLITS = ("train", "val", "probe")
__all__ = ["LMDataModule", "default_cache_dir"]


class LMDataModule(pl.LightningDataModule):
    """Batches for language modelling and head analysis.

    ``vocab_size``, ``seq_len``, ``tokenizer`` and ``relations`` are set at
    construction without generating any data; bad settings raise ConfigError.
    ``keys`` are ``conf/data`` keys (:class:`DataConfig`'s defaults for the others; the source's own
    keys go to it: ``grammar.GrammarSource``, ``induction.InductionSource``, ``text.TextSource``, ...,
    each a :class:`mhaexp.data.source.Source`).
    """

    def __init__(self, config: DataConfig | None = None, **keys: Any) -> None:
        super().__init__()
        if config is None:  # programmatic use; the CLI passes the DataConfig it checked (from_config)
            config = build(DataConfig, keys, "data")
        self.kind, self.seed, self.seq_len, self.batch_size = (
            config.kind,
            config.seed,
            config.seq_len,
            config.batch_size,
        )
        self.config = config
        self.sizes, self.num_workers, self.source = config.sizes, config.num_workers, config.source
        self.tokenizer = self.source.tokenizer
        self.vocab_size: int = config.n_vocab
        self.cache_root = cache_root(config.cache_dir)
        self.save_hyperparameters(ignore=["config"])
        self._data: dict[str, Any] = {}
        self._train_targets: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config: DataConfig) -> LMDataModule:
        """The datamodule of a checked ``DataConfig`` (its source is used as is, not rebuilt)."""
        return cls(**config.keys(), config=config)

    @property
    def relations(self) -> list[str]:
        return list(self.source.relations)

    # ------------------------------------------------------------ caching --
    @property
    def tokenizes(self) -> bool:
        """Whether the source tokenizes text into its own token cache (text) instead of generating rows."""
        return isinstance(self.source, TokenSource)

    @property
    def fingerprint(self) -> str:
        if self.tokenizes:
            return self.cache_path.name.rpartition("-")[2]
        config = {
            "kind": self.kind,
            "seq_len": self.seq_len,
            "sizes": self.sizes,
            "seed": self.seed,
            "source": self.source.identity(),
            "relations": self.relations,
        }
        return fingerprint(config)

    @property
    def cache_path(self) -> Path:
        if self.tokenizes:
            return Path(self.source.token_path)
        return self.cache_root / f"{self.kind}-{self.fingerprint}"

    def _features(self) -> datasets.Features:
        ints = datasets.Sequence(datasets.Value("int64"))
        cols = {"input_ids": ints, "attention_mask": datasets.Sequence(datasets.Value("bool"))}
        cols.update({c: ints for c in self.source.annotation_columns})
        return datasets.Features(cols)

    def prepare_data(self) -> None:
        if self.tokenizes:
            self.source.prepare()
            return
        build_once(self.cache_path, "dataset_dict.json", self._write_generated)

    def _write_generated(self, out: Path) -> None:
        # Three tiny splits would print six progress bars into every run's log.
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            splits = {
                split: datasets.Dataset.from_generator(
                    _generate,
                    features=self._features(),
                    cache_dir=str(out.parent / "gen"),
                    gen_kwargs={"source": self.source, "split": split},
                    fingerprint=f"{self.fingerprint}-{split}",
                )
                for split in SPLITS
            }
            datasets.DatasetDict(splits).save_to_disk(str(out))
        finally:
            if bars:
                datasets.enable_progress_bars()

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        if self.tokenizes:
            self._data = {split: self.source.split_dataset(split) for split in SPLITS}
            return
        if not (self.cache_path / "dataset_dict.json").exists():
            # Single-process use (notebooks, tests) may skip prepare_data.
            self.prepare_data()
        loaded = datasets.load_from_disk(str(self.cache_path))
        self._data = {split: loaded[split].with_format("torch") for split in SPLITS}

    def dataset(self, split: str) -> datasets.Dataset:
        self.setup()
        ds = self._data[split]
        if split == "train" and not self.tokenizes:
            # Training reads no annotation but a loss mask (retrieval's data.loss=answer); skip decoding them.
            own = list(self.source.train_columns)
            ds = ds.with_format("torch", columns=["input_ids", "attention_mask", *own])
        return ds

    # -------------------------------------------------------- dataloaders --
    def _loader(self, split: str) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled global batches of ``batch_size``, split evenly over the DDP ranks.

        ``batch_size`` is the global batch, so changing the device count keeps the
        optimization the same; a run restored at step k continues with batch k.
        """
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        step = trainer.global_step if trainer is not None else 0
        if self.batch_size % world:
            raise ConfigError("data.batch_size", self.batch_size, f"must be divisible by the {world} processes")
        ds = self.dataset("train")
        self.config.check_batch_fits(len(ds))
        sampler = GlobalBatchSampler(len(ds), self.batch_size, self.seed, rank, world, start_step=step)
        return DataLoader(
            ds,
            batch_size=self.batch_size // world,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def probe_dataloader(self) -> DataLoader:
        return self._loader("probe")

    def probe_batch(self) -> dict[str, torch.Tensor]:
        """The whole probe set as one batch (it is small by design)."""
        return self.dataset("probe")[:]

    def validation_metrics(self, causal: bool) -> list[ValidationMetric]:
        """The source's task scores that validation logs besides loss and accuracy (``causal``: the model's)."""
        return self.source.validation_metrics(causal)

    # ------------------------------------------------------ token statistics --
    def _columns(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.dataset(split)[:]
        return rows["input_ids"], rows["attention_mask"]

    def _target_counts(self, split: str) -> torch.Tensor:
        """Counts (vocab_size,) of the real tokens after position 0 (what the model predicts) in ``split``."""
        if self.tokenizes:  # streamed from the token file: a large corpus is never materialized
            return torch.from_numpy(self.dataset(split).stream_counts(self.vocab_size))
        ids, mask = self._columns(split)
        return torch.bincount(ids[:, 1:][mask[:, 1:]], minlength=self.vocab_size)

    def token_frequencies(self) -> torch.Tensor:
        """Counts (vocab_size,) of every real token (BOS/EOS included) in train."""
        if self.tokenizes:
            counts = self._target_counts("train")
            counts[self.tokenizer.bos_id] += len(self.dataset("train"))  # each window starts with BOS
            return counts
        ids, mask = self._columns("train")
        return torch.bincount(ids[mask], minlength=self.vocab_size)

    def unigram_loss(self) -> float:
        """Cross-entropy (nats) on val next-token targets of a unigram fit on train targets.

        Targets are the real tokens after position 0 (BOS is never predicted).
        Add-one smoothing keeps a token unseen in training at a finite loss.
        """
        counts = self._target_counts("train")
        logp = torch.log((counts.double() + 1) / (counts.sum() + self.vocab_size))
        val = self._target_counts("val").double()
        if val.sum() == 0:
            return math.nan
        return float(-(val * logp).sum() / val.sum())


def _generate(source: Any, split: str) -> Any:
    # Module-level so datasets can pickle it for from_generator.
    yield from source.generate(split)

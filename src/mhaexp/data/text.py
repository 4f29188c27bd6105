"""Plain text: a local file, a directory of .txt files, or a HF hub dataset.

Documents are tokenized (bytes by default), joined with EOS into one stream and
cut into windows of ``seq_len - 1`` tokens, each prefixed with BOS; only the
final window can be short, and it is padded. The last ``n_val`` windows are
validation (at most a tenth of the stream, at least one), the windows before
them are training (capped at ``n_train``), the probe is the first ``n_probe``
validation windows. A one-window text serves as both train and val.

The hub path (``name:``) needs the network or a warm datasets cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mhaexp.data.tokenizers import ByteTokenizer, HFTokenizer
from mhaexp.errors import ConfigError

PATH_VALID = "an existing non-empty text file, or a directory holding non-empty .txt files"


def text_files(path: str | Path) -> list[Path]:
    """The files a ``path`` stands for, checked to exist and hold something."""
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*.txt") if f.is_file())
    else:
        raise ConfigError("data.path", str(path), PATH_VALID)
    files = [f for f in files if f.stat().st_size > 0]
    if not files:
        raise ConfigError("data.path", str(path), PATH_VALID)
    return files


class TextSource:
    kind = "text"
    relations: list[str] = []
    annotation_columns: tuple[str, ...] = ()

    def __init__(
        self,
        seq_len: int,
        sizes: dict[str, int],
        seed: int,
        path: str | None = None,
        name: str | None = None,
        config_name: str | None = None,
        split: str = "train",
        text_field: str = "text",
        tokenizer: str = "bytes",
    ) -> None:
        if (path is None) == (name is None):
            raise ConfigError("data.path", path, "exactly one of data.path (local text) or data.name (hub dataset)")
        if seq_len < 2:
            raise ConfigError("data.seq_len", seq_len, "an int >= 2 (BOS + one token)")
        self.files = text_files(path) if path is not None else []
        self.seq_len = seq_len
        self.sizes = sizes
        self.seed = seed
        self.path, self.name, self.config_name = path, name, config_name
        self.split, self.text_field, self.tokenizer_name = split, text_field, tokenizer
        self.tokenizer = ByteTokenizer() if tokenizer == "bytes" else HFTokenizer(tokenizer)
        self._windows: np.ndarray | None = None
        self._lengths = np.zeros(0, dtype=np.int64)

    def identity(self) -> dict:
        # File size and mtime stand in for content: an edited file re-tokenizes.
        files = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]
        return {
            "files": files,
            "name": self.name,
            "config_name": self.config_name,
            "split": self.split,
            "text_field": self.text_field,
            "tokenizer": self.tokenizer_name,
        }

    def documents(self) -> Iterator[str]:
        for f in self.files:
            yield f.read_text(encoding="utf-8", errors="replace")
        if self.name is not None:
            import datasets

            ds = datasets.load_dataset(self.name, self.config_name, split=self.split)
            if self.text_field not in ds.column_names:
                raise ConfigError(
                    "data.text_field", self.text_field, f"a column of {self.name}: {', '.join(ds.column_names)}"
                )
            for row in ds:
                yield str(row[self.text_field])

    def windows(self) -> np.ndarray:
        """(n_windows, seq_len) int64 ids, padded; built once per source."""
        if self._windows is None:
            tok = self.tokenizer
            parts = [np.asarray([*tok.encode(doc), tok.eos_id], dtype=np.int64) for doc in self.documents()]
            stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            width = self.seq_len - 1
            n = max(1, -(-len(stream) // width))
            body = np.full(n * width, tok.pad_id, dtype=np.int64)
            body[: len(stream)] = stream
            bos = np.full((n, 1), tok.bos_id, dtype=np.int64)
            self._windows = np.concatenate([bos, body.reshape(n, width)], axis=1)
            # Real tokens per window, kept apart from the ids because a HF
            # tokenizer may reuse a real id (EOS) as its pad.
            self._lengths = 1 + np.clip(len(stream) - width * np.arange(n), 0, width)
        return self._windows

    def split_range(self, split: str) -> range:
        n = len(self.windows())
        if n == 1:
            return range(1) if split != "probe" else range(min(1, self.sizes["probe"]))
        n_val = min(self.sizes["val"], max(1, n // 10))
        if split == "train":
            return range(min(n - n_val, self.sizes["train"]))
        start = n - n_val
        if split == "probe":
            return range(start, start + min(n_val, self.sizes["probe"]))
        return range(start, n)

    def generate(self, split: str) -> Iterator[dict[str, list]]:
        w = self.windows()
        for i in self.split_range(split):
            n_real = int(self._lengths[i])
            yield {"input_ids": w[i].tolist(), "attention_mask": [True] * n_real + [False] * (self.seq_len - n_real)}

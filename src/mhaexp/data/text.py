"""Plain text: a local file, a directory of .txt files, or a HF dataset (hub name or local data directory).

**Documents.** Each file (or each non-empty row of ``text_field``) is one document; documents are
joined into one stream with EOS after each.

**Splits.** The held-out text is the corpus' tail, from the first cut at or after
``n - n // VAL_PARTS`` of its ``n`` UTF-8 bytes (a document boundary, or a place inside a document where
cutting changes no pre-token, see :data:`_CUT`); the rest is the training text. A BPE tokenizer
(``tokenizer: bpe``) is trained on the training text only. A text too short to leave a held-out
tail serves as both.

**Windows.** Each split's token stream is cut into windows of ``seq_len - 1`` tokens, each prefixed
with BOS; only a split's final window can be short, and it is padded. Training uses the first
``n_train`` windows of the training stream, validation the first ``n_val`` of the held-out stream,
the probe the first ``n_probe`` of those.

**Cache.** Text is tokenized once per corpus and tokenizer, in pieces through the tokenizer's batch
API (parallel for the Rust tokenizers), as far as the windows of ``n_train`` / ``n_val`` reach (a
corpus that holds more is read only that far, and the entry's name says the budget), into a flat
token file (uint16, or uint32 for vocabularies above 65536) in the data cache. Windows are read
from it when a batch asks for them (positioned reads; ``TokenWindows.tokens`` maps the whole file
with ``np.memmap`` for other uses), so the corpus is never held in memory and a corpus far larger
than RAM trains in flat memory.
Trained BPE tokenizers are cached beside it, named by the corpus and ``vocab_size``.

The hub path (``name:`` not a local directory) needs the network or a warm datasets cache; offline
it is one ConfigError line naming ``data.name``.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mhaexp.config import int_at_least, optional, string
from mhaexp.data.cache import build_once, default_cache_dir, fingerprint
from mhaexp.data.source import TokenSource
from mhaexp.data.tokenizers import (
    BPE_MIN_VOCAB,
    BPETokenizer,
    ByteTokenizer,
    encode_batch,
    hub_endpoint,
    hub_reachable,
    load_named_tokenizer,
    tokenizer_identity,
    train_bpe,
)
from mhaexp.errors import ConfigError

PATH_VALID = "an existing non-empty text file, or a directory holding non-empty .txt files"
# Before a run starts, this many bytes of the corpus (and the head of every file) are read for what is not
# UTF-8 text; bytes past it are decoded strictly when tokenized, so nothing is ever replaced silently.
SCAN_BYTES = 64 << 20
HEAD_BYTES = 512  # at least this much of every file: magic numbers, NUL bytes (as file(1) reads)
# What a file that is not UTF-8 text starts with (its magic number), and what to do about it.
MAGIC = {
    b"\x1f\x8b": ("gzip-compressed data", "decompress it first: gunzip"),
    b"PK\x03\x04": ("a zip archive", "unpack it first: unzip"),
    b"BZh": ("bzip2-compressed data", "decompress it first: bunzip2"),
    b"\xfd7zXZ\x00": ("xz-compressed data", "decompress it first: unxz"),
    b"\x28\xb5\x2f\xfd": ("zstd-compressed data", "decompress it first: unzstd"),
    b"7z\xbc\xaf\x27\x1c": ("a 7z archive", "unpack it first"),
    b"\xff\xfe": ("UTF-16 text", "convert it: iconv -f UTF-16 -t UTF-8 IN > OUT"),
    b"\xfe\xff": ("UTF-16 text", "convert it: iconv -f UTF-16 -t UTF-8 IN > OUT"),
}
NOT_UTF8_FIX = "the corpus must be UTF-8 text; convert it, e.g. iconv -f latin1 -t utf-8 IN > OUT"
VAL_PARTS = 10  # the held-out tail: about the last 1/VAL_PARTS of the corpus' bytes (integers: exact cuts)
FORMAT = 1  # the token cache layout and the split rule; a change renames every cache entry
PIECE_BYTES = 1 << 18  # text goes to the tokenizer in pieces of about this many bytes ...
BATCH_BYTES = 1 << 23  # ... this many bytes of pieces per batch call
META = "meta.json"
# Cutting right after one of these changes no pre-token of a byte-level (GPT-2 style) pre-tokenizer,
# which keeps whitespace runs whole and gives a word its leading space: a newline between two
# non-space characters, or the point before a single space between two non-space characters.
_CUT = re.compile(rb"[^\s]\n(?=[^\s])|[^\s](?= [^\s])")


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


def check_text_file(f: Path, budget: int) -> int:
    """Raise ConfigError (``data.path``, naming ``f``) when ``f`` is compressed, binary or not UTF-8 within its
    first ``max(budget, HEAD_BYTES)`` bytes; return the bytes read."""
    limit = max(budget, HEAD_BYTES)
    pos, carry = 0, b""
    with open(f, "rb") as fh:
        while pos < limit:
            block = fh.read(min(PIECE_BYTES, limit - pos))
            if pos == 0:
                for magic, (what, fix) in MAGIC.items():
                    if block.startswith(magic):
                        raise ConfigError(
                            "data.path", str(f), f"is {what}, not UTF-8 text (it starts with {magic.hex(' ')}); {fix}"
                        )
            nul = block.find(b"\0")
            if nul >= 0:
                raise ConfigError("data.path", str(f), f"is binary, not text: a NUL byte at offset {pos + nul}")
            data, start = carry + block, pos - len(carry)
            pos += len(block)
            try:
                data.decode("utf-8")
                carry = b""
            except UnicodeDecodeError as e:
                cut_short = e.reason == "unexpected end of data" and e.end == len(data)
                if cut_short and block and pos < limit:
                    carry = data[e.start :]  # a character the next block completes
                    continue
                if cut_short and block:  # the scan ends inside a character: the rest is read when tokenized
                    break
                raise ConfigError(
                    "data.path",
                    str(f),
                    f"is not UTF-8: byte {data[e.start]:#04x} at offset {start + e.start} ({e.reason}); {NOT_UTF8_FIX}",
                ) from None
            if not block:
                break
    return pos


@functools.lru_cache(maxsize=64)
def _checked_files(files: tuple[tuple[str, int, int], ...]) -> None:
    budget = SCAN_BYTES
    for name, _, _ in files:
        budget -= check_text_file(Path(name), budget)


def check_text_files(files: list[Path]) -> None:
    """:func:`check_text_file` over a corpus: the head of every file, the first :data:`SCAN_BYTES` in all.
    Once per file version in a process (a sweep's jobs share their corpus)."""
    _checked_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def offline_mode() -> bool:
    """The user said so (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``): the libraries use their caches only."""
    values = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return any(v.lower() in ("1", "true", "yes", "on") for v in values)


# ---- documents as bytes ----------------------------------------------------------------------------


def last_cut(buf: bytes) -> int:
    """Where to end a piece of ``buf``: after the last safe cut, else at the last UTF-8 character start."""
    tail = max(0, len(buf) - (PIECE_BYTES >> 2))
    for start in (tail, 0):
        cut = 0
        for m in _CUT.finditer(buf, start):
            cut = m.end()
        if cut:
            return cut
    cut = len(buf) - 1
    while cut > 0 and 0x80 <= buf[cut] < 0xC0:  # never split a character
        cut -= 1
    return cut


def first_cut(buf: bytes, start: int) -> int | None:
    """The first safe cut at or after ``start``, or None."""
    m = _CUT.search(buf, max(0, start - 1))
    while m is not None and m.end() < start:
        m = _CUT.search(buf, m.end())
    return None if m is None else m.end()


class Corpus:
    """The documents of a text source as bytes: local files, or the rows of one column of a dataset."""

    def __init__(self, files: list[Path] | None = None, dataset: Any = None, field: str = "text") -> None:
        self.files, self.dataset, self.field = files or [], dataset, field
        if dataset is not None:
            import pyarrow.compute as pc

            column = dataset.data.table.column(field)
            self.lengths = pc.fill_null(pc.binary_length(column.cast("large_string")), 0).to_numpy().astype(np.int64)
        else:
            self.lengths = np.array([f.stat().st_size for f in self.files], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

    @property
    def n_bytes(self) -> int:
        return int(self.offsets[-1])

    def read(self, doc: int, start: int = 0) -> Iterator[bytes]:
        """Document ``doc`` from byte ``start``, in blocks."""
        if self.dataset is not None:
            text = self.dataset[doc][self.field] or ""
            yield text.encode("utf-8")[start:]
            return
        with open(self.files[doc], "rb") as f:
            f.seek(start)
            while block := f.read(PIECE_BYTES):
                yield block

    def blocks(self, begin: tuple[int, int], end: tuple[int, int]) -> Iterator[tuple[bytes, bool]]:
        """(bytes, document ends here) from position ``begin`` to ``end``, positions being (document, byte)."""
        (d0, o0), (d1, o1) = begin, end
        if self.dataset is not None:
            first = d0
            if o0:  # the held-out part of a split document
                yield b"".join(self.read(d0, o0)), True
                first += 1
            stop = d1 + (1 if o1 else 0)
            rows = self.dataset.select_columns([self.field]).select(range(first, stop))
            for i, batch in enumerate(rows.iter(batch_size=1024)):
                for j, text in enumerate(batch[self.field]):
                    data = (text or "").encode("utf-8")
                    if first + i * 1024 + j == d1:  # the training part of a split document
                        yield data[:o1], False
                    elif data:
                        yield data, True
            return
        for doc in range(d0, d1 + (1 if o1 else 0)):
            start = o0 if doc == d0 else 0
            limit = o1 if doc == d1 else None
            pos = start
            for block in self.read(doc, start):
                if limit is not None:
                    block = block[: max(0, limit - pos)]
                pos += len(block)
                if block:
                    yield block, False
                if limit is not None and pos >= limit:
                    break
            if limit is None:
                yield b"", True

    def split_point(self) -> tuple[int, int]:
        """Where the held-out tail starts; ``(len(documents), 0)`` when there is none."""
        target = self.n_bytes - self.n_bytes // VAL_PARTS
        n = len(self.lengths)
        doc = int(np.searchsorted(self.offsets, target, side="right")) - 1
        if doc >= n:
            return n, 0
        offset = target - int(self.offsets[doc])
        if offset == 0:
            return doc, 0
        data = b"".join(self.read(doc))
        cut = first_cut(data, offset)
        return (doc, cut) if cut is not None and cut < len(data) else (doc + 1, 0)


def pieces(blocks: Iterator[tuple[bytes, bool]]) -> Iterator[tuple[str, bool]]:
    """(text, document ends here), each piece about :data:`PIECE_BYTES` and cut only where it is safe."""
    carry = b""
    for data, doc_end in blocks:
        buf = carry + data if carry else data
        if doc_end:
            if buf:
                yield buf.decode("utf-8"), True
            carry = b""
            continue
        while len(buf) >= PIECE_BYTES:
            cut = last_cut(buf)
            if cut <= 0:
                break
            yield buf[:cut].decode("utf-8"), False
            buf = buf[cut:]
        carry = buf
    if carry:
        yield carry.decode("utf-8"), False


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def tokenize_to_file(parts: Iterator[tuple[str, bool]], tok: Any, path: Path, max_tokens: int | None = None) -> int:
    """Write the token stream of ``parts`` (EOS after each document) to ``path``; return its length.

    ``max_tokens``: stop reading once that many are written (the last batch is kept whole).
    """
    dtype = token_dtype(tok.vocab_size)
    eos = np.array([tok.eos_id], dtype=dtype)
    n = 0
    with open(path, "wb") as f:

        def flush(batch: list[tuple[str, bool]]) -> int:
            texts = [t for t, _ in batch]
            if isinstance(tok, ByteTokenizer):  # its ids are the bytes: no Python ints
                arrays = [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(dtype) for t in texts]
            else:
                arrays = [np.asarray(ids, dtype=dtype) for ids in encode_batch(tok, texts)]
            out = [a for arr, (_, end) in zip(arrays, batch, strict=True) for a in ((arr, eos) if end else (arr,))]
            data = np.concatenate(out) if out else np.zeros(0, dtype)
            f.write(data.tobytes())
            return len(data)

        batch: list[tuple[str, bool]] = []
        size = 0
        for text, end in parts:
            batch.append((text, end))
            size += len(text)
            if size >= BATCH_BYTES:
                n += flush(batch)
                batch, size = [], 0
                if max_tokens is not None and n >= max_tokens:
                    return n
        if batch:
            n += flush(batch)
    return n


# ---- windows read from the token file --------------------------------------------------------------


class TokenWindows:
    """Window ``i``: BOS + ``tokens[i*w:(i+1)*w]`` of a token file (``w = seq_len - 1``), padded.

    A map-style dataset of ``{"input_ids": LongTensor (T,), "attention_mask": BoolTensor (T,)}``;
    ``ds[a:b]`` gives those stacked. Nothing is read before it is asked for.
    """

    def __init__(
        self, path: Path, dtype: str, n_tokens: int, seq_len: int, bos_id: int, pad_id: int, limit: int
    ) -> None:
        self.path, self.dtype, self.n_tokens = path, np.dtype(dtype), n_tokens
        self.seq_len, self.width, self.bos_id, self.pad_id = seq_len, seq_len - 1, bos_id, pad_id
        self.n = min(limit, max(1, -(-n_tokens // self.width)))
        self._tokens: np.ndarray | None = None
        self._fd: int | None = None

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = (
                np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
                if self.n_tokens
                else np.zeros(0, self.dtype)
            )
        return self._tokens

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``a..b-1`` (fewer at the end of the stream), by a positioned read of the file.

        Not through the mapping: every page a mapping touches (and the pages around it that the kernel
        maps with it) stays resident in this process, so random windows over a large file would grow
        its RSS step by step. A read leaves them to the page cache.
        """
        b = min(b, self.n_tokens)
        if b <= a:
            return np.zeros(0, self.dtype)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(self._fd, (b - a) * size, a * size), dtype=self.dtype)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the file, not copy it
        return {**self.__dict__, "_tokens": None, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return self.n

    @property
    def n_used(self) -> int:
        """Stream tokens the windows hold."""
        return min(self.n_tokens, self.n * self.width)

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (k, T), mask bool (k, T)) of windows ``start..stop-1``."""
        k, w = stop - start, self.width
        ids = np.full((k, self.seq_len), self.pad_id, dtype=np.int64)
        ids[:, 0] = self.bos_id
        chunk = self.read(start * w, stop * w)
        body = ids[:, 1:].reshape(-1)
        body[: len(chunk)] = chunk
        ids[:, 1:] = body.reshape(k, w)
        real = 1 + np.clip(self.n_tokens - w * np.arange(start, stop), 0, w)
        mask = np.arange(self.seq_len)[None, :] < real[:, None]
        return ids, mask

    def __getitem__(self, index: int | slice) -> dict[str, Any]:
        import torch

        if isinstance(index, slice):
            r = range(self.n)[index]
            if r.step != 1:
                raise IndexError("only contiguous slices")
            ids, mask = self.rows(r.start, r.stop)
            return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        i = int(index)
        if not 0 <= i < self.n:
            raise IndexError(i)
        ids, mask = self.rows(i, i + 1)
        return {"input_ids": torch.from_numpy(ids[0]), "attention_mask": torch.from_numpy(mask[0])}

    def stream_counts(self, vocab_size: int, chunk: int = 1 << 22) -> np.ndarray:
        """Counts (vocab_size,) of the stream tokens the windows hold (every real token but BOS).

        Read in chunks with plain file reads, not through the mapping: a full pass would otherwise
        leave every page of the file resident in this process.
        """
        counts = np.zeros(vocab_size, dtype=np.int64)
        if not self.n_tokens:
            return counts
        with open(self.path, "rb") as f:
            for a in range(0, self.n_used, chunk):
                part = np.fromfile(f, dtype=self.dtype, count=min(chunk, self.n_used - a))
                counts += np.bincount(part, minlength=vocab_size)[:vocab_size]
        return counts


# ---- the source ------------------------------------------------------------------------------------


class TextSource(TokenSource):
    """Plain text (local files or a HF dataset) tokenized into one token file per split, served as windows."""

    kind = "text"
    config_keys = {
        "path": optional(string()),
        "name": optional(string()),
        "config_name": optional(string()),
        "split": string(),
        "text_field": string(),
        "tokenizer": string(),
        "vocab_size": int_at_least(BPE_MIN_VOCAB),
    }
    needs_cache_root = True  # DataConfig hands it the cache: BPE tokenizers and token files live there

    def __init__(
        self,
        seq_len: int,
        sizes: dict[str, int],
        seed: int,
        path: str | None = None,  # local text file, or directory of .txt files
        # or a HF dataset: a hub name (needs the network or a warm datasets cache) or a local data dir
        name: str | None = None,
        config_name: str | None = None,  # hub dataset config, e.g. wikitext-2-raw-v1
        split: str = "train",  # hub dataset split
        text_field: str = "text",  # hub dataset column holding the text
        # bytes (256 + specials) | bpe (trained here on the training text) | a saved tokenizer directory
        # (save_pretrained, tokenizer.json, or a run's tokenizer/) | a hub tokenizer name
        tokenizer: str = "bytes",
        vocab_size: int = 4096,  # tokenizer=bpe: the vocabulary it is trained to (>= 261: every byte and 5 specials)
        cache_root: Path | None = None,
    ) -> None:
        if (path is None) == (name is None):
            raise ConfigError("data.path", path, "exactly one of data.path (local text) or data.name (hub dataset)")
        if seq_len < 2:
            raise ConfigError("data.seq_len", seq_len, "an int >= 2 (BOS + one token)")
        self.files = text_files(path) if path is not None else []
        check_text_files(self.files)
        self.seq_len = seq_len
        self.sizes = sizes
        self.seed = seed
        self.path, self.name, self.config_name = path, name, config_name
        self.split, self.text_field, self.tokenizer_name = split, text_field, tokenizer
        self.bpe_vocab_size = vocab_size
        self.cache_root = Path(cache_root) if cache_root is not None else default_cache_dir()
        if tokenizer == "bytes":
            self.tokenizer: Any = ByteTokenizer()
        elif tokenizer == "bpe":
            self.tokenizer = BPETokenizer(vocab_size, self._trained_bpe)
        else:
            self.tokenizer = load_named_tokenizer(tokenizer)

    # ---------------------------------------------------------------- the corpus --
    @property
    def local_name(self) -> Path | None:
        """``data.name`` when it is a local data directory (parquet, json, csv, text files) rather than a hub id."""
        if self.name is None:
            return None
        p = Path(self.name).expanduser()
        return p if p.exists() else None

    def check_available(self) -> None:
        """Refuse a hub dataset that cannot be had (the preflight asks, before anything starts): offline
        mode and not in the datasets cache, or no offline mode and no network."""
        if self.name is None or self.local_name is not None:
            return
        if offline_mode():
            import datasets

            try:
                datasets.load_dataset_builder(self.name, self.config_name)
            except Exception as e:  # noqa: BLE001 - not in the cache, whatever datasets calls it
                raise ConfigError(
                    "data.name",
                    self.name,
                    f"offline (HF_HUB_OFFLINE) and not in the datasets cache ({type(e).__name__})",
                ) from None
        elif not hub_reachable():
            raise ConfigError(
                "data.name",
                self.name,
                f"the hub ({hub_endpoint()}) cannot be reached (offline?); go online, set HF_HUB_OFFLINE=1 to use "
                "the datasets cache, or give a local data.path",
            )

    @functools.cached_property
    def corpus(self) -> Corpus:
        if self.name is None:
            return Corpus(files=self.files)
        self.check_available()
        import datasets

        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            target = str(self.local_name) if self.local_name is not None else self.name
            ds = datasets.load_dataset(target, self.config_name, split=self.split)
        except Exception as e:  # noqa: BLE001 - whatever datasets says, it is this field's bad value
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError("data.name", self.name, f"cannot be loaded ({type(e).__name__}: {first})") from None
        finally:
            if bars:
                datasets.enable_progress_bars()
        if self.text_field not in ds.column_names:
            raise ConfigError(
                "data.text_field", self.text_field, f"a column of {self.name}: {', '.join(ds.column_names)}"
            )
        return Corpus(dataset=ds, field=self.text_field)

    def identity(self) -> dict:
        # File size and mtime stand in for content: an edited file re-tokenizes (and retrains a BPE).
        def stat(files: list[Path]) -> list:
            return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]

        out: dict[str, Any] = {"files": stat(self.files), "val_parts": VAL_PARTS, "format": FORMAT}
        if self.name is not None:
            local = self.local_name
            out.update(name=self.name, config_name=self.config_name, split=self.split, text_field=self.text_field)
            out["data"] = self.corpus.dataset._fingerprint
            if local is not None:
                files = sorted(f for f in local.rglob("*") if f.is_file()) if local.is_dir() else [local]
                out["local_files"] = stat(files)
        return out

    @functools.cached_property
    def cut(self) -> tuple[int, int]:
        return self.corpus.split_point()

    def split_texts(self, split: str) -> Iterator[tuple[str, bool]]:
        """(text piece, document ends here) of the training or held-out text."""
        corpus, cut = self.corpus, self.cut
        begin, end = ((0, 0), cut) if split == "train" else (cut, (len(corpus.lengths), 0))
        try:
            yield from pieces(corpus.blocks(begin, end))
        except UnicodeDecodeError as e:  # past the part the preflight read (check_text_files)
            raise ConfigError(
                "data.path",
                self.path,
                f"holds bytes that are not UTF-8 ({e.reason}) past its first {SCAN_BYTES} "
                f"bytes, which were checked before start; {NOT_UTF8_FIX}",
            ) from None

    def has_val_text(self) -> bool:
        return self.cut < (len(self.corpus.lengths), 0)

    def vocab_key(self) -> tuple[str, Any] | None:
        return ("data.vocab_size", self.bpe_vocab_size) if self.tokenizer_name == "bpe" else None

    def size_key(self) -> tuple[str, Any]:
        return ("data.path", self.path) if self.path is not None else ("data.name", self.name)

    def max_train_windows(self) -> int | None:
        """At most how many training windows a local corpus gives, from its size alone (before tokenizing):
        a byte or byte-level BPE token covers at least one byte, and each document adds one EOS. None for a
        hub dataset or a HF tokenizer (the datamodule counts their windows once tokenized)."""
        if not self.files or not isinstance(self.tokenizer, (ByteTokenizer, BPETokenizer)):
            return None
        tokens = sum(f.stat().st_size for f in self.files) + len(self.files)
        return min(self.sizes["train"], -(-tokens // (self.seq_len - 1)))

    # -------------------------------------------------------------- the tokenizer --
    @property
    def bpe_path(self) -> Path:
        settings = {"corpus": self.identity(), "vocab_size": self.bpe_vocab_size, "kind": "byte-level bpe"}
        return self.cache_root / f"bpe-{fingerprint(settings)}"

    def _trained_bpe(self) -> Any:
        from tokenizers import Tokenizer

        from mhaexp.data.tokenizers import HF_FILE

        def build(out: Path) -> None:
            train_bpe((text for text, _ in self.split_texts("train")), self.bpe_vocab_size).save(str(out / HF_FILE))

        final = build_once(self.bpe_path, HF_FILE, build)
        return Tokenizer.from_file(str(final / HF_FILE))

    # ----------------------------------------------------------------- the tokens --
    def budget(self) -> dict[str, int]:
        """Tokens each split's windows can hold: tokenizing stops there (a huge corpus is read only as far as used)."""
        w = self.seq_len - 1
        if not self.has_val_text():  # validation reads the training stream
            return {"train": max(self.sizes["train"], self.sizes["val"]) * w}
        return {"train": self.sizes["train"] * w, "val": self.sizes["val"] * w}

    def _fits(self, budget: dict[str, int]) -> bool:
        """Whether every split's whole text fits its budget: a token never covers less than a byte."""
        corpus, (doc, off) = self.corpus, self.cut
        at_cut = int(corpus.offsets[doc]) + off
        need = {"train": at_cut + doc + 1, "val": corpus.n_bytes - at_cut + len(corpus.lengths) - doc}
        return all(need[split] <= budget[split] for split in budget)

    @property
    def token_path(self) -> Path:
        """The cache entry of this corpus and tokenizer: the whole text (``text-<fp>``) when it exists or fits
        the budget, else the text up to the budget (``text-<fp>-<budget>``)."""
        settings = {"corpus": self.identity(), "tokenizer": tokenizer_identity(self.tokenizer)}
        whole = self.cache_root / f"text-{fingerprint(settings)}"
        budget = self.budget()
        if (whole / META).exists() or self._fits(budget):
            return whole
        return whole.with_name(f"{whole.name}-{fingerprint(budget)[:8]}")

    def prepare(self) -> Path:
        """Tokenize the corpus into the cache unless it is there; return its directory."""
        tok = self.tokenizer
        path = self.token_path
        limits = self.budget() if "-" in path.name.removeprefix("text-") else None  # a budget entry

        def build(out: Path) -> None:
            meta: dict[str, Any] = {"dtype": token_dtype(tok.vocab_size).str, "tokens": {}, "budget": limits}
            for split in ("train", "val"):
                if split == "val" and not self.has_val_text():
                    continue  # too short to hold text out: validation reads the training text
                cap = limits[split] if limits is not None else None
                meta["tokens"][split] = tokenize_to_file(self.split_texts(split), tok, out / f"{split}.bin", cap)
            (out / META).write_text(json.dumps(meta))

        return build_once(path, META, build)

    def split_dataset(self, split: str) -> TokenWindows:
        """The windows of ``split`` (train, val, probe), read from the prepared token file."""
        root = self.prepare()
        meta = json.loads((root / META).read_text())
        stream = "train" if split == "train" or "val" not in meta["tokens"] else "val"
        limit = {"train": self.sizes["train"], "val": self.sizes["val"]}.get(split)
        if limit is None:  # the probe: the first validation windows
            limit = min(self.sizes["val"], self.sizes["probe"])
        tok = self.tokenizer
        n = meta["tokens"][stream]
        return TokenWindows(root / f"{stream}.bin", meta["dtype"], n, self.seq_len, tok.bos_id, tok.pad_id, limit)

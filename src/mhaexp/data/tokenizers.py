"""Tokenizers: whole words (grammar, induction), raw bytes, a byte-level BPE trained here, or a HF tokenizer.

All of them expose the same small surface so the model, the training loop and the
attention pictures never care which data source produced a batch:
``pad_id``, ``bos_id``, ``eos_id``, ``mask_id``, ``unk_id``, ``vocab_size``,
``encode(str) -> list[int]``, ``decode(list[int]) -> str`` and
``id_to_token(int) -> str``; ``encode_batch`` encodes many texts at once (in parallel
for the Rust-backed ones).

Specials are the same five strings for every tokenizer (:data:`SPECIALS`): the data frames
each sequence with BOS, ends each document with EOS and pads with PAD; ``decode`` leaves
the framing out. The word and BPE tokenizers give them ids 0..4, bytes 256..260; a HF
tokenizer keeps the ones it has and gets the missing ones added.

A run saves its tokenizer (:func:`save_tokenizer`, into ``<run>/tokenizer``) so a checkpoint
can be decoded and analysed later, offline: :func:`load_run_tokenizer`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mhaexp.errors import ConfigError
from mhaexp.net import unreachable
from mhaexp.rundir import TOKENIZER_DIR

PAD, BOS, EOS, MASK, UNK = "<pad>", "<bos>", "<eos>", "<mask>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, MASK, UNK)


@runtime_checkable
class Tokenizer(Protocol):
    pad_id: int
    bos_id: int
    eos_id: int
    mask_id: int
    unk_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def id_to_token(self, i: int) -> str: ...


class WordTokenizer:
    """One id per whitespace-separated word; specials take ids 0..4.

    Lookup falls back to the lower-cased word so that treebank text
    ("The cat") meets the lower-case synthetic lexicon; anything else is UNK.
    """

    def __init__(self, words: Iterable[str], extra_specials: Sequence[str] = ()) -> None:
        self.tokens: list[str] = list(SPECIALS) + list(extra_specials)
        seen = set(self.tokens)
        for w in words:
            if w not in seen:
                seen.add(w)
                self.tokens.append(w)
        self.index: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id, self.mask_id, self.unk_id = range(5)
        self.unk_token = UNK

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def token_to_id(self, word: str) -> int:
        i = self.index.get(word)
        if i is None:
            i = self.index.get(word.lower(), self.unk_id)
        return i

    def normalize(self, word: str) -> str:
        """The vocabulary spelling of ``word``, or ``<unk>``."""
        return self.tokens[self.token_to_id(word)]

    def encode(self, text: str) -> list[int]:
        return [self.token_to_id(w) for w in text.split()]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        # BOS/EOS/PAD are framing, not content: leaving them out makes
        # decode(encode(s)) == s for any in-vocabulary sentence.
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return " ".join(self.id_to_token(int(i)) for i in ids if int(i) not in skip)

    def id_to_token(self, i: int) -> str:
        return self.tokens[i]


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255 (so any text encodes); specials follow at 256+."""

    def __init__(self) -> None:
        self.specials = list(SPECIALS)
        self.pad_id, self.bos_id, self.eos_id, self.mask_id, self.unk_id = range(256, 261)

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.specials)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def id_to_token(self, i: int) -> str:
        if i >= 256:
            return self.specials[i - 256]
        ch = chr(i)
        # Pictures need one visible label per byte, so escape the invisible ones.
        return ch if ch.isprintable() and i < 128 else f"\\x{i:02x}"


# What a saved tokenizer directory holds besides the library's own files: which of ours it is.
META_FILE = "mhaexp_tokenizer.json"
HF_FILE = "tokenizer.json"  # the `tokenizers` library's one-file format
BPE_MIN_VOCAB = 256 + len(SPECIALS)  # every byte and the specials: a BPE with no merges


class BPETokenizer:
    """Byte-level BPE (HF ``tokenizers``): words carry their leading space, so ``encode`` of a text is
    the concatenation of ``encode`` of its words with their spaces; specials take ids 0..4.

    ``vocab_size`` is the size asked for: the model's embedding table. A small corpus can run out of
    merges first; the ids it never reached are never produced. ``load`` gives the trained
    ``tokenizers.Tokenizer`` on first use, so building a config never trains anything.
    """

    def __init__(self, vocab_size: int, load: Callable[[], Any]) -> None:
        self._vocab_size = vocab_size
        self._load = load
        self._hf: Any = None
        self.pad_id, self.bos_id, self.eos_id, self.mask_id, self.unk_id = range(5)

    @property
    def hf(self) -> Any:
        if self._hf is None:
            tok = self._load()
            if tok.get_vocab_size() > self._vocab_size:
                raise ConfigError("data.vocab_size", self._vocab_size, f"the tokenizer has {tok.get_vocab_size()}")
            self._hf = tok
        return self._hf

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    @functools.cached_property
    def _exact_spans(self) -> bool:
        return spans_are_exact(self.hf)

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]] | None:
        """``encode(text)`` and each token's character span in ``text`` (see :func:`encode_offsets`)."""
        if not self._exact_spans:
            return None
        e = self.hf.encode(text, add_special_tokens=False)
        return list(e.ids), [tuple(o) for o in e.offsets]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode([int(i) for i in ids], skip_special_tokens=True))

    def id_to_token(self, i: int) -> str:
        token = self.hf.id_to_token(int(i))
        return token if token is not None else f"<unused{i}>"

    def identity(self) -> str:
        return hashlib.sha256(self.hf.to_str().encode()).hexdigest()[:16]


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts``, specials first (ids 0..4).

    No normalizer and no prefix space: ``decode(encode(s)) == s`` for any text, and the first word
    of a text is encoded without the space that the same word carries inside a sentence.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the HF hub answers at all; ``HF_HUB_OFFLINE=1`` says no without asking.

    Asked before any hub download, so that offline a missing name fails at once with one line
    instead of a minute of retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    return unreachable(hub_endpoint(), timeout) is None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


TOKENIZER_VALID = "bytes, bpe, a local tokenizer directory (save_pretrained or tokenizer.json), or a hub name"


class HFTokenizer:
    """A ``transformers`` tokenizer from a local directory (``save_pretrained``, or just a
    ``tokenizer.json``) or the hub.

    Missing specials (GPT-2 has no pad or mask) are added, which grows the
    vocabulary; ``vocab_size`` is ``len(tokenizer)`` after that. A hub name that is
    neither cached nor reachable is a ConfigError naming ``field``.
    """

    def __init__(self, name: str, field: str = "data.tokenizer") -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ConfigError(field, name, "needs transformers: pip install transformers") from None
        local = Path(name).expanduser()
        with _quiet_transformers():
            try:
                if local.is_file():
                    from transformers import PreTrainedTokenizerFast

                    tok: Any = PreTrainedTokenizerFast(tokenizer_file=str(local))
                elif local.is_dir():
                    tok = AutoTokenizer.from_pretrained(str(local))
                else:
                    tok = self._from_hub(AutoTokenizer, name, field)
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever the library says, it is this field's bad value
                first = (str(e).strip().splitlines() or [""])[0]
                why = f"cannot be loaded as a tokenizer ({type(e).__name__}: {first})"
                raise ConfigError(field, name, why) from None
        wanted = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "mask_token": MASK, "unk_token": UNK}
        missing = {k: v for k, v in wanted.items() if getattr(tok, k, None) is None}
        if missing:
            tok.add_special_tokens(missing)
        self.name = name
        self.hf = tok
        self.pad_id = int(tok.pad_token_id)
        self.bos_id = int(tok.bos_token_id)
        self.eos_id = int(tok.eos_token_id)
        self.mask_id = int(tok.mask_token_id)
        self.unk_id = int(tok.unk_token_id)
        self._backend = getattr(tok, "backend_tokenizer", None)

    @staticmethod
    def _from_hub(auto: Any, name: str, field: str) -> Any:
        try:
            return auto.from_pretrained(name, local_files_only=True)
        except Exception:  # noqa: BLE001 - not in the local cache: try the hub if it can be reached
            if not hub_reachable():
                raise ConfigError(
                    field,
                    name,
                    f"not a local directory, not in the HF cache, and the hub ({hub_endpoint()}) cannot be reached "
                    f"(offline?); use {TOKENIZER_VALID} once online",
                ) from None
        return auto.from_pretrained(name)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._backend is not None:  # the Rust tokenizer: parallel, and no max-length warnings
            return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]
        return [list(self.hf.encode(t, add_special_tokens=False)) for t in texts]

    @functools.cached_property
    def _exact_spans(self) -> bool:
        return spans_are_exact(self._backend)

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]] | None:
        """``encode(text)`` and each token's character span, from a fast tokenizer; None from a slow one."""
        if self._backend is None or not self._exact_spans:
            return None
        e = self._backend.encode(text, add_special_tokens=False)
        return list(e.ids), [tuple(o) for o in e.offsets]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode([int(i) for i in ids], skip_special_tokens=True))

    def id_to_token(self, i: int) -> str:
        return str(self.hf.convert_ids_to_tokens(int(i)))

    def identity(self) -> str:
        blob = self._backend.to_str() if self._backend is not None else json.dumps(self.hf.get_vocab(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def unknown_words(text: str, tok: Any) -> list[str]:
    """The whitespace-separated words of ``text`` that ``tok`` reads (in part) as its unknown token."""
    unk = getattr(tok, "unk_id", None)
    return [] if unk is None else [w for w in text.split() if unk in tok.encode(w)]


def tokenizer_identity(tok: Any) -> str:
    """What fixes a tokenizer's output: a hash of its serialized form (the trained merges, the vocabulary)."""
    if hasattr(tok, "identity"):
        return str(tok.identity())
    if isinstance(tok, ByteTokenizer):
        return "bytes"
    return hashlib.sha256(json.dumps(getattr(tok, "tokens", [])).encode()).hexdigest()[:16]


def spans_are_exact(backend: Any) -> bool:
    """Whether a ``tokenizers.Tokenizer`` reports true character spans. A BPE with no unknown token and
    no byte alphabet drops the characters it has no piece for, and the spans of the tokens after them
    come out shifted (seen with tokenizers 0.22); byte-level BPE, WordPiece and Unigram drop nothing."""
    model = json.loads(backend.model.__getstate__())  # the model's settings, as saved in tokenizer.json
    if model.get("type") != "BPE" or model.get("unk_token") is not None:
        return True
    from tokenizers.pre_tokenizers import ByteLevel

    return set(ByteLevel.alphabet()) <= set(backend.get_vocab())


def encode_offsets(tok: Any, text: str) -> tuple[list[int], list[tuple[int, int]]] | None:
    """(ids, character spans) of ``text`` as ``tok`` encodes it, when its tokenizer reports spans (the
    ``tokenizers`` library's fast tokenizers do); None otherwise."""
    method = getattr(tok, "encode_offsets", None)
    return None if method is None else method(text)


def encode_batch(tok: Any, texts: Sequence[str]) -> list[list[int]]:
    """``tok.encode_batch(texts)`` when it has one, else one ``encode`` per text."""
    if hasattr(tok, "encode_batch"):
        return list(tok.encode_batch(texts))
    return [tok.encode(t) for t in texts]


# ---- saved tokenizers: the run directory's copy, and ``data.tokenizer=<that directory>`` ------------


def save_tokenizer(tok: Any, directory: Path) -> Path:
    """Write ``tok`` into ``directory`` so that :func:`load_saved_tokenizer` rebuilds it without the data."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"vocab_size": tok.vocab_size}
    if isinstance(tok, BPETokenizer):
        tok.hf.save(str(directory / HF_FILE))
        meta["kind"] = "bpe"
    elif isinstance(tok, HFTokenizer):
        tok.hf.save_pretrained(str(directory))
        meta.update(kind="hf", name=tok.name)
    elif isinstance(tok, ByteTokenizer):
        meta["kind"] = "bytes"
    elif isinstance(tok, WordTokenizer):
        meta.update(kind="word", tokens=tok.tokens)
    else:
        raise TypeError(f"cannot save a {type(tok).__name__}")
    # The description last: a directory with it is complete.
    tmp = directory / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(directory / META_FILE)
    return directory


def is_saved_tokenizer(path: str | Path) -> bool:
    return (Path(path).expanduser() / META_FILE).is_file()


def load_saved_tokenizer(directory: str | Path, field: str = "data.tokenizer") -> Any:
    """The tokenizer :func:`save_tokenizer` wrote into ``directory``."""
    directory = Path(directory).expanduser()
    try:
        meta = json.loads((directory / META_FILE).read_text())
        kind = meta["kind"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(field, str(directory), f"is not a saved mhaexp tokenizer ({type(e).__name__})") from None
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer(meta["tokens"][len(SPECIALS) :])
    if kind == "bpe":
        from tokenizers import Tokenizer

        # Parsed now, not at the first encode: a cut-off file must fail the preflight, not the started job.
        try:
            hf = Tokenizer.from_file(str(directory / HF_FILE))
        except Exception as e:  # noqa: BLE001 - a missing or unparsable file: whatever tokenizers calls it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(
                field, str(directory), f"its {HF_FILE} cannot be read ({first}); save the tokenizer again"
            ) from None
        return BPETokenizer(int(meta["vocab_size"]), lambda: hf)
    if kind == "hf":
        return HFTokenizer(str(directory), field)
    raise ConfigError(field, str(directory), f"holds a tokenizer of unknown kind {kind!r}")


def load_run_tokenizer(run_dir: str | Path) -> Any | None:
    """The tokenizer a run saved in ``<run_dir>/tokenizer``; None when it saved none (an older run)."""
    directory = Path(run_dir) / TOKENIZER_DIR
    return load_saved_tokenizer(directory, "ckpt") if is_saved_tokenizer(directory) else None


def load_named_tokenizer(spec: str, field: str = "data.tokenizer") -> Any:
    """``data.tokenizer`` other than ``bytes``/``bpe``: a saved mhaexp tokenizer, a local HF one, or a hub name."""
    if is_saved_tokenizer(spec):
        return load_saved_tokenizer(spec, field)
    return HFTokenizer(spec, field)

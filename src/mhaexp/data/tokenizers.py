"""Tokenizers: whole words (grammar, induction), raw bytes (text), or a HF tokenizer.

All three expose the same small surface so the model, the training loop and the
attention pictures never care which data source produced a batch:
``pad_id``, ``bos_id``, ``eos_id``, ``mask_id``, ``unk_id``, ``vocab_size``,
``encode(str) -> list[int]``, ``decode(list[int]) -> str`` and
``id_to_token(int) -> str``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

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

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def id_to_token(self, i: int) -> str:
        if i >= 256:
            return self.specials[i - 256]
        ch = chr(i)
        # Pictures need one visible label per byte, so escape the invisible ones.
        return ch if ch.isprintable() and i < 128 else f"\\x{i:02x}"


class HFTokenizer:
    """A ``transformers`` tokenizer, loaded lazily so the package stays optional.

    Missing specials (GPT-2 has no pad or mask) are added, which grows the
    vocabulary; ``vocab_size`` is ``len(tokenizer)`` after that.
    """

    def __init__(self, name: str) -> None:
        from transformers import AutoTokenizer  # optional dependency

        tok: Any = AutoTokenizer.from_pretrained(name)
        wanted = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "mask_token": MASK, "unk_token": UNK}
        missing = {k: v for k, v in wanted.items() if getattr(tok, k, None) is None}
        if missing:
            tok.add_special_tokens(missing)
        self.hf = tok
        self.pad_id = int(tok.pad_token_id)
        self.bos_id = int(tok.bos_token_id)
        self.eos_id = int(tok.eos_token_id)
        self.mask_id = int(tok.mask_token_id)
        self.unk_id = int(tok.unk_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode([int(i) for i in ids], skip_special_tokens=True))

    def id_to_token(self, i: int) -> str:
        return str(self.hf.convert_ids_to_tokens(int(i)))

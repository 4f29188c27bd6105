"""Treebank sentences as a model of any tokenizer sees them, with the word of every token.

A sentence's words are joined by single spaces into the running text the model reads (the first word
has no leading space, which byte-level BPE spells differently). :func:`align_words` finds the pieces
of each word. A fast tokenizer (the ``tokenizers`` library's: byte-level BPE ``Ġ``, WordPiece ``##``,
SentencePiece ``▁``) reports each token's character span, and a token belongs to the word its
non-space characters lie in; a token of spaces alone (a lone ``▁`` or ``Ġ``) to the word after it.
Other tokenizers are aligned with nothing but ``Tokenizer.encode``: successive word prefixes are
encoded and their differences taken, then checked to concatenate to the encoding of the whole text.
Either way a piece that spans a word boundary (a tokenizer merging across the space) cannot belong
to one word, and is refused.

:func:`encode_treebank` frames each sentence as the datamodules frame theirs (BOS + pieces + EOS) and
writes the annotation in word units (``unit 0 = BOS``, ``unit i = word i - 1``, ``unit n + 1 = EOS``),
as :func:`mhaexp.data.grammar.encode_sentence` does for one-piece words, together with
``word_of_token`` (the unit of each token, -1 on pads). With a word-level tokenizer ``word_of_token``
is the identity and the rows are the grammar's rows plus that column.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mhaexp.data.conllu_io import NOT_A_TREE, ReadStats, TreebankError, read_treebank
from mhaexp.data.grammar import relation_list
from mhaexp.data.lexicon import Sentence
from mhaexp.data.tokenizers import Tokenizer, encode_offsets
from mhaexp.errors import ConfigError


class AlignmentError(ValueError):
    """The tokenizer's pieces cannot be assigned to the words of a sentence."""


def sentence_text(words: Sequence[str]) -> str:
    """The running text a model reads for ``words``: joined by single spaces."""
    return " ".join(words)


def align_words(words: Sequence[str], tokenizer: Tokenizer) -> list[list[int]]:
    """The token ids of each word of ``words`` as ``tokenizer`` encodes the running text.

    With a fast tokenizer, by the tokens' character spans (:func:`align_by_offsets`); else word ``i``'s
    pieces are ``encode(w_0 .. w_i)`` minus ``encode(w_0 .. w_{i-1})`` (texts as
    :func:`sentence_text`), so the space before a word belongs to that word's pieces. Raises
    :class:`AlignmentError` when a prefix's encoding does not extend the previous one, when the
    pieces do not concatenate to ``encode`` of the whole text, or when a word has no piece.
    """
    spans = encode_offsets(tokenizer, sentence_text(words))
    if spans is not None:
        return align_by_offsets(words, *spans)
    pieces: list[list[int]] = []
    done: list[int] = []
    for i in range(len(words)):
        ids = list(tokenizer.encode(sentence_text(words[: i + 1])))
        if ids[: len(done)] != done:
            raise AlignmentError(f"word {i + 1} ({words[i]!r}) changes how the words before it are tokenized")
        if len(ids) == len(done):
            raise AlignmentError(f"word {i + 1} ({words[i]!r}) encodes to no token")
        pieces.append(ids[len(done) :])
        done = ids
    if list(tokenizer.encode(sentence_text(words))) != [t for p in pieces for t in p]:
        raise AlignmentError("the words' pieces do not concatenate to the encoding of the sentence")
    return pieces


def align_by_offsets(words: Sequence[str], ids: Sequence[int], offsets: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Each word's token ids, from the tokens' character spans in :func:`sentence_text` of ``words``.

    A token's non-space characters must lie within one word (else it crosses a boundary); a token of
    spaces alone goes to the next word, as the space before a word belongs to that word's pieces.
    """
    text = sentence_text(words)
    word_at = [-1] * len(text)  # the word of each character; -1 on the spaces between words
    start = 0
    for w, word in enumerate(words):
        word_at[start : start + len(word)] = [w] * len(word)
        start += len(word) + 1
    pieces: list[list[int]] = [[] for _ in words]
    pending: list[int] = []  # space-only tokens waiting for the word after them
    for t, (i, (a, b)) in enumerate(zip(ids, offsets, strict=True)):
        owners = {word_at[c] for c in range(a, b) if not text[c].isspace()} - {-1}
        if len(owners) > 1:
            names = " ".join(words[w] for w in sorted(owners))
            raise AlignmentError(f"token {t + 1} spans the words {names!r}")
        if not owners:
            pending.append(i)
            continue
        w = owners.pop()
        pieces[w] += pending + [i]
        pending = []
    for w, p in enumerate(pieces):
        if not p:
            raise AlignmentError(f"word {w + 1} ({words[w]!r}) encodes to no token")
    if pending:
        raise AlignmentError("the sentence ends in tokens of spaces alone")
    if [i for p in pieces for i in p] != list(ids):
        raise AlignmentError("the words' pieces are not in the order of the sentence's tokens")
    return pieces


def word_of_token(pieces: Sequence[Sequence[int]]) -> list[int]:
    """``[0, 0, 1, 2, 2, ...]``: the word index of each piece, in order."""
    return [w for w, p in enumerate(pieces) for _ in p]


SKIP_REASONS = {
    **NOT_A_TREE,
    "long": "longer than the model's context",
    "align": "not aligned with the tokenizer",
    "no_arc": "without an arc",
}


@dataclass
class Treebank:
    """Encoded sentences of a treebank file and what was left out (see :func:`encode_treebank`)."""

    rows: list[dict[str, list]]
    relations: list[str]
    arcs: dict[str, int]  # relation -> arcs in the scored sentences (all relations, kept or not)
    n_read: int
    read: ReadStats
    skipped: Counter[str] = field(default_factory=Counter)
    dropped_relations: list[str] = field(default_factory=list)  # fewer than min_arcs arcs
    n_unused: int = 0  # sentences after the limit was reached, not looked at
    first_error: dict[str, str] = field(default_factory=dict)  # reason -> the first sentence's message

    def report(self, max_tokens: int) -> str:
        """One line: sentences read, scored, and every kind of thing left out with its count."""
        parts = [f"{len(self.rows)} of {self.n_read} sentences scored"]
        for reason, n in self.skipped.items():
            text = SKIP_REASONS[reason] + (f" ({max_tokens} tokens with BOS/EOS)" if reason == "long" else "")
            first = f"; first: {self.first_error[reason]}" if reason in self.first_error else ""
            parts.append(f"skipped {n} {text}{first}")
        if self.n_unused:
            parts.append(f"{self.n_unused} more not looked at (treebank_max_sentences caps the sentences scored)")
        if self.read.multiword_tokens or self.read.empty_nodes:
            parts.append(
                f"ignored {self.read.multiword_tokens} multiword-token lines (their words are scored) and "
                f"{self.read.empty_nodes} empty nodes"
            )
        if self.dropped_relations:
            few = ", ".join(f"{r} ({self.arcs.get(r, 0)})" for r in self.dropped_relations)
            parts.append(f"not scored, under min_arcs arcs: {few}")
        return "; ".join(parts)


def encode_sentence_pieces(
    s: Sentence, pieces: Sequence[Sequence[int]], tokenizer: Tokenizer, rel_id: dict[str, int], width: int
) -> dict[str, list]:
    """BOS + pieces + EOS padded to ``width``, annotations in word units padded to ``width`` too."""
    ids = [tokenizer.bos_id, *(t for p in pieces for t in p), tokenizer.eos_id]
    n, pad = len(s), width - len(ids)
    units = [0, *(w + 1 for w in word_of_token(pieces)), n + 1]

    def shift(xs: Sequence[int]) -> list[int]:
        return [-1] + [x + 1 if x >= 0 else -1 for x in xs] + [-1] * (width - n - 1)

    return {
        "input_ids": ids + [tokenizer.pad_id] * pad,
        "attention_mask": [True] * len(ids) + [False] * pad,
        "word_of_token": units + [-1] * pad,
        "heads": shift(s.heads),
        "rels": [-1] + [rel_id.get(r, -1) for r in s.rels] + [-1] * (width - n - 1),
        "coref": shift(s.coref),
    }


def encode_treebank(
    sentences: Sequence[Sentence],
    tokenizer: Tokenizer,
    max_tokens: int,
    *,
    limit: int | None = None,
    min_arcs: int = 1,
    base_relations: Sequence[str] = (),
    read: ReadStats | None = None,
) -> Treebank:
    """Encode the sentences that fit ``max_tokens`` (BOS and EOS included) and align, up to ``limit``.

    Relations: ``base_relations`` followed by the file's other relations with at least ``min_arcs``
    arcs in the scored sentences; arcs of the others get relation -1 (no arc). All rows share one
    width, the longest scored sentence.
    """
    read = read or ReadStats()
    skipped: Counter[str] = Counter(read.not_trees)  # left out when the file was read
    first: dict[str, str] = dict(read.first_not_tree)
    kept: list[tuple[Sentence, list[list[int]]]] = []
    unused = 0
    for i, s in enumerate(sentences):
        if limit is not None and limit <= 0:
            unused = len(sentences)
            break
        if not any(h >= 0 and r for h, r in zip(s.heads, s.rels, strict=True)) and not any(c >= 0 for c in s.coref):
            skipped["no_arc"] += 1
            continue
        try:
            pieces = align_words(s.tokens, tokenizer)
        except AlignmentError as e:
            skipped["align"] += 1
            first.setdefault("align", f"sentence {i + 1}: {e}")
            continue
        if sum(map(len, pieces)) + 2 > max_tokens:
            skipped["long"] += 1
            continue
        kept.append((s, pieces))
        if limit is not None and len(kept) >= limit:
            unused = len(sentences) - i - 1
            break
    arcs = Counter(r for s, _ in kept for h, r in zip(s.heads, s.rels, strict=True) if h >= 0 and r)
    candidates = relation_list([s for s, _ in kept], base=base_relations)
    base = set(base_relations)
    relations = [r for r in candidates if r in base or arcs[r] >= min_arcs]
    dropped = [r for r in candidates if r not in relations and arcs[r]]  # "root" has no arc: not dropped
    rel_id = {r: i for i, r in enumerate(relations)}
    width = max((sum(map(len, p)) + 2 for _, p in kept), default=2)
    rows = [encode_sentence_pieces(s, p, tokenizer, rel_id, width) for s, p in kept]
    n_read = len(sentences) + sum(read.not_trees.values())
    return Treebank(rows, relations, dict(arcs), n_read, read, skipped, dropped, unused, first)


def check_treebank(path: str | Path, field_name: str) -> tuple[list[Sentence], ReadStats]:
    """The sentences of a CoNLL-U file; ConfigError naming ``field_name`` for a missing or bad file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(field_name, str(path), "no such file; give the path of a CoNLL-U treebank")
    read = ReadStats()
    try:
        sentences = read_treebank(p, read)
    except TreebankError as e:
        raise ConfigError(field_name, str(path), f"cannot be read as CoNLL-U: {e}") from None
    if not sentences and read.not_trees:
        bad = "; ".join(f"{n} {NOT_A_TREE[r]} (first: {read.first_not_tree[r]})" for r, n in read.not_trees.items())
        raise ConfigError(field_name, str(path), f"holds no sentence that is a tree: {bad}")
    if not sentences:
        raise ConfigError(field_name, str(path), "holds no sentence (CoNLL-U: word lines, a blank line after each)")
    return sentences, read


def load_treebank(
    path: str | Path,
    tokenizer: Tokenizer,
    max_tokens: int,
    field_name: str,
    *,
    limit: int | None = None,
    min_arcs: int = 1,
    base_relations: Sequence[str] = (),
) -> Treebank:
    """:func:`encode_treebank` of a CoNLL-U file; ConfigError naming ``field_name`` for a missing or bad
    file, or one with nothing to score."""
    sentences, read = check_treebank(path, field_name)
    tb = encode_treebank(
        sentences, tokenizer, max_tokens, limit=limit, min_arcs=min_arcs, base_relations=base_relations, read=read
    )
    if not tb.rows:
        raise ConfigError(field_name, str(path), f"has no sentence that can be scored: {tb.report(max_tokens)}")
    return tb

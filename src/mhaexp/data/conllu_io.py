"""CoNLL-U export of generated sentences, and import of a user's treebank.

Export writes HEAD (1-based, 0 = root) and DEPREL from the gold tree, UPOS and
Number from the lexicon, and the coreference link in MISC as
``Antecedent=<ID>``. Import reads the same columns back, so the analysis that
scores heads on the synthetic grammar can score them on a real treebank:

* multiword-token ranges (``1-2``) and empty nodes (``3.1``) are skipped;
* a missing HEAD becomes ``-1`` and a missing DEPREL the empty name (no arc);
* a sentence whose HEAD points outside it, or whose heads form a cycle (no path to the root), is not
  a tree: it is left out and counted in :class:`ReadStats` by reason, with its first line;
* DEPREL names are kept verbatim, including ones unknown to ``RELATIONS``
  (``relation_list`` grows the relation list from them);
* with a ``vocab``, words are mapped to its spelling (exact, then lower case)
  and anything else to ``<unk>``, so every word has an id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from conllu.models import Token, TokenList

from mhaexp.data.lexicon import NOUN_FEATS, PRONOUN_FEATS, UPOS, VERB_NUMBER, Sentence
from mhaexp.data.tokenizers import WordTokenizer

_NUMBER = {"sg": "Sing", "pl": "Plur"}


def _feats(word: str) -> dict[str, str] | None:
    number = NOUN_FEATS.get(word, (None, None))[1] or VERB_NUMBER.get(word) or PRONOUN_FEATS.get(word, (None, None))[1]
    return {"Number": _NUMBER[number]} if number else None


def _token_list(s: Sentence, sent_id: int) -> TokenList:
    tokens = []
    for i, (word, head, rel, ante) in enumerate(zip(s.tokens, s.heads, s.rels, s.coref, strict=True)):
        tokens.append(
            Token(
                {
                    "id": i + 1,
                    "form": word,
                    "lemma": None,
                    "upos": UPOS.get(word),
                    "xpos": None,
                    "feats": _feats(word),
                    "head": head + 1,
                    "deprel": rel or None,
                    "deps": None,
                    "misc": {"Antecedent": str(ante + 1)} if ante >= 0 else None,
                }
            )
        )
    return TokenList(tokens, metadata={"sent_id": str(sent_id), "text": s.text})


def to_conllu(sentences: Iterable[Sentence]) -> str:
    return "".join(_token_list(s, i + 1).serialize() for i, s in enumerate(sentences))


def write_conllu(path: str | Path, sentences: Iterable[Sentence]) -> None:
    Path(path).write_text(to_conllu(sentences), encoding="utf-8")


class TreebankError(ValueError):
    """A file that is not CoNLL-U; the message names the line and what is wrong with it."""


# Why a sentence of the file is not read as a tree (the "skipped" line of a treebank's report).
NOT_A_TREE = {
    "head_outside": "with a HEAD outside its sentence",
    "cycle": "whose heads form a cycle without the root",
}


class NotATreeError(ValueError):
    """A sentence whose HEAD column does not form a tree; ``reason`` is a key of :data:`NOT_A_TREE`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass
class ReadStats:
    """What :func:`read_treebank` read past: multiword-token ranges and empty nodes (not words of the tree),
    and sentences that are not trees (by reason, with the first one's message)."""

    multiword_tokens: int = 0
    empty_nodes: int = 0
    not_trees: Counter[str] = field(default_factory=Counter)
    first_not_tree: dict[str, str] = field(default_factory=dict)


def _field_int(value: str, line_no: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise TreebankError(f"line {line_no}: {column} {value!r} is not a number") from None


def _block_sentence(rows: list[tuple[int, list[str]]]) -> Sentence:
    ids = [_field_int(cols[0], n, "ID") for n, cols in rows]
    index = {word_id: i for i, word_id in enumerate(ids)}

    def position(ref: str, line_no: int, column: str) -> int:
        # HEAD 0 (root) and "_" mean "no arc"; MISC antecedents to absent IDs too.
        return -1 if ref == "_" else index.get(_field_int(ref, line_no, column), -1)

    tokens, heads, rels, coref = [], [], [], []
    for n, cols in rows:
        if cols[6] not in ("_", "0") and _field_int(cols[6], n, "HEAD") not in index:
            raise NotATreeError(
                "head_outside", f"line {n}: HEAD {cols[6]} is not an ID of its sentence ({ids[0]}-{ids[-1]})"
            )
        tokens.append(cols[1])
        heads.append(position(cols[6], n, "HEAD"))
        rels.append("" if cols[7] == "_" else cols[7])
        misc = dict(item.partition("=")[::2] for item in cols[9].split("|")) if cols[9] != "_" else {}
        coref.append(position(misc["Antecedent"], n, "MISC Antecedent") if "Antecedent" in misc else -1)
    for start in range(len(heads)):
        seen, i = [], start
        while i >= 0 and i not in seen:
            seen.append(i)
            i = heads[i]
        if i >= 0:  # came back to a word already on the path: a cycle the root cannot reach
            loop = seen[seen.index(i) :]
            words = " -> ".join(str(ids[w]) for w in [*loop, i])
            raise NotATreeError("cycle", f"line {rows[0][0]}: the heads of words {words} form a cycle")
    return Sentence(tuple(tokens), tuple(heads), tuple(rels), tuple(coref))


def read_treebank(path: str | Path, stats: ReadStats | None = None) -> list[Sentence]:
    """The sentences of a CoNLL-U file, words verbatim; TreebankError naming the line for a bad one.

    Multiword-token ranges (``1-2``) and empty nodes (``8.1``) are counted into ``stats`` and left out:
    the basic tree is over the syntactic words. So are sentences that are not trees (:data:`NOT_A_TREE`).
    """
    stats = stats if stats is not None else ReadStats()
    sentences: list[Sentence] = []
    block: list[tuple[int, list[str]]] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        raise TreebankError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    for line_no, line in enumerate([*lines, "\n"], start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            if block:
                try:
                    sentences.append(_block_sentence(block))
                except NotATreeError as e:
                    stats.not_trees[e.reason] += 1
                    stats.first_not_tree.setdefault(e.reason, str(e))
                block = []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise TreebankError(f"line {line_no}: {len(cols)} tab-separated columns, CoNLL-U has 10")
        if "-" in cols[0]:
            stats.multiword_tokens += 1
        elif "." in cols[0]:
            stats.empty_nodes += 1
        else:
            block.append((line_no, cols))
    return sentences


def read_conllu(path: str | Path, vocab: WordTokenizer | None = None) -> list[Sentence]:
    """:func:`read_treebank`; with a ``vocab``, words become its spelling (exact, then lower case) or ``<unk>``."""
    sentences = read_treebank(path)
    if vocab is None:
        return sentences
    return [Sentence(tuple(vocab.normalize(w) for w in s.tokens), s.heads, s.rels, s.coref) for s in sentences]

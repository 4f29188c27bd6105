"""CoNLL-U export of generated sentences, and import of a user's treebank.

Export writes HEAD (1-based, 0 = root) and DEPREL from the gold tree, UPOS and
Number from the lexicon, and the coreference link in MISC as
``Antecedent=<ID>``. Import reads the same columns back, so the analysis that
scores heads on the synthetic grammar can score them on a real treebank:

* multiword-token ranges (``1-2``) and empty nodes (``3.1``) are skipped;
* a missing HEAD becomes ``-1`` and a missing DEPREL the empty name (no arc);
* DEPREL names are kept verbatim, including ones unknown to ``RELATIONS``
  (``relation_list`` grows the relation list from them);
* with a ``vocab``, words are mapped to its spelling (exact, then lower case)
  and anything else to ``<unk>``, so every word has an id.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import conllu
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


def _sentence(tl: TokenList, vocab: WordTokenizer | None) -> Sentence:
    words = [t for t in tl if isinstance(t["id"], int)]
    index = {t["id"]: i for i, t in enumerate(words)}

    def position(ref: object) -> int:
        # HEAD 0 (root) and references to skipped or absent IDs mean "no arc".
        try:
            return index.get(int(str(ref)), -1)
        except ValueError:
            return -1

    tokens, heads, rels, coref = [], [], [], []
    for t in words:
        form = str(t["form"])
        tokens.append(vocab.normalize(form) if vocab is not None else form)
        heads.append(position(t["head"]) if t["head"] is not None else -1)
        deprel = t["deprel"]
        rels.append("" if deprel in (None, "_") else str(deprel))
        misc = t["misc"] or {}
        coref.append(position(misc["Antecedent"]) if "Antecedent" in misc else -1)
    return Sentence(tuple(tokens), tuple(heads), tuple(rels), tuple(coref))


def read_conllu(path: str | Path, vocab: WordTokenizer | None = None) -> list[Sentence]:
    with open(path, encoding="utf-8") as f:
        return [_sentence(tl, vocab) for tl in conllu.parse_incr(f) if len(tl)]

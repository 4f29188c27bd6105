"""A small English-like language whose every sentence carries gold dependency arcs.

Each construction is built so that predicting some word *requires* looking at
one specific earlier word, giving attention heads a reason to specialize:

* determiner ↔ noun number ("a cat", "these cats");
* adjective ↔ noun semantic class (animals are "fluffy", objects "heavy",
  food "ripe", places "muddy", people "brave"; "big/small/little" fit all);
* subject ↔ main verb NUMBER agreement across a relative clause and a PP
  ("the cats that sat on the mat were fluffy"), with an object relative clause
  putting a distracting noun in between ("the cat that the dogs chased was ...");
* verb ↔ preposition (sit takes on/in/under/near, run takes to/from/with) and
  preposition ↔ object (on the mat, in the box, to the park, with the dog);
* "that" → the noun it modifies, and a pronoun (he/she/it/they) → the main
  subject, agreeing in number, gender and animacy; what follows the pronoun
  must also fit the antecedent's class ("... and it was hungry");
* a repeated mention: the second clause may re-use any earlier noun phrase word
  for word ("the cat sat on the wooden mat and the wooden mat was ..."), so a
  head that copies what followed an earlier copy of the current word (an
  induction head, Olsson et al. 2022) can predict it, as with names repeated
  in natural text; a re-mention is a repetition, not an entry in ``coref``;
* a fronted time adverb → the main verb's tense ("yesterday the cats ... were"),
  or a fronted place PP ("near the river the cat sat"): both move the main
  subject, so no fixed absolute position finds it.

Annotation (``Sentence``), all indices 0-based within the sentence's words:

* ``heads[i]`` — index of word i's syntactic head, ``-1`` for the root.
  Exactly one root per sentence; the arcs form a tree.
* ``rels[i]`` — relation name of the arc word i → ``heads[i]``:

  ==============  ==========================================================
  ``root``        main verb or copula (head -1)
  ``det``         determiner → its noun
  ``amod``        attributive adjective → its noun
  ``nsubj``       subject → its verb/copula (noun, pronoun, or subject "that")
  ``obj``         direct object → its verb (noun, or object "that")
  ``acomp``       predicate adjective → copula ("fluffy" → "was")
  ``prep``        preposition → the verb it attaches to ("on" → "sat")
  ``pobj``        object of a preposition → the preposition ("mat" → "on")
  ``acl:relcl``   relative-clause verb → the noun it modifies ("sat" → "cat")
  ``cc``          "and" → the verb of the clause it introduces
  ``conj``        second clause's verb → the root verb
  ``advmod``      fronted time adverb → the root verb ("yesterday" → "sat")
  ==============  ==========================================================

  The copula is the head of its clause (Stanford "basic" style rather than
  UD's adjective-as-head) so that subject ↔ verb agreement is a direct arc.
* ``coref[i]`` — index of the antecedent noun for pronouns and for the
  relative "that", else ``-1``. It is a second annotation, not a second head,
  so the syntactic tree stays a tree. Its relation name is ``coref``.

``RELATIONS`` lists the tree relations followed by ``coref``; relation ids in
batches index this list. ``arc_masks`` additionally derives ``amod:pred``
(predicate adjective → the subject noun of its copula, "fluffy" → "cat").

In batches every position is shifted by one for the leading BOS: ``heads`` and
``coref`` hold sequence positions, ``-1`` for none/root/BOS/EOS/pad, and
``rels`` holds ids into ``RELATIONS`` (``-1`` for none).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mhaexp.config import boolean, choice, optional, positive_int, positive_number, string
from mhaexp.data.conllu_io import read_conllu
from mhaexp.data.lexicon import (
    ALL_CLASSES,
    COPULA,
    DEFAULT,
    DETERMINERS,
    LEXICONS,
    PRONOUNS,
    TIME_ADVERBS,
    VERBS,
    ZIPF_EXPONENT,
    ZIPF_SIZE,
    Lexicon,
    Sentence,
    Verb,
    zipf_lexicon,
)
from mhaexp.data.source import RowSource
from mhaexp.data.tokenizers import WordTokenizer
from mhaexp.errors import ConfigError

if TYPE_CHECKING:
    import torch

# Bump whenever generation changes: it is part of the cache fingerprint.
GRAMMAR_VERSION = 2

TREE_RELATIONS: tuple[str, ...] = (
    "root",
    "det",
    "amod",
    "nsubj",
    "obj",
    "acomp",
    "prep",
    "pobj",
    "acl:relcl",
    "cc",
    "conj",
    "advmod",
)
RELATIONS: list[str] = [*TREE_RELATIONS, "coref"]
DERIVED_RELATIONS: tuple[str, ...] = ("amod:pred",)

SEED_TEXT = "the cat that sat on the mat was fluffy"

SUBJECT_CLASS_WEIGHTS = {"animal": 0.3, "male": 0.15, "female": 0.15, "object": 0.2, "food": 0.1, "place": 0.1}
P_PLURAL = 0.4
P_ATTR_ADJ = 0.35
P_GENERIC_ADJ = 0.15
P_RELCL = 0.6
P_OBJECT_RELCL = 0.3
P_PP_INTRANSITIVE = 0.85
P_PP_TRANSITIVE = 0.3
P_COORD = 0.4
P_REMENTION = 0.5  # of second clauses: subject is a copy of an earlier noun phrase, else a pronoun
# A fronted adverb or place PP shifts the main subject by 1 or 3 words, so a head that finds the subject by
# content beats one that attends to a fixed absolute position (Voita et al.'s baselines are positional).
P_FRONTED_ADVERB = 0.25
P_FRONTED_PP = 0.25
FRONTED_PREPS = ("in", "near", "under")
PREDICATE_WEIGHTS = {"cop": 0.4, "intr": 0.35, "tr": 0.25}
MAX_SENTENCE_LEN = 35  # longest the templates can produce: seq_len 37 never redraws
MIN_SEQ_LEN = len(SEED_TEXT.split()) + 2  # BOS + seed sentence + EOS


@dataclass(frozen=True)
class _NP:
    index: int
    cls: str
    number: str
    start: int  # first word (the determiner)


class _Builder:
    """Appends words; heads may point forward, so they are filled in later."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.heads: list[int] = []
        self.rels: list[str] = []
        self.coref: list[int] = []
        self.nps: list[_NP] = []

    def add(self, word: str, head: int = -2, rel: str = "") -> int:
        self.tokens.append(word)
        self.heads.append(head)
        self.rels.append(rel)
        self.coref.append(-1)
        return len(self.tokens) - 1

    def attach(self, i: int, head: int, rel: str) -> None:
        self.heads[i] = head
        self.rels[i] = rel

    def build(self) -> Sentence:
        return Sentence(tuple(self.tokens), tuple(self.heads), tuple(self.rels), tuple(self.coref))


def _weighted(rng: random.Random, options: Sequence[tuple[str, float]]) -> str:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def _adjective(rng: random.Random, cls: str, lex: Lexicon) -> str:
    classes = (
        ALL_CLASSES
        if rng.random() < P_GENERIC_ADJ
        else next(k for k in lex.adjectives if cls in k and k != ALL_CLASSES)
    )
    return lex.draw(rng, lex.adjective_pool(classes))


def _noun_phrase(b: _Builder, rng: random.Random, lemmas: tuple, lex: Lexicon) -> _NP:
    """det [adj] noun from the pool ``lemmas`` (``Lexicon.lemmas``); the noun's own head is set by the caller."""
    sg, pl, cls = lex.draw(rng, lemmas)
    number = "pl" if rng.random() < P_PLURAL else "sg"
    det = b.add(_weighted(rng, DETERMINERS[number]))
    adj = b.add(_adjective(rng, cls, lex)) if rng.random() < P_ATTR_ADJ else None
    noun = b.add(pl if number == "pl" else sg)
    b.attach(det, noun, "det")
    if adj is not None:
        b.attach(adj, noun, "amod")
    np = _NP(noun, cls, number, det)
    b.nps.append(np)
    return np


def _repeat_noun_phrase(b: _Builder, np: _NP) -> _NP:
    """An exact copy of an earlier noun phrase, with its own det/amod arcs; the noun's head is the caller's."""
    words = b.tokens[np.start : np.index + 1]
    first = len(b.tokens)
    for w in words:
        b.add(w)
    noun = first + len(words) - 1
    for i in range(first, noun):
        b.attach(i, noun, "det" if i == first else "amod")
    copy = _NP(noun, np.cls, np.number, first)
    b.nps.append(copy)
    return copy


def _prep_phrase(b: _Builder, rng: random.Random, verb: Verb, head: int, lex: Lexicon) -> None:
    prep = rng.choice(verb.preps)
    p = b.add(prep, head, "prep")
    obj = _noun_phrase(b, rng, lex.prep_objects(prep), lex)
    b.attach(obj.index, p, "pobj")


def _predicate(
    b: _Builder,
    rng: random.Random,
    cls: str,
    number: str,
    tense: str,
    lex: Lexicon,
    kinds: Sequence[str] = ("cop", "intr", "tr"),
) -> int:
    """Verb (or copula) plus complements for a subject of ``cls``; returns the verb."""
    options = [(k, PREDICATE_WEIGHTS[k]) for k in kinds if k == "cop" or any(_fits(v, k, cls) for v in VERBS)]
    # Places can do nothing but "be": fall back to the copula.
    options = options or [("cop", 1.0)]
    kind = _weighted(rng, options)
    if kind == "cop":
        v = b.add(COPULA[(tense, number)])
        b.add(_adjective(rng, cls, lex), v, "acomp")
        return v
    verb = rng.choice([v for v in VERBS if _fits(v, kind, cls)])
    v = b.add(verb.form(tense, number))
    if kind == "tr":
        assert verb.obj is not None
        obj = _noun_phrase(b, rng, lex.lemmas(verb.obj), lex)
        b.attach(obj.index, v, "obj")
    p_pp = P_PP_TRANSITIVE if kind == "tr" else P_PP_INTRANSITIVE
    if verb.preps and rng.random() < p_pp:
        _prep_phrase(b, rng, verb, v, lex)
    return v


def _fits(verb: Verb, kind: str, cls: str) -> bool:
    return cls in verb.subj and (verb.obj is None) == (kind == "intr")


def _relative_clause(b: _Builder, rng: random.Random, noun: _NP, tense: str, lex: Lexicon) -> None:
    object_verbs = [v for v in VERBS if v.obj is not None and noun.cls in v.obj]
    that = b.add("that")
    b.coref[that] = noun.index
    if object_verbs and rng.random() < P_OBJECT_RELCL:
        # "the cat that the dogs chased": the RC subject is a distracting noun
        # whose number may differ from the main subject's.
        verb = rng.choice(object_verbs)
        subj = _noun_phrase(b, rng, lex.lemmas(verb.subj), lex)
        v = b.add(verb.form(tense, subj.number))
        b.attach(subj.index, v, "nsubj")
        b.attach(that, v, "obj")
    else:
        kinds = ("cop", "intr", "tr") if rng.random() < 0.2 else ("intr", "tr")
        v = _predicate(b, rng, noun.cls, noun.number, tense, lex, kinds=kinds)
        b.attach(that, v, "nsubj")
    b.attach(v, noun.index, "acl:relcl")


def _fronted(b: _Builder, rng: random.Random, lex: Lexicon) -> tuple[list[int], str | None]:
    """An optional sentence-initial adverb or place PP: (words to attach to the root, tense it fixes)."""
    u = rng.random()
    if u < P_FRONTED_ADVERB:
        adverb = rng.choice(sorted(TIME_ADVERBS))
        return [b.add(adverb, rel="advmod")], TIME_ADVERBS[adverb]
    if u < P_FRONTED_ADVERB + P_FRONTED_PP:
        prep = rng.choice(FRONTED_PREPS)
        p = b.add(prep, rel="prep")
        # No adjective: keeps the longest sentence at MAX_SENTENCE_LEN.
        det = b.add("the")
        word = lex.draw(rng, lex.prep_objects(prep, lemmas=False))
        noun = b.add(word, p, "pobj")
        b.attach(det, noun, "det")
        b.nps.append(_NP(noun, lex.noun_feats[word][0], "sg", det))
        return [p], None
    return [], None


def _sentence(rng: random.Random, lex: Lexicon) -> Sentence:
    b = _Builder()
    front, fixed_tense = _fronted(b, rng, lex)
    tense = fixed_tense or ("past" if rng.random() < 0.5 else "present")
    cls = _weighted(rng, list(SUBJECT_CLASS_WEIGHTS.items()))
    subj = _noun_phrase(b, rng, lex.lemmas(frozenset({cls})), lex)
    if rng.random() < P_RELCL:
        _relative_clause(b, rng, subj, tense, lex)
    root = _predicate(b, rng, cls, subj.number, tense, lex)
    b.attach(subj.index, root, "nsubj")
    b.attach(root, -1, "root")
    for w in front:
        b.attach(w, root, b.rels[w])
    if rng.random() < P_COORD:
        conj_word = b.add("and")
        if rng.random() < P_REMENTION:
            # Any earlier noun phrase, not just the subject: only a general copy mechanism predicts it.
            mention = _repeat_noun_phrase(b, rng.choice(b.nps))
            subj2, cls2, number2 = mention.index, mention.cls, mention.number
        else:
            subj2 = b.add("they" if subj.number == "pl" else PRONOUNS[cls])
            b.coref[subj2] = subj.index
            cls2, number2 = cls, subj.number
        v2 = _predicate(b, rng, cls2, number2, tense, lex)
        b.attach(conj_word, v2, "cc")
        b.attach(subj2, v2, "nsubj")
        b.attach(v2, root, "conj")
    return b.build()


def generate_sentence(rng: random.Random, max_len: int | None = None, lexicon: Lexicon = DEFAULT) -> Sentence:
    """One sentence drawn with ``rng`` from ``lexicon`` (consumes it; same state → same sentence).

    Sentences longer than ``max_len`` words are redrawn rather than cut, so
    every kept sentence is complete and its tree intact.
    """
    if max_len is not None and max_len < len(SEED_TEXT.split()):
        raise ValueError(f"max_len={max_len} is shorter than the seed sentence")
    while True:
        s = _sentence(rng, lexicon)
        if max_len is None or len(s) <= max_len:
            return s


def generate_corpus(n: int, seed: int, max_len: int | None = None, lexicon: Lexicon = DEFAULT) -> list[Sentence]:
    rng = random.Random(seed)
    return [generate_sentence(rng, max_len, lexicon) for _ in range(n)]


def seed_sentence() -> Sentence:
    """ "the cat that sat on the mat was fluffy", annotated as the grammar would."""
    return Sentence(
        tokens=tuple(SEED_TEXT.split()),
        heads=(1, 7, 3, 1, 3, 6, 4, -1, 7),
        rels=("det", "nsubj", "nsubj", "acl:relcl", "prep", "det", "pobj", "root", "acomp"),
        coref=(-1, -1, 1, -1, -1, -1, -1, -1, -1),
    )


def relation_list(sentences: Sequence[Sentence], base: Sequence[str] = RELATIONS) -> list[str]:
    """``base`` followed by any relation names the sentences use that it lacks."""
    out = list(base)
    known = set(out)
    for s in sentences:
        for r in s.rels:
            if r and r not in known:
                known.add(r)
                out.append(r)
    return out


def encode_sentence(s: Sentence, tokenizer: WordTokenizer, relations: Sequence[str], seq_len: int) -> dict[str, list]:
    """BOS + words + EOS, padded to ``seq_len``; annotations shifted by one for BOS."""
    n = len(s)
    if n + 2 > seq_len:
        raise ValueError(f"sentence of {n} words does not fit seq_len={seq_len}")
    rel_id = {r: i for i, r in enumerate(relations)}
    pad = seq_len - n - 2
    ids = [tokenizer.token_to_id(w) for w in s.tokens]

    def shift(xs: Sequence[int]) -> list[int]:
        return [-1] + [x + 1 if x >= 0 else -1 for x in xs] + [-1] * (pad + 1)

    return {
        "input_ids": [tokenizer.bos_id, *ids, tokenizer.eos_id] + [tokenizer.pad_id] * pad,
        "attention_mask": [True] * (n + 2) + [False] * pad,
        "heads": shift(s.heads),
        "rels": [-1] + [rel_id[r] if r else -1 for r in s.rels] + [-1] * (pad + 1),
        "coref": shift(s.coref),
    }


def encode_pair(
    a: Sentence, b: Sentence, tokenizer: WordTokenizer, relations: Sequence[str], seq_len: int
) -> dict[str, list]:
    """BOS + A + EOS + B + EOS ([CLS] A [SEP] B [SEP]), padded to ``seq_len``; each sentence's arcs point
    within it, shifted to its place in the sequence."""
    first = encode_sentence(a, tokenizer, relations, len(a) + 2)
    second = encode_sentence(b, tokenizer, relations, len(b) + 2)
    pad = seq_len - len(a) - len(b) - 3
    if pad < 0:
        raise ValueError(f"sentences of {len(a)} and {len(b)} words do not fit seq_len={seq_len} as a pair")
    shift = len(a) + 1  # B's BOS is dropped: its position p lands at p - 1 + len(a) + 2

    def moved(xs: list) -> list:
        return [x + shift if x >= 0 else -1 for x in xs[1:]]

    return {
        "input_ids": first["input_ids"] + second["input_ids"][1:] + [tokenizer.pad_id] * pad,
        "attention_mask": [True] * (seq_len - pad) + [False] * pad,
        "heads": first["heads"] + moved(second["heads"]) + [-1] * pad,
        "rels": first["rels"] + second["rels"][1:] + [-1] * pad,
        "coref": first["coref"] + moved(second["coref"]) + [-1] * pad,
    }


def pack_sentences(
    sentences: Iterable[Sentence], tokenizer: WordTokenizer, relations: Sequence[str], seq_len: int
) -> Iterator[dict[str, list]]:
    """Rows of exactly ``seq_len`` real tokens: BOS, then sentences back to back, each followed by EOS.

    LM pre-training packs documents into full rows (Gu et al. 2024, Fig. 1 right; their sink metric reads
    T = 64 tokens, Sec. 3.2). The sentence that reaches a row's end is cut there and not continued, so each
    row starts with BOS and a whole sentence; arcs that cross the cut are dropped (-1). Annotations are
    positions in the row, as :func:`encode_sentence` gives them in its own.
    """
    row: dict[str, list] = {}
    for s in sentences:
        if not row:
            row = {"input_ids": [tokenizer.bos_id], "heads": [-1], "rels": [-1], "coref": [-1]}
        enc = encode_sentence(s, tokenizer, relations, len(s) + 2)
        offset = len(row["input_ids"]) - 1  # the sentence's own BOS would sit there
        row["input_ids"] += enc["input_ids"][1:]
        row["rels"] += enc["rels"][1:]
        for key in ("heads", "coref"):
            row[key] += [p + offset if p >= 0 else -1 for p in enc[key][1:]]
        if len(row["input_ids"]) >= seq_len:
            cut = {k: v[:seq_len] for k, v in row.items()}
            cut["rels"] = [-1 if h >= seq_len else r for r, h in zip(cut["rels"], cut["heads"], strict=True)]
            for key in ("heads", "coref"):
                cut[key] = [p if p < seq_len else -1 for p in cut[key]]
            yield {**cut, "attention_mask": [True] * seq_len}
            row = {}


def arc_masks(
    heads: torch.Tensor, rels: torch.Tensor, coref: torch.Tensor, relations: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Gold arcs per relation as BoolTensors (B, T, T): ``m[b, dep, head]``.

    Includes ``coref`` (from the coref array) and the derived ``amod:pred``.
    Arcs point dependent → head; a causal model can only attend from the later
    of the two, so analysis usually symmetrizes ``m | m.transpose(1, 2)``.
    """
    import torch  # here, not at the top: generating and checking data needs no torch

    B, T = heads.shape
    out: dict[str, torch.Tensor] = {}

    def scatter(sel: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(B, T, T, dtype=torch.bool)
        b, i = sel.nonzero(as_tuple=True)
        m[b, i, target[b, i]] = True
        return m

    for r, name in enumerate(relations):
        if name == "coref":
            out[name] = scatter(coref >= 0, coref)
        else:
            out[name] = scatter((heads >= 0) & (rels == r), heads)
    if "acomp" in relations and "nsubj" in relations:
        acomp = (rels == relations.index("acomp")) & (heads >= 0)
        nsubj = (rels == relations.index("nsubj")) & (heads >= 0)
        same_head = heads.unsqueeze(2) == heads.unsqueeze(1)
        out["amod:pred"] = acomp.unsqueeze(2) & nsubj.unsqueeze(1) & same_head
    return out


class GrammarSource(RowSource):
    """Feeds the datamodule: word tokenizer from the lexicon, seeded splits."""

    kind = "grammar"
    config_keys = {
        "probe_conllu": optional(string()),
        "pair_sentences": boolean(),
        "pack": boolean(),
        "lexicon": choice(*LEXICONS),  # zipf: a long tail of rare words
        "lexicon_size": positive_int(),  # zipf: nouns (adjectives: 1/4)
        "zipf_exponent": positive_number(),
    }

    def __init__(
        self,
        seq_len: int,
        sizes: dict[str, int],
        seed: int,
        probe_conllu: str | None = None,
        pair_sentences: bool = False,
        pack: bool = False,
        lexicon: str = "default",
        lexicon_size: int = ZIPF_SIZE,
        zipf_exponent: float = ZIPF_EXPONENT,
    ) -> None:
        # pair_sentences: BERT's input, [CLS] A [SEP] B [SEP] (BOS A EOS B EOS), two sentences a sequence
        # (Devlin et al. 2019, Sec. 3.1; Clark et al. 2019, Sec. 2 read BERT's attention on such segments).
        if pack and pair_sentences:
            raise ConfigError("data.pack", pack, "false with data.pair_sentences=true (a pair is not a packed row)")
        per = 2 if pair_sentences else 1
        least = per * (MIN_SEQ_LEN - 2) + per + 1
        if seq_len < least:
            what = "BOS + A + EOS + B + EOS" if pair_sentences else "BOS + sentence + EOS"
            raise ConfigError("data.seq_len", seq_len, f"an int >= {least} ({what}, '{SEED_TEXT}' as each)")
        if probe_conllu is not None and not Path(probe_conllu).expanduser().is_file():
            raise ConfigError("data.probe_conllu", probe_conllu, "null or an existing CoNLL-U file")
        if lexicon not in LEXICONS:
            raise ConfigError("data.lexicon", lexicon, f"one of {list(LEXICONS)}")
        self.seq_len = seq_len
        self.sizes = sizes
        self.seed = seed
        self.probe_conllu = probe_conllu
        self.pair_sentences = pair_sentences
        self.per_sequence = per
        self.max_words = (seq_len - per - 1) // per  # the longest sentence a sequence holds
        # Packed rows (Gu et al. 2024, Fig. 1 right): several sentences back to back in one full row.
        self.pack = pack
        # data.lexicon=zipf: a long tail of rare nouns and adjectives (Voita et al. 2019's rare-word heads).
        self.zipf = (lexicon_size, zipf_exponent) if lexicon == "zipf" else None
        self.lexicon = zipf_lexicon(lexicon_size, zipf_exponent) if self.zipf else DEFAULT
        self.tokenizer = WordTokenizer(self.lexicon.vocab)
        self._user_probe: list[Sentence] | None = None

    def _probe_sentences(self) -> list[Sentence]:
        if self._user_probe is None:
            assert self.probe_conllu is not None
            sents = read_conllu(Path(self.probe_conllu).expanduser(), self.tokenizer)
            # A treebank sentence cut short would lose arcs; keep only whole ones.
            fitting = [s for s in sents if len(s) <= self.max_words]
            if len(fitting) < self.per_sequence:
                raise ConfigError(
                    "data.probe_conllu",
                    self.probe_conllu,
                    f"a CoNLL-U file with {'two sentences' if self.pair_sentences else 'a sentence'} of <= "
                    f"{self.max_words} words",
                )
            self._user_probe = fitting[: self.sizes["probe"] * self.per_sequence]
        return self._user_probe

    @property
    def relations(self) -> list[str]:
        if self.probe_conllu is None:
            return list(RELATIONS)
        return relation_list(self._probe_sentences())

    def identity(self) -> dict:
        ident: dict = {"grammar_version": GRAMMAR_VERSION}
        if self.pair_sentences:
            ident["pair_sentences"] = True
        if self.pack:  # only when set: unpacked data keeps the cache entries it always had
            ident["pack"] = True
        if self.zipf is not None:  # absent for the default lexicon: its data and cache name stay as they were
            ident["zipf_lexicon"] = list(self.zipf)
        if self.probe_conllu is not None:
            st = Path(self.probe_conllu).expanduser().stat()
            ident["probe_conllu"] = [str(Path(self.probe_conllu).resolve()), st.st_size, st.st_mtime_ns]
        return ident

    def sentences(self, split: str, n: int | None = None) -> Iterator[Sentence]:
        """The split's sentences in order: ``per_sequence`` of them make one sequence, ``sizes[split]``
        sequences; or ``n`` sentences (``None`` with ``pack``: as many as the packed rows ask for)."""
        if n is None and not self.pack:
            n = self.sizes[split] * self.per_sequence
        if split == "probe" and self.probe_conllu is not None:
            yield from itertools.islice(self._probe_sentences(), n)
            return
        # String seeds hash deterministically (unlike hash()), one stream per split.
        rng = random.Random(f"mhaexp-grammar/{split}/{self.seed}")
        if split == "probe":
            yield seed_sentence()
        k = 1 if split == "probe" else 0
        while n is None or k < n:
            yield generate_sentence(rng, self.max_words, self.lexicon)
            k += 1

    def generate(self, split: str) -> Iterator[dict[str, list]]:
        relations = self.relations
        if self.pack:
            rows = pack_sentences(self.sentences(split), self.tokenizer, relations, self.seq_len)
            yield from itertools.islice(rows, self.sizes[split])
            return
        if self.pair_sentences:
            stream = self.sentences(split)
            for a, b in zip(stream, stream, strict=False):
                yield encode_pair(a, b, self.tokenizer, relations, self.seq_len)
            return
        for s in self.sentences(split):
            yield encode_sentence(s, self.tokenizer, relations, self.seq_len)

    @property
    def annotation_columns(self) -> tuple[str, ...]:
        return ("heads", "rels", "coref")


# ---- the grammar as plain text ------------------------------------------------------------------
TEXT_STYLES = ("prose", "plain")


def render_sentence(s: Sentence, style: str = "prose") -> str:
    """``prose``: capitalized, with a full stop; ``plain``: the words as the CoNLL-U export spells them."""
    if style == "plain":
        return s.text
    return s.text[:1].upper() + s.text[1:] + "."


def render_text(
    out_dir: str | Path, n_sentences: int, seed: int = 0, n_files: int = 10, style: str = "prose", per_line: int = 6
) -> list[Path]:
    """Write ``n_sentences`` grammar sentences as ``n_files`` text files ``part-00000.txt``...; return them.

    Offline text for ``data=text`` that looks like language: ``prose`` puts ``per_line`` sentences on
    each line (a paragraph); ``plain`` one sentence per line, lower case, no punctuation, word for
    word what :func:`~mhaexp.data.conllu_io.to_conllu` of the same sentences holds.
    """
    if style not in TEXT_STYLES:
        raise ValueError(f"style={style!r}: choose one of {TEXT_STYLES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    per_line = 1 if style == "plain" else per_line
    paths = []
    for k in range(n_files):
        n = n_sentences // n_files + (1 if k < n_sentences % n_files else 0)
        sents = [render_sentence(generate_sentence(rng), style) for _ in range(n)]
        lines = [" ".join(sents[i : i + per_line]) for i in range(0, n, per_line)]
        path = out / f"part-{k:05d}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths

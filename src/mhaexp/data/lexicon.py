"""The grammar's words: noun classes, adjectives, verbs and their frames, features, and the annotated sentence.

Kept apart from the generator (:mod:`mhaexp.data.grammar`) so that the CoNLL-U reader and writer
(:mod:`mhaexp.data.conllu_io`) can use the features without importing the generator.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

ANIMATE = frozenset({"animal", "male", "female"})
PERSON = frozenset({"male", "female"})
ALL_CLASSES = frozenset({"animal", "male", "female", "object", "food", "place"})

NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "animal": (
        ("cat", "cats"),
        ("dog", "dogs"),
        ("bird", "birds"),
        ("horse", "horses"),
        ("mouse", "mice"),
        ("rabbit", "rabbits"),
        ("fox", "foxes"),
        ("duck", "ducks"),
    ),
    "male": (("man", "men"), ("boy", "boys"), ("king", "kings"), ("prince", "princes"), ("father", "fathers")),
    "female": (
        ("woman", "women"),
        ("girl", "girls"),
        ("queen", "queens"),
        ("princess", "princesses"),
        ("mother", "mothers"),
    ),
    "object": (
        ("mat", "mats"),
        ("box", "boxes"),
        ("cup", "cups"),
        ("chair", "chairs"),
        ("table", "tables"),
        ("book", "books"),
        ("ball", "balls"),
        ("lamp", "lamps"),
        ("basket", "baskets"),
        ("bed", "beds"),
    ),
    "food": (
        ("cake", "cakes"),
        ("cookie", "cookies"),
        ("pear", "pears"),
        ("carrot", "carrots"),
        ("pie", "pies"),
        ("plum", "plums"),
    ),
    "place": (
        ("garden", "gardens"),
        ("house", "houses"),
        ("park", "parks"),
        ("river", "rivers"),
        ("hill", "hills"),
        ("road", "roads"),
        ("kitchen", "kitchens"),
        ("forest", "forests"),
        ("tree", "trees"),
        ("bridge", "bridges"),
    ),
}
# Consonant-initial everywhere, so "a" never needs to become "an".
ADJECTIVES: dict[frozenset[str], tuple[str, ...]] = {
    frozenset({"animal"}): ("fluffy", "hungry", "furry", "wild", "sleepy"),
    PERSON: ("happy", "tall", "kind", "brave", "tired"),
    frozenset({"object"}): ("heavy", "broken", "wooden", "shiny", "clean"),
    frozenset({"food"}): ("fresh", "sweet", "ripe", "tasty", "salty"),
    frozenset({"place"}): ("quiet", "dark", "sunny", "muddy", "wide"),
    ALL_CLASSES: ("big", "small", "little"),
}
DETERMINERS: dict[str, tuple[tuple[str, float], ...]] = {
    "sg": (("the", 0.6), ("a", 0.25), ("this", 0.15)),
    "pl": (("the", 0.6), ("these", 0.2), ("some", 0.2)),
}
COPULA = {("present", "sg"): "is", ("present", "pl"): "are", ("past", "sg"): "was", ("past", "pl"): "were"}
# Fronted time adverbs fix the tense of the whole sentence.
TIME_ADVERBS: dict[str, str] = {"yesterday": "past", "then": "past", "today": "present", "now": "present"}
PRONOUNS = {"male": "he", "female": "she", "animal": "it", "object": "it", "food": "it", "place": "it"}

_CONTAINERS = ("box", "basket", "cup", "house", "garden", "park", "river", "kitchen", "forest")
_DESTINATIONS = ("garden", "house", "park", "river", "hill", "kitchen", "forest")
PREPOSITIONS: dict[str, tuple[str, ...]] = {
    "on": ("mat", "chair", "table", "bed", "box", "hill", "road", "bridge"),
    "in": _CONTAINERS,
    "under": ("table", "chair", "bed", "tree", "bridge"),
    "near": ("tree", "river", "house", "hill", "road", "bridge", "garden", "table"),
    "to": _DESTINATIONS,
    "from": _DESTINATIONS,
    "with": tuple(sg for c in ("animal", "male", "female") for sg, _ in NOUNS[c]),
}


@dataclass(frozen=True)
class Verb:
    base: str  # plural present: "sit"
    s3: str  # singular present: "sits"
    past: str  # "sat" (does not agree)
    subj: frozenset[str]  # noun classes allowed as subject
    obj: frozenset[str] | None  # noun classes allowed as object; None = intransitive
    preps: tuple[str, ...]  # prepositions this verb takes

    def form(self, tense: str, number: str) -> str:
        if tense == "past":
            return self.past
        return self.s3 if number == "sg" else self.base


_OBJ = frozenset({"object", "food", "animal"})
VERBS: tuple[Verb, ...] = (
    Verb("sit", "sits", "sat", ANIMATE, None, ("on", "in", "under", "near")),
    Verb("sleep", "sleeps", "slept", ANIMATE, None, ("on", "in", "under")),
    Verb("run", "runs", "ran", ANIMATE, None, ("to", "from", "with")),
    Verb("walk", "walks", "walked", ANIMATE, None, ("to", "from", "with")),
    Verb("play", "plays", "played", ANIMATE, None, ("in", "with", "near")),
    Verb("hide", "hides", "hid", ANIMATE, None, ("in", "under")),
    Verb("fall", "falls", "fell", ANIMATE | {"object", "food"}, None, ("in", "on", "from")),
    Verb("chase", "chases", "chased", ANIMATE, ANIMATE, ("to", "from", "in")),
    Verb("eat", "eats", "ate", ANIMATE, frozenset({"food"}), ("in", "on", "near")),
    Verb("carry", "carries", "carried", PERSON, _OBJ, ("to", "from")),
    Verb("see", "sees", "saw", ANIMATE, ALL_CLASSES, ("in", "near", "on")),
    Verb("find", "finds", "found", ANIMATE, _OBJ | PERSON, ("in", "under", "near")),
    Verb("hold", "holds", "held", PERSON, _OBJ, ("in", "near")),
    Verb("like", "likes", "liked", ANIMATE, ALL_CLASSES, ()),
)


# Word-level feature tables, used by tests, CoNLL-U export and analysis labels.
def noun_features(nouns: dict[str, tuple[tuple[str, str], ...]]) -> dict[str, tuple[str, str]]:
    """``{word: (class, number)}`` of every singular and plural."""
    return {w: (c, n) for c, pairs in nouns.items() for pair in pairs for w, n in zip(pair, ("sg", "pl"), strict=True)}


def adjective_classes(adjectives: dict[frozenset[str], tuple[str, ...]]) -> dict[str, frozenset[str]]:
    """``{adjective: the noun classes it fits}``."""
    return {a: cls for cls, adjs in adjectives.items() for a in adjs}


NOUN_FEATS = noun_features(NOUNS)
ADJ_CLASSES = adjective_classes(ADJECTIVES)
VERB_NUMBER: dict[str, str | None] = {
    **{v.s3: "sg" for v in VERBS},
    **{v.base: "pl" for v in VERBS},
    **{v.past: None for v in VERBS},
    "is": "sg",
    "was": "sg",
    "are": "pl",
    "were": "pl",
}
PRONOUN_FEATS: dict[str, tuple[frozenset[str], str]] = {
    "he": (frozenset({"male"}), "sg"),
    "she": (frozenset({"female"}), "sg"),
    "it": (ALL_CLASSES - PERSON, "sg"),
    "they": (ALL_CLASSES, "pl"),
}
UPOS: dict[str, str] = {
    **{w: "NOUN" for w in NOUN_FEATS},
    **{a: "ADJ" for a in ADJ_CLASSES},
    **{w: "VERB" for v in VERBS for w in (v.base, v.s3, v.past)},
    **{c: "AUX" for c in COPULA.values()},
    **{p: "ADP" for p in PREPOSITIONS},
    **{d: "DET" for opts in DETERMINERS.values() for d, _ in opts},
    **{p: "PRON" for p in PRONOUN_FEATS},
    **{a: "ADV" for a in TIME_ADVERBS},
    "that": "PRON",
    "and": "CCONJ",
}
VOCAB: list[str] = list(UPOS)


# ---------------------------------------------------------------- lexicons --
LEXICONS = ("default", "zipf")
ZIPF_SIZE = 1000  # nouns of the Zipfian lexicon (the default's 44 among them); adjectives: a quarter as many
ZIPF_EXPONENT = 1.0  # Zipf's s: the k-th word of a class is drawn with weight k^-s
ADJECTIVES_PER_NOUN = 4
_CONSONANTS = "bdfgklmnprtvz"  # onsets: every made-up word starts with a consonant, so "a" never becomes "an"
_VOWELS = "aeiou"
_CODAS = ("", "", "n", "l", "r", "k", "t")  # never "s": a singular must not look like a plural


class Lexicon:
    """The nouns and adjectives a grammar draws from, and how often each is drawn.

    The default lexicon (:data:`DEFAULT`) draws every word of a pool uniformly, with ``rng.choice``, as the
    grammar always has. A Zipfian one (:func:`zipf_lexicon`) adds made-up nouns and adjectives that
    behave exactly like a template word of the default lexicon (same class, same prepositions, same
    verbs), and draws the k-th word of each class with weight ``k ** -exponent``: a long tail of rare
    words, as in natural text, with every gold arc kept.
    """

    def __init__(
        self,
        nouns: dict[str, tuple[tuple[str, str], ...]],
        adjectives: dict[frozenset[str], tuple[str, ...]],
        prepositions: dict[str, tuple[str, ...]],
        exponent: float | None = None,
    ) -> None:
        self.nouns, self.adjectives, self.prepositions, self.exponent = nouns, adjectives, prepositions, exponent
        self.lemma_of = {sg: (sg, pl, c) for c, pairs in nouns.items() for sg, pl in pairs}
        self.noun_feats = noun_features(nouns)
        self.adj_classes = adjective_classes(adjectives)
        # Rank within its class (nouns) or class set (adjectives), from 1: the Zipf rank.
        self.rank = {sg: k + 1 for pairs in nouns.values() for k, (sg, _) in enumerate(pairs)}
        self.rank.update({a: k + 1 for adjs in adjectives.values() for k, a in enumerate(adjs)})
        self.vocab: list[str] = [*VOCAB, *(w for w in self.noun_feats if w not in UPOS)]
        self.vocab += [a for a in self.adj_classes if a not in UPOS]
        self._pools: dict[tuple, tuple[tuple, list[float] | None]] = {}

    def _pool(self, key: tuple, items: Sequence, words: Sequence[str]) -> tuple[tuple, list[float] | None]:
        if key not in self._pools:
            cum = None
            if self.exponent is not None:
                cum, total = [], 0.0
                for w in words:
                    total += self.rank[w] ** -self.exponent
                    cum.append(total)
            self._pools[key] = (tuple(items), cum)
        return self._pools[key]

    def draw(self, rng: random.Random, pool: tuple[tuple, list[float] | None]) -> T:
        """One item of ``pool``: ``rng.choice`` (uniform, the default lexicon) or by Zipf weight."""
        items, cum = pool
        return rng.choice(items) if cum is None else rng.choices(items, cum_weights=cum)[0]

    def lemmas(self, classes: frozenset[str]) -> tuple[tuple, list[float] | None]:
        """``(sg, pl, class)`` of every noun of ``classes``."""
        items = [(sg, pl, c) for c in sorted(classes) for sg, pl in self.nouns[c]]
        return self._pool(("lemmas", classes), items, [sg for sg, _, _ in items])

    def prep_objects(self, prep: str, lemmas: bool = True) -> tuple[tuple, list[float] | None]:
        """The nouns ``prep`` takes as object: lemmas, or (``lemmas=False``) their singulars."""
        words = self.prepositions[prep]
        items = [self.lemma_of[w] for w in words] if lemmas else words
        return self._pool(("prep", prep, lemmas), items, words)

    def adjective_pool(self, classes: frozenset[str]) -> tuple[tuple, list[float] | None]:
        words = self.adjectives[classes]
        return self._pool(("adj", classes), words, words)


DEFAULT = Lexicon(NOUNS, ADJECTIVES, PREPOSITIONS)


def _made_up_words(n: int, taken: set[str], rng: random.Random) -> list[str]:
    """``n`` new pronounceable words, two or three syllables, none in ``taken`` nor ``taken`` + "s"."""
    out: list[str] = []
    while len(out) < n:
        syllables = rng.choice((2, 2, 3))
        w = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
        if w not in taken and w + "s" not in taken:
            taken.update((w, w + "s"))
            out.append(w)
    return out


def zipf_lexicon(size: int = ZIPF_SIZE, exponent: float = ZIPF_EXPONENT) -> Lexicon:
    """The default lexicon grown to ``size`` nouns and ``size // 4`` adjectives, drawn with Zipf weights.

    Made-up word ``i`` joins class ``i mod 6`` (nouns) or class set ``i mod 6`` (adjectives) after the
    default words, and copies a default word of that class: the prepositions that take it. The words
    are the same for every data seed (a fixed stream), so runs of different seeds share a vocabulary.
    """
    rng = random.Random(f"mhaexp-lexicon/zipf/{size}")
    taken = set(UPOS)
    classes = list(NOUNS)
    new_nouns = _made_up_words(max(0, size - len(NOUN_FEATS) // 2), taken, rng)
    nouns = {c: list(pairs) for c, pairs in NOUNS.items()}
    copies: dict[str, list[str]] = {}  # default singular -> the made-up singulars that behave like it
    for i, w in enumerate(new_nouns):
        c = classes[i % len(classes)]
        template = NOUNS[c][(i // len(classes)) % len(NOUNS[c])][0]
        nouns[c].append((w, w + "s"))
        copies.setdefault(template, []).append(w)
    sets = list(ADJECTIVES)
    new_adjs = _made_up_words(max(0, size // ADJECTIVES_PER_NOUN - len(ADJ_CLASSES)), taken, rng)
    adjectives = {cls: list(adjs) for cls, adjs in ADJECTIVES.items()}
    for i, a in enumerate(new_adjs):
        adjectives[sets[i % len(sets)]].append(a)
    # A made-up noun follows its template's prepositions, after every default word of the pool.
    prepositions = {p: (*ws, *(c for w in ws for c in copies.get(w, ()))) for p, ws in PREPOSITIONS.items()}
    return Lexicon(
        {c: tuple(v) for c, v in nouns.items()}, {k: tuple(v) for k, v in adjectives.items()}, prepositions, exponent
    )


# ---------------------------------------------------------- probabilities --


@dataclass(frozen=True)
class Sentence:
    tokens: tuple[str, ...]
    heads: tuple[int, ...]
    rels: tuple[str, ...]
    coref: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

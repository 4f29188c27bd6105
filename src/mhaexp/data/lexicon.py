"""The grammar's words: noun classes, adjectives, verbs and their frames, features, and the annotated sentence.

Kept apart from the generator (:mod:`mhaexp.data.grammar`) so that the CoNLL-U reader and writer
(:mod:`mhaexp.data.conllu_io`) can use the features without importing the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

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
NOUN_FEATS: dict[str, tuple[str, str]] = {
    w: (cls, num) for cls, pairs in NOUNS.items() for pair in pairs for w, num in zip(pair, ("sg", "pl"), strict=True)
}
ADJ_CLASSES: dict[str, frozenset[str]] = {a: cls for cls, adjs in ADJECTIVES.items() for a in adjs}
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

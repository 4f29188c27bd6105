"""The grammar's Zipfian lexicon (data.lexicon=zipf): a long tail of rare words with every gold arc kept, and
the default lexicon's data unchanged byte for byte."""

from __future__ import annotations

import collections
import hashlib
import statistics

import pytest
from test_data import tree_problems

from mhaexp.config import build
from mhaexp.data import grammar as g
from mhaexp.data import lexicon as lex
from mhaexp.data.grammar import GrammarSource, generate_corpus
from mhaexp.data.spec import DataConfig
from mhaexp.errors import ConfigError

SIZES = {"train": 300, "val": 60, "probe": 12}
# sha256 of the default lexicon's rows (train, val, probe of GrammarSource(37, SIZES, 0)) and of
# generate_corpus(200, seed=3), computed with the grammar as it was before lexicons existed (commit d2e5473).
DEFAULT_DATA_SHA256 = "863eb6b5844dc22c1f1ddd5d8c23ddc36f7e81b36797a725ff16dd9561e9aa20"


def data_hash(src: GrammarSource) -> str:
    h = hashlib.sha256()
    for split in ("train", "val", "probe"):
        for row in src.generate(split):
            h.update(repr(row).encode())
    h.update(repr(generate_corpus(200, seed=3)).encode())
    return h.hexdigest()


def test_default_lexicon_generates_the_same_bytes_as_before() -> None:
    src = GrammarSource(37, SIZES, 0)
    assert data_hash(src) == DEFAULT_DATA_SHA256
    assert src.tokenizer.vocab_size == 189 and src.identity() == {"grammar_version": g.GRAMMAR_VERSION}
    assert src.lexicon is lex.DEFAULT


@pytest.fixture(scope="module")
def zipf() -> GrammarSource:
    return GrammarSource(37, {"train": 3000, "val": 60, "probe": 12}, 0, lexicon="zipf")


def test_zipf_sentences_keep_every_gold_arc_and_agreement(zipf: GrammarSource) -> None:
    lexicon = zipf.lexicon
    sents = list(zipf.sentences("train"))
    assert not [s.text for s in sents if tree_problems(s)]
    made_up = 0
    for s in sents:
        for w, h, r in zip(s.tokens, s.heads, s.rels, strict=True):
            made_up += w not in lex.UPOS
            assert w in zipf.tokenizer, w
            if r == "amod":  # the adjective fits its noun's class
                assert lexicon.noun_feats[s.tokens[h]][0] in lexicon.adj_classes[w], s.text
            if r == "pobj" and s.tokens[h] in lexicon.prepositions:  # a made-up noun goes where its template goes
                sg = next(sg for sg, pl, _ in lexicon.lemma_of.values() if w in (sg, pl))
                assert sg in lexicon.prepositions[s.tokens[h]], s.text
    assert made_up > 1000


def test_zipf_lexicon_has_a_long_tail(zipf: GrammarSource) -> None:
    lexicon = zipf.lexicon
    assert len(lexicon.lemma_of) == lex.ZIPF_SIZE and len(lexicon.adj_classes) == lex.ZIPF_SIZE // 4
    assert zipf.tokenizer.vocab_size == 5 + len(lex.VOCAB) + 2 * (lex.ZIPF_SIZE - 44) + lex.ZIPF_SIZE // 4 - 28
    sents = list(zipf.sentences("train"))
    counts = collections.Counter(w for s in sents for w in s.tokens)
    # The rarest word of a sentence is much rarer than its next rarest (1.4x with the default lexicon).
    ratios = []
    for s in sents:
        f = sorted(counts[w] for w in set(s.tokens))
        ratios.append(f[1] / f[0])
    assert statistics.median(ratios) >= 2.5
    assert min(counts.values()) == 1 and max(counts.values()) > 1000
    # Zipf within a class: the top made-up animal outnumbers the 50th.
    animals = [sg for sg, _ in lexicon.nouns["animal"]]
    assert counts[animals[8]] + counts[animals[8] + "s"] > 5 * (counts[animals[57]] + counts[animals[57] + "s"])


def test_zipf_is_deterministic_and_shares_its_words_across_seeds(zipf: GrammarSource) -> None:
    again = GrammarSource(37, {"train": 3000, "val": 60, "probe": 12}, 0, lexicon="zipf")
    assert list(again.generate("val")) == list(zipf.generate("val"))
    other = GrammarSource(37, {"train": 3000, "val": 60, "probe": 12}, 1, lexicon="zipf")
    assert other.tokenizer.tokens == zipf.tokenizer.tokens
    assert list(other.generate("val")) != list(zipf.generate("val"))
    assert zipf.identity() == {"grammar_version": g.GRAMMAR_VERSION, "zipf_lexicon": [lex.ZIPF_SIZE, 1.0]}
    steeper = GrammarSource(37, SIZES, 0, lexicon="zipf", zipf_exponent=1.5)
    assert steeper.identity() != zipf.identity() and list(steeper.generate("val")) != list(zipf.generate("val"))


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        ({"lexicon": "heavy"}, "data.lexicon"),
        ({"lexicon": "zipf", "lexicon_size": 0}, "data.lexicon_size"),
        ({"lexicon": "zipf", "zipf_exponent": -1.0}, "data.zipf_exponent"),
    ],
)
def test_bad_lexicon_settings_name_the_field(keys: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        build(DataConfig, {"kind": "grammar", **keys}, "data")
    assert e.value.field == field

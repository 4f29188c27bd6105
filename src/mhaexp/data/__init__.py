"""Data sources for head-specialization studies: synthetic grammar, induction, text."""

from mhaexp.data.conllu_io import read_conllu, to_conllu, write_conllu
from mhaexp.data.datamodule import LMDataModule, default_cache_dir
from mhaexp.data.grammar import (
    RELATIONS,
    SEED_TEXT,
    Sentence,
    arc_masks,
    generate_corpus,
    generate_sentence,
    seed_sentence,
)
from mhaexp.data.induction import InductionSource
from mhaexp.data.text import TextSource
from mhaexp.data.vocab import ByteTokenizer, HFTokenizer, Tokenizer, WordTokenizer

__all__ = [
    "RELATIONS",
    "SEED_TEXT",
    "ByteTokenizer",
    "HFTokenizer",
    "InductionSource",
    "LMDataModule",
    "Sentence",
    "TextSource",
    "Tokenizer",
    "WordTokenizer",
    "arc_masks",
    "default_cache_dir",
    "generate_corpus",
    "generate_sentence",
    "read_conllu",
    "seed_sentence",
    "to_conllu",
    "write_conllu",
]

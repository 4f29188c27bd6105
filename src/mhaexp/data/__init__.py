"""Data sources for head-specialization studies: synthetic grammar, induction, retrieval, text.

Names load on first use: checking a config (``mhaexp.data.spec``) must not pay for
importing Lightning and ``datasets``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "read_conllu": "conllu_io",
    "to_conllu": "conllu_io",
    "write_conllu": "conllu_io",
    "LMDataModule": "datamodule",
    "default_cache_dir": "cache",
    "DataConfig": "spec",
    "RELATIONS": "grammar",
    "SEED_TEXT": "grammar",
    "Sentence": "lexicon",
    "arc_masks": "grammar",
    "generate_corpus": "grammar",
    "generate_sentence": "grammar",
    "seed_sentence": "grammar",
    "InductionSource": "induction",
    "TextSource": "text",
    "TokenWindows": "text",
    "render_text": "grammar",
    "BPETokenizer": "tokenizers",
    "load_run_tokenizer": "tokenizers",
    "save_tokenizer": "tokenizers",
    "ByteTokenizer": "tokenizers",
    "HFTokenizer": "tokenizers",
    "Tokenizer": "tokenizers",
    "WordTokenizer": "tokenizers",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mhaexp.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mhaexp.data' has no attribute {name!r}")

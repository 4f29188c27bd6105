"""Needle in a haystack: a synthetic retrieval task for retrieval and streaming heads.

A sequence is::

    <bos> hay ... <key> k_a <val> v v v ... hay ... <key> k_b <val> v v v ... hay <query> k_a <val> v v v

* the haystack is filler: random filler tokens, or the words of grammar sentences
  (:mod:`mhaexp.data.grammar`), cut to length;
* ``n_needles`` needles ``<key> k <val> v_1 .. v_n`` with distinct keys sit at random depths; only one
  is asked for, so copying "whatever follows <val>" is not enough: the head must find the right key
  (Wu et al. 2024 insert one needle into natural text; the distractors take the place of the
  text's own content);
* the query at the end repeats the asked key, and the model must then copy that needle's value
  tokens. Those answer positions are the only place a retrieval head can show itself.

Annotation columns, one per position:

* ``needle``: 1 on the value tokens of the asked needle (what must be copied);
* ``answer``: 1 at the queries whose next token is an answer token (the ``<val>`` of the query and
  every answer token but the last), the steps the retrieval score counts under teacher forcing;
* ``depth``: the asked needle's depth, the share of the haystack before it, in percent (same value
  at every position of a sequence), for accuracy by depth.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from mhaexp.data.tokenizers import WordTokenizer
from mhaexp.errors import ConfigError

FILLERS = ("random", "grammar")
KEY, VAL, QUERY = "<key>", "<val>", "<query>"


class RetrievalSource:
    """Feeds the datamodule with needle-in-a-haystack sequences of exactly ``seq_len`` tokens."""

    kind = "retrieval"
    relations: list[str] = []
    annotation_columns: tuple[str, ...] = ("needle", "answer", "depth")

    def __init__(
        self,
        seq_len: int,
        sizes: dict[str, int],
        seed: int,
        filler: str = "random",
        n_filler: int = 64,
        n_keys: int = 32,
        n_values: int = 32,
        value_len: int = 3,
        n_needles: int = 2,
        min_depth: float = 0.0,
        max_depth: float = 1.0,
    ) -> None:
        if filler not in FILLERS:
            raise ConfigError("data.filler", filler, f"one of {', '.join(FILLERS)}")
        for name, value, low in (("n_filler", n_filler, 2), ("n_keys", n_keys, 2), ("n_values", n_values, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"data.{name}", value, f"an int >= {low}")
        if not isinstance(value_len, int) or isinstance(value_len, bool) or value_len < 1:
            raise ConfigError("data.value_len", value_len, "an int >= 1")
        if not isinstance(n_needles, int) or isinstance(n_needles, bool) or not 1 <= n_needles <= n_keys:
            raise ConfigError("data.n_needles", n_needles, f"an int from 1 to n_keys={n_keys}")
        if not 0.0 <= float(min_depth) <= float(max_depth) <= 1.0:
            raise ConfigError("data.min_depth", (min_depth, max_depth), "0 <= min_depth <= max_depth <= 1")
        self.needle_len = 3 + value_len  # <key> k <val> v..v
        self.hay_len = seq_len - 1 - n_needles * self.needle_len - self.needle_len
        if self.hay_len < 1:
            need = 2 + (n_needles + 1) * self.needle_len
            raise ConfigError(
                "data.seq_len", seq_len, f"an int >= {need} for n_needles={n_needles}, value_len={value_len}"
            )
        self.seq_len, self.sizes, self.seed = seq_len, sizes, seed
        self.filler, self.n_needles, self.value_len = filler, n_needles, value_len
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.n_filler, self.n_keys, self.n_values = n_filler, n_keys, n_values
        self.keys = [f"k{i}" for i in range(n_keys)]
        self.values = [f"v{i}" for i in range(n_values)]
        if filler == "grammar":
            from mhaexp.data.lexicon import VOCAB

            hay_words = list(VOCAB)
        else:
            hay_words = [f"f{i}" for i in range(n_filler)]
        self.tokenizer = WordTokenizer([*hay_words, *self.keys, *self.values], extra_specials=(KEY, VAL, QUERY))

    def identity(self) -> dict:
        return {
            "filler": self.filler,
            "n_filler": self.n_filler,
            "n_keys": self.n_keys,
            "n_values": self.n_values,
            "value_len": self.value_len,
            "n_needles": self.n_needles,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
        }

    def _haystack(self, rng: random.Random) -> list[str]:
        if self.filler == "random":
            return [f"f{rng.randrange(self.n_filler)}" for _ in range(self.hay_len)]
        from mhaexp.data.grammar import generate_sentence

        words: list[str] = []
        while len(words) < self.hay_len:
            words += generate_sentence(rng).tokens
        return words[: self.hay_len]

    def sequence(self, rng: random.Random) -> tuple[list[str], int, int]:
        """(words with <bos>, start of the asked needle's values, the asked needle's depth in percent)."""
        hay = self._haystack(rng)
        keys = rng.sample(self.keys, self.n_needles)
        needles = [[KEY, k, VAL, *(rng.choice(self.values) for _ in range(self.value_len))] for k in keys]
        lo, hi = round(self.min_depth * self.hay_len), round(self.max_depth * self.hay_len)
        cuts = sorted(rng.randint(lo, hi) for _ in needles)
        order = list(range(self.n_needles))
        rng.shuffle(order)  # which needle sits at which depth
        asked = rng.randrange(self.n_needles)
        words, prev, value_start, depth = ["<bos>"], 0, -1, 0
        for cut, n in zip(cuts, order, strict=True):
            words += hay[prev:cut]
            if n == asked:
                value_start, depth = len(words) + 3, round(100 * cut / self.hay_len)
            words += needles[n]
            prev = cut
        words += hay[prev:]
        words += [QUERY, *needles[asked][1:]]
        return words, value_start, depth

    def generate(self, split: str) -> Iterator[dict[str, list]]:
        rng = random.Random(f"mhaexp-retrieval/{split}/{self.seed}")
        tok = self.tokenizer
        for _ in range(self.sizes[split]):
            words, start, depth = self.sequence(rng)
            T = len(words)
            needle = [int(start <= i < start + self.value_len) for i in range(T)]
            first_answer = T - self.value_len  # the answer's first token; <val> just before predicts it
            answer = [int(first_answer - 1 <= i < T - 1) for i in range(T)]
            yield {
                "input_ids": [tok.token_to_id(w) for w in words],
                "attention_mask": [True] * T,
                "needle": needle,
                "answer": answer,
                "depth": [depth] * T,
            }

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
* ``marker=false`` drops the ``<val>`` between key and value: the value then follows its key directly,
  and copying it is one induction step (find the earlier copy of the queried key, copy what follows);
  with the marker the head must match the token two back.
* ``distinct_values`` (default) draws every value token of a sequence without replacement, so each
  answer token after the first is also one induction step (the copied value occurs once); with
  repeats, the second and later tokens of a value are ambiguous from their predecessor alone.
* ``n_queries`` > 1 asks for several needles in turn, each query naming its own key (the multi-query
  associative recall of Arora et al. 2023, "Zoology"): more answer steps per sequence, so a small
  model learns the task in far fewer steps.

Annotation columns, one per position:

* ``needle``: 1 on the value tokens of the asked needle (what must be copied);
* ``answer``: at the positions whose next token is an answer token (the ``<val>`` of a query and
  every answer token but the last), the 1-based number of the query; 0 elsewhere. These are the steps
  the retrieval score counts under teacher forcing, and exact match is scored per query;
* ``depth``: at those positions, the depth of the needle being answered (the share of the haystack
  before it, in percent), for accuracy by depth; -1 elsewhere.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mhaexp.batch import LOSS_MASK
from mhaexp.config import boolean, choice, int_at_least, positive_int, probability
from mhaexp.data.source import RowSource, ValidationMetric
from mhaexp.data.tokenizers import WordTokenizer
from mhaexp.errors import ConfigError

if TYPE_CHECKING:  # torch loads in the jobs, not in the process that checks and launches them
    import torch

FILLERS = ("random", "grammar")
# data.loss: "all" trains on every next token, "answer" only on the answer tokens (the multi-query
# associative recall of Arora et al. 2023 takes its loss there): the filler is random, so its loss
# carries no signal, and on 2 CPU cores it drowns the few answer steps.
LOSSES = ("all", "answer")
KEY, VAL, QUERY = "<key>", "<val>", "<query>"


class RetrievalSource(RowSource):
    """Feeds the datamodule with needle-in-a-haystack sequences of exactly ``seq_len`` tokens."""

    kind = "retrieval"
    config_keys = {
        "filler": choice(*FILLERS),
        "n_filler": int_at_least(2),
        "n_keys": int_at_least(2),
        "n_values": int_at_least(2),
        "value_len": positive_int(),
        "n_needles": positive_int(),
        "n_queries": positive_int(),
        "marker": boolean(),
        "distinct_values": boolean(),
        "min_depth": probability(),
        "max_depth": probability(),
        "loss": choice(*LOSSES),
    }
    base_columns: tuple[str, ...] = ("needle", "answer", "depth")

    def __init__(
        self,
        seq_len: int,
        sizes: dict[str, int],
        seed: int,
        filler: str = "random",  # random: filler tokens f0..; grammar: words of grammar sentences, cut to length
        n_filler: int = 64,  # random filler alphabet
        n_keys: int = 32,  # needle keys k0..
        n_values: int = 32,  # needle values v0..
        value_len: int = 3,  # value tokens per needle (what the model must copy)
        n_needles: int = 2,  # needles per sequence; n_queries of them are asked for, the others distract
        n_queries: int = 1,  # queries at the end, each asking for another needle (> 1: multi-query recall)
        marker: bool = True,  # <val> between key and value; false: the value follows its key (one induction step)
        distinct_values: bool = True,  # no value token twice in a sequence (needs n_values >= n_needles * value_len)
        min_depth: float = 0.0,  # where the needles may sit, as shares of the haystack
        max_depth: float = 1.0,
        loss: str = "all",  # all: every next token; answer: only the answer tokens (Arora et al. 2023's MQAR)
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError("data.loss", loss, f"one of {', '.join(LOSSES)}")
        self.loss = loss
        # Training reads the loss mask; every other annotation is for validation and analysis only.
        self.train_columns: tuple[str, ...] = (LOSS_MASK,) if loss == "answer" else ()
        self.annotation_columns = self.base_columns + self.train_columns
        if filler not in FILLERS:
            raise ConfigError("data.filler", filler, f"one of {', '.join(FILLERS)}")
        for name, value, low in (("n_filler", n_filler, 2), ("n_keys", n_keys, 2), ("n_values", n_values, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"data.{name}", value, f"an int >= {low}")
        if not isinstance(value_len, int) or isinstance(value_len, bool) or value_len < 1:
            raise ConfigError("data.value_len", value_len, "an int >= 1")
        if not isinstance(n_needles, int) or isinstance(n_needles, bool) or not 1 <= n_needles <= n_keys:
            raise ConfigError("data.n_needles", n_needles, f"an int from 1 to n_keys={n_keys}")
        if not isinstance(n_queries, int) or isinstance(n_queries, bool) or not 1 <= n_queries <= n_needles:
            raise ConfigError("data.n_queries", n_queries, f"an int from 1 to n_needles={n_needles}")
        if not 0.0 <= float(min_depth) <= float(max_depth) <= 1.0:
            raise ConfigError("data.min_depth", (min_depth, max_depth), "0 <= min_depth <= max_depth <= 1")
        if not isinstance(marker, bool):
            raise ConfigError("data.marker", marker, "true or false")
        self.marker = marker
        if not isinstance(distinct_values, bool):
            raise ConfigError("data.distinct_values", distinct_values, "true or false")
        if distinct_values and n_needles * value_len > n_values:
            raise ConfigError(
                "data.distinct_values",
                distinct_values,
                f"false, or n_values >= n_needles * value_len = {n_needles * value_len} (n_values={n_values})",
            )
        self.distinct_values = distinct_values
        self.value_offset = 3 if marker else 2  # <key> k [<val>] v..v: where the values start
        self.needle_len = self.value_offset + value_len
        # A query "<query> k <val> v..v" is as long as a needle.
        self.hay_len = seq_len - 1 - (n_needles + n_queries) * self.needle_len
        if self.hay_len < 1:
            need = 2 + (n_needles + n_queries) * self.needle_len
            raise ConfigError(
                "data.seq_len",
                seq_len,
                f"an int >= {need} for n_needles={n_needles}, n_queries={n_queries}, value_len={value_len}",
            )
        self.seq_len, self.sizes, self.seed = seq_len, sizes, seed
        self.filler, self.n_needles, self.n_queries, self.value_len = filler, n_needles, n_queries, value_len
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
            "n_queries": self.n_queries,
            "marker": self.marker,
            "distinct_values": self.distinct_values,
            "loss": self.loss,
            "columns": list(self.annotation_columns),
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

    def sequence(self, rng: random.Random) -> tuple[list[str], list[int], list[int]]:
        """(words with <bos>, start of each asked needle's values, each asked needle's depth in percent).

        The lists are in query order: query ``i`` at the end asks for the needle at ``starts[i]``.
        """
        hay = self._haystack(rng)
        keys = rng.sample(self.keys, self.n_needles)
        mark = [VAL] if self.marker else []
        n_vals = self.n_needles * self.value_len
        if self.distinct_values:
            vals = rng.sample(self.values, n_vals)
        else:
            vals = [rng.choice(self.values) for _ in range(n_vals)]
        v = self.value_len
        needles = [[KEY, k, *mark, *vals[i * v : (i + 1) * v]] for i, k in enumerate(keys)]
        lo, hi = round(self.min_depth * self.hay_len), round(self.max_depth * self.hay_len)
        cuts = sorted(rng.randint(lo, hi) for _ in needles)
        order = list(range(self.n_needles))
        rng.shuffle(order)  # which needle sits at which depth
        asked = rng.sample(range(self.n_needles), self.n_queries)
        words, prev = ["<bos>"], 0
        start: dict[int, int] = {}
        depth: dict[int, int] = {}
        for cut, n in zip(cuts, order, strict=True):
            words += hay[prev:cut]
            start[n], depth[n] = len(words) + self.value_offset, round(100 * cut / self.hay_len)
            words += needles[n]
            prev = cut
        words += hay[prev:]
        for n in asked:
            words += [QUERY, *needles[n][1:]]
        return words, [start[n] for n in asked], [depth[n] for n in asked]

    def generate(self, split: str) -> Iterator[dict[str, list]]:
        rng = random.Random(f"mhaexp-retrieval/{split}/{self.seed}")
        tok = self.tokenizer
        v = self.value_len
        for _ in range(self.sizes[split]):
            words, starts, depths = self.sequence(rng)
            T = len(words)
            needle = [0] * T
            answer = [0] * T
            depth = [-1] * T
            for q, (start, d) in enumerate(zip(starts, depths, strict=True)):
                needle[start : start + v] = [1] * v
                # Query q's values are its last v tokens; the <val> before them predicts the first.
                first = T - (self.n_queries - q) * self.needle_len + self.value_offset
                answer[first - 1 : first - 1 + v] = [q + 1] * v
                depth[first - 1 : first - 1 + v] = [d] * v
            row = {
                "input_ids": [tok.token_to_id(w) for w in words],
                "attention_mask": [True] * T,
                "needle": needle,
                "answer": answer,
                "depth": depth,
            }
            if self.train_columns:
                row[LOSS_MASK] = [int(a > 0) for a in answer]
            yield row

    def check_model(self, causal: bool) -> None:
        if self.loss == "answer" and not causal:  # a masked LM has no next-token answer steps to mask
            raise ConfigError(
                "data.loss", "answer", "needs a causal model (model.causal=true); use all with an encoder"
            )

    def validation_metrics(self, causal: bool) -> list[ValidationMetric]:
        return [RetrievalAccuracy()]


# Needle depth (percent of the haystack) bins for accuracy by depth; the last bin includes 100.
DEPTH_BINS: tuple[int, ...] = (0, 20, 40, 60, 80, 100)


def depth_bin_labels() -> list[str]:
    """``["00-20", "20-40", ...]``: one name per bin of :data:`DEPTH_BINS`."""
    return [f"{lo:02d}-{hi:02d}" for lo, hi in zip(DEPTH_BINS[:-1], DEPTH_BINS[1:], strict=True)]


def depth_bin(depth: torch.Tensor) -> torch.Tensor:
    """Bin index of each depth in percent (0..100), so 100 falls in the last bin."""
    import torch

    edges = torch.tensor(DEPTH_BINS[1:-1], device=depth.device)
    return torch.bucketize(depth, edges, right=True)


class RetrievalAccuracy(ValidationMetric):
    """``val/retrieval_acc`` and ``val/retrieval_acc/depth_<lo>-<hi>``: exact match of the copied value, over all
    queries and by the asked needle's depth (:data:`DEPTH_BINS`; a bin no needle fell in is not logged).

    Exact match per query as Wu et al. (2024) score the retrieved answer, under teacher forcing
    (:func:`mhaexp.nn.objectives.answer_exact_match`).
    """

    def sums(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch

        from mhaexp.nn.objectives import answer_depth, answer_exact_match

        hit = answer_exact_match(logits, targets, batch["answer"])  # (B, Q)
        scored = ~hit.isnan()
        bins = depth_bin(answer_depth(batch["depth"], batch["answer"]))[scored]
        n_bins = len(DEPTH_BINS) - 1
        # (hits per depth bin, queries per depth bin)
        return torch.stack(
            [
                torch.bincount(bins, weights=hit[scored], minlength=n_bins),
                torch.bincount(bins, minlength=n_bins).to(hit.dtype),
            ]
        )

    def finish(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        hits, seen = sums
        out = {"val/retrieval_acc": hits.sum() / seen.sum().clamp(min=1)}
        for label, h, c in zip(depth_bin_labels(), hits, seen, strict=True):
            if c > 0:
                out[f"val/retrieval_acc/depth_{label}"] = h / c
        return out


# A needle in running text, for a pretrained model (Wu et al. 2024, Sec. 2: a needle sentence inserted
# into a haystack at some depth, then a question whose answer is copied from it).
NEEDLE_TEXT = " The secret code of the {key} is"
QUESTION_TEXT = " What is the secret code of the {key}? The secret code of the {key} is"


def text_needles(tokenizer: Any, n: int, length: int, seed: int, value_words: int = 6) -> list[dict[str, list[int]]]:
    """``n`` needle-in-a-haystack sequences of exactly ``length`` tokens, written through ``tokenizer``
    (any of :mod:`mhaexp.data.tokenizers`, e.g. a pretrained model's own) from the project's grammar.

    The haystack is grammar sentences (:mod:`mhaexp.data.grammar`); the needle "The secret code of the
    <noun> is <w_1 .. w_k>." sits at depth ``i / (n - 1)`` of it for sample ``i``, and the sequence ends with
    the question and the gold answer ``<w_1 .. w_k>`` (``value_words`` distinct lexicon words, encoded once
    so that the needle and the answer hold the same token ids). Columns as :meth:`RetrievalSource.generate`
    writes them: ``needle`` on the value tokens in the needle, ``answer`` (1) at the positions predicting an
    answer token, ``depth`` there in percent.
    """
    from mhaexp.data.grammar import generate_sentence
    from mhaexp.data.lexicon import VOCAB

    rng = random.Random(f"mhaexp-text-needles/{seed}")
    words = sorted(VOCAB)
    rows = []
    for i in range(n):
        key, *values = rng.sample(words, 1 + value_words)
        value = tokenizer.encode(" " + " ".join(values))
        needle = tokenizer.encode(NEEDLE_TEXT.format(key=key))
        needle_end = tokenizer.encode(".")
        question = tokenizer.encode(QUESTION_TEXT.format(key=key))
        hay_len = length - 1 - len(needle) - 2 * len(value) - len(needle_end) - len(question)
        if hay_len < 1:
            raise ValueError(f"length {length} leaves no room for a haystack around a needle of {len(needle)} tokens")
        hay: list[int] = []
        while len(hay) < hay_len:
            hay += tokenizer.encode(" " + " ".join(generate_sentence(rng).tokens) + ".")
        depth = i / (n - 1) if n > 1 else 0.5
        cut = round(depth * hay_len)
        ids = [tokenizer.bos_id, *hay[:cut], *needle]
        start = len(ids)
        ids += [*value, *needle_end, *hay[cut:hay_len], *question]
        first = len(ids)  # the answer's first token; the position before it predicts it
        ids += value
        T = len(ids)
        needle_col, answer_col, depth_col = [0] * T, [0] * T, [-1] * T
        needle_col[start : start + len(value)] = [1] * len(value)
        answer_col[first - 1 : T - 1] = [1] * len(value)
        depth_col[first - 1 : T - 1] = [round(100 * depth)] * len(value)
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * T,
                "needle": needle_col,
                "answer": answer_col,
                "depth": depth_col,
            }
        )
    return rows

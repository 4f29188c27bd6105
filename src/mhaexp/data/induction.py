"""Repeated random sequences, the induction-head protocol of Olsson et al. (2022).

``repeat``: BOS + x + x, with x a random sequence of L tokens (seq_len = 1 + 2L).
A model can only predict the second half by finding the earlier occurrence of
the current token and copying its successor, which is what induction heads do.
``copy``:   BOS + x + <sep> + x (seq_len = 2 + 2L): the same with a marked boundary.
``random``: BOS + 2L random tokens: the control with nothing to copy.

Within one half the tokens are drawn without replacement while L <= n_tokens,
so every second-half token has exactly one earlier occurrence to attend to.
An odd leftover position (seq_len not matching the formula) is padding.

By default L varies per sequence (``fixed_length: false``), from about half the
longest that fits up to it, the rest padded. With one fixed L the copy is always
exactly L positions back, and a single layer with learned positions solves the
task by attending to that offset, no induction head needed; varying L removes
that shortcut, so only content-based (induction) attention predicts the repeat.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from mhaexp.config import boolean, choice, int_at_least
from mhaexp.data.source import RowSource, ValidationMetric
from mhaexp.data.tokenizers import WordTokenizer
from mhaexp.errors import ConfigError

if TYPE_CHECKING:  # torch loads in the jobs, not in the process that checks and launches them
    import torch

VARIANTS = ("repeat", "random", "copy")
SEP = "<sep>"


def induction_sequence(
    rng: random.Random, variant: str, half_len: int, first_id: int, n_tokens: int, bos_id: int, sep_id: int
) -> list[int]:
    """One unpadded sequence of ids (random tokens are ``first_id .. first_id+n_tokens-1``)."""

    def draw(k: int) -> list[int]:
        if k <= n_tokens:
            return [first_id + t for t in rng.sample(range(n_tokens), k)]
        return [first_id + rng.randrange(n_tokens) for _ in range(k)]

    if variant == "random":
        return [bos_id, *[first_id + rng.randrange(n_tokens) for _ in range(2 * half_len)]]
    x = draw(half_len)
    middle = [sep_id] if variant == "copy" else []
    return [bos_id, *x, *middle, *x]


class InductionSource(RowSource):
    """Feeds the datamodule with token ids ``t0 .. t{n_tokens-1}`` plus ``<sep>``."""

    kind = "induction"
    config_keys = {"variant": choice(*VARIANTS), "n_tokens": int_at_least(2), "fixed_length": boolean()}

    def __init__(
        self,
        seq_len: int,
        sizes: dict[str, int],
        seed: int,
        variant: str = "repeat",  # repeat: BOS x x | random: no repeat (control) | copy: BOS x <sep> x
        n_tokens: int = 30,  # size of the random-token alphabet (specials come on top)
        # false: L varies per sequence (L/2..L), so copying needs content, not a fixed offset
        fixed_length: bool = False,
    ) -> None:
        if variant not in VARIANTS:
            raise ConfigError("data.variant", variant, f"one of {', '.join(VARIANTS)}")
        if not isinstance(n_tokens, int) or n_tokens < 2:
            raise ConfigError("data.n_tokens", n_tokens, "an int >= 2")
        overhead = 2 if variant == "copy" else 1
        if seq_len < overhead + 2:
            raise ConfigError("data.seq_len", seq_len, f"an int >= {overhead + 2} for variant={variant}")
        self.seq_len = seq_len
        self.sizes = sizes
        self.seed = seed
        self.variant = variant
        self.n_tokens = n_tokens
        self.half_len = (seq_len - overhead) // 2
        self.fixed_length = bool(fixed_length)
        self.min_half_len = self.half_len if self.fixed_length else max(2, self.half_len // 2)
        self.tokenizer = WordTokenizer([f"t{i}" for i in range(n_tokens)], extra_specials=(SEP,))
        self.sep_id = self.tokenizer.token_to_id(SEP)
        self.first_id = self.tokenizer.token_to_id("t0")

    @property
    def repeat_offset(self) -> tuple[int, int] | None:
        """(shortest, longest) distance back to a token's earlier copy in the second half (None: no copy)."""
        if self.variant == "random":
            return None
        extra = 1 if self.variant == "copy" else 0
        return self.min_half_len + extra, self.half_len + extra

    def identity(self) -> dict:
        # The annotation columns are part of what a cached dataset holds, so they key the cache too.
        return {
            "variant": self.variant,
            "n_tokens": self.n_tokens,
            "fixed_length": self.fixed_length,
            "columns": list(self.annotation_columns),
        }

    def generate(self, split: str) -> Iterator[dict[str, list]]:
        rng = random.Random(f"mhaexp-induction/{split}/{self.seed}")
        tok = self.tokenizer
        for _ in range(self.sizes[split]):
            half = self.half_len if self.fixed_length else rng.randint(self.min_half_len, self.half_len)
            ids = induction_sequence(rng, self.variant, half, self.first_id, self.n_tokens, tok.bos_id, self.sep_id)
            pad = self.seq_len - len(ids)
            # half[t]: which copy the token at t + 1 belongs to (1 first, 2 second), leaving out each
            # copy's first token, which nothing in the context predicts; 0 elsewhere.
            second = len(ids) - half
            half_of = [0] * self.seq_len
            for t in range(1, len(ids) - 1):
                nxt = t + 1
                if 2 <= nxt < 1 + half:
                    half_of[t] = 1
                elif nxt > second:
                    half_of[t] = 2
            yield {
                "input_ids": ids + [tok.pad_id] * pad,
                "attention_mask": [True] * len(ids) + [False] * pad,
                "half": half_of,
            }

    # ``half`` scores in-context learning at validation: loss on the repeat minus loss on the first copy.
    annotation_columns: tuple[str, ...] = ("half",)

    def validation_metrics(self, causal: bool) -> list[ValidationMetric]:
        # Only a causal model predicts the repeat from the first copy; a masked LM sees both.
        return [InContextGap()] if causal else []


class InContextGap(ValidationMetric):
    """``val/loss_first``, ``val/loss_repeat``, ``val/icl_gap`` = repeat - first (< 0: it learns in context).

    In-context learning (Olsson et al. 2022): the mean loss on the repeat's tokens against the first copy's,
    each copy's first token left out (the ``half`` column).
    """

    def sums(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        from mhaexp.nn.objectives import IGNORE

        token_loss = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none"
        ).view_as(targets)
        half = batch["half"].masked_fill(targets == IGNORE, 0)
        # (loss on the first copy, on the repeat, tokens of the first copy, of the repeat)
        return torch.stack([token_loss[half == k].sum() for k in (1, 2)] + [(half == k).sum() for k in (1, 2)])

    def finish(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        first, repeat = sums[0] / sums[2].clamp(min=1), sums[1] / sums[3].clamp(min=1)
        return {"val/loss_first": first, "val/loss_repeat": repeat, "val/icl_gap": repeat - first}

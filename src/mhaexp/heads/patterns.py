"""Per-head metrics computed from attention patterns.

Every function here is pure: it reads the caller's tensors and never writes to them.

Shared conventions
------------------
* ``patterns``: ``(batch, n_heads, T, T)`` post-softmax self-attention, rows summing to 1 over the keys
  the query can see. Causal models have zeros above the diagonal; padded keys carry 0 weight.
* ``mask``: ``(batch, T)`` bool, True on real tokens; pads sit at the end. ``None`` means "all real".
  Padded queries are left out of every mean and padded keys are never candidates.
* Position 0 holds BOS.
* "Mean over queries" pools every real query of every sequence (each token weighs the same), as
  Voita et al. (2019) do when they count "the fraction of times" a head does something.
* ``causal``: metrics whose definition depends on which keys a query can see take ``causal``.
  ``None`` infers it: the batch is causal when every head puts exactly zero weight above the
  diagonal. A softmax over a bidirectional mask never produces exact zeros, so this only misfires on
  hand-built bidirectional patterns; pass ``causal`` explicitly there.
* Scores come back as one value per head, ``(H,)``, or ``(H, n_offsets)`` / ``(H, n_relations)``.
  Undefined scores (no eligible query or dependent at all) are NaN rather than a made-up 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Direction = Literal["dep2head", "head2dep"]

# Clark et al. (2019) smooth each attention row with 1e-4 of uniform mass before taking logs
# ("smooth to avoid NaNs" in their General_Analysis notebook).
CLARK_ENTROPY_SMOOTHING = 1e-4


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _prepare(patterns: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validate shapes; return float patterns and a bool ``(B, T)`` mask on the patterns' device."""
    if patterns.dim() != 4:
        raise ValueError(f"patterns must be (batch, heads, query, key); got shape {tuple(patterns.shape)}")
    B, _, Q, K = patterns.shape
    if Q != K:
        raise ValueError(f"self-attention patterns must be square over (query, key); got {Q}x{K}")
    if mask is None:
        mask = torch.ones(B, K, dtype=torch.bool, device=patterns.device)
    else:
        if tuple(mask.shape) != (B, K):
            raise ValueError(f"mask must be (batch, T) = {(B, K)}; got {tuple(mask.shape)}")
        mask = mask.to(device=patterns.device, dtype=torch.bool)
    # float() is a no-op for float32 and a copy otherwise: half-precision logs and sums are too coarse.
    patterns = patterns.float()
    if not bool(mask.all()):
        # Pad rows may hold anything (NaN from a softmax over no key, attention to real tokens); zeroing
        # pad rows and columns here, out of place, lets every metric below use plain sums.
        real = mask[:, None, :, None] & mask[:, None, None, :]
        patterns = torch.where(real, patterns, torch.zeros((), dtype=patterns.dtype, device=patterns.device))
    return patterns, mask


def is_causal(patterns: Tensor, mask: Tensor | None = None) -> bool:
    """True when no real query puts any weight on a later real key (the inference behind ``causal=None``)."""
    patterns, _ = _prepare(patterns, mask)
    return _upper_is_zero(patterns)


def _upper_is_zero(patterns: Tensor) -> bool:
    return not bool(torch.triu(patterns, diagonal=1).ne(0).any())


def _resolve_causal(patterns: Tensor, causal: bool | None) -> bool:
    """``causal``, or inferred from already-prepared (pad-zeroed) patterns."""
    return _upper_is_zero(patterns) if causal is None else causal


def _visible(mask: Tensor, causal: bool) -> Tensor:
    """``(B, Q, K)`` bool: key k is a real token the query may attend to."""
    T = mask.shape[-1]
    vis = mask[:, None, :].expand(-1, T, -1)
    if causal:
        vis = vis & torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    return vis


def _safe_ratio(num: Tensor, den: Tensor, empty: float) -> Tensor:
    """``num / den`` with ``empty`` where ``den`` is zero."""
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.full_like(num, empty))


def _argmax_keys(patterns: Tensor) -> Tensor:
    """Most-attended key per query, ``(B, H, Q)``; ties go to the lowest key index (torch's rule)."""
    return patterns.argmax(dim=-1)


def _argmax_other_keys(patterns: Tensor, mask: Tensor) -> Tensor:
    """Most-attended other real key per query, ``(B, H, Q)`` (diagonal and pads excluded, as Clark et al.
    exclude the token itself)."""
    T = patterns.shape[-1]
    excluded = torch.eye(T, dtype=torch.bool, device=patterns.device)[None] | ~mask[:, None, :]  # (B, Q, K)
    # masked_fill returns a new tensor: the caller's patterns are untouched.
    return patterns.float().masked_fill(excluded[:, None], float("-inf")).argmax(dim=-1)


# ----------------------------------------------------------------------------------------------
# Streaming: every metric as a sum and a count
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """A metric before its final division: ``num`` summed over queries (or sequences), ``den`` their count.

    Every score of this module is such a ratio, so a batch split into chunks (sequences in micro-batches)
    gives the score of the whole batch by adding the chunks' ratios: ``sum(parts).value()`` equals the
    score computed on all sequences at once, up to float summation order. ``value`` is ``empty`` where
    ``den`` is 0 (NaN for "undefined", 0 for scores that define it so).

    ``seq_num`` ``(S, *num.shape)`` and ``seq_den`` ``(S, *den.shape)`` are each sequence's share of
    ``num`` and ``den``: adding ratios stacks them, and :meth:`stats` turns them into the standard error
    over sequences. They never enter ``value``, which stays the pooled sums' quotient.
    """

    num: Tensor
    den: Tensor
    empty: float = math.nan
    seq_num: Tensor | None = None
    seq_den: Tensor | None = None

    def __add__(self, other: Ratio) -> Ratio:
        both = self.seq_num is not None and other.seq_num is not None
        return Ratio(
            self.num + other.num,
            self.den + other.den,
            self.empty,
            torch.cat([self.seq_num, other.seq_num]) if both else None,
            torch.cat([self.seq_den, other.seq_den]) if both else None,
        )

    def __radd__(self, other: object) -> Ratio:  # sum() starts from 0
        if other == 0:
            return self
        return NotImplemented

    def value(self) -> Tensor:
        return _safe_ratio(self.num, self.den.to(self.num.dtype), self.empty)

    def stats(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(value, se, n)``: the score, its standard error over sequences, and ``n`` the sequences that
        contribute (``den`` > 0), each shaped like ``num``.

        The score pools queries over sequences, a ratio of two sums whose sequences are the independent
        units. Its standard error is that of a ratio estimator under cluster sampling, by the delta method
        (Cochran 1977, "Sampling Techniques", Sec. 6.4): ``scipy.stats.sem`` of the linearised sequence
        values ``(num_s - value * den_s) / mean(den_s)`` (``scipy.stats.mstats.sem`` over the sequences with
        ``den_s > 0``). For a score that is a plain mean over sequences
        (``den_s`` 1 or 0) that is the usual standard error of the mean. NaN where ``n < 2`` or the
        ratio carries no per-sequence parts.
        """
        return ratio_stats({"": [self]})[""][0]


def ratio_stats(metrics: Mapping[str, Sequence[Ratio]]) -> dict[str, list[tuple[Tensor, Tensor, Tensor]]]:
    """:meth:`Ratio.stats` of every ratio of ``metrics`` (per metric, e.g. one ratio per layer), with one
    scipy call per number of sequences rather than one per ratio: the standard errors' cost is mostly per
    call (scipy's argument handling), not per value, and the analysis finishes dozens of ratios a step."""
    out: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}
    blocks: dict[int, list[tuple[str, int, Tensor, Tensor]]] = {}  # by sequences: (metric, index, z, used)
    for name, ratios in metrics.items():
        out[name] = []
        for i, r in enumerate(ratios):
            value = r.value()
            out[name].append((value, torch.full_like(value, math.nan), torch.full_like(value, math.nan)))
            if r.seq_num is not None and r.seq_den is not None:
                z, used = _linearised(value, r.seq_num, r.seq_den)
                blocks.setdefault(z.shape[0], []).append((name, i, z, used))
    for group in blocks.values():
        z = torch.cat([b[2].reshape(b[2].shape[0], -1) for b in group], dim=1)
        used = torch.cat([b[3].reshape(b[3].shape[0], -1) for b in group], dim=1)
        se, start = _sem(z, used), 0
        for name, i, part, part_used in group:
            cols = part[0].numel()
            value = out[name][i][0]
            n = part_used.sum(0).float()
            err = torch.where(n >= 2, se[start : start + cols].reshape(n.shape), math.nan)
            out[name][i] = (value, err.to(value.device), n.to(value.device))
            start += cols
    return out


def _full_den(seq_num: Tensor, seq_den: Tensor) -> Tensor:
    """``seq_den`` broadcast to ``seq_num``'s shape: a count per sequence is shared by the trailing
    dimensions of ``num`` it lacks (numpy's rule, after the leading sequence dimension)."""
    if seq_den.dim() < seq_num.dim():
        seq_den = seq_den.reshape(seq_den.shape[0], *([1] * (seq_num.dim() - seq_den.dim())), *seq_den.shape[1:])
    return seq_den.expand_as(seq_num)


def _linearised(value: Tensor, seq_num: Tensor, seq_den: Tensor) -> tuple[Tensor, Tensor]:
    """The delta method's per-sequence values of :meth:`Ratio.stats`, ``(num_s - value den_s) / mean(den_s)``
    (NaN where a sequence does not contribute), and where sequences contribute (``den_s > 0``)."""
    num = seq_num.detach().double().cpu()
    den = _full_den(seq_num, seq_den).detach().double().cpu()
    used = den > 0
    mean_den = den.sum(0) / used.sum(0).clamp_min(1)
    z = torch.where(used, (num - value.detach().double().cpu() * den) / mean_den.clamp_min(1e-300), math.nan)
    return z, used


def _sem(z: Tensor, used: Tensor) -> Tensor:
    """``scipy.stats.sem`` over dimension 0 of ``z`` ``(S, C)``, each column over its contributing rows
    (``used``). The masked-array sem when the rows differ by column (per head, per relation): it is
    vectorised over columns, where nan_policy="omit" loops over them (20x slower). Columns with fewer
    than 2 rows come back NaN."""
    from scipy import stats

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if bool(used.all()):  # every sequence counts everywhere (most metrics): the plain, faster sem
            se = stats.sem(z.numpy(), axis=0)
        else:
            se = np.ma.filled(stats.mstats.sem(np.ma.masked_invalid(z.numpy()), axis=0).astype(float), np.nan)
    return torch.as_tensor(np.asarray(se, dtype=float).reshape(z.shape[1])).float()


def _query_mean(values: Tensor, weight: Tensor) -> Ratio:
    """``(B, H, Q)`` values pooled over the queries where ``weight`` ``(B, Q)`` is True (NaN when none)."""
    w = weight.to(values.dtype)
    weighted = values * w[:, None, :]
    return Ratio(weighted.sum(dim=(0, 2)), w.sum(), math.nan, weighted.sum(2), w.sum(1))


class Chunk:
    """Patterns of some sequences, prepared once (float, pads zeroed, causality resolved) with what several
    metrics share (visible keys, row entropies, argmaxes) computed on first use.

    The analysis feeds the ``*_sums`` functions one layer and one micro-batch of sequences at a time and adds
    up their :class:`Ratio` s; the public metrics are the same functions on one chunk holding everything.
    A chunk lives for one layer's micro-batch and its inputs are never modified, so nothing cached on it
    can go stale.
    """

    def __init__(self, patterns: Tensor, mask: Tensor | None = None, causal: bool | None = None) -> None:
        self.patterns, self.mask = _prepare(patterns, mask)
        self.causal = _resolve_causal(self.patterns, causal)

    @cached_property
    def visible(self) -> Tensor:
        return _visible(self.mask, self.causal)

    @cached_property
    def row_entropy(self) -> Tensor:
        """Per-query entropy with Clark et al.'s smoothing, ``(B, H, Q)``."""
        return _row_entropy(self.patterns, self.visible, CLARK_ENTROPY_SMOOTHING)

    @cached_property
    def top(self) -> Tensor:
        return _argmax_keys(self.patterns)

    @cached_property
    def top_other(self) -> Tensor:
        return _argmax_other_keys(self.patterns, self.mask)

    def entropy(self, smoothing: float) -> Tensor:
        if smoothing == CLARK_ENTROPY_SMOOTHING:
            return self.row_entropy
        return _row_entropy(self.patterns, self.visible, smoothing)


# ----------------------------------------------------------------------------------------------
# 1-2. Entropy and confidence
# ----------------------------------------------------------------------------------------------


def _row_entropy(patterns: Tensor, vis: Tensor, smoothing: float) -> Tensor:
    """Per-query entropy in nats, ``(B, H, Q)``, after Clark-style smoothing over the visible keys."""
    n_vis = vis.sum(-1, keepdim=True).clamp_min(1).to(patterns.dtype)  # (B, Q, 1)
    uniform = vis.to(patterns.dtype) / n_vis
    # Smoothing only over visible keys keeps a uniform row exactly uniform and never puts mass on a
    # key the model could not see (Clark et al. had no padding or causal mask, so "all keys" there
    # is "visible keys" here).
    smoothed = (1.0 - smoothing) * patterns + smoothing * uniform[:, None]
    return -torch.special.xlogy(smoothed, smoothed).sum(-1)


def entropy(
    patterns: Tensor,
    mask: Tensor | None = None,
    *,
    smoothing: float = CLARK_ENTROPY_SMOOTHING,
    causal: bool | None = None,
) -> Tensor:
    """Mean attention entropy per head (Clark et al. 2019, "What Does BERT Look At?", Sec. 3.3).

    For each real query q with attention row a over its visible keys V(q)::

        a'_k   = (1 - s) * a_k + s / |V(q)|          (k in V(q); s = ``smoothing``)
        H(q)   = - sum_k a'_k log a'_k                 (nats, 0 log 0 = 0)
        score  = mean of H(q) over all real queries of the batch

    Clark et al. smooth with s = 1e-4 "to avoid NaNs"; s = 0 gives the plain entropy.

    Returns:
        ``(H,)`` mean entropy in nats.
    """
    return entropy_sums(Chunk(patterns, mask, causal), smoothing).value()


def entropy_sums(chunk: Chunk, smoothing: float = CLARK_ENTROPY_SMOOTHING) -> Ratio:
    """:func:`entropy` as a :class:`Ratio`."""
    return _query_mean(chunk.entropy(smoothing), chunk.mask)


def normalized_entropy(
    patterns: Tensor,
    mask: Tensor | None = None,
    *,
    smoothing: float = CLARK_ENTROPY_SMOOTHING,
    causal: bool | None = None,
) -> Tensor:
    """Mean per-query entropy divided by its maximum, log |V(q)| (Clark et al. 2019 entropy, normalized).

    ``H(q) / log |V(q)|`` with ``H(q)`` as in :func:`entropy`, averaged over real queries that see at
    least 2 keys (a query seeing one key has no choice to make, and log 1 = 0). 1 means uniform over
    what the query can see, 0 means one-hot. Normalizing per query makes causal heads (whose early
    queries see few keys) comparable to bidirectional ones.

    Returns:
        ``(H,)`` in [0, 1].
    """
    return normalized_entropy_sums(Chunk(patterns, mask, causal), smoothing).value()


def normalized_entropy_sums(chunk: Chunk, smoothing: float = CLARK_ENTROPY_SMOOTHING) -> Ratio:
    """:func:`normalized_entropy` as a :class:`Ratio`."""
    n_vis = chunk.visible.sum(-1)  # (B, Q)
    eligible = chunk.mask & (n_vis > 1)
    max_entropy = torch.log(n_vis.clamp_min(2).to(chunk.patterns.dtype))  # (B, Q)
    return _query_mean(chunk.entropy(smoothing) / max_entropy[:, None, :], eligible)


def confidence(patterns: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over real queries of the largest attention weight (Voita et al. 2019, "Analyzing Multi-Head
    Self-Attention", Sec. 4: a head's "confidence").

    Returns:
        ``(H,)`` in (0, 1].
    """
    return confidence_sums(Chunk(patterns, mask, causal=False)).value()


def confidence_sums(chunk: Chunk) -> Ratio:
    """:func:`confidence` as a :class:`Ratio`."""
    return _query_mean(chunk.patterns.amax(dim=-1), chunk.mask)


# ----------------------------------------------------------------------------------------------
# 3. Relative-position profile and positional heads
# ----------------------------------------------------------------------------------------------


def relative_position_profile(
    patterns: Tensor,
    mask: Tensor | None = None,
    max_offset: int = 3,
    *,
    causal: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Where each head attends, by offset ``o = key_pos - query_pos`` for ``o`` in ``-k..+k``.

    For offset o, the eligible queries are the real queries whose key ``q + o`` exists, is a real token
    and is visible (so boundary queries that cannot attend there do not dilute the score, and causal
    heads score 0 on future offsets):

    * ``argmax_frac[h, o]``: share of eligible queries whose most-attended key (ties -> lowest index)
      is ``q + o``. Voita et al. (2019, Sec. 5.1) call a head positional when one offset takes the
      argmax for at least 90% of tokens. ``argmax_frac`` at o = -1 is the previous-token score in
      their sense.
    * ``mean_weight[h, o]``: mean attention weight ``a[q, q + o]`` over the eligible queries.

    Offsets no query is eligible for score 0.

    Returns:
        ``(argmax_frac, mean_weight)``, each ``(H, 2k + 1)``; column ``i`` is offset ``i - k``.
    """
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0; got {max_offset}")
    argmax_frac, mean_weight = relative_position_sums(Chunk(patterns, mask, causal), max_offset)
    return argmax_frac.value(), mean_weight.value()


def relative_position_sums(chunk: Chunk, max_offset: int = 3) -> tuple[Ratio, Ratio]:
    """:func:`relative_position_profile` as two :class:`Ratio` s."""
    patterns, mask, causal = chunk.patterns, chunk.mask, chunk.causal
    B, H, T, _ = patterns.shape
    device = patterns.device
    offsets = torch.arange(-max_offset, max_offset + 1, device=device)  # (O,)
    positions = torch.arange(T, device=device)
    keys = positions[:, None] + offsets[None, :]  # (T, O)
    in_range = (keys >= 0) & (keys < T)
    if causal:
        in_range = in_range & (offsets[None, :] <= 0)
    keys_c = keys.clamp(0, T - 1)
    # (B, T, O): real query, key exists, key is a real token.
    eligible = mask[:, :, None] & in_range[None] & mask[:, keys_c]
    weight = eligible.to(patterns.dtype)
    count = weight.sum(dim=(0, 1))  # (O,)

    seq_count = weight.sum(1)  # (B, O)
    at_offset = patterns.gather(-1, keys_c[None, None].expand(B, H, T, -1)) * weight[:, None]  # (B, H, T, O)
    hits = (chunk.top[..., None] == keys_c).to(patterns.dtype) * weight[:, None]  # (B, H, T, O)
    return (
        Ratio(hits.sum(dim=(0, 2)), count, 0.0, hits.sum(2), seq_count),
        Ratio(at_offset.sum(dim=(0, 2)), count, 0.0, at_offset.sum(2), seq_count),
    )


def positional_heads(
    patterns: Tensor,
    mask: Tensor | None = None,
    max_offset: int = 3,
    *,
    threshold: float,
    causal: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Positional heads (Voita et al. 2019, Sec. 5.1): one relative offset takes the argmax in at least
    ``threshold`` (0.9 in the paper, ``analysis.thresholds.positional``) of the queries, using ``argmax_frac`` of
    :func:`relative_position_profile`.

    Returns:
        ``(is_positional (H,) bool, best_offset (H,) long, best_frac (H,))``; ties between offsets go
        to the most negative offset.
    """
    argmax_frac, _ = relative_position_profile(patterns, mask, max_offset, causal=causal)
    offset, frac = best_offset(argmax_frac, max_offset)
    return frac >= threshold, offset, frac


def best_offset(argmax_frac: Tensor, max_offset: int) -> tuple[Tensor, Tensor]:
    """``(best_offset (H,) long, best_frac (H,))`` from ``argmax_frac`` ``(H, 2k + 1)`` of
    :func:`relative_position_profile`: the offset a positional head (:func:`positional_heads`) is tested at."""
    best_frac, best_idx = argmax_frac.max(dim=-1)
    return best_idx - max_offset, best_frac


# ----------------------------------------------------------------------------------------------
# 4. TransformerLens detect_head ("mul") scores
# ----------------------------------------------------------------------------------------------


def _detection_score(
    patterns: Tensor,
    detection: Tensor,
    mask: Tensor,
    exclude_bos: bool,
    exclude_current_token: bool,
) -> Ratio:
    """TransformerLens ``compute_head_attention_similarity_score`` with ``error_measure="mul"``.

    Per sequence ``sum(A' * P) / sum(A')`` over the real query x key area, where A' is A with column 0
    and/or the diagonal zeroed; then the mean over sequences. TransformerLens zeroes those entries in
    the caller's tensor in place; here a multiplicative keep-mask produces a new tensor instead.
    Sequences whose A' sums to 0 (e.g. every query attends only to BOS with ``exclude_bos``) have no
    defined score and are left out of the mean; NaN if that leaves none.
    """
    keep = _kept_area(mask, exclude_bos, exclude_current_token)
    mass = _mass_on(patterns, torch.stack([keep & detection, keep], dim=1))
    return _per_sequence_ratio(mass[..., 0], mass[..., 1])


def _kept_area(mask: Tensor, exclude_bos: bool, exclude_current_token: bool) -> Tensor:
    """``(B, Q, K)`` bool: the real query x key area, without column 0 (``exclude_bos``) and the diagonal
    (``exclude_current_token``): TransformerLens's A'."""
    T = mask.shape[-1]
    keep = mask[:, :, None] & mask[:, None, :]  # (B, Q, K)
    if exclude_bos:
        keep = keep & (torch.arange(T, device=mask.device) != 0)
    if exclude_current_token:
        keep = keep & ~torch.eye(T, dtype=torch.bool, device=mask.device)
    return keep


def _mass_on(patterns: Tensor, areas: Tensor) -> Tensor:
    """Attention mass each head puts on each of n (query, key) areas, ``(B, H, n)``; ``areas`` ``(B, n, Q, K)``
    bool. One batched product over the flattened grid: no pattern-sized temporary, one pass over the
    patterns for all areas."""
    B, H = patterns.shape[:2]
    return torch.bmm(patterns.reshape(B, H, -1), areas.flatten(2).transpose(1, 2).to(patterns.dtype))


def _per_sequence_ratio(num: Tensor, den: Tensor) -> Ratio:
    """``num / den`` per sequence ``(B, H)``, averaged over the sequences where ``den > 0``."""
    defined = (den > 0).to(num.dtype)
    per_sequence = _safe_ratio(num, den, 0.0) * defined
    return Ratio(per_sequence.sum(0), defined.sum(0), math.nan, per_sequence, defined)


def _earlier(n: int, device: torch.device) -> Tensor:
    """``(Q, K)`` bool, key strictly before the query."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril(diagonal=-1)


def _check_tokens(tokens: Tensor, patterns: Tensor) -> Tensor:
    expected = (patterns.shape[0], patterns.shape[-1])
    if tuple(tokens.shape) != expected:
        raise ValueError(f"tokens must be (batch, T) = {expected}; got {tuple(tokens.shape)}")
    return tokens.to(patterns.device)


def previous_token_score(
    patterns: Tensor,
    mask: Tensor | None = None,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> Tensor:
    """TransformerLens ``detect_head(..., "previous_token_head", error_measure="mul")``.

    Detection pattern ``P[q, k] = 1`` iff ``k = q - 1`` (the sub-diagonal). Score per sequence is
    ``sum(A' * P) / sum(A')`` over real queries and keys (A' = A with column 0 zeroed when
    ``exclude_bos``, diagonal zeroed when ``exclude_current_token``), averaged over the batch. The
    caller's tensor is not modified. Same definition for causal and bidirectional patterns; attention
    to later keys just counts in the denominator.

    Returns:
        ``(H,)`` in [0, 1].
    """
    return previous_token_sums(Chunk(patterns, mask, causal=False), exclude_bos, exclude_current_token).value()


def previous_token_sums(chunk: Chunk, exclude_bos: bool = False, exclude_current_token: bool = False) -> Ratio:
    """:func:`previous_token_score` as a :class:`Ratio` (over sequences)."""
    T = chunk.patterns.shape[-1]
    detection = torch.diag(torch.ones(T - 1, dtype=torch.bool, device=chunk.patterns.device), -1)
    return _detection_score(chunk.patterns, detection[None], chunk.mask, exclude_bos, exclude_current_token)


def _duplicate_pattern(tokens: Tensor) -> Tensor:
    """``(B, Q, K)`` bool: key k < q holds the same token as query q (TransformerLens duplicate head)."""
    same = tokens[:, :, None] == tokens[:, None, :]
    return same & _earlier(tokens.shape[-1], tokens.device)


def duplicate_token_score(
    patterns: Tensor,
    tokens: Tensor,
    mask: Tensor | None = None,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> Tensor:
    """TransformerLens ``detect_head(..., "duplicate_token_head", error_measure="mul")``.

    Detection pattern ``P[q, k] = 1`` iff ``k < q`` and ``tokens[k] == tokens[q]`` (earlier copies of the
    query's token). Scoring as in :func:`previous_token_score`. For bidirectional patterns the pattern
    keeps the "earlier positions" definition (TransformerLens builds it with ``tril``); attention to a
    later copy is not counted as a hit.

    Returns:
        ``(H,)`` in [0, 1].
    """
    return duplicate_token_sums(Chunk(patterns, mask, causal=False), tokens, exclude_bos, exclude_current_token).value()


def duplicate_token_sums(
    chunk: Chunk, tokens: Tensor, exclude_bos: bool = False, exclude_current_token: bool = False
) -> Ratio:
    """:func:`duplicate_token_score` as a :class:`Ratio` (over sequences)."""
    return repeat_sums(chunk, tokens, exclude_bos, exclude_current_token)["duplicate"]


def induction_score(
    patterns: Tensor,
    tokens: Tensor,
    mask: Tensor | None = None,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> Tensor:
    """TransformerLens ``detect_head(..., "induction_head", error_measure="mul")`` (Olsson et al. 2022
    prefix matching: attend to the token right after an earlier copy of the current token).

    Detection pattern ``P[q, j + 1] = 1`` iff ``j < q`` and ``tokens[j] == tokens[q]``: the duplicate
    pattern shifted one column right, so ``j + 1 <= q``. As in TransformerLens, ``j + 1 = q`` (the
    current token, when the previous token equals it) is included. Scoring as in
    :func:`previous_token_score`; bidirectional patterns keep the "earlier copy" definition.

    Returns:
        ``(H,)`` in [0, 1].
    """
    return induction_sums(Chunk(patterns, mask, causal=False), tokens, exclude_bos, exclude_current_token).value()


def _induction_pattern(tokens: Tensor) -> Tensor:
    """``(B, Q, K)`` bool: key j + 1 follows an earlier copy j < q of the query's token."""
    # Column j + 1 takes column j; column 0 has no left neighbour (TransformerLens zero-fills it).
    return F.pad(_duplicate_pattern(tokens)[:, :, :-1], (1, 0), value=False)


def induction_sums(
    chunk: Chunk, tokens: Tensor, exclude_bos: bool = False, exclude_current_token: bool = False
) -> Ratio:
    """:func:`induction_score` as a :class:`Ratio` (over sequences)."""
    return repeat_sums(chunk, tokens, exclude_bos, exclude_current_token)["induction"]


def _mass_ratio(mass: Tensor, eligible: Tensor) -> Ratio:
    """Attention mass ``(B, H)`` summed over sequences, over the eligible queries ``(B, Q)``."""
    return Ratio(mass.sum(0), eligible.sum(), math.nan, mass, eligible.sum(1))


def repeat_sums(
    chunk: Chunk, tokens: Tensor, exclude_bos: bool = False, exclude_current_token: bool = False
) -> dict[str, Ratio]:
    """``induction``, ``duplicate`` (:func:`induction_score`, :func:`duplicate_token_score`),
    ``prefix_matching`` and ``duplicate_matching`` (:func:`prefix_matching_score`,
    :func:`duplicate_matching_score`) of one chunk, from one pass over its patterns: the one
    implementation of the four. The exclusions (TransformerLens's options) shrink the area all four see.

    The matching scores average the attention on the targets over the real queries that have at least
    one target key: unlike the TransformerLens ratio, queries with nothing to find (the first half of a
    repeated sequence) are left out instead of counting as misses, so a perfect head scores 1, not ~0.5.
    A query without targets puts no mass on them: summing over all queries is summing over the eligible.
    """
    tokens = _check_tokens(tokens, chunk.patterns)
    real = _kept_area(chunk.mask, exclude_bos, exclude_current_token)
    induction, duplicate = _induction_pattern(tokens) & real, _duplicate_pattern(tokens) & real
    mass = _mass_on(chunk.patterns, torch.stack([induction, duplicate, real], dim=1))
    dtype = chunk.patterns.dtype
    return {
        "induction": _per_sequence_ratio(mass[..., 0], mass[..., 2]),
        "duplicate": _per_sequence_ratio(mass[..., 1], mass[..., 2]),
        "prefix_matching": _mass_ratio(mass[..., 0], induction.any(-1).to(dtype)),
        "duplicate_matching": _mass_ratio(mass[..., 1], duplicate.any(-1).to(dtype)),
    }


def prefix_matching_score(patterns: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
    """Olsson et al. (2022) prefix-matching score: the attention a query pays to the tokens right after
    earlier copies of its own token, averaged over the queries that have such an earlier copy (on
    BOS + x + x: the second repeat). Same targets as :func:`induction_score`; that score divides by
    all queries instead, so on BOS + x + x a perfect induction head gets L / (2L + 1) < 0.5 there and
    1.0 here. Olsson et al. call heads above 0.5 of this score induction heads.

    Returns:
        ``(H,)`` in [0, 1]; NaN if no query has an earlier copy.
    """
    return prefix_matching_sums(Chunk(patterns, mask, causal=False), tokens).value()


def prefix_matching_sums(chunk: Chunk, tokens: Tensor) -> Ratio:
    """:func:`prefix_matching_score` as a :class:`Ratio`."""
    return repeat_sums(chunk, tokens)["prefix_matching"]


def duplicate_matching_score(patterns: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
    """Attention a query pays to earlier copies of its own token, averaged over the queries that have
    one: :func:`duplicate_token_score`'s targets with :func:`prefix_matching_score`'s averaging.

    Returns:
        ``(H,)`` in [0, 1]; NaN if no query has an earlier copy.
    """
    return duplicate_matching_sums(Chunk(patterns, mask, causal=False), tokens).value()


def duplicate_matching_sums(chunk: Chunk, tokens: Tensor) -> Ratio:
    """:func:`duplicate_matching_score` as a :class:`Ratio`."""
    return repeat_sums(chunk, tokens)["duplicate_matching"]


# ----------------------------------------------------------------------------------------------
# 5. Attention sinks
# ----------------------------------------------------------------------------------------------


def _first_token_attention(patterns: Tensor) -> Tensor:
    return patterns[..., 0]  # (B, H, Q)


def sink_score(patterns: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean attention paid to position 0 (BOS) over all real queries, query 0 included.

    This is Gu et al. (2024, "When Attention Sink Emerges in Language Models", Sec. 3) importance
    score of the first token, ``alpha_1 = mean_t A[t, 1]``, pooled over the batch's queries.

    Returns:
        ``(H,)`` in [0, 1].
    """
    return sink_sums(Chunk(patterns, mask, causal=False)).value()


def sink_sums(chunk: Chunk) -> Ratio:
    """:func:`sink_score` as a :class:`Ratio`."""
    return _query_mean(_first_token_attention(chunk.patterns), chunk.mask)


def token_class_sums(chunk: Chunk, keys: Tensor) -> Ratio:
    """Attention a head pays to a class of tokens, averaged over real queries (Clark et al. 2019, Sec. 3.2,
    Fig. 2: the average attention to [CLS], to [SEP], and to periods and commas, per head).

    ``keys`` ``(B, T)`` bool marks the class's positions (every [SEP] of a sequence, say); a query's share
    is the sum of its attention on them, so two [SEP]s count together, as in Clark et al.'s figure.
    Returns a :class:`Ratio` of ``(H,)`` values in [0, 1].
    """
    on_class = (chunk.patterns * keys.to(chunk.patterns.dtype)[:, None, None, :]).sum(-1)  # (B, H, Q)
    return _query_mean(on_class, chunk.mask)


def sink_rate(patterns: Tensor, mask: Tensor | None = None, *, eps: float) -> Tensor:
    """Share of sequences where the first token is a sink (Gu et al. 2024, Sec. 3; their eps is 0.3,
    ``analysis.thresholds.sink``).

    Per sequence ``alpha = mean over real queries of A[q, 0]``; the head sinks in that sequence when
    ``alpha > eps``. Gu et al. average the indicator over heads, layers and samples; here it is kept per
    head and averaged over the batch only.

    Returns:
        ``(H,)`` in [0, 1].
    """
    return sink_rate_sums(Chunk(patterns, mask, causal=False), eps).value()


def sink_rate_sums(chunk: Chunk, eps: float) -> Ratio:
    """:func:`sink_rate` as a :class:`Ratio` (over sequences)."""
    patterns, mask = chunk.patterns, chunk.mask
    w = mask.to(patterns.dtype)
    alpha = (_first_token_attention(patterns) * w[:, None]).sum(-1) / w.sum(-1).clamp_min(1)[:, None]  # (B, H)
    real = mask.any(-1)
    sinks = ((alpha > eps) & real[:, None]).to(patterns.dtype)
    return Ratio(sinks.sum(0), real.to(patterns.dtype).sum(), math.nan, sinks, real.to(patterns.dtype))


# ----------------------------------------------------------------------------------------------
# 6. Syntax: dependency and coreference accuracy
# ----------------------------------------------------------------------------------------------


def _check_annotation(name: str, ann: Tensor, mask: Tensor) -> Tensor:
    if tuple(ann.shape) != tuple(mask.shape):
        raise ValueError(f"{name} must be (batch, T) = {tuple(mask.shape)}; got {tuple(ann.shape)}")
    return ann.to(device=mask.device, dtype=torch.long)


def _relation_hits(
    pred: Tensor,
    heads: Tensor,
    rels: Tensor,
    n_relations: int,
    mask: Tensor,
    direction: Direction,
) -> tuple[Tensor, Tensor]:
    """Count correct predictions per relation.

    ``pred`` is ``(B, P, T)``: the key each query points to (-1 for "no prediction"), for P predictors.
    Returns the counts per sequence, ``(hits (B, P, R), totals (B, R))`` (integers, so their sums over
    sequences are exact).

    * dep2head: one instance per real dependent d with a relation and a real gold head; hit when
      ``pred[d] == heads[d]``.
    * head2dep: one instance per (real token g, relation r) where g has at least one dependent of
      relation r; hit when ``pred[g]`` is any one of those dependents.
    """
    B, T = heads.shape
    heads_c = heads.clamp(0, T - 1)
    # An annotated arc needs a real dependent, a relation in range, and a real gold head.
    arc = mask & (rels >= 0) & (rels < n_relations) & (heads >= 0) & (heads < T) & mask.gather(1, heads_c)
    rel_onehot = F.one_hot(rels.clamp(0, n_relations - 1), n_relations).to(torch.float32) * arc[..., None]
    pred_c = pred.clamp(0, T - 1)
    has_pred = (pred >= 0) & (pred < T)
    if direction == "dep2head":
        targets = torch.stack([torch.where(rels == r, heads, -1) for r in range(n_relations)])  # (R, B, T)
        seq_hits, seq_totals = _dep2head_counts(pred, targets, mask)
        return seq_hits.permute(1, 2, 0).float(), seq_totals.T.float()
    if direction == "head2dep":
        # governs[b, g, d]: d is an annotated dependent of g.
        governs = (F.one_hot(heads_c, T).transpose(1, 2) & arc[:, None, :]).to(torch.float32)  # (B, G, D)
        totals = (torch.bmm(governs, rel_onehot) > 0).to(torch.float32).sum(dim=1)
        pointed = torch.arange(T, device=heads.device)
        batch_idx = torch.arange(B, device=heads.device)[:, None, None]
        # Does the predicted key depend on the query? If so, the hit goes to that arc's relation.
        lands_on_dep = governs[batch_idx, pointed[None, None, :], pred_c] * has_pred  # (B, P, G)
        pred_rel = rel_onehot[batch_idx, pred_c]  # (B, P, G, R)
        return torch.einsum("bpg,bpgr->bpr", lands_on_dep, pred_rel), totals
    raise ValueError(f"direction must be 'dep2head' or 'head2dep'; got {direction!r}")


def dependency_accuracy(
    patterns: Tensor,
    heads: Tensor,
    rels: Tensor,
    n_relations: int,
    mask: Tensor | None = None,
    direction: Direction = "dep2head",
) -> Tensor:
    """Per-relation accuracy of a head's argmax as a dependency predictor (Clark et al. 2019, Sec. 4.2;
    Voita et al. 2019, Sec. 5.2).

    Each query's prediction is its most-attended key after excluding itself (the diagonal is masked
    before the argmax, as Clark et al. do) and padded keys.

    * ``"dep2head"``: query = dependent d; correct when the prediction is d's gold head. Accuracy for
      relation r = correct dependents of r / dependents of r.
    * ``"head2dep"``: query = head token g; one instance per (g, r) with g governing at least one
      dependent of relation r; correct when the prediction is any of those dependents (Voita et al.'s
      "or the reverse"). Clark et al.'s notebook scores this direction differently, per dependent,
      with the argmax over the transposed map (which query attends most to the dependent).

    Args:
        heads: ``(B, T)`` long, gold head position of each token, -1 for none (root, BOS, pads).
        rels: ``(B, T)`` long, relation id of the arc into each token, -1 for none.
        n_relations: number of relation ids.

    Returns:
        ``(H, n_relations)``; NaN for relations with no instance in the batch. For causal models a
        dependent whose head comes later (or, head2dep, a head whose dependent comes later) can never
        be hit: the query cannot see it.
    """
    return dependency_sums(Chunk(patterns, mask, causal=False), heads, rels, n_relations, direction).value()


def dependency_sums(
    chunk: Chunk, heads: Tensor, rels: Tensor, n_relations: int, direction: Direction = "dep2head"
) -> Ratio:
    """:func:`dependency_accuracy` as a :class:`Ratio` ``(H, R)``."""
    heads = _check_annotation("heads", heads, chunk.mask)
    rels = _check_annotation("rels", rels, chunk.mask)
    hits, totals = _relation_hits(chunk.top_other, heads, rels, n_relations, chunk.mask, direction)
    return Ratio(hits.sum(0), totals.sum(0), math.nan, hits, totals)


def offset_baseline(
    heads: Tensor,
    rels: Tensor,
    n_relations: int,
    mask: Tensor | None = None,
    max_offset: int = 3,
    direction: Direction = "dep2head",
    *,
    causal: bool = False,
) -> tuple[Tensor, Tensor]:
    """Best fixed-offset predictor per relation: the baseline of Clark et al. (2019, Table 1) and Voita
    et al. (2019, Sec. 5.2, "the most frequent relative position for each dependency type").

    For each offset o in ``-k..k`` without 0, the predictor points query q at ``q + o`` (a miss when
    that is outside the sequence or a pad; Clark et al. clamp to the sentence edge instead, which only
    matters for the first/last words). Accuracy is scored exactly as in :func:`dependency_accuracy`.
    With ``causal=True`` only negative offsets compete, since a causal head cannot attend forward.

    Returns:
        ``(accuracy (R,), best_offset (R,) long)``; ties go to the most negative offset. NaN accuracy
        (and offset 0) for relations with no instance.
    """
    if mask is None:
        mask = torch.ones_like(heads, dtype=torch.bool)
    mask = mask.to(device=heads.device, dtype=torch.bool)
    heads = _check_annotation("heads", heads, mask)
    rels = _check_annotation("rels", rels, mask)
    B, T = heads.shape
    offsets = [o for o in range(-max_offset, (0 if causal else max_offset) + 1) if o != 0]
    if not offsets:
        raise ValueError(f"max_offset must be >= 1; got {max_offset}")
    positions = torch.arange(T, device=heads.device)
    preds = []
    for o in offsets:
        target = positions + o
        ok = (target >= 0) & (target < T)
        ok = ok[None] & mask.gather(1, target.clamp(0, T - 1)[None].expand(B, -1))
        preds.append(torch.where(ok, target[None], torch.full_like(ok, -1, dtype=torch.long)))
    hits, totals = _relation_hits(torch.stack(preds, dim=1), heads, rels, n_relations, mask, direction)
    hits, totals = hits.sum(0), totals.sum(0)
    acc = _safe_ratio(hits, totals, float("nan"))  # (O, R)
    best_idx = acc.nan_to_num(-1.0).argmax(dim=0)
    best = acc.gather(0, best_idx[None])[0]
    offset_values = torch.tensor(offsets, device=heads.device)
    return best, torch.where(totals > 0, offset_values[best_idx], torch.zeros_like(best_idx))


def syntactic_heads(
    patterns: Tensor,
    heads: Tensor,
    rels: Tensor,
    n_relations: int,
    mask: Tensor | None = None,
    direction: Direction = "dep2head",
    max_offset: int = 3,
    *,
    margin: float,
    causal: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Syntactic heads (Voita et al. 2019, Sec. 5.2): accuracy on relation r beats the best fixed-offset
    baseline by at least ``margin`` (10 points in the paper, ``analysis.thresholds.syntactic_margin``).

    Returns:
        ``(is_syntactic (H, R) bool, accuracy - baseline (H, R))``; relations without instances are
        NaN and never syntactic.
    """
    accuracy = dependency_accuracy(patterns, heads, rels, n_relations, mask, direction)
    causal = is_causal(patterns, mask) if causal is None else causal
    baseline, _ = offset_baseline(heads, rels, n_relations, mask, max_offset, direction, causal=causal)
    gain = accuracy - baseline.to(accuracy.device)
    return gain >= margin, gain


def antecedent_accuracy(patterns: Tensor, antecedent: Tensor, mask: Tensor | None = None) -> Tensor:
    """Coreference accuracy (Clark et al. 2019, Sec. 4.3): share of mentions whose most-attended other
    token is their antecedent.

    ``antecedent`` is ``(B, T)`` long, the antecedent position of each mention (-1 for tokens that
    are not anaphoric mentions). This is :func:`dependency_accuracy` with a single relation and
    ``heads = antecedent``; :func:`offset_baseline` with the same mapping gives a fixed-offset baseline.

    Returns:
        ``(H,)``; NaN when the batch has no mention.
    """
    return antecedent_sums(Chunk(patterns, mask, causal=False), antecedent).value()


def antecedent_sums(chunk: Chunk, antecedent: Tensor) -> Ratio:
    """:func:`antecedent_accuracy` as a :class:`Ratio` ``(H,)`` (over mentions)."""
    antecedent = _check_annotation("antecedent", antecedent, chunk.mask)
    r = dep2head_sums(chunk.top_other, antecedent[None], chunk.mask)
    return Ratio(r.num[:, 0], r.den[0], r.empty, r.seq_num[..., 0], r.seq_den[:, 0])


# ----------------------------------------------------------------------------------------------
# 7. Rare tokens
# ----------------------------------------------------------------------------------------------


# Voita et al. 2019, Sec. 5.3: sentences whose rarest token is among the 500 most frequent of their 32k BPE
# vocabulary are not scored for the rare-words head; as a share of the vocabulary, 500 / 32000.
FREQUENT_SHARE = 500 / 32000


def rare_token_score(
    patterns: Tensor,
    tokens: Tensor,
    token_freq: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool | None = None,
) -> Tensor:
    """Share of queries whose most-attended key holds the rarest token (Voita et al. 2019, Sec. 5.3).

    Rarity is the training frequency ``token_freq[token]``. Candidates are the real, non-BOS keys the
    query can see; for bidirectional patterns that is Voita et al.'s "least frequent token in the
    sentence", for causal ones the rarest token of the visible prefix (the rest of the sentence is out
    of the head's reach). Every key tied for the minimum frequency counts as the rarest. Queries with
    no candidate (query 0 of a causal model) are left out. Ties in the argmax go to the lowest index.
    As Voita et al. (Sec. 5.3: 66% on the rarest token), only sentences whose rarest real token lies
    outside the most frequent tokens are scored: their 500 of a 32k BPE vocabulary, here the same share
    of ``token_freq``'s vocabulary (:data:`FREQUENT_SHARE`, at least one token); NaN when no sentence is.

    Returns:
        ``(H,)`` in [0, 1].
    """
    return rare_token_sums(Chunk(patterns, mask, causal), tokens, token_freq).value()


def rare_token_sums(chunk: Chunk, tokens: Tensor, token_freq: Tensor) -> Ratio:
    """:func:`rare_token_score` as a :class:`Ratio`."""
    patterns, mask, causal = chunk.patterns, chunk.mask, chunk.causal
    tokens = _check_tokens(tokens, patterns)
    T = patterns.shape[-1]
    # Pad ids may lie outside the vocabulary (e.g. -100); pads are never candidates, so clamp to look up.
    vocab_freq = token_freq.to(device=patterns.device, dtype=torch.float64)
    freq = vocab_freq[tokens.clamp(0, vocab_freq.numel() - 1)]
    not_bos = torch.arange(T, device=patterns.device) != 0
    candidate = _visible(mask & not_bos, causal)  # (B, Q, K)
    cand_freq = torch.where(candidate, freq[:, None, :], torch.full_like(candidate, math.inf, dtype=torch.float64))
    rarest = candidate & (cand_freq == cand_freq.amin(dim=-1, keepdim=True))
    # The sentence's rarest token must lie outside the most frequent ones (a frequency below the k-th largest).
    frequent_floor = vocab_freq.topk(max(1, round(FREQUENT_SHARE * vocab_freq.numel()))).values[-1]
    sentence_rarest = torch.where(mask & not_bos, freq, math.inf).amin(dim=-1)  # (B,)
    eligible = mask & candidate.any(-1) & (sentence_rarest < frequent_floor)[:, None]
    hit = rarest[:, None].expand(-1, patterns.shape[1], -1, -1).gather(-1, chunk.top[..., None])[..., 0]
    return _query_mean(hit.to(patterns.dtype), eligible)


# ----------------------------------------------------------------------------------------------
# 9. Head importance normalization
# ----------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# Dependency arcs scored for several relations at once, and their baselines (used by the analysis)
# ------------------------------------------------------------------------------------------------


def predictive_arcs(target: Tensor) -> Tensor:
    """Arcs ``d -> target[d]`` re-anchored at the query that predicts the later of their two words.

    A causal LM needs the earlier word of an arc when it predicts the later one, i.e. at query
    ``later - 1`` ("the cats that sat on the mat were": the verb's number is decided at "mat", by
    looking at "cats"). Returns ``(B, T)``: at query ``q`` the position of the earlier word of an arc
    whose later word is ``q + 1``, else -1. Arcs whose earlier word is ``q`` itself (adjacent words)
    are dropped: a head attending to its own query is no evidence of anything (the diagonal is
    excluded from the argmax). One arc per query: with several, the last one written wins.
    """
    B, T = target.shape
    pos = torch.arange(T, device=target.device).expand(B, T)
    earlier, later = torch.minimum(pos, target), torch.maximum(pos, target)
    query = later - 1
    valid = (target >= 0) & (earlier < query)
    out = torch.full_like(target, -1)
    b, d = valid.nonzero(as_tuple=True)
    out[b, query[b, d]] = earlier[b, d]
    return out


def derived_amod_pred(heads: Tensor, rels: Tensor, relations: Sequence[str]) -> Tensor | None:
    """``amod:pred`` arcs (:func:`mhaexp.data.grammar.arc_masks`): predicate adjective -> the subject of
    its copula ("fluffy" -> "cat" in "the cat ... was fluffy"), the noun <-> adjective class agreement
    across the sentence. ``(B, T)`` subject position per adjective, -1 elsewhere; None without the
    relations it derives from."""
    if "acomp" not in relations or "nsubj" not in relations:
        return None
    B, T = heads.shape
    acomp = (rels == relations.index("acomp")) & (heads >= 0)
    nsubj = (rels == relations.index("nsubj")) & (heads >= 0)
    subject_of = torch.full((B, T), -1, dtype=torch.long)
    b, s = nsubj.nonzero(as_tuple=True)
    subject_of[b, heads[b, s]] = s
    out = torch.full((B, T), -1, dtype=torch.long)
    b, j = acomp.nonzero(as_tuple=True)
    out[b, j] = subject_of[b, heads[b, j]]
    return out


def argmax_keys(patterns: Tensor, mask: Tensor) -> Tensor:
    """Each query's most-attended other real key, ``(B, H, T)``: the prediction
    :func:`dependency_accuracy` scores (diagonal and pads excluded)."""
    return _argmax_other_keys(patterns, mask)


def dep2head_accuracy(pred: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """:func:`dependency_accuracy` with ``direction="dep2head"`` for R relations
    at once, each with its own target array (so arcs of different relations may share a query).

    Args:
        pred: ``(B, H, T)`` from :func:`argmax_keys`.
        targets: ``(R, B, T)``, the gold key of each query per relation, -1 for none.

    Returns:
        ``(H, R)``; NaN for relations without an arc.
    """
    return dep2head_sums(pred, targets, mask).value()


def _dep2head_counts(pred: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per sequence, the queries whose prediction ``pred`` ``(B, P, T)`` is their gold key ``targets``
    ``(R, B, T)`` (-1: none) and the queries with a gold key, among real queries with a real gold key:
    ``(hits (R, B, P), totals (R, B))``, integers. The one count behind every dep2head accuracy."""
    T = targets.shape[-1]
    safe = targets.clamp(0, T - 1)
    key_real = mask[None].expand_as(targets).gather(2, safe)
    valid = (targets >= 0) & (targets < T) & mask[None] & key_real  # (R, B, T)
    return ((pred[None] == safe[:, :, None, :]) & valid[:, :, None, :]).sum(dim=3), valid.sum(dim=2)


def dep2head_sums(pred: Tensor, targets: Tensor, mask: Tensor) -> Ratio:
    """:func:`dep2head_accuracy` as a :class:`Ratio` ``(H, R)``."""
    seq_hits, seq_totals = _dep2head_counts(pred, targets, mask)
    # Integer counts: summing the per-sequence counts gives exactly the pooled ones.
    hits, totals = seq_hits.sum(1), seq_totals.sum(1)
    return Ratio(hits.T.float(), totals.float(), math.nan, seq_hits.permute(1, 2, 0).float(), seq_totals.T.float())


def relation_sums(chunk: Chunk, targets: Tensor, directions: Sequence[str]) -> Ratio:
    """Per-relation accuracy ``(H, R)`` as a :class:`Ratio`: :func:`dep2head_sums` for the relations scored
    from the dependent, :func:`dependency_sums` ``head2dep`` for those scored from the head (``directions``
    per relation). ``targets`` ``(R, B, T)``: each query's gold key per relation (-1 for none).

    ``transposed`` relations are Clark et al.'s "head<-dep" (Syntax_Analysis.ipynb, ``attn_head_predictor``
    with ``mode="transpose"``): dep2head on the transposed map, so each dependent's prediction is the real
    word, itself excluded, that puts the most attention on it."""
    acc = dep2head_sums(chunk.top_other, targets, chunk.mask)
    others = {r: d for r, d in enumerate(directions) if d in ("head2dep", "transposed")}
    if not others:
        return acc
    num, den = acc.num.clone(), acc.den.clone()
    seq_num, seq_den = acc.seq_num.clone(), acc.seq_den.clone()
    flipped = None
    for r, d in others.items():
        if d == "head2dep":
            one = torch.where(targets[r] >= 0, 0, -1)
            part = dependency_sums(chunk, targets[r], one, 1, "head2dep")
        else:
            if flipped is None:
                flipped = Chunk(chunk.patterns.transpose(-1, -2), chunk.mask, chunk.causal).top_other
            part = dep2head_sums(flipped, targets[r : r + 1], chunk.mask)
        num[:, r], den[r] = part.num[:, 0], part.den[0]
        seq_num[:, :, r], seq_den[:, r] = part.seq_num[..., 0], part.seq_den[:, 0]
    return Ratio(num, den, acc.empty, seq_num, seq_den)


def position_baseline(targets: Tensor, mask: Tensor, causal: bool) -> Tensor:
    """Best fixed-position predictor per relation: every query points at absolute position k (a key it
    can see), the best k per relation. ``targets`` ``(R, B, T)`` as in :func:`dep2head_accuracy`.

    The fixed-offset baseline of Voita et al. (2019) misses a structure this grammar has: the main
    subject always sits at position 2 or 3 ("<bos> the [adj] cat"), so a head that merely looks at the
    start of the sentence tracks "the subject" at any distance. Returns ``(R,)``, NaN without arcs.
    """
    R, B, T = targets.shape
    safe = targets.clamp(0, T - 1)
    valid = (targets >= 0) & (targets < T) & mask[None] & mask[None].expand_as(targets).gather(2, safe)
    if causal:  # a fixed position can only be predicted by queries that see it
        valid_hit = valid & (safe < torch.arange(T, device=targets.device))
    else:
        valid_hit = valid
    # (R, T): hits of position k, counted by scatter (a one-hot would be R x B x T x T int64, 4 GB at T = 1024).
    hits = torch.zeros(R, T, device=targets.device).scatter_add_(1, safe.flatten(1), valid_hit.flatten(1).float())
    totals = valid.sum(dim=(1, 2))
    best = hits.max(dim=-1).values / totals.clamp_min(1).float()
    return torch.where(totals > 0, best, torch.full_like(best, float("nan")))

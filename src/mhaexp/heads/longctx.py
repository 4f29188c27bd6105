"""Long-context head types: retrieval heads, streaming heads, and massive activations.

Pure functions in the conventions of :mod:`mhaexp.heads.patterns` (``patterns`` is ``(B, H, T, T)``
post-softmax, ``mask`` ``(B, T)`` True on real tokens, BOS at position 0; one score per head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mhaexp.heads.patterns import Chunk, Ratio


def retrieval_score(
    patterns: Tensor,
    tokens: Tensor,
    needle: Tensor,
    answer: Tensor,
    generated: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality", Sec. 2.

    While the model answers, let ``w`` be the token it generates at a step. A head *copies and pastes*
    at that step when its most-attended key lies inside the needle and holds ``w``. ``g_h`` is the set
    of needle tokens the head copied and pasted; the score is ``|g_h| / |needle|``, averaged over samples:
    ``R_h = mean_b |{k* = argmax_k A[b, h, q, k] : q in answer_b, k* in needle_b, tokens[b, k*] = w[b, q]}|``
    ``/ |needle_b|`` (``k*`` counted once however many steps it is copied at).

    We score under teacher forcing on the gold answer: query ``q`` is an answer step when the token it
    predicts, ``tokens[q + 1]``, is part of the gold answer, and ``w[q]`` is the model's own greedy
    choice there (``generated``, the argmax of its logits). Up to the first wrong step this is Wu et
    al.'s greedy decoding; after it, the prefix is the gold one. ``w`` must be the model's choice, not
    the gold token: a head that attends to some needle value while the model fails to answer would
    otherwise score by chance (1 / the needle values in context per step).

    Args:
        patterns: ``(B, H, T, T)``.
        tokens: ``(B, T)`` token ids of the whole sequence, the gold answer included.
        needle: ``(B, T)`` bool, True on the needle's value tokens in the context (what must be copied).
        answer: ``(B, T)`` bool, True at the queries whose next token is an answer token.
        generated: ``(B, T)`` the token the model generates at each query (argmax of its logits).
        mask: ``(B, T)`` real tokens.

    Returns:
        ``(H,)`` in [0, 1]; NaN when no sample has a needle.
    """
    return retrieval_sums(Chunk(patterns, mask, causal=False), tokens, needle, answer, generated).value()


def retrieval_sums(chunk: Chunk, tokens: Tensor, needle: Tensor, answer: Tensor, generated: Tensor) -> Ratio:
    """:func:`retrieval_score` as a :class:`~mhaexp.heads.patterns.Ratio` (over samples with a needle)."""
    patterns, mask = chunk.patterns, chunk.mask
    B, H, T, _ = patterns.shape
    device = patterns.device
    needle = needle.to(device, torch.bool) & mask
    answer = answer.to(device, torch.bool) & mask
    answer[:, -1] = False  # the last position predicts nothing inside the sequence
    top = chunk.top  # (B, H, T): each query's most-attended key
    in_needle = needle.gather(1, top.flatten(1)).view(B, H, T)
    same_token = tokens.to(device).gather(1, top.flatten(1)).view(B, H, T) == generated.to(device)[:, None, :]
    hit = in_needle & same_token & answer[:, None, :]  # (B, H, T) per query
    # Per needle position: copied at some step (the set g_h, not the number of steps).
    copied = torch.zeros(B, H, T, device=device).scatter_add_(2, top, hit.float()) > 0
    hits = copied.sum(dim=-1).float()  # (B, H)
    length = needle.sum(dim=-1).float()  # (B,)
    has = length > 0
    per_sample = hits[has] / length[has, None]  # (samples with a needle, H)
    ones = torch.ones(per_sample.shape[0], device=device)
    return Ratio(per_sample.sum(dim=0), has.float().sum(), math.nan, per_sample, ones)


def streaming_share(patterns: Tensor, window: int, mask: Tensor | None = None, sink: int = 0) -> Tensor:
    """Share of a head's attention on the sink token plus the ``window`` most recent keys.

    DuoAttention (Xiao et al. 2025, ICLR) splits heads into *streaming* heads, which need only the
    attention sinks and recent tokens (StreamingLLM, Xiao et al. 2023), and *retrieval* heads, which
    need the whole context. DuoAttention learns that split with trained gates; we measure it from the
    patterns: for every real query ``q`` the mass on ``{sink} ∪ [q - window + 1, q]``, averaged over
    the real queries. A head whose share is at least ``analysis.thresholds.streaming`` is ``streaming``.

    Returns:
        ``(H,)`` in [0, 1].
    """
    if window < 1:
        raise ValueError(f"window must be >= 1; got {window}")
    return streaming_sums(Chunk(patterns, mask, causal=False), window, sink).value()


def streaming_sums(chunk: Chunk, window: int, sink: int = 0) -> Ratio:
    """:func:`streaming_share` as a :class:`~mhaexp.heads.patterns.Ratio` (0 without a real query)."""
    patterns, mask = chunk.patterns, chunk.mask
    T = patterns.shape[-1]
    q = torch.arange(T, device=patterns.device)[:, None]
    k = torch.arange(T, device=patterns.device)[None, :]
    keep = ((k <= q) & (k > q - window)) | (k == sink)  # (T, T)
    share = (patterns * keep).sum(dim=-1)  # (B, H, T)
    weight = mask[:, None, :].float()
    weighted = share * weight
    return Ratio(weighted.sum(dim=(0, 2)), weight.sum(), 0.0, weighted.sum(2), weight[:, 0].sum(-1))


@dataclass(frozen=True)
class MassiveActivations:
    """The massive activations of one layer's residual stream (Sun et al. 2024)."""

    layer: int
    median: float  # the layer's median |activation| over real tokens
    count: int
    batch: list[int]
    position: list[int]
    dim: list[int]
    value: list[float]

    @property
    def on_sink(self) -> int:
        """How many of them sit on the first token (the attention sink, position 0)."""
        return sum(p == 0 for p in self.position)


def massive_activations(
    resid: Tensor, mask: Tensor | None = None, *, ratio: float, layer: int = 0
) -> MassiveActivations:
    """Sun et al. 2024, "Massive Activations in Large Language Models", Sec. 2.

    Activations of the residual stream whose magnitude exceeds ``ratio`` (1000 in the paper,
    ``analysis.massive_ratio``) times the layer's median magnitude (over every real token and dimension).
    Sun et al. also require ``|x| > 100``; that absolute bar is for billion-parameter models, so we keep
    only the relative criterion.
    They sit on the first token or on delimiters and act as fixed biases that make the first token
    an attention sink, which is why ``on_sink`` is reported.

    Args:
        resid: ``(B, T, D)`` the residual stream leaving one layer.
        mask: ``(B, T)`` real tokens; pads are ignored.

    Returns:
        Count, and the batch index, position, dimension and value of each.
    """
    if resid.dim() != 3:
        raise ValueError(f"resid must be (batch, T, d_model); got shape {tuple(resid.shape)}")
    B, T, _ = resid.shape
    real = (
        torch.ones(B, T, dtype=torch.bool, device=resid.device) if mask is None else mask.to(resid.device, torch.bool)
    )
    mag = resid.detach().float().abs()
    median = float(mag[real].median()) if bool(real.any()) else 0.0
    big = (mag > ratio * median) & real[..., None] if median > 0 else torch.zeros_like(mag, dtype=torch.bool)
    b, t, d = big.nonzero(as_tuple=True)
    return MassiveActivations(
        layer=layer,
        median=median,
        count=int(b.numel()),
        batch=b.tolist(),
        position=t.tolist(),
        dim=d.tolist(),
        value=resid.detach().float()[b, t, d].tolist(),
    )

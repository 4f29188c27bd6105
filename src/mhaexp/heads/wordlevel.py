"""Token-level attention as attention between words (Clark et al. 2019, "What Does BERT Look At?", Sec. 4.1).

A tokenizer may split a word into several pieces; dependency arcs join words. Clark et al. convert
each attention map to a word-level map: attention *to* a split word is the sum of the attention to
its pieces, attention *from* a split word is the mean of its pieces' attention rows. Rows that summed
to 1 over tokens sum to 1 over words, and a causal map stays causal (every piece of a later word comes
after every piece of an earlier one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def word_attention(patterns: Tensor, word_of_token: Tensor, n_words: int | None = None) -> Tensor:
    """Word-level attention ``(B, H, W, W)`` from token-level ``patterns`` ``(B, H, T, T)``.

    With ``S[b, t, w] = 1`` when token t belongs to word w (``word_of_token[b, t] = w``, -1 for a
    token of no word: pads) and ``n[b, w]`` the pieces of word w::

        A_word[b, h, v, w] = (1 / n[b, v]) * sum_{t in v} sum_{s in w} A[b, h, t, s]

    (Clark et al. 2019, Sec. 4.1: sum over the pieces of the attended word, mean over the pieces of
    the attending one). Tokens of no word take no part; a word with no token has a zero row and
    column. ``n_words`` defaults to ``T``, so word-level arrays keep the token arrays' width.
    One-piece words leave the map unchanged. Cost ``O(B H T^2 W)``: meant for sentences.
    """
    if patterns.dim() != 4 or patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(f"patterns must be (batch, heads, T, T); got shape {tuple(patterns.shape)}")
    B, _, T, _ = patterns.shape
    if tuple(word_of_token.shape) != (B, T):
        raise ValueError(f"word_of_token must be (batch, T) = {(B, T)}; got {tuple(word_of_token.shape)}")
    W = T if n_words is None else n_words
    words = word_of_token.to(device=patterns.device, dtype=torch.long)
    if bool((words >= W).any()):
        raise ValueError(f"word_of_token holds a word index >= n_words={W}")
    in_word = words >= 0
    member = F.one_hot(words.clamp_min(0), W).to(torch.float32) * in_word[..., None]  # (B, T, W)
    pieces = member.sum(1)  # (B, W)
    # Pad rows may hold anything (a softmax over no key is NaN), and 0 * NaN is NaN: zero them first.
    real = in_word[:, None, :, None] & in_word[:, None, None, :]
    p = torch.where(real, patterns.float(), torch.zeros((), device=patterns.device))
    to_words = torch.einsum("bhts,bsw->bhtw", p, member)
    from_words = torch.einsum("btv,bhtw->bhvw", member, to_words)
    return from_words / pieces.clamp_min(1)[:, None, :, None]


def word_mask(word_of_token: Tensor, n_words: int | None = None) -> Tensor:
    """``(B, W)`` bool: word w has at least one token (``n_words`` defaults to ``T``)."""
    B, T = word_of_token.shape
    W = T if n_words is None else n_words
    words = word_of_token.long()
    hit = F.one_hot(words.clamp_min(0), W).bool() & (words >= 0)[..., None]
    return hit.any(1)

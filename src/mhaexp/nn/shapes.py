"""Head-shape rules shared by the layer and the config, free of torch so the CLI can check them fast."""

from __future__ import annotations

from mhaexp.errors import ConfigError


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n``, ascending (used to list valid head counts)."""
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_head_dim(d_model: int, n_heads: int, head_dim: int | None, prefix: str = "") -> int:
    """``head_dim``, or ``d_model // n_heads`` when unset, with a one-line error when that does not divide."""
    if head_dim is not None:
        if head_dim <= 0:
            raise ConfigError(
                f"{prefix}head_dim", head_dim, "must be a positive integer (or null for d_model // n_heads)"
            )
        return head_dim
    if d_model % n_heads != 0:
        raise ConfigError(
            f"{prefix}n_heads",
            n_heads,
            f"d_model={d_model} is not divisible by it; valid head counts are {divisors(d_model)} "
            f"(or set {prefix}head_dim to decouple head size from width)",
        )
    return d_model // n_heads


def group_size(n_heads: int, n_kv_heads: int) -> int:
    """Query heads per K/V head under grouped-query attention (Ainslie et al. 2023; MHA: 1, MQA: ``n_heads``)."""
    return n_heads // n_kv_heads


def kv_head_of(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The K/V head query head ``head`` reads: consecutive query heads share one, ``head // group_size``.

    The one statement of the GQA grouping rule; the attention layer, surgery, the weight-based scores,
    the head view and the benchmarks all call it (or :func:`group_size`).
    """
    return head // group_size(n_heads, n_kv_heads)


def kv_heads(n_heads: int, n_kv_heads: int) -> list[int]:
    """:func:`kv_head_of` for every query head, in order (an index that expands K/V heads to query heads)."""
    return [kv_head_of(h, n_heads, n_kv_heads) for h in range(n_heads)]


def check_heads(n_heads: int, n_kv_heads: int | None, prefix: str = "") -> int:
    """Validate the query/KV head counts and return ``n_kv_heads`` (``None`` means MHA)."""
    if not isinstance(n_heads, int) or n_heads <= 0:
        raise ConfigError(f"{prefix}n_heads", n_heads, "must be a positive integer")
    if n_kv_heads is None:
        return n_heads
    if not isinstance(n_kv_heads, int) or n_kv_heads <= 0:
        raise ConfigError(
            f"{prefix}n_kv_heads", n_kv_heads, f"must be a positive divisor of n_heads={n_heads}: {divisors(n_heads)}"
        )
    if n_kv_heads > n_heads:
        raise ConfigError(
            f"{prefix}n_kv_heads", n_kv_heads, f"must not exceed n_heads={n_heads}; valid: {divisors(n_heads)}"
        )
    if n_heads % n_kv_heads != 0:
        raise ConfigError(
            f"{prefix}n_kv_heads", n_kv_heads, f"must divide n_heads={n_heads}; valid: {divisors(n_heads)}"
        )
    return n_kv_heads


def rotary_dims(head_dim: int, rotary_pct: float) -> tuple[int, int]:
    """(``dim``, rotated): RoPE's frequencies are ``base ** (-2i / dim)`` for ``dim = int(head_dim * rotary_pct)``,
    and the leading ``2 * ceil(dim / 2)`` dimensions of each head are rotated, exactly as HF GPT-NeoX (its
    cos/sin tables hold each of the ``ceil(dim / 2)`` frequencies twice); the rest pass through."""
    dim = int(head_dim * rotary_pct)
    return dim, dim + dim % 2

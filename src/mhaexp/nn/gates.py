"""What a head gate saved in a checkpoint means, so that any reader of checkpoints can fold it.

A model pruned with hard-concrete L0 gates (Louizos et al. 2018; :mod:`mhaexp.pruning.l0`) saves each
layer's gate as ``blocks.i.attn.gate_fn.log_alpha`` with its ``stretch`` buffer. Loading a model
(:mod:`mhaexp.nn.io`) folds them into ``head_gate``, the test-time gate; the gate modules themselves
(training-time sampling, the L0 penalty) stay in pruning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def deterministic_gate(log_alpha: Tensor, stretch: tuple[float, float]) -> Tensor:
    """Test-time gate ``min(1, max(0, sigmoid(log_alpha) (r - l) + l))`` (Louizos et al. 2018, eq. 13)."""
    l, r = stretch
    return (log_alpha.sigmoid() * (r - l) + l).clamp(0.0, 1.0)


def fold_l0_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A model ``state_dict`` (keys without the ``model.`` prefix) with each ``...attn.gate_fn.*`` group
    folded into ``...attn.head_gate`` and removed (a new dict).

    The gate's ``stretch`` buffer comes from the state: the gates have always saved it.
    """
    out = dict(state)
    for key in [k for k in state if k.endswith("gate_fn.log_alpha")]:
        prefix = key[: -len("gate_fn.log_alpha")]
        stretch = state[prefix + "gate_fn.stretch"]
        z = deterministic_gate(state[key].float(), (float(stretch[0]), float(stretch[1])))
        out[prefix + "head_gate"] = state[prefix + "head_gate"] * z.to(state[prefix + "head_gate"].dtype)
        for k in [k for k in out if k.startswith(prefix + "gate_fn.")]:
            del out[k]
    return out

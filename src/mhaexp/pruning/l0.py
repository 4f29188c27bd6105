"""Hard-concrete gates on heads with an expected-L0 penalty (Louizos et al. 2018; Voita et al. 2019).

Definitions (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0
Regularization", Sec. 3 and 4), with ``log_alpha`` the learnt location, ``beta`` the temperature
and ``(l, r)`` the stretch interval with ``l < 0 < 1 < r``:

* training sample: ``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``,
  ``s_bar = s (r - l) + l``, ``z = min(1, max(0, s_bar))``. The stretch puts mass on exactly 0
  and exactly 1 while keeping ``z`` differentiable in ``log_alpha`` in between.
* ``P(z != 0) = sigmoid(log_alpha - beta log(-l / r))``; their sum over heads is the expected L0
  norm, the penalty ``lambda * sum_h P(z_h != 0)``.
* test time (deterministic): ``z_hat = min(1, max(0, sigmoid(log_alpha) (r - l) + l))``.

Voita et al. 2019 ("Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting,
the Rest Can Be Pruned", Sec. 6) put one such gate on each head's output, with ``beta = 1/3`` and
``(l, r) = (-0.1, 1.1)``, and fine-tune a trained model with the penalty; heads whose gate closes
are pruned. Here the gate plugs into :attr:`MultiHeadAttention.gate_fn`, so it multiplies the head
exactly where ``head_gate`` does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mhaexp.nn import gates
from mhaexp.nn.model import Transformer
from mhaexp.pruning.config import L0_STRETCH as DEFAULT_STRETCH
from mhaexp.pruning.config import L0_TEMPERATURE as DEFAULT_TEMPERATURE


def prob_open(
    log_alpha: Tensor, temperature: float = DEFAULT_TEMPERATURE, stretch: tuple[float, float] = DEFAULT_STRETCH
) -> Tensor:
    """``P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))`` per gate (Louizos et al. 2018, eq. 12)."""
    l, r = stretch
    return torch.sigmoid(log_alpha - temperature * math.log(-l / r))


def deterministic_gate(log_alpha: Tensor, stretch: tuple[float, float] = DEFAULT_STRETCH) -> Tensor:
    """Test-time gate (Louizos et al. 2018, eq. 13), default stretch unless given (:mod:`mhaexp.nn.gates`)."""
    return gates.deterministic_gate(log_alpha, stretch)


def sample_gate(
    log_alpha: Tensor,
    u: Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    stretch: tuple[float, float] = DEFAULT_STRETCH,
) -> Tensor:
    """The stretched, clamped hard-concrete sample for uniform noise ``u`` in (0, 1) (Louizos et al. 2018, eq. 10)."""
    l, r = stretch
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / temperature)
    return (s * (r - l) + l).clamp(0.0, 1.0)


class HardConcreteGate(nn.Module):
    """One hard-concrete gate per head; call it to get the gates, shape ``(n,)``.

    Sampled in training mode, deterministic in eval mode. ``temperature`` and ``stretch`` are kept
    as buffers so a checkpoint alone is enough to fold the gates into ``head_gate`` later.

    Args:
        n: number of gates (heads of the layer).
        temperature: ``beta``; 1/3 in Voita et al. 2019 (Louizos et al. use 2/3).
        stretch: ``(l, r)``, ``l < 0`` and ``r > 1``.
        log_alpha_init: initial ``log_alpha``. With the default 2.5 the deterministic gate starts
            exactly open (``sigmoid(2.5) * 1.2 - 0.1 = 1.009``, clamped to 1) and P(open) = 0.96, so a
            trained model starts as itself in eval mode and close to itself in training mode; any
            value >= log(11) = 2.398 does that with the default stretch.
    """

    log_alpha: nn.Parameter
    temperature: Tensor
    stretch: Tensor

    def __init__(
        self,
        n: int,
        temperature: float = DEFAULT_TEMPERATURE,
        stretch: tuple[float, float] = DEFAULT_STRETCH,
        log_alpha_init: float = 2.5,
    ) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n,), float(log_alpha_init)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("stretch", torch.tensor([float(stretch[0]), float(stretch[1])]))
        # Clamp the noise away from 0 and 1: log(0) would make the sample (and its gradient) NaN.
        self.eps = 1e-6

    def _params(self) -> tuple[float, tuple[float, float]]:
        return float(self.temperature), (float(self.stretch[0]), float(self.stretch[1]))

    def forward(self) -> Tensor:
        beta, stretch = self._params()
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(self.eps, 1.0 - self.eps)
            return sample_gate(self.log_alpha, u, beta, stretch)
        return deterministic_gate(self.log_alpha, stretch)

    def deterministic(self) -> Tensor:
        """The eval-mode gates, whatever the mode."""
        return deterministic_gate(self.log_alpha, self._params()[1])

    def prob_open(self) -> Tensor:
        """``P(z_h != 0)`` per head."""
        beta, stretch = self._params()
        return prob_open(self.log_alpha, beta, stretch)

    def expected_l0(self) -> Tensor:
        """Expected number of open gates, ``sum_h P(z_h != 0)`` (differentiable)."""
        return self.prob_open().sum()


def attach_l0_gates(
    model: Transformer,
    temperature: float = DEFAULT_TEMPERATURE,
    stretch: tuple[float, float] = DEFAULT_STRETCH,
    log_alpha_init: float = 2.5,
) -> list[HardConcreteGate]:
    """Give every attention layer a :class:`HardConcreteGate` as its ``gate_fn``; return them.

    The gate becomes a submodule (``blocks.i.attn.gate_fn.log_alpha``), so the optimizer built
    afterwards trains it and checkpoints carry it. Layers that already have one keep it.
    """
    gates = []
    for layer in model.attention_layers:
        if not isinstance(layer.gate_fn, HardConcreteGate):
            p = next(layer.parameters())
            layer.gate_fn = HardConcreteGate(layer.n_heads, temperature, stretch, log_alpha_init).to(p.device)
        gates.append(layer.gate_fn)
    return gates


def l0_gates(model: Transformer) -> list[HardConcreteGate]:
    """The hard-concrete gates attached to ``model``'s layers (empty if none)."""
    return [layer.gate_fn for layer in model.attention_layers if isinstance(layer.gate_fn, HardConcreteGate)]


def expected_l0(model: Transformer) -> Tensor:
    """Expected number of open heads over the whole model (0 if no gates are attached)."""
    gates = l0_gates(model)
    if not gates:
        return torch.zeros(())
    return torch.stack([g.expected_l0() for g in gates]).sum()


def open_heads(model: Transformer) -> list[int]:
    """Heads per layer whose deterministic gate is non-zero (all heads where no gate is attached)."""
    counts = []
    for layer in model.attention_layers:
        live = layer.head_gate != 0
        if isinstance(layer.gate_fn, HardConcreteGate):
            live = live & (layer.gate_fn.deterministic().detach() > 0)
        counts.append(int(live.sum()))
    return counts


@torch.no_grad()
def fold_l0_gates(model: Transformer) -> list[tuple[int, int]]:
    """Multiply each deterministic gate into ``head_gate`` and remove the gate modules.

    Afterwards the model computes in every mode what it computed in eval mode with the gates
    (a closed gate is an exact 0, an open one keeps its value in (0, 1]). Returns the heads whose
    gate closed, as ``(layer, head)``.
    """
    closed = []
    for i, layer in enumerate(model.attention_layers):
        gate = layer.gate_fn
        if not isinstance(gate, HardConcreteGate):
            continue
        z = gate.deterministic().to(layer.head_gate.dtype)
        layer.head_gate.mul_(z)
        closed += [(i, h) for h in range(layer.n_heads) if float(z[h]) == 0.0]
        del layer.gate_fn  # drops the submodule; then restore the plain attribute the layer expects
        layer.gate_fn = None
    return closed

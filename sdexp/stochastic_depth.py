"""Stochastic depth (Huang et al. 2016): the gated residual block, its survival rules and schedule.

A block computes ``ReLU(shortcut(x) + b · f(x))`` with the residual branch ``f`` and a Bernoulli gate
``b ~ B(p_l)`` during training; at test time the branch is scaled by ``p_l`` (paper Eq. 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch
from torch import nn
from torch.nn import functional as F


class Rule(StrEnum):
    """How survival probabilities are set (see :func:`survival_probs`); ``stochastic_depth.rule``."""

    off = "off"
    linear = "linear"
    uniform = "uniform"
    linear_epochs = "linear_epochs"


class Mode(StrEnum):
    """One gate per mini-batch (``batch``, the paper) or per sample (``row``); ``stochastic_depth.mode``."""

    batch = "batch"
    row = "row"


class Scaling(StrEnum):
    """Where the branch is scaled by its survival probability; ``stochastic_depth.scaling``."""

    test_time = "test_time"
    inverted = "inverted"
    none = "none"


def survival_probs(
    rule: str, num_blocks: int, final_survival: float, epoch: int = 0, epochs: int = 1
) -> list[float]:
    """Survival probability of each block l = 1…L under ``rule`` at (0-based) ``epoch`` of ``epochs``.

    - ``off``: 1 for every block (constant depth).
    - ``linear``: p_l = 1 − (l/L)(1 − p_L), the paper's rule (Eq. 4); the last block gets p_L.
    - ``uniform``: p_L for every block.
    - ``linear_epochs``: the tutorial's rule, one p for every block, decayed linearly over the epochs
      from 1 at the first epoch to p_L at the last.
    """
    match Rule(rule):  # an unknown rule raises ValueError here
        case Rule.off:
            return [1.0] * num_blocks
        case Rule.linear:
            return [1.0 - (layer / num_blocks) * (1.0 - final_survival) for layer in range(1, num_blocks + 1)]
        case Rule.uniform:
            return [final_survival] * num_blocks
        case Rule.linear_epochs:
            progress = epoch / (epochs - 1) if epochs > 1 else 0.0
            return [1.0 - progress * (1.0 - final_survival)] * num_blocks


class StochasticDepthBlock(nn.Module):
    """A residual block whose branch is dropped with probability 1 − p during training.

    ``mode='batch'`` (the paper) uses one gate per mini-batch, set in :attr:`gate` by
    :func:`sample_gates`; a closed gate skips the branch entirely: no forward, no backward, no
    BatchNorm statistics update, which is where the training-time saving comes from.
    ``mode='row'`` draws one gate per sample, like ``torchvision.ops.stochastic_depth``: it always runs
    the branch and only masks its output, so it saves no compute.

    ``scaling='test_time'`` multiplies the branch by p in eval (paper Eq. 5); ``'inverted'`` divides the
    kept branch by p in training instead, as torchvision and timm do; ``'none'`` never scales
    (the tutorial's behaviour).

    ``nonnegative_shortcut=True`` says the shortcut's output is never negative (the block's input comes
    out of a ReLU and the shortcut has no weights). A dropped block then returns the shortcut as it is:
    the final ReLU would change neither it nor, since the input already went through a ReLU, any
    gradient, and skipping it saves two kernels and a copy of the activation per dropped block.
    """

    def __init__(
        self,
        residual: nn.Module,
        shortcut: nn.Module,
        mode: str,
        scaling: str,
        nonnegative_shortcut: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.shortcut = shortcut
        self.mode = Mode(mode)  # an unknown value raises ValueError
        self.scaling = Scaling(scaling)
        self.nonnegative_shortcut = nonnegative_shortcut
        self.gate = True
        self.register_buffer("survival_prob", torch.tensor(1.0))
        self._survival = 1.0  # host copy of the buffer, so drawing gates never waits on the device
        self.register_load_state_dict_post_hook(StochasticDepthBlock._sync_host_copy)

    @property
    def survival(self) -> float:
        """The survival probability as a Python float: the host copy of the buffer."""
        return self._survival

    def _sync_host_copy(self, _incompatible_keys: object = None) -> None:
        self._survival = float(self.survival_prob)

    def set_survival_prob(self, p: float) -> None:
        """Set this block's survival probability (stored as a buffer, so checkpoints carry it)."""
        self.survival_prob.fill_(p)
        self._survival = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        if not self.training:
            out = self.residual(x)
            if self.scaling == "test_time":
                out = out * self.survival_prob
            return _add_relu_(out, identity)
        if self.mode == "batch":
            if not self.gate:
                return identity if self.nonnegative_shortcut else F.relu(identity)
            out = self.residual(x)
        else:
            keep = torch.empty((x.shape[0], 1, 1, 1), device=x.device, dtype=x.dtype)
            out = self.residual(x) * keep.bernoulli_(self._survival)
        if self.scaling == "inverted":
            out = out / self.survival_prob
        return _add_relu_(out, identity)


def _add_relu_(out: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """``ReLU(out + identity)``, written into the branch output ``out``.

    Safe because the branch's last layer (BatchNorm in every branch of :mod:`sdexp.models`) does not
    keep its output for backward, and a CUDA-graphed branch's output buffer is its own, rewritten only
    by its next replay. Writing into memory the branch has just written, instead of into two new
    activations, makes a CPU training step of ResNet-110 3-6 % faster.
    """
    return F.relu(out.add_(identity), inplace=True)


def sample_gates(blocks: Sequence[StochasticDepthBlock], generator: torch.Generator) -> int:
    """Draw the gates of all ``batch``-mode blocks for one mini-batch in one host RNG call.

    Returns the number of residual branches that will run (``row``-mode blocks always run).
    """
    draws = torch.rand(len(blocks), generator=generator).tolist()
    executed = 0
    for block, u in zip(blocks, draws, strict=True):
        block.gate = block.mode == "row" or u < block._survival
        executed += block.gate
    return executed


def set_survival_probs(blocks: Sequence[StochasticDepthBlock], probs: Sequence[float]) -> None:
    """Give block l the survival probability ``probs[l]``."""
    if len(probs) != len(blocks):
        raise ValueError(f"{len(probs)} survival probabilities for {len(blocks)} blocks")
    for block, p in zip(blocks, probs, strict=True):
        block.set_survival_prob(p)

"""What every training step shares: its kind (``trainer.step``), its call and the autocast it runs
under."""

from __future__ import annotations

import contextlib
from enum import StrEnum
from typing import Protocol

import torch


class StepKind(StrEnum):
    """``trainer.step``: autograd over the whole model, the segment-wise step, the whole step as one
    CUDA graph, or ``auto``."""

    auto = "auto"
    autograd = "autograd"
    segments = "segments"
    graph = "graph"


class Step(Protocol):
    kind: StepKind  # the step this is (AutoStep: the one it took)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one mini-batch; return its mean loss and its logits (both detached)."""
        ...


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in ``amp_dtype`` (None: off). ``cache_enabled=False``: autocast's cache of cast
    weights must not outlive a CUDA graph capture."""
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None, cache_enabled=False)

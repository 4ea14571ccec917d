"""``trainer.step=autograd``: the plain PyTorch step, autograd over the whole model.

On a big GPU its pace is set by the host, not the GPU: a ResNet-110 step is some 2,300 kernel
launches plus as many autograd nodes, and a dropped block saves its kernels but little of that host
work (docs/performance.md).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from sdexp.models import ResNet
from sdexp.step.base import StepKind, autocast


class AutogradStep:
    """Autograd over the whole model; the model draws its gates in its forward."""

    kind = StepKind.autograd

    def __init__(
        self, model: ResNet, optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype | None
    ) -> None:
        self.model, self.optimizer, self.amp_dtype = model, optimizer, amp_dtype

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(x.device, self.amp_dtype):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=False)  # see build_optimizer
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

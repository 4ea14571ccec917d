"""CUDA graphs for the residual branches (``trainer.cuda_graphs``).

Each branch's forward and backward are captured once as CUDA graphs (``make_graphed_callables``, one
private memory pool per block, because stochastic depth skips blocks and so breaks the fixed call order
a shared pool needs). A step then launches two graphs per executed block instead of some thirty small
kernels, while the gates stay in Python: a dropped block still costs nothing, and there are L graphs,
not one per drop pattern (2^L). Eval runs the branches eagerly (the graphs hold training mode).
"""

from __future__ import annotations

import torch

from sdexp.models import IMAGE_SIZE, ResNet
from sdexp.step.base import autocast


def branch_inputs(model: ResNet, batch_size: int, amp_dtype: torch.dtype | None) -> list[torch.Tensor]:
    """One example input per residual branch (shape, dtype and memory format as in training)."""
    device = next(model.parameters()).device
    seen: list[torch.Tensor] = []
    hooks = [
        b.residual.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for b in model.sd_blocks
    ]
    was_training = model.training
    model.eval()  # runs every branch and leaves BatchNorm statistics alone
    x = torch.zeros(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device, amp_dtype):
        model(x)
    for hook in hooks:
        hook.remove()
    model.train(was_training)
    return [torch.randn_like(t).requires_grad_() for t in seen]


def graph_residual_branches(model: ResNet, batch_size: int, amp_dtype: torch.dtype | None) -> None:
    """Replace every block's residual branch by its CUDA-graphed version for training steps of
    ``batch_size`` images (the training loader drops incomplete batches, so the shape never changes).

    Capturing runs a few warm-up steps on random inputs; BatchNorm statistics are put back afterwards.
    """
    inputs = branch_inputs(model, batch_size, amp_dtype)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    model.train()
    device = inputs[0].device
    with autocast(device, amp_dtype):
        for block, x in zip(model.sd_blocks, inputs, strict=True):
            block.residual = torch.cuda.make_graphed_callables(block.residual, (x,))
    model.load_state_dict(stats, strict=False)

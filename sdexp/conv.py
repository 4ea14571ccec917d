"""3×3 convolutions whose weight gradient is one matrix product (``trainer.conv_weight_grad=gemm``).

The weight gradient of a 3×3 convolution with few channels reduces over batch × height × width
(131,072 terms for CIFAR's first stage at batch 128) into a tiny result (channels × 9·channels). A
profile of ResNet-110 on an H200 (fp32, docs/performance.md) found one cuDNN kernel, most likely this
gradient, taking 140 µs in each of 36 calls per step, where the forward and the input gradient took
about 30 µs. As a matrix product over the input's 3×3 windows it is one copy of the windows plus one
GEMM that the BLAS library splits along the long dimension; ``benchmarks/conv_costs.py`` times both.
The forward and the input gradient stay the library's; the weight gradient equals the library's up to
summation order.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import torch
from torch import nn
from torch.autograd.function import FunctionCtx
from torch.nn import functional as F


class ConvWeightGrad(StrEnum):
    """``trainer.conv_weight_grad``: the convolution library's weight gradient (cuDNN, oneDNN), or one
    GEMM over the input windows for the 3×3, stride-1 convolutions."""

    native = "native"
    gemm = "gemm"


def weight_grad_gemm(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The weight gradient of a 3×3, stride-1, padding-1 convolution of ``x`` (N, C, H, W) whose
    output gradient is ``grad_out`` (N, K, H, W): the (N·H·W, 9·C) matrix of input windows, copied from
    the padded input in channels-last order (one more copy each for inputs in another layout), times the
    (N·H·W, K) output gradient. The result (K, C, 3, 3) is laid out channels-last."""
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()  # N, H+2, W+2, C
    sn, sh, sw, sc = padded.stride()
    windows = padded.as_strided((n, h, w, 3, 3, c), (sn, sh, sw, sh, sw, sc)).reshape(n * h * w, 9 * c)
    grad = grad_out.permute(0, 2, 3, 1).reshape(n * h * w, -1)  # a view when channels-last
    return (grad.t() @ windows).view(-1, 3, 3, c).permute(0, 3, 1, 2)


class _Conv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, padding=1)`` with the weight gradient of :func:`weight_grad_gemm`."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def setup_context(
        ctx: FunctionCtx, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor
    ) -> None:
        ctx.save_for_backward(*inputs)  # a separate setup_context: torch.func transforms work too

    @staticmethod
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad_gemm(x, grad_out)
        return grad_x, grad_weight


class GemmWeightGradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3×3, stride 1, padding 1, no bias) whose weight gradient is one GEMM. Under
    autocast its input and weight are cast as autocast casts them for a convolution. Made from an
    ``nn.Conv2d`` by :func:`use_gemm_weight_grads`; built directly, it refuses other settings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not _fits(self):
            raise ValueError(f"{type(self).__name__} is 3×3, stride 1, padding 1, without bias: got {self}")

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
        return _Conv3x3.apply(x, weight)


def _fits(conv: nn.Conv2d) -> bool:
    return (
        (conv.kernel_size, conv.stride, conv.padding, conv.dilation) == ((3, 3), (1, 1), (1, 1), (1, 1))
        and conv.groups == 1
        and conv.bias is None
        and conv.padding_mode == "zeros"
    )


def use_gemm_weight_grads(model: nn.Module) -> int:
    """Make every 3×3, stride-1 ``nn.Conv2d`` of ``model`` a :class:`GemmWeightGradConv2d` (only its
    class changes: parameters and state-dict keys stay); return how many."""
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and _fits(m)]
    for conv in convs:
        conv.__class__ = GemmWeightGradConv2d
    return len(convs)

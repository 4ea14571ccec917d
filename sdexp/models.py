"""ResNets for 32×32 inputs whose residual blocks are :class:`StochasticDepthBlock` s.

One builder covers both families of ``conf/model/``:

- the CIFAR ResNets of He et al. (2016) §4.2 (6n+2 layers, widths 16/32/64, basic blocks) with their
  parameter-free shortcut (option A, as most versions of the stochastic-depth authors' code): strided
  subsampling plus zero channels, so a dropped transition block has no weights to run, only that
  shortcut (``model.shortcut=avgpool`` averages each 2×2 window, as one version of that code does);
- ResNet-18…152 (basic or bottleneck blocks, widths 64→512) with 1×1-conv+BN projection shortcuts at
  transitions, a 3×3 stem and no max-pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from sdexp.stochastic_depth import StochasticDepthBlock, sample_gates

IMAGE_SIZE = 32  # the side of every input: CIFAR's; other image folders are resized to it


class Block(StrEnum):
    """The residual branch (``model.block``): two 3×3 convolutions, or 1×1-3×3-1×1 with 4× output."""

    basic = "basic"
    bottleneck = "bottleneck"


class Shortcut(StrEnum):
    """The shortcut at a stage transition (``model.shortcut``): parameter-free, keeping every second
    pixel (``pad``, He et al.'s option A) or averaging each 2×2 window (``avgpool``, as one version of
    the stochastic-depth authors' code), then zero channels; or a 1×1 convolution (``projection``)."""

    pad = "pad"
    avgpool = "avgpool"
    projection = "projection"


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(c_out)]


def basic_residual(c_in: int, width: int, stride: int) -> nn.Sequential:
    """conv3×3 → BN → ReLU → conv3×3 → BN (output channels: ``width``)."""
    return nn.Sequential(*_conv_bn(c_in, width, 3, stride), nn.ReLU(inplace=True), *_conv_bn(width, width, 3))


def bottleneck_residual(c_in: int, width: int, stride: int) -> nn.Sequential:
    """conv1×1 → BN → ReLU → conv3×3 → BN → ReLU → conv1×1 → BN (output channels: 4·``width``)."""
    return nn.Sequential(
        *_conv_bn(c_in, width, 1),
        nn.ReLU(inplace=True),
        *_conv_bn(width, width, 3, stride),
        nn.ReLU(inplace=True),
        *_conv_bn(width, 4 * width, 1),
    )


class PadShortcut(nn.Module):
    """Parameter-free shortcut: keep every ``stride``-th pixel (or, ``average``, the mean of each
    ``stride``×``stride`` window) and append zero channels."""

    def __init__(self, c_in: int, c_out: int, stride: int, average: bool = False) -> None:
        super().__init__()
        self.extra_channels = c_out - c_in
        self.stride = stride
        self.average = average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride) if self.average else x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels)) if self.extra_channels else x


def _shortcut(kind: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    if c_in == c_out and stride == 1:
        return nn.Identity()
    if kind != Shortcut.projection:
        return PadShortcut(c_in, c_out, stride, average=kind == Shortcut.avgpool)
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


class ResNet(nn.Module):
    """3×3 stem → stages of stochastic-depth residual blocks → global average pool → linear.

    In training, :meth:`forward` draws the gates of all blocks for the mini-batch at once
    (:meth:`draw_gates`) and keeps the number of branches that ran in :attr:`executed_last`; the
    trainer adds these up per epoch.
    """

    def __init__(
        self,
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        stem_width: int,
        block: str = "basic",
        shortcut: str = "pad",
        num_classes: int = 10,
        sd_mode: str = "batch",
        sd_scaling: str = "test_time",
        gate_seed: int = 0,
    ) -> None:
        super().__init__()
        block, shortcut = Block(block), Shortcut(shortcut)  # an unknown value raises ValueError
        residual_fn, expansion = (basic_residual, 1) if block == Block.basic else (bottleneck_residual, 4)
        self.stem = nn.Sequential(*_conv_bn(3, stem_width, 3), nn.ReLU(inplace=True))
        stages, c_in = [], stem_width
        for stage, (n, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            layers = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                c_out = width * expansion
                skip = _shortcut(shortcut, c_in, c_out, stride)
                # every block's input is a ReLU output, so a shortcut without weights keeps it >= 0
                nonnegative = not list(skip.parameters())
                residual = residual_fn(c_in, width, stride)
                layers.append(StochasticDepthBlock(residual, skip, sd_mode, sd_scaling, nonnegative))
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)
        self.sd_blocks = [m for m in self.stages.modules() if isinstance(m, StochasticDepthBlock)]
        self.gate_generator = torch.Generator().manual_seed(gate_seed)
        self.executed_last = 0  # residual branches the last training forward ran
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def draw_gates(self) -> None:
        """Draw every block's gate for the next training mini-batch (from :attr:`gate_generator`)."""
        self.executed_last = sample_gates(self.sd_blocks, self.gate_generator)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The logits for the last stage's output: global average pool, then the linear head."""
        return self.head(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.draw_gates()
        return self.classify(self.stages(self.stem(x)))


def build_model(cfg: DictConfig, sd_cfg: DictConfig, num_classes: int, seed: int) -> ResNet:
    """The ResNet of the ``model`` config, with the ``stochastic_depth`` config's mode and scaling.

    Survival probabilities start at 1; the trainer sets them from the rule at the start of each epoch.
    """
    return ResNet(
        blocks_per_stage=list(cfg.blocks_per_stage),
        widths=list(cfg.widths),
        stem_width=cfg.stem_width,
        block=cfg.block,
        shortcut=cfg.shortcut,
        num_classes=num_classes,
        sd_mode=sd_cfg.mode,
        sd_scaling=sd_cfg.scaling,
        gate_seed=seed,
    )

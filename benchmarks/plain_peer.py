"""A plain PyTorch peer for ``train_speed.py``: the CIFAR ResNet written as a user would write it,
timed in the same process, so that sdexp's figures are read against it on the same machine.

- ``eager``: autograd over the model; stochastic depth as the tutorial's wrapper that skips a block
  (no scaling), with the paper's linear survival probabilities so that it skips as many blocks.
- ``graph``: forward, backward and the SGD step captured as one CUDA graph and replayed (constant
  depth only: every drop pattern would need a graph of its own). Where the GPU would be with no host
  in the way.

Batches are random and already on the device (no loader, no augmentation): the peer is the model's
step alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from sdexp.config import compose_config
from sdexp.errors import SdexpError
from sdexp.models import IMAGE_SIZE


class PlainBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut that subsamples and pads with zero channels."""

    def __init__(self, c_in: int, c_out: int, stride: int, survival: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad, self.survival = stride, c_out - c_in, survival

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.pad))
        if self.training and torch.rand(()).item() >= self.survival:
            return shortcut
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + shortcut)


def plain_resnet(depth: int, stochastic_depth: bool) -> nn.Sequential:
    """The CIFAR ResNet of ``depth`` = 6n+2 layers; linear survival p_l = 1 − l/L·0.5 if asked."""
    n = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    c_in, total = 16, 3 * n
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            index = stage * n + i + 1
            survival = 1 - index / total * 0.5 if stochastic_depth else 1.0
            layers.append(PlainBlock(c_in, width, 2 if stage and not i else 1, survival))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def cifar_depth(model: str) -> int:
    """The depth of sdexp's ``model`` config, which must be a CIFAR ResNet: three equal stages of basic
    blocks, the network the peer builds."""
    cfg = compose_config([f"model={model}"]).model
    if cfg.block != "basic" or len(cfg.blocks_per_stage) != 3 or len(set(cfg.blocks_per_stage)) != 1:
        raise SdexpError(
            f"model={model}: the plain peer is a CIFAR ResNet (three equal stages of basic blocks, "
            "e.g. resnet20 or resnet110); choose one of those"
        )
    return 6 * cfg.blocks_per_stage[0] + 2


def images_per_s(
    depth: int, mode: str, stochastic_depth: bool, bf16: bool, batch: int, steps: int, device: torch.device
) -> float:
    """Train ``steps`` steps of the peer (``mode`` eager or graph) after a warm-up; images per second."""
    step = build_step(depth, mode, stochastic_depth, bf16, batch, device)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def build_step(
    depth: int, mode: str, stochastic_depth: bool, bf16: bool, batch: int, device: torch.device
) -> Callable[[], None]:
    """The peer's training step on one fixed random batch (``mode`` eager, or graph: captured and
    replayed), warmed up."""
    torch.manual_seed(0)
    model = plain_resnet(depth, stochastic_depth).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()

    on_cuda = device.type == "cuda"
    side = torch.cuda.Stream() if on_cuda else None
    if side:
        side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side) if side else contextlib.nullcontext():  # warm-up (off the capture stream)
        for _ in range(5):
            step()
    if side:
        torch.cuda.current_stream().wait_stream(side)
    if mode == "graph":
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay
    return step


def sync(device: torch.device) -> None:
    """Wait for the device, so that a timer reads the work queued before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    raise SystemExit("plain_peer.py is no script: train_speed.py --peer and step_profile.py --peer time it")

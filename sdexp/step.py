"""The training step, forward + backward + optimizer step on one mini-batch (``trainer.step``).

``autograd`` is the plain PyTorch step: autograd over the whole model. On a big GPU its pace is set
by the host, not the GPU: a ResNet-110 step is some 2,300 kernel launches plus as many autograd nodes,
and a dropped block saves its kernels but little of that host work.

``segments`` cuts the network into segments: the stem, each residual block (kept: branch and
shortcut; dropped: its shortcut alone, where that is not the identity) and the head with the loss.
Segments pass the activation and its gradient through static buffers, one pair per activation shape,
which each segment reads and overwrites in place; a dropped block with an identity shortcut is no
segment at all. A step runs the forward of the stem, of each block's segment for its gate and of the
head, then their backwards in reverse. On CUDA each of those is one CUDA graph captured at the first
step, so a step costs about two launches per kept block (:class:`Segment`). Each segment's backward
is autograd's own (``torch.autograd.grad`` of the segment), so the arithmetic is autograd's; what is
written here are the seams: the gradient handed from segment to segment, and each parameter's
gradient copied into its ``.grad``. The gates are drawn on the host as before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from enum import StrEnum
from functools import partial
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from sdexp.models import ResNet
from sdexp.stochastic_depth import StochasticDepthBlock

log = logging.getLogger(__name__)

CUDA_WARMUP_STEPS = 3  # eager runs of each segment before capture (cuDNN's algorithm search, lazy init)


class StepKind(StrEnum):
    """``trainer.step``: autograd over the whole model, or the segment-wise step."""

    autograd = "autograd"
    segments = "segments"


class Step(Protocol):
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one mini-batch; return its mean loss and its logits (both detached)."""
        ...


class AutogradStep:
    """Autograd over the whole model; the model draws its gates in its forward."""

    def __init__(
        self, model: ResNet, optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype | None
    ) -> None:
        self.model, self.optimizer, self.amp_dtype = model, optimizer, amp_dtype

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with _autocast(x.device, self.amp_dtype):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=False)  # see build_optimizer
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    # cache_enabled=False: autocast's cache of cast weights must not outlive a CUDA graph capture
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None, cache_enabled=False)


class Segment:
    """A piece of the network between static buffers.

    :meth:`forward` copies ``source`` into the segment's own input (the stream buffer is overwritten
    by the segments after it, and the backward needs the input), applies ``fn`` and writes the result
    into ``target``. :meth:`backward` takes d loss/d target from ``grad_target`` and writes
    d loss/d source into ``grad_source`` (unless None) and each parameter's gradient into its ``.grad``.
    After :meth:`capture` both replay CUDA graphs that share one private memory pool: the activations
    the forward saves stay where the backward reads them, and no other segment's graphs use that pool,
    so segments may run in any subset and order that stochastic depth produces.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        params: list[nn.Parameter],
        source: torch.Tensor,
        target: torch.Tensor,
        grad_target: torch.Tensor,
        grad_source: torch.Tensor | None,
    ) -> None:
        self.fn, self.params = fn, params
        self.source, self.target = source, target
        self.grad_target, self.grad_source = grad_target, grad_source
        self.input = torch.zeros_like(source).requires_grad_(grad_source is not None)
        self.output: torch.Tensor | None = None
        self.graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None

    def forward(self) -> None:
        if self.graphs:
            return self.graphs[0].replay()
        with torch.no_grad():
            self.input.copy_(self.source)
        self.output = self.fn(self.input)
        with torch.no_grad():
            self.target.copy_(self.output)

    def backward(self) -> None:
        if self.graphs:
            return self.graphs[1].replay()
        wrt = [self.input, *self.params] if self.grad_source is not None else self.params
        grads = list(torch.autograd.grad(self.output, wrt, self.grad_target))
        with torch.no_grad():
            if self.grad_source is not None:
                self.grad_source.copy_(grads.pop(0))
            for p, g in zip(self.params, grads, strict=True):
                p.grad.copy_(g)

    def capture(self, amp_dtype: torch.dtype | None, stream: torch.cuda.Stream) -> None:
        """Capture :meth:`forward` and :meth:`backward` as CUDA graphs on ``stream`` (the warm-up's,
        as ``make_graphed_callables`` does); from now on they replay.

        ``thread_local``: the capture happens at the first training step, while a DataLoader's
        pin-memory thread may be calling CUDA; in the default (global) mode its calls would break the
        capture.
        """
        pool = torch.cuda.graph_pool_handle()
        forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        options = {"pool": pool, "stream": stream, "capture_error_mode": "thread_local"}
        with torch.cuda.graph(forward, **options), _autocast(self.source.device, amp_dtype):
            self.forward()
        with torch.cuda.graph(backward, **options):
            self.backward()
        self.graphs = (forward, backward)


def _check_shared_buffers(
    index: int, block: StochasticDepthBlock, kept: Segment, dropped: Segment | None
) -> None:
    """The step relies on these: a block that keeps the shape updates its input buffer in place, and
    both segments of a block write the same buffers (else the next segment would read a stale one)."""
    in_place = not isinstance(block.shortcut, nn.Identity) or kept.target is kept.source
    shared = dropped is None or (dropped.target is kept.target and dropped.grad_target is kept.grad_target)
    if not (in_place and shared):
        raise RuntimeError(f"trainer.step=segments: the buffers of block {index} do not line up (a bug)")


def _gated(block: StochasticDepthBlock, gate: bool, x: torch.Tensor) -> torch.Tensor:
    """The block's training forward with its gate set to ``gate``."""
    block.gate = gate
    return block(x)


class SegmentStep:
    """The segment-wise step (module docstring). Built at the first call, for that batch's shape
    (training batches never change shape: the training loader drops an incomplete last batch); on
    CUDA its segments are captured then, after a few eager warm-up runs whose BatchNorm updates are
    undone. Build it after a checkpoint is restored: the graphs read the parameters in place, but the
    optimizer's state must be the restored one. ``batch`` mode only (``row`` mode draws random masks
    inside the branch)."""

    def __init__(
        self, model: ResNet, optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype | None
    ) -> None:
        self.model, self.optimizer, self.amp_dtype = model, optimizer, amp_dtype
        self.shape: tuple[torch.Size, torch.Size] | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one batch. The loss and logits returned are static buffers, valid until the next
        call (read them, or clone them to keep them). The graphs hold the addresses of the weights,
        their ``.grad`` and the BatchNorm buffers: those tensors must be updated in place, never
        replaced (``zero_grad(set_to_none=False)``, ``load_state_dict`` without ``assign``)."""
        if not self.model.training:
            raise RuntimeError("trainer.step=segments trains: call model.train() first")
        if self.shape is None:
            self._build(x, y)
        elif (x.shape, y.shape) != self.shape:
            raise ValueError(f"trainer.step=segments was built for batches of {self.shape[0]}, got {x.shape}")
        self.model.draw_gates()
        with torch.no_grad():
            self.x.copy_(x)
            self.y.copy_(y)
        plan = [self.stem]
        for block, kept, dropped in self.blocks:
            segment = kept if block.gate else dropped
            if segment is not None:
                plan.append(segment)
        plan.append(self.head)
        self.optimizer.zero_grad(set_to_none=False)  # a dropped block's weights get zeros (build_optimizer)
        with _autocast(x.device, self.amp_dtype):
            for segment in plan:
                segment.forward()
        for segment in reversed(plan):
            segment.backward()
        self.optimizer.step()
        return self.loss, self.logits

    def _build(self, x: torch.Tensor, y: torch.Tensor) -> None:
        model, device = self.model, x.device
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        stream: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # activation and gradient per layout

        def link(
            fn: Callable, params: list[nn.Parameter], source: torch.Tensor, grad: torch.Tensor | None
        ) -> Segment:
            with torch.no_grad(), _autocast(device, self.amp_dtype):
                out = fn(source)  # its shape, dtype and memory layout
            key = (out.shape, out.dtype, out.stride())
            if key not in stream:
                stream[key] = (torch.zeros_like(out), torch.zeros_like(out))
            return Segment(fn, params, source, *stream[key], grad)

        self.x, self.y = torch.zeros_like(x), torch.zeros_like(y)
        self.stem = link(model.stem, list(model.stem.parameters()), self.x, None)
        self.blocks: list[tuple[StochasticDepthBlock, Segment, Segment | None]] = []
        last = self.stem
        for index, block in enumerate(model.sd_blocks):
            source, grad = last.target, last.grad_target
            kept = link(partial(_gated, block, True), list(block.parameters()), source, grad)
            dropped = None
            if not isinstance(block.shortcut, nn.Identity):
                dropped = link(partial(_gated, block, False), list(block.shortcut.parameters()), source, grad)
            self.blocks.append((block, kept, dropped))
            _check_shared_buffers(index, block, kept, dropped)
            last = kept
        with torch.no_grad(), _autocast(device, self.amp_dtype):
            self.logits = torch.zeros_like(model.classify(last.target))
        self.loss = torch.zeros((), device=device)
        ones = torch.ones((), device=device)
        self.head = Segment(
            self._head, list(model.head.parameters()), last.target, self.loss, ones, last.grad_target
        )
        if device.type == "cuda":
            with torch.cuda.device(device):  # streams and captures on the run's GPU, not the current one
                self._capture()
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])  # the warm-up's and the shape probes' BatchNorm updates
        self.shape = (x.shape, y.shape)  # built: only now, so that a failed build is not taken for one

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.model.classify(features)
        with torch.no_grad():
            self.logits.copy_(logits)
        return F.cross_entropy(logits, self.y)

    def _capture(self) -> None:
        segments = [self.stem, *(s for _, *pair in self.blocks for s in pair if s is not None), self.head]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for segment in segments:
                for _ in range(CUDA_WARMUP_STEPS):
                    with _autocast(self.x.device, self.amp_dtype):
                        segment.forward()
                    segment.backward()
        torch.cuda.current_stream().wait_stream(side)
        for segment in segments:
            segment.capture(self.amp_dtype, side)
        log.info(
            "trainer.step=segments: %d segments captured as CUDA graphs; %.2f GiB of GPU memory reserved",
            len(segments), torch.cuda.memory_reserved() / 2**30,
        )  # fmt: skip


def build_step(
    kind: str, model: ResNet, optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype | None
) -> Step:
    """The ``trainer.step`` of ``kind`` for ``model`` and ``optimizer``."""
    if StepKind(kind) == StepKind.segments:
        return SegmentStep(model, optimizer, amp_dtype)
    return AutogradStep(model, optimizer, amp_dtype)

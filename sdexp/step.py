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

``auto`` (the default) is ``segments`` where it can help and work (CUDA, ``batch`` mode, neither
``cuda_graphs`` nor ``compile`` nor ``detect_anomaly``), else ``autograd``, saying which in one log
line. On CUDA each captured segment is checked once against its eager run; if the capture fails or a
check does not hold, the run goes on with ``autograd`` after one warning line (:class:`AutoStep`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from enum import StrEnum
from functools import partial
from typing import Protocol

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from sdexp.models import ResNet
from sdexp.stochastic_depth import StochasticDepthBlock

log = logging.getLogger(__name__)

CUDA_WARMUP_STEPS = 3  # eager runs of each segment before capture (cuDNN's algorithm search, lazy init)
# The captured segment's replay against its eager run, one forward and backward on the same input:
# largest difference over largest magnitude (graphs replay the same kernels; cuDNN's backward sums in
# varying order, which moves bf16 results by a few units in the last place).
REPLAY_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 3e-2}


class StepKind(StrEnum):
    """``trainer.step``: autograd over the whole model, the segment-wise step, or ``auto``."""

    auto = "auto"
    autograd = "autograd"
    segments = "segments"


def _why_not_segments(tcfg: DictConfig, mode: str, device: torch.device) -> str | None:
    """Why ``auto`` trains this run with ``autograd``, or None where it takes the segments. On the
    CPU the segments' copies cost more than the host work they save (docs/performance.md)."""
    for reason, holds in (
        (f"the segments capture CUDA graphs; this run is on {device.type}", device.type != "cuda"),
        ("trainer.cuda_graphs=true graphs the branches instead", tcfg.cuda_graphs),
        ("trainer.compile=true compiles the branches instead", tcfg.compile),
        ("trainer.detect_anomaly=true needs autograd", tcfg.detect_anomaly),
        (f"stochastic_depth.mode={mode} draws random numbers inside the branch", mode != "batch"),
    ):
        if holds:
            return reason
    return None


class Step(Protocol):
    kind: StepKind  # the step this is (AutoStep: the one it took)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one mini-batch; return its mean loss and its logits (both detached)."""
        ...


class AutogradStep:
    """Autograd over the whole model; the model draws its gates in its forward."""

    kind = StepKind.autograd

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
        self._forward()

    def backward(self) -> None:
        if self.graphs:
            return self.graphs[1].replay()
        self._backward()

    def _forward(self) -> None:
        with torch.no_grad():
            self.input.copy_(self.source)
        self.output = self.fn(self.input)
        with torch.no_grad():
            self.target.copy_(self.output)

    def _backward(self) -> None:
        wrt = [self.input, *self.params] if self.grad_source is not None else self.params
        grads = list(torch.autograd.grad(self.output, wrt, self.grad_target))
        with torch.no_grad():
            if self.grad_source is not None:
                self.grad_source.copy_(grads.pop(0))
            if grads:  # one kernel, not one per tensor (a pad shortcut has no parameters)
                torch._foreach_copy_([p.grad for p in self.params], grads)

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

    def check_replay(self, amp_dtype: torch.dtype | None) -> float:
        """Run the segment eagerly, then replay its graphs on the same input; return the largest
        difference in its results (output, input gradient, parameter gradients) relative to their
        largest magnitude. BatchNorm statistics move twice: the caller restores them."""
        assert self.graphs is not None
        saved = [t.clone() for t in (self.source, self.grad_target)]

        def results() -> list[torch.Tensor]:
            grads = [p.grad for p in self.params]
            kept = [self.target, *([self.grad_source] if self.grad_source is not None else []), *grads]
            return [t.detach().float().clone() for t in kept]

        with _autocast(self.source.device, amp_dtype):
            self._forward()
        self._backward()
        eager = results()
        with torch.no_grad():
            for buffer, value in zip((self.source, self.grad_target), saved, strict=True):
                buffer.copy_(value)
        self.output = None  # the eager run's activations; the graphs keep their own
        self.forward()
        self.backward()
        return max(
            ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
            for a, b in zip(eager, results(), strict=True)
        )


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

    kind = StepKind.segments

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
            self.build(x, y)
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

    def build(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Build the segments for batches shaped like ``x`` and ``y`` and, on CUDA, capture and check
        them; the BatchNorm statistics are left as they were, also when this fails."""
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        try:
            self._build(x, y)
        finally:
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(buffers[name])  # the shape probes', warm-ups' and checks' updates
        self.shape = (x.shape, y.shape)  # built: only now, so that a failed build is not taken for one

    def _build(self, x: torch.Tensor, y: torch.Tensor) -> None:
        model, device = self.model, x.device
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
            # The warm-ups and the replay check run on the batch and on random activations and
            # gradients, not zeros: zeros through training-mode BatchNorm give zeros everywhere,
            # which a replay with any error would match.
            generator = torch.Generator(device).manual_seed(0)
            with torch.no_grad():
                self.x.copy_(x)
                self.y.copy_(y)
                for buffer in itertools.chain(*stream.values()):
                    buffer.normal_(generator=generator)
            current = torch.cuda.current_stream(device)
            try:
                with torch.cuda.device(device):  # streams and captures on the run's GPU
                    self._capture()
            finally:  # a capture that fails as it ends can leave its stream current
                torch.cuda.set_stream(current)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.model.classify(features)
        with torch.no_grad():
            self.logits.copy_(logits)
        return F.cross_entropy(logits, self.y)

    def _capture(self) -> None:
        segments = [self.stem, *(s for _, *pair in self.blocks for s in pair if s is not None), self.head]
        tolerance = REPLAY_TOLERANCE[self.amp_dtype or torch.float32]
        # All of the build's autograd work on one side stream: autograd keeps the stream on which each
        # parameter's gradient node was made, and torch 2.11 warns when a backward on another stream
        # reaches it (seen on an H200 when the checks ran on the default stream).
        side, current = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side):
                for segment in segments:
                    for _ in range(CUDA_WARMUP_STEPS):
                        with _autocast(self.x.device, self.amp_dtype):
                            segment.forward()
                        segment.backward()
                for segment in segments:
                    segment.capture(self.amp_dtype, side)
                for index, segment in enumerate(segments):
                    difference = segment.check_replay(self.amp_dtype)
                    if not difference <= tolerance:  # NaN fails too
                        raise RuntimeError(
                            f"trainer.step=segments: segment {index} of {len(segments)} replayed as a "
                            f"CUDA graph differs from its eager run by {difference:.2g} "
                            f"(tolerance {tolerance:g})"
                        )
        finally:  # what runs next on the current stream (the BatchNorm restore, training) waits
            current.wait_stream(side)
        log.info(
            "trainer.step=segments: %d segments captured as CUDA graphs; %.2f GiB of GPU memory reserved",
            len(segments), torch.cuda.memory_reserved() / 2**30,
        )  # fmt: skip


class AutoStep:
    """``trainer.step=auto`` where it chose segments: the segment-wise step, or autograd (after one
    warning line) if the segments cannot be built here, e.g. a capture this GPU or torch version
    refuses, or a replay that does not match its eager run."""

    def __init__(self, segments: SegmentStep, fallback: AutogradStep) -> None:
        self.segments: SegmentStep | None = segments
        self.fallback = fallback
        self.step: SegmentStep | AutogradStep | None = None

    @property
    def kind(self) -> StepKind:
        """The step it took at its first call (``auto`` before)."""
        return self.step.kind if self.step is not None else StepKind.auto

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step is None:
            assert self.segments is not None
            try:
                self.segments.build(x, y)
                self.step = self.segments
            except RuntimeError as exc:  # CUDA errors, out of memory among them, are RuntimeErrors
                self.step, self.segments = self.fallback, None  # its graphs' memory goes with it
                if x.device.type == "cuda":
                    torch.cuda.synchronize(x.device)  # an error that breaks CUDA for good raises here
                    torch.cuda.empty_cache()  # for runs sharing the GPU
                log.warning("trainer.step=auto: the segment-wise step failed (%s); using autograd", exc)
        return self.step(x, y)


def build_step(
    tcfg: DictConfig,
    mode: str,
    model: ResNet,
    optimizer: torch.optim.Optimizer,
    amp_dtype: torch.dtype | None,
) -> Step:
    """The step ``tcfg.step`` asks for (``mode``: ``stochastic_depth.mode``) for ``model`` and
    ``optimizer``; ``auto`` says in one log line which it took and why."""
    autograd = AutogradStep(model, optimizer, amp_dtype)
    kind = StepKind(tcfg.step)
    if kind == StepKind.auto:
        reason = _why_not_segments(tcfg, mode, next(model.parameters()).device)
        log.info("trainer.step=auto: %s", f"autograd ({reason})" if reason else "segments (CUDA graphs)")
        if reason:
            return autograd
        return AutoStep(SegmentStep(model, optimizer, amp_dtype), autograd)
    return SegmentStep(model, optimizer, amp_dtype) if kind == StepKind.segments else autograd

"""``trainer.step=segments``: the network cut into segments, each one CUDA graph on CUDA.

The segments are the stem, each residual block (kept: branch and shortcut; dropped: its shortcut
alone, where that is not the identity) and the head with the loss. They pass the activation and its
gradient through static buffers, one pair per activation shape, which each segment reads and
overwrites in place; a dropped block with an identity shortcut is no segment at all. A step runs the
forward of the stem, of each block's segment for its gate and of the head, then their backwards in
reverse. On CUDA each of those is one CUDA graph captured at the first step, so a step costs about two
launches per kept block (:class:`Segment`). Each segment's backward is autograd's own
(``torch.autograd.grad`` of the segment), so the arithmetic is autograd's; what is written here are
the seams: the gradient handed from segment to segment, and each parameter's gradient copied into its
``.grad``. The gates are drawn on the host, from the model's generator, as with autograd.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from sdexp.models import ResNet
from sdexp.step.base import StepKind, autocast
from sdexp.stochastic_depth import StochasticDepthBlock

log = logging.getLogger(__name__)

CUDA_WARMUP_STEPS = 3  # eager runs of each segment before capture (cuDNN's algorithm search, lazy init)
# The captured segment's replay against its eager run, one forward and backward on the same input:
# largest difference over largest magnitude (graphs replay the same kernels; cuDNN's backward sums in
# varying order, which moves bf16 results by a few units in the last place).
REPLAY_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2}


class Segment:
    """A piece of the network between static buffers.

    :meth:`forward` copies ``source`` into the segment's own input (the stream buffer is overwritten
    by the segments after it, and the backward needs the input), applies ``fn`` and writes the result
    into ``target``. :meth:`backward` takes d loss/d target from ``grad_target`` and writes
    d loss/d source into ``grad_source`` (unless None) and each parameter's gradient into its ``.grad``;
    ``low`` maps a parameter (by id) to the low-precision copy ``fn`` computes with instead, whose
    gradient is what the backward takes and copies, upcast, into the parameter's ``.grad``.
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
        low: dict[int, torch.Tensor],
    ) -> None:
        self.fn, self.params = fn, params
        self.wrt = [low.get(id(p), p) for p in params]  # what the gradients are taken with respect to
        by_dtype: dict[torch.dtype, list[int]] = {}
        for index, tensor in enumerate(self.wrt):
            by_dtype.setdefault(tensor.dtype, []).append(index)
        self.groups = list(by_dtype.values())  # one copy kernel per dtype, not one per tensor
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
        wrt = [self.input, *self.wrt] if self.grad_source is not None else self.wrt
        grads = list(torch.autograd.grad(self.output, wrt, self.grad_target))
        with torch.no_grad():
            if self.grad_source is not None:
                self.grad_source.copy_(grads.pop(0))
            for group in self.groups:  # none for a pad shortcut
                torch._foreach_copy_([self.params[i].grad for i in group], [grads[i] for i in group])

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
        with torch.cuda.graph(forward, **options), autocast(self.source.device, amp_dtype):
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

        with autocast(self.source.device, amp_dtype):
            self._forward()
        self._backward()
        eager = results()
        with torch.no_grad():
            for buffer, value in zip((self.source, self.grad_target), saved, strict=True):
                buffer.copy_(value)
        self.output = None  # the eager run's activations; the graphs keep their own
        self.forward()
        self.backward()
        return relative_difference(eager, results())


def relative_difference(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> float:
    """The largest difference between two lists of tensors, each relative to the largest magnitude of
    its expected tensor (NaN if any result is not finite)."""
    return max(
        ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
        for a, b in zip(expected, actual, strict=True)
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


def _call(module: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with the parameters named in ``weights`` replaced by those tensors."""
    return functional_call(module, weights, (x,)) if weights else module(x)


def _gated(
    block: StochasticDepthBlock, weights: dict[str, torch.Tensor], gate: bool, x: torch.Tensor
) -> torch.Tensor:
    """The block's training forward with its gate set to ``gate`` (and ``weights``, see :func:`_call`)."""
    block.gate = gate
    return _call(block, weights, x)


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
            raise RuntimeError(f"trainer.step={self.kind} trains: call model.train() first")
        if self.shape is None:
            self.build(x, y)
        elif (x.shape, y.shape) != self.shape:
            raise ValueError(
                f"trainer.step={self.kind} was built for batches of {self.shape[0]}, got {x.shape}"
            )
        self.model.draw_gates()
        with torch.no_grad():
            self.x.copy_(x)
            self.y.copy_(y)
        self._run()
        return self.loss, self.logits

    def _run(self) -> None:
        """Forward and backward of the segments the gates ask for, then the optimizer step."""
        self.optimizer.zero_grad(set_to_none=False)  # a dropped block's weights get zeros (build_optimizer)
        self._refresh_low()
        self._forward_backward(self._plan(), graphed=True)
        self.optimizer.step()

    def _plan(self) -> list[Segment]:
        """The segments that run for the current gates, in forward order."""
        plan = [self.stem]
        for block, kept, dropped in self.blocks:
            segment = kept if block.gate else dropped
            if segment is not None:
                plan.append(segment)
        return [*plan, self.head]

    def _refresh_low(self) -> None:
        """Copy the convolution weights, as the last optimizer step left them, into their
        low-precision copies (one kernel)."""
        if self.low:
            with torch.no_grad():
                torch._foreach_copy_(list(self.low.values()), self.low_sources)

    def _forward_backward(self, plan: list[Segment], graphed: bool) -> None:
        """The forwards of ``plan``, then their backwards in reverse: replays of their graphs where
        they have them and ``graphed``, else eager."""
        with autocast(self.x.device, self.amp_dtype):
            for segment in plan:
                segment.forward() if graphed else segment._forward()
        for segment in reversed(plan):
            segment.backward() if graphed else segment._backward()

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
        # With autocast, the convolutions compute with low-precision copies of their weights, made
        # once per step (_refresh_low), instead of autocast casting each weight in a kernel of its
        # own and its gradient back in another: the same numbers, some 200 kernels fewer per step.
        convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)] if self.amp_dtype else []
        self.low = {id(p): p.detach().to(self.amp_dtype).requires_grad_() for p in convs}
        self.low_sources = convs

        def weights(module: nn.Module) -> dict[str, torch.Tensor]:
            return {name: self.low[id(p)] for name, p in module.named_parameters() if id(p) in self.low}

        def link(
            fn: Callable, params: list[nn.Parameter], source: torch.Tensor, grad: torch.Tensor | None
        ) -> Segment:
            with torch.no_grad(), autocast(device, self.amp_dtype):
                out = fn(source)  # its shape, dtype and memory layout
            key = (out.shape, out.dtype, out.stride())
            if key not in stream:
                stream[key] = (torch.zeros_like(out), torch.zeros_like(out))
            return Segment(fn, params, source, *stream[key], grad, self.low)

        self.x, self.y = torch.zeros_like(x), torch.zeros_like(y)
        self.stem = link(
            partial(_call, model.stem, weights(model.stem)), list(model.stem.parameters()), self.x, None
        )
        self.blocks: list[tuple[StochasticDepthBlock, Segment, Segment | None]] = []
        last = self.stem
        for index, block in enumerate(model.sd_blocks):
            source, grad = last.target, last.grad_target
            gated = partial(_gated, block, weights(block))
            kept = link(partial(gated, True), list(block.parameters()), source, grad)
            dropped = None
            if not isinstance(block.shortcut, nn.Identity):
                dropped = link(partial(gated, False), list(block.shortcut.parameters()), source, grad)
            self.blocks.append((block, kept, dropped))
            _check_shared_buffers(index, block, kept, dropped)
            last = kept
        with torch.no_grad(), autocast(device, self.amp_dtype):
            self.logits = torch.zeros_like(model.classify(last.target))
        self.loss = torch.zeros((), device=device)
        ones = torch.ones((), device=device)
        self.head = Segment(
            self._head,
            list(model.head.parameters()),
            last.target,
            self.loss,
            ones,
            last.grad_target,
            self.low,
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
        """Warm up every segment eagerly, then capture and check the graphs (:meth:`_capture_on`).

        All of the build's autograd work runs on one side stream: autograd keeps the stream on which
        each parameter's gradient node was made, and torch 2.11 warns when a backward on another
        stream reaches it (seen on an H200 when the checks ran on the default stream)."""
        segments = [self.stem, *(s for _, *pair in self.blocks for s in pair if s is not None), self.head]
        side, current = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side):
                for segment in segments:
                    for _ in range(CUDA_WARMUP_STEPS):
                        with autocast(self.x.device, self.amp_dtype):
                            segment._forward()
                        segment._backward()
                self._capture_on(side, segments)
        finally:  # what runs next on the current stream (the BatchNorm restore, training) waits
            current.wait_stream(side)

    def _capture_on(self, side: torch.cuda.Stream, segments: list[Segment]) -> None:
        """Capture each segment's forward and backward as graphs of their own and check each replay
        against the segment's eager run."""
        tolerance = REPLAY_TOLERANCE[self.amp_dtype or torch.float32]
        for segment in segments:
            segment.capture(self.amp_dtype, side)
        for index, segment in enumerate(segments):
            difference = segment.check_replay(self.amp_dtype)
            if not difference <= tolerance:  # NaN fails too
                raise RuntimeError(
                    f"trainer.step=segments: segment {index} of {len(segments)} replayed as a "
                    f"CUDA graph differs from its eager run by {difference:.2g} (tolerance {tolerance:g})"
                )
        log.info(
            "trainer.step=segments: %d segments captured as CUDA graphs; %.2f GiB of GPU memory reserved",
            len(segments), torch.cuda.memory_reserved() / 2**30,
        )  # fmt: skip

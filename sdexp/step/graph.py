"""``trainer.step=graph``: the whole forward and backward of a step as ONE CUDA graph, each block's
part of it switched on or off before each launch to match its gate.

The segments of :mod:`sdexp.step.segments` (stem, every block's kept and, at a stage transition, its
dropped variant, head with the loss) are captured in order into one graph: all forwards, then all
backwards in reverse, after the gradients are zeroed and the bf16 weight copies refreshed. While
capturing, the nodes each block adds are noted (:func:`~sdexp.step.cuda_driver.added_nodes`). Before
each launch the nodes of the blocks whose gate changed are switched with ``cuGraphNodeSetEnabled``: a
dropped block's nodes become empty nodes, so it runs no kernel, forward or backward, and updates no
BatchNorm statistics, exactly as with the segments, whose static buffers the graph shares (an identity
block updates its buffer in place, so skipping it leaves its input as its output). A step is then one
graph launch plus the optimizer step instead of two launches per kept block, and no gate pattern needs a
graph of its own. The gates are drawn on the host as before.

Every tensor one block's nodes write and another's read is a static buffer (activations, gradients,
``.grad``, BatchNorm statistics); what a block keeps for its own backward lives in the graph's pool
and is written and read by that block's nodes alone, so switching whole blocks off keeps every read
fed. The build checks this: two complementary gate patterns, each replayed against the segments' eager
run on the same batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial

import torch

from sdexp.step import cuda_driver
from sdexp.step.base import StepKind, autocast
from sdexp.step.segments import REPLAY_TOLERANCE, Segment, SegmentStep, relative_difference

log = logging.getLogger(__name__)


def unsupported() -> str | None:
    """Why the one-graph step cannot be built with this torch and driver, or None if it can."""
    if not hasattr(torch.cuda.CUDAGraph, "raw_cuda_graph_exec"):
        return f"torch {torch.__version__} cannot hand over a captured graph (torch 2.9 or newer can)"
    try:
        cuda_driver.check_available()
    except cuda_driver.DriverError as exc:
        return str(exc)
    return None


class NodeSwitch:
    """Which of a graph's block nodes run: for each block, its ``kept`` nodes while its gate is open
    and its ``dropped`` nodes (a transition's shortcut) while it is closed. :meth:`set` switches only
    the blocks whose gate changed since the last call; after instantiation every node runs."""

    def __init__(self, nodes: list[tuple[list[int], list[int]]], switch: Callable[[int, bool], None]) -> None:
        self.nodes, self.switch = nodes, switch
        self.gates: list[bool | None] = [None] * len(nodes)

    def set(self, gates: Sequence[bool]) -> None:
        for index, ((kept, dropped), gate) in enumerate(zip(self.nodes, gates, strict=True)):
            if self.gates[index] != gate:
                for node in kept:
                    self.switch(node, gate)
                for node in dropped:
                    self.switch(node, not gate)
                self.gates[index] = gate


class GraphStep(SegmentStep):
    """The one-graph step (module docstring); CUDA only. Built at the first call like
    :class:`SegmentStep`, and with the same rules: after a checkpoint is restored, and tensors the
    graph reads (weights, ``.grad``, BatchNorm buffers) updated in place, never replaced."""

    kind = StepKind.graph

    def _run(self) -> None:
        self.switch.set([block.gate for block, _, _ in self.blocks])
        self.graph.replay()
        self.optimizer.step()

    def _capture_on(self, side: torch.cuda.Stream, segments: list[Segment]) -> None:
        """Capture the one graph, note each block's nodes, and check two gate patterns against the
        eager segments."""
        graph = torch.cuda.CUDAGraph(keep_graph=True)
        grads = [p.grad for p in self.model.parameters()]
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            nodes_of = partial(cuda_driver.added_nodes, cuda_driver.capturing_graph(side))

            def forward(segment: Segment | None) -> None:
                if segment is not None:
                    with autocast(self.x.device, self.amp_dtype):
                        segment._forward()

            torch._foreach_zero_(grads)  # a dropped block's weights get zeros (build_optimizer)
            self._refresh_low()
            forward(self.stem)
            nodes = [
                (nodes_of(partial(forward, k)), nodes_of(partial(forward, d)) if d else [])
                for _, k, d in self.blocks
            ]
            forward(self.head)
            self.head._backward()
            for index in reversed(range(len(self.blocks))):
                _, kept, dropped = self.blocks[index]
                nodes[index][0].extend(nodes_of(kept._backward))
                if dropped is not None:
                    nodes[index][1].extend(nodes_of(dropped._backward))
            self.stem._backward()
        graph.instantiate()
        self.graph = graph
        self.switch = NodeSwitch(
            [(switchable(k), switchable(d)) for k, d in nodes],
            partial(cuda_driver.set_enabled, graph.raw_cuda_graph_exec()),
        )
        tolerance = REPLAY_TOLERANCE[self.amp_dtype or torch.float32]
        pattern = [index % 2 == 0 for index in range(len(self.blocks))]  # then its complement
        for gates in (pattern, [not gate for gate in pattern]):
            difference = self._check(gates)
            if not difference <= tolerance:  # NaN fails too
                dropped = len(gates) - sum(gates)
                raise RuntimeError(
                    f"trainer.step=graph: the graph with {dropped} of {len(gates)} blocks switched off "
                    f"differs from the eager segments by {difference:.2g} (tolerance {tolerance:g})"
                )
        for segment in segments:
            segment.output = None  # the checks' eager activations (the graph keeps its own in its pool)
        log.info(
            "trainer.step=graph: one CUDA graph of %d nodes, %d of them switched by the gates; "
            "%.2f GiB of GPU memory reserved",
            len(cuda_driver.graph_nodes(graph.raw_cuda_graph())),
            sum(len(k) + len(d) for k, d in self.switch.nodes), torch.cuda.memory_reserved() / 2**30,
        )  # fmt: skip

    def _check(self, gates: list[bool]) -> float:
        """Run the segments eagerly for ``gates``, then the graph; return the largest difference in
        the loss, logits and gradients relative to their largest magnitude (BatchNorm statistics move
        twice: the build restores them)."""

        def results() -> list[torch.Tensor]:
            tensors = [self.loss, self.logits, *(p.grad for p in self.model.parameters())]
            return [t.detach().float().clone() for t in tensors]

        for (block, _, _), gate in zip(self.blocks, gates, strict=True):
            block.gate = gate
        self.optimizer.zero_grad(set_to_none=False)
        self._forward_backward(self._plan(), graphed=False)
        eager = results()
        self.switch.set(gates)
        self.graph.replay()
        return relative_difference(eager, results())


def switchable(nodes: list[int]) -> list[int]:
    """``nodes`` without those that only order others (empty, event nodes: nothing to switch off);
    raises RuntimeError for a node that does work but cannot be switched off."""
    kept = []
    for node in nodes:
        kind = cuda_driver.node_type(node)
        if not isinstance(kind, cuda_driver.NodeType) or not (kind.inert or kind.switchable):
            name = f"{kind.name} ({kind:d})" if isinstance(kind, cuda_driver.NodeType) else f"{kind}"
            raise RuntimeError(f"trainer.step=graph: a block's part of the graph holds a node of type {name}")
        if kind.switchable:
            kept.append(node)
    return kept

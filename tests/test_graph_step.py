"""What of ``trainer.step=graph`` runs without a GPU: the node switch, the driver calls' protocol (on a
fake driver) and the refusals. benchmarks/cuda_graphs_check.py checks the graph itself on a GPU."""

from __future__ import annotations

import contextlib
import copy
import ctypes
from collections.abc import Iterator
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch

from sdexp.config import ConfigError, compose_config, validate
from sdexp.errors import SdexpError
from sdexp.models import ResNet
from sdexp.optim import build_optimizer
from sdexp.step import build_step, cuda_driver, graph
from sdexp.step.autograd import AutogradStep
from sdexp.step.segments import Segment
from sdexp.stochastic_depth import set_survival_probs, survival_probs
from tests.test_step import TINY_MODELS, _trainer


def test_node_switch_switches_the_blocks_whose_gate_changed() -> None:
    calls: list[tuple[int, bool]] = []
    switch = graph.NodeSwitch([([1, 2], []), ([3], [4, 5]), ([6], [])], lambda n, on: calls.append((n, on)))
    switch.set([True, False, True])  # after instantiation every node runs: all are set once
    assert calls == [(1, True), (2, True), (3, False), (4, True), (5, True), (6, True)]
    calls.clear()
    switch.set([True, False, True])
    assert calls == []
    switch.set([False, True, True])
    assert calls == [(1, False), (2, False), (3, True), (4, False), (5, False)]


class FakeDriver:
    """A few driver entry points, written like the real ones: results through pointers, CUresult."""

    def __init__(self, nodes: list[int], status: int = cuda_driver.CAPTURE_ACTIVE, v3: bool = True) -> None:
        self.nodes, self.status, self.calls = nodes, status, []
        if v3:
            self.cuStreamGetCaptureInfo_v3 = self._capture_info
        else:
            self.cuStreamGetCaptureInfo_v2 = self._capture_info

    def _capture_info(self, stream: ctypes.c_void_p, status: object, _id: None, graph: object, *rest: None):
        self.calls.append(("capture_info", stream.value, len(rest)))
        status._obj.value, graph._obj.value = self.status, 0xBEEF
        return 0

    def cuGraphGetNodes(self, graph: ctypes.c_void_p, nodes: ctypes.Array | None, count: object) -> int:
        assert graph.value == 0xBEEF
        if nodes is not None:
            for index, node in enumerate(self.nodes[: count._obj.value]):
                nodes[index] = node
        count._obj.value = len(self.nodes)
        return 0

    def cuGraphNodeGetType(self, node: ctypes.c_void_p, kind: object) -> int:
        kind._obj.value = {7: 0, 8: 5, 9: 13, 11: 6, 12: 3}.get(node.value, 999)
        return 0 if node.value in (7, 8, 9, 11, 12) else 400  # CUDA_ERROR_INVALID_HANDLE

    def cuGraphNodeSetEnabled(self, graph_exec: int, node: int, enabled: int) -> int:
        self.calls.append(("set_enabled", graph_exec, node, enabled))
        return 0


@pytest.mark.parametrize("v3", [True, False])
def test_driver_calls_read_the_captured_graph_and_its_nodes(
    monkeypatch: pytest.MonkeyPatch, v3: bool
) -> None:
    driver = FakeDriver([7, 8, 9], v3=v3)
    monkeypatch.setattr(cuda_driver, "_driver", lambda: driver)
    stream = SimpleNamespace(cuda_stream=0x51)
    assert cuda_driver.capturing_graph(stream) == 0xBEEF
    assert driver.calls == [("capture_info", 0x51, 3 if v3 else 2)]  # v3 has one more output
    assert cuda_driver.graph_nodes(0xBEEF) == [7, 8, 9]
    assert cuda_driver.node_type(7) == cuda_driver.NodeType.kernel
    assert cuda_driver.node_type(8) == cuda_driver.NodeType.empty
    assert cuda_driver.node_type(9) == 13  # a conditional node: not a kind the step expects
    with pytest.raises(cuda_driver.DriverError, match="cuGraphNodeGetType failed with CUresult 400"):
        cuda_driver.node_type(10)
    cuda_driver.set_enabled(0xE0, 7, False)
    assert driver.calls[-1] == ("set_enabled", 0xE0, 7, 0)
    driver.status = 0  # not capturing
    with pytest.raises(cuda_driver.DriverError, match="not being captured"):
        cuda_driver.capturing_graph(stream)


def test_only_switchable_nodes_are_kept_and_others_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_driver, "_driver", lambda: FakeDriver([]))
    assert graph.switchable([7, 8, 11, 7]) == [7, 7]  # empty and event-wait nodes do no work
    with pytest.raises(RuntimeError, match="holds a node of type 13"):
        graph.switchable([7, 9])
    with pytest.raises(RuntimeError, match=r"holds a node of type host \(3\)"):
        graph.switchable([12])


def test_the_graph_step_says_why_it_cannot_be_built_here(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    cuda_driver._driver.cache_clear()
    monkeypatch.setattr(torch.cuda, "CUDAGraph", type("NewGraph", (), {"raw_cuda_graph_exec": None}))
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert graph.unsupported() == (
        "the CUDA driver library cannot be loaded (libcuda.so.1: cannot open shared object file)"
    )
    monkeypatch.setattr(ctypes, "CDLL", lambda name: SimpleNamespace(cuGraphGetNodes=None))
    assert graph.unsupported() == "the CUDA driver has no cuGraphNodeGetType (CUDA 11.6 or newer is needed)"
    monkeypatch.setattr(torch.cuda, "CUDAGraph", type("OldGraph", (), {}))
    assert graph.unsupported().endswith("cannot hand over a captured graph (torch 2.9 or newer can)")
    cuda_driver._driver.cache_clear()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], r"trainer.step=graph needs a CUDA device \(trainer.device=cpu\): use trainer.step=segments"),
        (["trainer.compile=true"], "trainer.step=graph and trainer.compile=true: choose one of the two"),
        (["stochastic_depth.mode=row"], "trainer.step=graph needs stochastic_depth.mode=batch"),
    ],
)
def test_the_graph_step_refuses_what_it_cannot_capture(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(["trainer.step=graph", "trainer.device=cpu", *overrides]))


def test_the_graph_step_refuses_a_machine_without_a_gpu_when_the_run_starts() -> None:
    """In validate where this machine runs the job (before anything is written), not where a SLURM
    sweep is launched (a login node without a GPU, say); there the step refuses as the job starts."""
    cfg = compose_config(["trainer.step=graph"])  # trainer.device=auto
    with pytest.raises(ConfigError, match=r"\(trainer.device=auto, and this machine has no GPU\): use"):
        validate(cfg)
    validate(cfg, this_host=False)
    model = ResNet([1, 1], [4, 8], 4, num_classes=3)
    optimizer, _ = build_optimizer(model, cfg.optimizer, epochs=10)
    with pytest.raises(SdexpError, match=r"needs CUDA graphs it can switch \(this run is on cpu\): use"):
        build_step(cfg.trainer, cfg.stochastic_depth.mode, model, optimizer, None)


class FakeGraph:
    """A CUDA graph on the CPU: capture records each segment's forward and backward and the gradient
    zeroing as a node (without running them, as a capture does); a replay runs the enabled nodes in
    order. What this checks is everything of the one-graph step but CUDA itself: which nodes belong
    to which block and gate, the switching, the build's checks and the step around the replay."""

    capturing: FakeGraph | None = None
    made: ClassVar[dict[int, FakeGraph]] = {}

    def __init__(self, keep_graph: bool = False) -> None:
        assert keep_graph  # the step reads the graph's nodes
        self.nodes: list[object] = []
        self.disabled: set[int] = set()
        FakeGraph.made[id(self)] = self

    def instantiate(self) -> None:
        pass

    def raw_cuda_graph(self) -> int:
        return id(self)

    raw_cuda_graph_exec = raw_cuda_graph

    def replay(self) -> None:
        for index, node in enumerate(self.nodes):
            if index not in self.disabled:
                node()

    @staticmethod
    def recording(original: object) -> object:
        def record(*args: object) -> None:
            if FakeGraph.capturing is None:
                return original(*args)
            # a capture records the kernels as grad mode and autocast made them
            grad_mode, amp = torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")
            amp_dtype = torch.get_autocast_dtype("cpu")

            def node() -> None:
                with torch.set_grad_enabled(grad_mode), torch.autocast("cpu", amp_dtype, enabled=amp):
                    original(*args)

            FakeGraph.capturing.nodes.append(node)

        return record


@contextlib.contextmanager
def fake_capture(graph: FakeGraph, **_options: object) -> Iterator[None]:
    FakeGraph.capturing = graph
    try:
        yield
    finally:
        FakeGraph.capturing = None


def fake_switch(graph_exec: int, node: int, enabled: bool) -> None:
    disabled = FakeGraph.made[graph_exec].disabled
    disabled.discard(node) if enabled else disabled.add(node)


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["pad shortcut", "avgpool shortcut", "projection, bottleneck"])
def test_graph_step_trains_like_autograd(
    monkeypatch: pytest.MonkeyPatch, name: str, amp_dtype: torch.dtype | None
) -> None:
    """Bit for bit, on the fake graph: the same gates, losses, weights, statistics and momentum."""
    recorded = [
        (Segment, "_forward"),
        (Segment, "_backward"),
        (torch, "_foreach_zero_"),
        (torch, "_foreach_copy_"),
    ]
    for owner, attribute in recorded:
        monkeypatch.setattr(owner, attribute, FakeGraph.recording(getattr(owner, attribute)))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_capture)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 0)
    monkeypatch.setattr(cuda_driver, "capturing_graph", lambda stream: id(FakeGraph.capturing))
    monkeypatch.setattr(
        cuda_driver, "graph_nodes", lambda graph: list(range(len(FakeGraph.made[graph].nodes)))
    )
    monkeypatch.setattr(cuda_driver, "node_type", lambda node: cuda_driver.NodeType.kernel)
    monkeypatch.setattr(cuda_driver, "set_enabled", fake_switch)
    torch.manual_seed(0)
    model = ResNet(num_classes=5, gate_seed=3, **TINY_MODELS[name])
    set_survival_probs(model.sd_blocks, survival_probs("uniform", len(model.sd_blocks), 0.5))
    model.train()
    reference, ref_opt, ref_step = _trainer(AutogradStep, model, amp_dtype)
    ours, our_opt, our_step = _trainer(graph.GraphStep, model, amp_dtype)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    before = copy.deepcopy(ours.state_dict())
    our_step.build(x, y)  # the segments, eagerly on the CPU; then what a GPU build does after them:
    our_step._capture_on(None, [])
    ours.load_state_dict(before)  # the build's checks moved the BatchNorm statistics; build() restores them
    assert our_step.switch.gates == [index % 2 == 1 for index in range(len(our_step.blocks))]  # 2nd check
    dropped = 0
    for _ in range(8):
        x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
        torch.testing.assert_close(our_step(x, y), ref_step(x, y), rtol=0, atol=0)
        assert [b.gate for b in ours.sd_blocks] == [b.gate for b in reference.sd_blocks]
        dropped += sum(not b.gate for b in ours.sd_blocks)
    assert 0 < dropped < 8 * len(ours.sd_blocks)
    for (key, value), expected in zip(
        ours.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    for state, ref_state in zip(our_opt.state.values(), ref_opt.state.values(), strict=True):
        torch.testing.assert_close(state["momentum_buffer"], ref_state["momentum_buffer"], rtol=0, atol=0)

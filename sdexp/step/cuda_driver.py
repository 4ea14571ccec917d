"""The few CUDA driver calls that torch does not offer, through ctypes: no extra package, and the same
calls under every torch and CUDA version (``libcuda`` keeps its entry points). They read the nodes of
a graph while it is being captured, and switch nodes of an instantiated graph on and off
(``cuGraphNodeSetEnabled``: a disabled node is an empty node until enabled again). Used by
:mod:`sdexp.step.graph`."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from enum import IntEnum

import torch

CAPTURE_ACTIVE = 1  # CU_STREAM_CAPTURE_STATUS_ACTIVE


class NodeType(IntEnum):
    """``CUgraphNodeType``: the kinds of node a capture of torch's work may produce."""

    kernel = 0
    memcpy = 1
    memset = 2
    host = 3
    graph = 4
    empty = 5
    wait_event = 6
    event_record = 7

    @property
    def switchable(self) -> bool:
        """Whether ``cuGraphNodeSetEnabled`` can switch it off (the nodes that do work)."""
        return self in (NodeType.kernel, NodeType.memcpy, NodeType.memset)

    @property
    def inert(self) -> bool:
        """Whether it only orders other nodes (nothing to switch off)."""
        return self in (NodeType.empty, NodeType.wait_event, NodeType.event_record)


class DriverError(RuntimeError):
    """A driver call failed, or the driver lacks one (too old, or no NVIDIA driver here)."""


@functools.cache
def _driver() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise DriverError(f"the CUDA driver library cannot be loaded ({exc})") from None
    for name in ("cuGraphGetNodes", "cuGraphNodeGetType", "cuGraphNodeSetEnabled"):
        if not hasattr(lib, name):
            raise DriverError(f"the CUDA driver has no {name} (CUDA 11.6 or newer is needed)")
    lib.cuGraphNodeSetEnabled.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
    return lib


def check_available() -> None:
    """Raise :class:`DriverError` if the calls below cannot be made here."""
    _driver()


def _call(name: str, *args: object) -> None:
    try:
        function = getattr(_driver(), name)
    except AttributeError:
        raise DriverError(f"the CUDA driver has no {name}") from None
    result = function(*args)
    if result != 0:
        raise DriverError(f"{name} failed with CUresult {result}")


def capturing_graph(stream: torch.cuda.Stream) -> int:
    """The graph that ``stream`` is being captured into (valid until the capture ends)."""
    status, graph = ctypes.c_int(), ctypes.c_void_p()
    handle = ctypes.c_void_p(stream.cuda_stream)
    outputs = [ctypes.byref(status), None, ctypes.byref(graph), None]  # None: not wanted (id, nodes)
    if hasattr(_driver(), "cuStreamGetCaptureInfo_v3"):  # CUDA >= 12.3: one more output, edge data
        _call("cuStreamGetCaptureInfo_v3", handle, *outputs, None, None)
    else:
        _call("cuStreamGetCaptureInfo_v2", handle, *outputs, None)
    if status.value != CAPTURE_ACTIVE or not graph.value:
        raise DriverError("the stream is not being captured")
    return graph.value


def graph_nodes(graph: int) -> list[int]:
    """The nodes of ``graph``, in no particular order."""
    count = ctypes.c_size_t()
    _call("cuGraphGetNodes", ctypes.c_void_p(graph), None, ctypes.byref(count))
    nodes = (ctypes.c_void_p * count.value)()
    _call("cuGraphGetNodes", ctypes.c_void_p(graph), nodes, ctypes.byref(count))
    return [node for node in nodes[: count.value] if node]


def added_nodes(graph: int, run: Callable[[], None]) -> list[int]:
    """The nodes that ``run`` adds to ``graph`` (one being captured, by work on its stream)."""
    before = set(graph_nodes(graph))
    run()
    return [node for node in graph_nodes(graph) if node not in before]


def node_type(node: int) -> NodeType | int:
    """The node's type (an int for the kinds not named in :class:`NodeType`)."""
    kind = ctypes.c_int()
    _call("cuGraphNodeGetType", ctypes.c_void_p(node), ctypes.byref(kind))
    return NodeType(kind.value) if kind.value in NodeType._value2member_map_ else kind.value


def set_enabled(graph_exec: int, node: int, enabled: bool) -> None:
    """Switch ``node`` (of the graph ``graph_exec`` was instantiated from) on or off for the launches
    of ``graph_exec`` that follow; launches already queued are not affected."""
    result = _driver().cuGraphNodeSetEnabled(graph_exec, node, int(enabled))
    if result != 0:
        raise DriverError(f"cuGraphNodeSetEnabled failed with CUresult {result}")

"""Programmatic dependent launch into the library GEMMs of vision and the prefix.

cuBLASLt launches its kernels itself, so they cannot be given the PDL launch attribute; but the edges of a captured
graph can be changed before it is instantiated. An edge made programmatic lets the GEMM's CTAs launch as soon as the
kernel before it has let them (griddepcontrol.launch_dependents, or its CTAs' exit), set up, and wait on the GPU
(griddepcontrol.wait) for that kernel's writes, instead of launching after its end. That is correct only for a GEMM
kernel that waits before it touches memory, so each tuned GEMM choice is probed once (probe_waits) and only those
that wait get the edge.

The driver calls go through ctypes (libcuda, CUDA 12.3+ edge data): torch exposes the captured graph's handle.
"""

from __future__ import annotations

import contextlib
import ctypes

import torch

from ..errors import TriforceError, UnsupportedError

CU_GRAPH_NODE_TYPE_KERNEL = 0
CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC = 1
CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC = 1
CU_STREAM_CAPTURE_STATUS_ACTIVE = 1
PROBE_DELAY_NS = 50_000       # the probe's producer writes the GEMM's input this long after it let the GEMM launch


class EdgeData(ctypes.Structure):
    """CUgraphEdgeData: all zero is a full-completion edge."""
    _fields_ = [("from_port", ctypes.c_ubyte), ("to_port", ctypes.c_ubyte), ("type", ctypes.c_ubyte),
                ("reserved", ctypes.c_ubyte * 5)]


PROGRAMMATIC = EdgeData(CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC, 0, CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC)


class _Driver:
    """The few libcuda entry points this needs, each checked."""

    lib = None

    @classmethod
    def call(cls, name: str, *args) -> None:
        if cls.lib is None:
            try:
                cls.lib = ctypes.CDLL("libcuda.so.1")
            except OSError as err:
                raise UnsupportedError(f"programmatic GEMM edges need the CUDA driver (libcuda.so.1): {err}") from err
        fn = getattr(cls.lib, name, None)
        if fn is None:
            raise UnsupportedError(f"programmatic GEMM edges need {name} (a CUDA 12.3+ driver)")
        rc = fn(*args)
        if rc != 0:
            msg = ctypes.c_char_p()
            cls.lib.cuGetErrorString(rc, ctypes.byref(msg))
            raise TriforceError(f"{name} failed: CUresult {rc} ({(msg.value or b'?').decode()})")


def capture_tail(stream: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(graph, the nodes the stream's next captured node will depend on, their edge types) of a capturing stream."""
    status, graph, deps, edges, n = (ctypes.c_int(), ctypes.c_void_p(), ctypes.POINTER(ctypes.c_void_p)(),
                                     ctypes.POINTER(EdgeData)(), ctypes.c_size_t())
    _Driver.call("cuStreamGetCaptureInfo_v3", ctypes.c_void_p(stream), ctypes.byref(status), None, ctypes.byref(graph),
                 ctypes.byref(deps), ctypes.byref(edges), ctypes.byref(n))
    if status.value != CU_STREAM_CAPTURE_STATUS_ACTIVE:
        raise TriforceError("capture_tail: the stream is not capturing")
    nodes = tuple(deps[i] for i in range(n.value))
    types = tuple(edges[i].type if edges else 0 for i in range(n.value))
    return graph.value, nodes, types


def node_type(node: int) -> int:
    out = ctypes.c_int()
    _Driver.call("cuGraphNodeGetType", ctypes.c_void_p(node), ctypes.byref(out))
    return out.value


def node_dependencies(node: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(upstream nodes, edge types) of a graph node."""
    n = ctypes.c_size_t()
    _Driver.call("cuGraphNodeGetDependencies_v2", ctypes.c_void_p(node), None, None, ctypes.byref(n))
    nodes, edges = (ctypes.c_void_p * n.value)(), (EdgeData * n.value)()
    _Driver.call("cuGraphNodeGetDependencies_v2", ctypes.c_void_p(node), nodes, edges, ctypes.byref(n))
    return tuple(nodes[i] for i in range(n.value)), tuple(edges[i].type for i in range(n.value))


def make_programmatic(graph: int, producer: int, consumer: int) -> None:
    """Replace the full-completion edge producer -> consumer (two kernel nodes) by a programmatic one."""
    src, dst = (ctypes.c_void_p * 1)(producer), (ctypes.c_void_p * 1)(consumer)
    _Driver.call("cuGraphRemoveDependencies_v2", ctypes.c_void_p(graph), src, dst, None, ctypes.c_size_t(1))
    _Driver.call("cuGraphAddDependencies_v2", ctypes.c_void_p(graph), src, dst, (EdgeData * 1)(PROGRAMMATIC),
                 ctypes.c_size_t(1))


class GemmEdges:
    """One capture's GEMM launches: around(label) notes a GEMM whose one kernel follows one kernel with a
    full-completion edge; apply(graph) makes those edges programmatic once the capture has ended (a graph being
    captured cannot be edited). What was left and why is counted for the log."""

    def __init__(self):
        self.pairs: list[tuple[int, int, str]] = []
        self.left: dict[str, int] = {}

    @contextlib.contextmanager
    def around(self, label: str):
        stream = torch.cuda.current_stream().cuda_stream
        _, before, before_types = capture_tail(stream)
        yield
        _, after, _ = capture_tail(stream)
        why = self._refusal(before, before_types, after)
        if why:
            self.left[why] = self.left.get(why, 0) + 1
        else:
            self.pairs.append((before[0], after[0], label))

    @staticmethod
    def _refusal(before, before_types, after) -> str | None:
        if len(before) != 1:
            return "not after exactly one node (a stream join or the graph's start)"
        if before_types[0] != 0 or node_type(before[0]) != CU_GRAPH_NODE_TYPE_KERNEL:
            return "after a node that is not a kernel (an event, a copy or a memset)"
        if len(after) != 1 or after == before or node_type(after[0]) != CU_GRAPH_NODE_TYPE_KERNEL:
            return "the library did not add one kernel node"
        if node_dependencies(after[0]) != (before, (0,)):
            return "the library launched more than one node (a split-K reduction, a memset)"
        return None

    def apply(self, graph: int) -> int:
        for producer, consumer, _ in self.pairs:
            make_programmatic(graph, producer, consumer)
        return len(self.pairs)

    def summary(self) -> str:
        left = "; ".join(f"{n} {why}" for why, n in self.left.items()) or "none"
        return f"{len(self.pairs)} GEMM launches on programmatic edges; left on full-completion edges: {left}"


class _Recording:
    """The GemmEdges of the capture in progress (set by recording), read by the GEMM layers."""
    edges: GemmEdges | None = None


@contextlib.contextmanager
def recording(edges: GemmEdges | None):
    saved, _Recording.edges = _Recording.edges, edges
    try:
        yield edges
    finally:
        _Recording.edges = saved


def around_gemm(label: str, waits: bool):
    """The context a library GEMM launches in: noted for a programmatic edge when a capture is recording and the
    GEMM's kernel was probed to wait (probe_waits)."""
    edges = _Recording.edges
    if edges is None or not waits or not torch.cuda.is_current_stream_capturing():
        return contextlib.nullcontext()
    return edges.around(label)


def probe_waits(run, x: torch.Tensor, out: torch.Tensor) -> tuple[bool, str]:
    """Whether run(x) (a GEMM launch that reads x and writes out) waits for the kernel before it on a programmatic
    edge. In a graph, a producer lets the GEMM launch at once, then, PROBE_DELAY_NS later, writes x's values into x
    (zeroed before the replay) and copies what `out` holds then into a witness: a GEMM that read x early computes
    another output; one that wrote `out` early shows in the witness. Returns (waits, what was seen)."""
    from . import fused

    values, sentinel = x.clone(), torch.full_like(out, 7)
    run(x)
    expected = out.clone()
    witness = torch.empty_like(out)
    edges = GemmEdges()
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(graph), recording(edges):
        fused.pdl_probe_producer(values, x, out, witness, PROBE_DELAY_NS)
        with around_gemm("probe", True):
            run(x)
    if not edges.pairs:
        return False, f"no programmatic edge could be made ({edges.summary()})"
    edges.apply(graph.raw_cuda_graph())
    graph.instantiate()
    x.zero_()
    out.copy_(sentinel)
    graph.replay()
    torch.cuda.synchronize()
    if not torch.equal(witness.view(torch.uint8), sentinel.view(torch.uint8)):
        return False, "refused: it wrote its output before the kernel before it had finished"
    # a split-K reduction may add in another order: tolerate rounding, not zeros read in place of inputs
    if not (out.float() - expected.float()).abs().max() <= 1e-2 * expected.float().abs().max():
        return False, "refused: it read its input before the kernel before it had written it"
    return True, "its kernel waits (probed)"

"""Host-side tests of triforce.runtime.gemm_edges: which GEMM launches get a programmatic edge (the node checks, on
stand-in nodes), and a clear error where the CUDA driver is missing."""

from __future__ import annotations

import ctypes

import pytest

from triforce.errors import UnsupportedError
from triforce.runtime import gemm_edges as ge

KERNEL, EVENT = ge.CU_GRAPH_NODE_TYPE_KERNEL, 4


@pytest.fixture
def nodes(monkeypatch):
    """Stand-in graph nodes: id -> (type, (dependencies, edge types))."""
    table = {}
    monkeypatch.setattr(ge, "node_type", lambda n: table[n][0])
    monkeypatch.setattr(ge, "node_dependencies", lambda n: table[n][1])
    return table


def test_one_gemm_kernel_after_one_kernel_gets_the_edge(nodes):
    nodes.update({1: (KERNEL, ((), ())), 2: (KERNEL, ((1,), (0,)))})
    assert ge.GemmEdges._refusal((1,), (0,), (2,)) is None


@pytest.mark.parametrize("before, types, after, table, why", [
    ((), (), (2,), {2: (KERNEL, ((), ()))}, "not after exactly one node"),
    ((1, 3), (0, 0), (2,), {}, "not after exactly one node"),
    ((1,), (0,), (2,), {1: (EVENT, ((), ())), 2: (KERNEL, ((1,), (0,)))}, "not a kernel"),
    ((1,), (1,), (2,), {1: (KERNEL, ((), ())), 2: (KERNEL, ((1,), (1,)))}, "not a kernel"),
    ((1,), (0,), (1,), {1: (KERNEL, ((), ()))}, "did not add one kernel node"),
    ((1,), (0,), (2,), {1: (KERNEL, ((), ())), 2: (EVENT, ((1,), (0,)))}, "did not add one kernel node"),
    ((1,), (0,), (3,), {1: (KERNEL, ((), ())), 3: (KERNEL, ((2,), (0,)))}, "more than one node"),
])
def test_other_launches_keep_their_edges(nodes, before, types, after, table, why):
    nodes.update(table)
    assert why in ge.GemmEdges._refusal(before, types, after)


def test_gemms_outside_a_recording_are_not_noted():
    with ge.around_gemm("x", True):       # no capture recording: a plain context
        pass
    with ge.recording(None):
        assert ge.around_gemm("x", True).__class__.__name__ == "nullcontext"


def test_missing_driver_is_one_clear_error(monkeypatch):
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("this machine has a CUDA driver")
    except OSError:
        pass
    monkeypatch.setattr(ge._Driver, "lib", None)
    with pytest.raises(UnsupportedError, match=r"programmatic GEMM edges need the CUDA driver \(libcuda.so.1\)"):
        ge.capture_tail(0)


def test_programmatic_edge_data_is_the_driver_layout():
    assert ctypes.sizeof(ge.EdgeData) == 8
    assert (ge.PROGRAMMATIC.from_port, ge.PROGRAMMATIC.to_port, ge.PROGRAMMATIC.type) == (1, 0, 1)

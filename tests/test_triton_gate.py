"""The engine's Triton kernels compile for every fixed target's arch on this CPU machine, and the gate fails loudly."""

import pytest
import triton

from triforce import triton_gate
from triforce.errors import TriforceError
from triforce.runtime import fused

pytestmark = pytest.mark.compile


@pytest.mark.parametrize("target,arch", [("thor", "sm_110a"), ("blackwell", "sm_100a"), ("hopper", "sm_90a")])
def test_every_engine_kernel_compiles_for_the_target_with_tensor_cores_where_it_multiplies(target, arch):
    results = triton_gate.gate_target(target, log=lambda _: None)
    assert [r.name for r in results] == list(triton_gate.KERNELS)
    for r in results:
        assert r.arch == arch and r.instructions > 0
        assert bool(r.tensor_core) == triton_gate.KERNELS[r.name]["dot"], r


def test_the_gate_covers_every_triton_kernel_of_the_fused_module():
    """A new kernel in runtime/fused.py cannot skip the gate (the opt-in persistent expert layer is its own module)."""
    kernels = {n for n in dir(fused) if n.endswith("_kernel") and isinstance(getattr(fused, n), triton.runtime.jit.JITFunction)}
    assert kernels == set(triton_gate.KERNELS)


def test_a_kernel_without_tensor_cores_where_they_are_declared_fails_naming_it(monkeypatch):
    specs = {"_geglu_kernel": {**triton_gate.KERNELS["_geglu_kernel"], "dot": True}}
    monkeypatch.setattr(triton_gate, "KERNELS", specs)
    with pytest.raises(TriforceError, match=r"_geglu_kernel.*has no tensor-core instruction \(UTCQMMA.*for sm_110a"):
        triton_gate.gate_target("thor", log=lambda _: None)


def test_a_stale_declaration_and_an_unfixed_target_are_refused(monkeypatch):
    specs = {"_geglu_kernel": {**triton_gate.KERNELS["_geglu_kernel"], "const": {"QUANT": False, "HAS_CS": False,
                                                                                 "BLOCK": 1024, "VEC": 4}}}
    monkeypatch.setattr(triton_gate, "KERNELS", specs)
    with pytest.raises(TriforceError, match=r"_geglu_kernel has no constexpr\(s\) \['VEC'\]: update KERNELS"):
        triton_gate.gate_target("hopper", log=lambda _: None)
    with pytest.raises(TriforceError, match="target local has no fixed arch"):
        triton_gate.gate_target("local", log=lambda _: None)


def test_a_pdl_kernel_without_its_grid_dependency_wait_fails_naming_it(monkeypatch):
    """The denoise chain's kernels are declared with PDL; their SASS must hold griddepcontrol.wait (ACQBULK on sm_90a
    and sm_110a). A rule naming an opcode the kernel lacks stands in for a kernel that lost its wait."""
    from triforce import sass

    assert triton_gate.KERNELS["_qkv_rope_kernel"]["const"]["PDL"]
    specs = {"_skinny_gemm_kernel": triton_gate.KERNELS["_skinny_gemm_kernel"]}
    monkeypatch.setattr(triton_gate, "KERNELS", specs)
    assert [r.name for r in triton_gate.gate_target("thor", log=lambda _: None)] == ["_skinny_gemm_kernel"]
    rules = sass._rules()
    monkeypatch.setattr(sass, "_rules", lambda: {**rules, "grid_dependency_wait": "NOSUCHWAIT"})
    with pytest.raises(TriforceError, match=r"_skinny_gemm_kernel is launched with PDL but has no NOSUCHWAIT"):
        triton_gate.gate_target("thor", log=lambda _: None)

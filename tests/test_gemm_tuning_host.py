"""The GEMM tuner's host side, on CPU: when the engine turns tuning off (and says so), what its setters refuse, and
what a choice records. The timing itself runs on a GPU (tests/test_lt_matmul_gpu.py)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from triforce.errors import TriforceError, UnsupportedError
from triforce.runtime import engine as engine_mod
from triforce.runtime.engine import Linear, Pi05Engine
from triforce.runtime.gemm_tuning import Choice, GemmKey


def _stub(**kw):
    log = []
    stub = SimpleNamespace(**{"log": log.append, "slots": {"graph": 1}, "gemm_tuner": None, "vision_layers": [],
                              "prefix_layers": [], "patch": None, "projector": None, **kw})
    stub._stage_gemms = lambda stage, fp8_only=False: Pi05Engine._stage_gemms(stub, stage, fp8_only)
    return stub, log


class _Wheel:
    def __init__(self, has=True, error=None):
        self.has, self.error = has, error

    def has_op(self, name):
        if self.error:
            raise self.error
        return self.has


@pytest.mark.parametrize("wheel,why", [
    (None, "no kernel wheel with lt_matmul"),
    (_Wheel(has=False), "no kernel wheel with lt_matmul"),
    (_Wheel(error=RuntimeError("the compiled extension _C does not load")), "the kernel wheel does not load"),
    (_Wheel(), "no GPU"),            # this CPU machine
])
def test_tuning_is_off_and_said_so_without_a_usable_wheel(monkeypatch, wheel, why):
    monkeypatch.setattr(engine_mod, "kernel_wheel", lambda: wheel)
    stub, log = _stub()
    assert Pi05Engine._new_gemm_tuner(stub) is None
    assert len(log) == 1 and log[0].startswith("[engine] GEMM tuning off: ") and why in log[0]
    assert log[0].endswith("torch's GEMMs run")


def test_setters_refuse_what_cannot_be_tuned():
    layer = Linear.__new__(Linear)         # a bf16 layer without the GPU copy its constructor makes
    layer.weight, layer.bias = torch.zeros(16, 32, dtype=torch.bfloat16), None
    stub, _ = _stub(prefix_layers=[{"qkv": layer}])
    with pytest.raises(TriforceError, match="GEMM tuning in expert: only vision and prefix have tuned GEMMs"):
        Pi05Engine.set_gemm_tuning(stub, ("expert",))
    with pytest.raises(UnsupportedError, match="GEMM tuning needs the kernel wheel's lt_matmul"):
        Pi05Engine.set_gemm_tuning(stub, ("prefix",))
    assert stub.slots                                       # nothing changed
    with pytest.raises(TriforceError, match="FP8 fast accumulation in prefix: no FP8 GEMM there"):
        Pi05Engine.set_fp8_fast_accum(stub, ("prefix",))
    tuner = object()
    stub.gemm_tuner = tuner
    Pi05Engine.set_gemm_tuning(stub, ("prefix",))
    assert layer.tuner is tuner and stub.gemm_tuning == ("prefix",) and not stub.slots   # graphs re-capture
    Pi05Engine.set_gemm_tuning(stub, ())
    assert layer.tuner is None


def test_a_choice_records_what_runs_and_the_ratio():
    key = GemmKey(528, 2048, 16384, "e4m3", "bf16", False, False, True)
    assert key.label() == "528x2048x16384 e4m3->bf16 fast-accum"
    lt = Choice(key, torch.zeros(64, dtype=torch.uint8), {"workspace": 0, "tile": 328}, 30.0, 35.0, 30.0, 8, 0).record()
    assert lt["runs"] == "cuBLASLt" and lt["speedup_vs_torch"] == round(35 / 30, 4) and lt["algo"]["tile"] == 328
    kept = Choice(key, None, None, 35.0, 35.0, 36.0, 8, 1, "torch's op was fastest").record()
    assert kept["runs"] == "torch" and kept["speedup_vs_torch"] == 1.0 and kept["rejected"] == 1


def test_fast_accumulation_default_is_the_checkpoints_recipe_and_the_row_rule():
    """Plan A gets no FP8 fast accumulation; Plan B the stages its checkpoint's recipe declares, and none for a
    checkpoint quantized before recipes declared it. cuBLASLt's 16-byte row rule, which both lt_matmul's checks and
    the tuner's pre-check use, is one function of the wheel's wrappers."""
    stub, _ = _stub(quant=None)
    assert Pi05Engine.default_fp8_fast_accum(stub) == ()
    stub.quant = SimpleNamespace(meta={"recipe": "h100_fast", "fp8_fast_accum": ["vision", "prefix"]})
    assert Pi05Engine.default_fp8_fast_accum(stub) == ("vision", "prefix")
    stub.quant = SimpleNamespace(meta={"recipe": "h100_fast"})
    assert Pi05Engine.default_fp8_fast_accum(stub) == ()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cutlass_sm110"))
    import triforce_kernels

    assert triforce_kernels.lt_rows_fit(1152, 2048, 2, 2)        # bf16 rows of 2304 and 4096 bytes
    assert not triforce_kernels.lt_rows_fit(588, 1152, 2, 2)     # SigLIP's patch embedding: 1176-byte rows
    assert triforce_kernels.lt_rows_fit(16, 16, 1, 1) and not triforce_kernels.lt_rows_fit(16, 8, 1, 1)

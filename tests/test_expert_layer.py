"""The persistent expert layer (runtime/expert_layer.py) on CPU: its six phases in Triton's interpreter against the
layer's fp32 formula, and what it refuses."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_expert_layer_phases_match_the_fp32_layer():
    r = subprocess.run([sys.executable, str(REPO / "tests/expert_layer_interpret_check.py")], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the persistent expert layer matches" in r.stdout


def _engine_stub(config: str, expert_linear):
    """What Pi05Engine's path choice reads (its config and expert layers), without a GPU."""
    from types import SimpleNamespace

    from triforce.runtime.config import load_config
    from triforce.runtime.engine import Pi05Engine

    cfg = load_config(config)
    layer = {"qkv": expert_linear, "o": expert_linear, "gate_up": _bf16_linear(), "down": _bf16_linear()}
    stub = SimpleNamespace(cfg=cfg, expert_layers=[layer], expert_path="per_op", ada_through=None, slots={"k": 1})
    stub.expert_path_refusal = lambda path: Pi05Engine.expert_path_refusal(stub, path)
    return stub, Pi05Engine


def _bf16_linear():
    from triforce.runtime.engine import Linear

    lin = object.__new__(Linear)      # a bf16 layer without moving weights to a GPU
    lin.weight, lin.bias = "bf16 weight", None
    return lin


def test_expert_paths_are_refused_with_the_reason():
    from types import SimpleNamespace

    import pytest

    from triforce.errors import TriforceError

    stub, engine = _engine_stub("pi05_base", _bf16_linear())         # horizon 50
    for path in ("persistent", "fused_epilogue"):
        assert "action horizon 50 > 16" in stub.expert_path_refusal(path)
        with pytest.raises(TriforceError, match=f"the {path} expert path cannot run here: action horizon 50"):
            engine.set_expert_path(stub, path)
    assert stub.expert_path == "per_op" and stub.slots            # nothing changed
    assert stub.expert_path_refusal("per_op") is None
    stub, engine = _engine_stub("pi05_libero", object())               # quantized (non-bf16) qkv and o layers
    assert "quantized expert layers (o, qkv)" in stub.expert_path_refusal("persistent")
    assert "quantized expert layers (qkv)" in stub.expert_path_refusal("fused_epilogue")
    with pytest.raises(TriforceError, match="unknown expert path 'fast'"):
        engine.set_expert_path(stub, "fast")
    stub, _ = _engine_stub("pi05_libero", _bf16_linear())
    assert stub.expert_path_refusal("persistent") is None and stub.expert_path_refusal("fused_epilogue") is None
    stub.expert_layers[0]["down"].input_quant_scale = 1.0                # an FP8 down layer reads quantized GeGLU
    assert "FP8 down layers" in stub.expert_path_refusal("fused_epilogue")
    w4a16 = SimpleNamespace(few_row_weights={"w": "int4", "scales": "bf16"})   # Plan B's W4A16 layers
    stub, _ = _engine_stub("pi05_libero", w4a16)
    assert stub.expert_path_refusal("fused_epilogue") is None
    assert "quantized expert layers (o, qkv)" in stub.expert_path_refusal("persistent")


def test_resident_program_count_bounds_the_grid():
    """The grid-barrier kernel may only launch as many programs as fit at once (else it would hang)."""
    from types import SimpleNamespace

    from triforce.runtime.expert_layer import resident_programs

    h100 = SimpleNamespace(multi_processor_count=132, regs_per_multiprocessor=65536,
                           shared_memory_per_multiprocessor=233472, max_threads_per_multi_processor=2048)
    assert resident_programs(255, 65536, 4, h100) == 2 * 132          # registers: 255 x 128 threads -> 2 per SM
    assert resident_programs(128, 120000, 4, h100) == 132             # shared memory: one 118 KB program per SM
    assert resident_programs(32, 0, 8, h100) == 8 * 132               # threads: 2048 / 256



def test_bad_calls_are_refused_before_anything_changes():
    """Mis-shaped inputs, shifts not carried through W, a scratch of another prompt length, tiles that do not divide
    the layer, or no barrier counters left: one clear error, and neither the residual nor the scratch changes."""
    import pytest
    import torch

    from triforce.runtime import expert_layer as el

    m, w, h, d, f, seq = 5, 256, 4, 64, 512, 100
    r = lambda *s: torch.randn(*s).bfloat16()  # noqa: E731
    wqkv, wo, wgu, wd = r((h + 2) * d, w), r(w, h * d), r(2 * f, w), r(w, f)
    ada1 = (torch.ones(w), el.shift_through(wqkv, torch.zeros(w)), torch.ones(w))
    ada2 = (torch.ones(w), el.shift_through(wgu, torch.zeros(w)), torch.ones(w))
    kc, vc = r(seq + m, d), r(seq + m, d)
    bias, pos = torch.zeros(seq + m, dtype=torch.bfloat16), torch.arange(seq, seq + m).int()
    cos, sin = torch.ones(seq + m, d // 2), torch.zeros(seq + m, d // 2)
    scratch = el.ExpertScratch.allocate(m, w, seq + m, h, d, f, launches=1, device="cpu", programs=3)
    x = torch.randn(m, w)
    x0 = x.clone()

    def call(**over):
        a = dict(ada1=ada1, ada2=ada2, w_qkv=wqkv, w_o=wo, w_gate_up=wgu, w_down=wd, k_cache=kc, v_cache=vc, bias=bias,
                 pos=pos, cos=cos, sin=sin, seq=seq, scratch=scratch, eps=1e-6, heads=h, head_dim=d)
        a.update(over)
        el.expert_layer(x, **a)

    with pytest.raises(ValueError, match="bias \\[seq \\+ M\\]"):
        call(bias=bias[:-1])
    with pytest.raises(ValueError, match="shifts must come through"):
        call(ada1=(ada1[0], torch.zeros(w), ada1[2]))          # the shift itself [W], not shift @ Wqkv^T [(H+2)·D]
    with pytest.raises(ValueError, match="scratch was sized for"):
        call(seq=seq + 64, bias=torch.zeros(seq + 64 + m, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="does not split into"):
        call(tiles={"o": (48, 128)})
    assert torch.equal(x, x0) and scratch.launches == 0
    scratch.launches = 1                                   # every counter taken
    with pytest.raises(RuntimeError, match="barrier slots used"):
        call()
    assert torch.equal(x, x0) and scratch.launches == 1

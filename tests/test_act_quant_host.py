"""The fused activation-quantization ops without a GPU.

- act_quant.cu compiles for sm_90a and sm_110a, and its per-element math (the __host__ __device__ helpers every
  kernel uses: NVFP4 block quantization, e4m3 conversion, bf16 unpacking, the swizzled scale offsets), run on the
  host, is bit-identical to the CPU reference triforce/quant/formats.py (marked compile: real nvcc).
- The Python wrappers refuse bad input with a one-line KernelError before anything reaches the extension.
The kernels themselves (indexing, reductions) are checked on a GPU by tests/test_act_quant_gpu.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from triforce.quant import formats as fmt

REPO = Path(__file__).resolve().parents[1]
ROWS, COLS = 300, 4304  # 4304/16 = 269 scale columns: padded to 272


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    """tests/data/act_quant_host_probe.cu built with the kernel TU, device code for sm_90a and sm_110a included."""
    nvcc = shutil.which("nvcc")
    assert nvcc, "nvcc not on PATH"
    exe = tmp_path_factory.mktemp("act_quant") / "probe"
    subprocess.run([nvcc, "-std=c++17", "-O2", "-gencode=arch=compute_90a,code=sm_90a",
                    "-gencode=arch=compute_110a,code=sm_110a", f"-I{REPO / 'cutlass_sm110' / 'csrc'}",
                    "-o", str(exe), str(REPO / "tests" / "data" / "act_quant_host_probe.cu")], check=True)
    return exe


def _values() -> torch.Tensor:
    """Random blocks over 7 decades, plus hand-made blocks: every E2M1 tie, zeros, subnormal-scale and 3e4 values."""
    torch.manual_seed(0)
    x = torch.randn(4000, 16) * torch.logspace(-4, 4, 4000)[:, None]
    x[0] = torch.tensor([6.0, 4, 3, 2, 1.5, 1, 0.5, 0, -6, -4, -3, -2, -1.5, -1, -0.5, 0])
    x[1] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2) * torch.tensor([1.0] * 8 + [-1.0] * 8)
    x[2] = 0.0
    x[3] = 3e4
    x[4] = 1e-30
    return x.reshape(-1)


def _run(probe: Path, tmp_path: Path, x: torch.Tensor, g: float) -> dict:
    x.numpy().astype(np.float32).tofile(tmp_path / "x.f32")
    x.to(torch.bfloat16).view(torch.int16).numpy().tofile(tmp_path / "x.bf16")
    subprocess.run([str(probe), str(tmp_path), repr(float(np.float32(g))), str(ROWS), str(COLS)], check=True)
    read = lambda name, dtype: torch.from_numpy(np.fromfile(tmp_path / name, dtype=dtype))
    return {"codes": read("codes.u8", np.uint8), "sf": read("sf.u8", np.uint8), "fp8": read("fp8.u8", np.uint8),
            "unpacked": read("unpacked.f32", np.float32), "offsets": read("offsets.i64", np.int64)}


@pytest.mark.compile
@pytest.mark.parametrize("g", [1.0, 0.37, 448.0 * 6 / 3e4, 1e4])
def test_nvfp4_block_math_is_bit_exact(probe, tmp_path, g):
    x = _values()
    got = _run(probe, tmp_path, x, g)
    codes, sf = fmt.quantize_nvfp4(x.reshape(-1, 16), torch.tensor([g], dtype=torch.float32))
    assert torch.equal(got["codes"], codes.reshape(-1))
    assert torch.equal(got["sf"], sf.view(torch.uint8).reshape(-1))


@pytest.mark.compile
def test_fp8_conversion_and_bf16_unpack_are_bit_exact(probe, tmp_path):
    x = _values()
    got = _run(probe, tmp_path, x, 1.0)
    assert torch.equal(got["fp8"], fmt.e4m3_saturate(x).view(torch.uint8))
    assert torch.equal(got["unpacked"], x.to(torch.bfloat16).float())


@pytest.mark.compile
def test_scale_offsets_match_the_reference_swizzle(probe, tmp_path):
    got = _run(probe, tmp_path, _values(), 1.0)
    sf = torch.randint(1, 256, (ROWS, COLS // 16), dtype=torch.int32).to(torch.uint8)
    assert torch.equal(fmt.swizzle_block_scales(sf)[got["offsets"]], sf.reshape(-1))


# ── wrapper refusals (CPU tensors: every check runs before the extension is touched) ─────────────────────────────
@pytest.fixture(scope="module")
def tk():
    sys.path.insert(0, str(REPO / "cutlass_sm110"))
    import triforce_kernels

    return triforce_kernels


def _bf16(rows, cols):
    return torch.randn(rows, cols).to(torch.bfloat16)


def _nvfp4_out(rows, cols):
    sf_bytes = fmt.nvfp4_sf_bytes(rows, cols)
    return torch.zeros(rows, cols // 2, dtype=torch.uint8), torch.zeros(sf_bytes, dtype=torch.uint8)


_FP8 = torch.float8_e4m3fn
_CASES = {
    "x must be torch.bfloat16": lambda tk: tk.quant_nvfp4(_bf16(4, 64).float(), torch.ones(1), *_nvfp4_out(4, 64)),
    "row length must be a positive multiple of 16":
        lambda tk: tk.quant_nvfp4(_bf16(4, 56), torch.ones(1), *_nvfp4_out(4, 64)),
    "row length must be a positive multiple of 8":
        lambda tk: tk.rmsnorm_quant_fp8(_bf16(4, 20), torch.ones(20), torch.ones(1), torch.zeros(4, 20, dtype=_FP8)),
    "out_sf must have shape [512]": lambda tk: tk.quant_nvfp4(
        _bf16(4, 64), torch.ones(1), _nvfp4_out(4, 64)[0], torch.zeros(500, dtype=torch.uint8)),
    "out must have shape [4, 32]":
        lambda tk: tk.rmsnorm_quant_nvfp4(_bf16(4, 64), torch.ones(64), torch.ones(1), *_nvfp4_out(2, 64)),
    "x must be contiguous": lambda tk: tk.rmsnorm_quant_fp8(
        _bf16(64, 4).t(), torch.ones(64), torch.ones(1), torch.zeros(4, 64, dtype=_FP8)),
    "weight must be a float32 or bfloat16 tensor [64], got torch.float16": lambda tk: tk.rmsnorm_quant_fp8(
        _bf16(4, 64), torch.ones(64).half(), torch.ones(1), torch.zeros(4, 64, dtype=_FP8)),
    "weight must have shape [64]": lambda tk: tk.rmsnorm_quant_nvfp4(
        _bf16(4, 64), torch.ones(32), torch.ones(1), *_nvfp4_out(4, 64)),
    "inv_scale must have shape [1]": lambda tk: tk.geglu_quant_fp8(
        _bf16(4, 64), torch.ones(2), torch.zeros(4, 32, dtype=_FP8)),
    "out must be torch.float8_e4m3fn": lambda tk: tk.geglu_quant_fp8(_bf16(4, 64), torch.ones(1), torch.zeros(4, 32)),
    "global_scale must be torch.float32": lambda tk: tk.geglu_quant_nvfp4(
        _bf16(4, 64), torch.ones(1, dtype=torch.float64), *_nvfp4_out(4, 32)),
    "a multiple of 16": lambda tk: tk.geglu_quant_nvfp4(_bf16(4, 48), torch.ones(1), *_nvfp4_out(4, 32)),
    "tensors must be on a CUDA device": lambda tk: tk.quant_nvfp4(_bf16(4, 64), torch.ones(1), *_nvfp4_out(4, 64)),
}


@pytest.mark.parametrize("match", list(_CASES))
def test_wrappers_refuse_bad_input(tk, match):
    with pytest.raises(tk.KernelError, match=re.escape(match)) as err:
        _CASES[match](tk)
    assert "\n" not in str(err.value)

"""Fused activation-quantization kernels (cutlass_sm110/csrc/act_quant.cu) against the CPU references of
triforce/quant/formats.py, on random data. Needs a CUDA GPU and an importable triforce_kernels (any family: the
kernels are arch-generic, so they run on the H100 too): the installed wheel, else a development build.

quant_nvfp4 is pure rounding, so its codes and its whole swizzled scale tensor (padding included) must be
bit-identical. RMSNorm (reduction order, rsqrt) and GeGLU (tanh) differ from the CPU in the last fp32 bits, so a
value sitting on a rounding boundary may land one quantization step away: those allow one step, and only rarely.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from triforce.quant import formats as fmt

pytestmark = pytest.mark.gpu

EPS = 1e-6
ROWS = [1, 10, 130, 712]  # 130 crosses a 128-row scale atom; 712 is the Pi0.5 prefix


@pytest.fixture(scope="module")
def tk():
    """The installed triforce_kernels wheel, else a development build of cutlass_sm110/ for this GPU."""
    assert torch.cuda.is_available(), "these tests need a CUDA GPU"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cutlass_sm110"))
    import devbuild

    return devbuild.load()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _activations(rows: int, cols: int) -> torch.Tensor:
    """bf16 activations on the GPU with a few large outlier columns, like a transformer's residual stream."""
    x = torch.randn(rows, cols) * 2.0
    x[:, torch.randperm(cols)[:4]] *= 200.0
    return x.to(torch.bfloat16).cuda()


def _poisoned(shape, dtype) -> torch.Tensor:
    """An output buffer full of 0xAB bytes: every byte the kernel fails to write stays visible."""
    return torch.full(shape if isinstance(shape, tuple) else (shape,), 0xAB, dtype=torch.uint8).cuda().view(dtype)


def _ordinal(byte: torch.Tensor, magnitude_mask: int, sign_bit: int) -> torch.Tensor:
    """Sign-magnitude codes -> integers whose difference counts quantization steps (+0 and -0 are both 0)."""
    byte = byte.to(torch.int16)
    mag = byte & magnitude_mask
    return torch.where((byte & sign_bit) > 0, -mag, mag)


def _assert_fp8_close(out: torch.Tensor, ref: torch.Tensor, min_exact: float) -> None:
    got, want = out.cpu().view(torch.uint8), ref.view(torch.uint8)
    assert not bool(((got & 0x7F) == 0x7F).any()), "NaN in fp8 output (saturation missing?)"
    steps = (_ordinal(got, 0x7F, 0x80) - _ordinal(want, 0x7F, 0x80)).abs()
    assert steps.max().item() <= 1, f"fp8 codes differ by {steps.max().item()} steps"
    assert (steps == 0).float().mean().item() >= min_exact


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    return fmt.unpack_nibbles(packed.cpu())


def _assert_nvfp4_close(out, out_sf, y, g, min_exact: float) -> None:
    """Kernel NVFP4 of y vs formats.quantize_nvfp4(y): scales within one E4M3 step; where a block's scale matches,
    codes within one E2M1 step; where it does not, the kernel's block is still a valid quantization of y. Padding
    scales must be zero."""
    rows, cols = y.shape
    ref_codes, ref_sf = fmt.quantize_nvfp4(y, g)
    sf_bytes = out_sf.cpu()
    padding = fmt.swizzle_block_scales(torch.ones(rows, cols // 16, dtype=torch.uint8)) == 0
    assert sf_bytes[padding].sum().item() == 0, "padding scale factors were not zeroed"
    sf = fmt.unswizzle_block_scales(sf_bytes, rows, cols)
    sf_steps = (_ordinal(sf.view(torch.uint8), 0x7F, 0x80) - _ordinal(ref_sf.view(torch.uint8), 0x7F, 0x80)).abs()
    assert sf_steps.max().item() <= 1 and (sf_steps == 0).float().mean().item() >= min_exact

    codes, want = _nibbles(out), fmt.unpack_nibbles(ref_codes)
    code_steps = (_ordinal(codes, 0x7, 0x8) - _ordinal(want, 0x7, 0x8)).abs()
    same_sf = (sf_steps == 0).repeat_interleave(16, dim=1)
    assert code_steps[same_sf].max().item() <= 1
    assert (code_steps == 0).float().mean().item() >= min_exact

    deq = fmt.dequantize_nvfp4(out.cpu(), sf, g)
    unit = (sf.float() / g).repeat_interleave(16, dim=1)
    bound = torch.maximum(unit, y.abs() - fmt.E2M1_MAX * unit) * (1 + 1e-5)
    assert bool(((deq - y).abs() <= bound)[~same_sf].all())


def _nvfp4_outputs(rows: int, cols: int):
    return _poisoned((rows, cols // 2), torch.uint8), _poisoned(fmt.nvfp4_sf_bytes(rows, cols), torch.uint8)


# ── quant_nvfp4: bit-exact ────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("cols", [2048, 4304, 16384, 80])  # 4304 and 80: K/16 not a multiple of 4 (padded columns)
def test_quant_nvfp4_bit_exact(tk, rows, cols):
    x = _activations(rows, cols)
    g = fmt.nvfp4_global_scale(x.float().abs().max().item())
    out, out_sf = _nvfp4_outputs(rows, cols)
    tk.quant_nvfp4(x, g.cuda(), out, out_sf)
    ref_codes, ref_sf = fmt.quantize_nvfp4(x.cpu(), g)
    assert torch.equal(out.cpu(), ref_codes)
    assert torch.equal(out_sf.cpu(), fmt.swizzle_block_scales(ref_sf))


def test_quant_nvfp4_large_activations_with_global_scale(tk):
    """|x| up to 3e4 (beyond the 448*6 an unscaled E4M3 block scale can express): still bit-exact, scales <= 448."""
    x = (torch.randn(64, 1024) * 1e3)
    x[:, ::37] = torch.empty(64, 28).uniform_(-3e4, 3e4)
    x = x.to(torch.bfloat16).cuda()
    g = fmt.nvfp4_global_scale(x.float().abs().max().item())
    out, out_sf = _nvfp4_outputs(64, 1024)
    tk.quant_nvfp4(x, g.cuda(), out, out_sf)
    ref_codes, ref_sf = fmt.quantize_nvfp4(x.cpu(), g)
    assert torch.equal(out.cpu(), ref_codes) and torch.equal(out_sf.cpu(), fmt.swizzle_block_scales(ref_sf))
    deq = fmt.dequantize_nvfp4(out.cpu(), ref_sf, g)
    assert ((deq - x.cpu().float()).norm() / x.cpu().float().norm()).item() < 0.12


# ── RMSNorm ───────────────────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dim", [1024, 2048])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_quant_fp8(tk, rows, dim, weight_dtype):
    x = _activations(rows, dim)
    weight = (torch.randn(dim) * 0.5).to(weight_dtype).cuda()
    y = fmt.gemma_rmsnorm(x.cpu(), weight.cpu(), EPS)
    inv_scale = torch.tensor([448.0 / (0.5 * y.abs().max().item())])  # half the range saturates at +-448
    out = _poisoned((rows, dim), torch.float8_e4m3fn)
    tk.rmsnorm_quant_fp8(x, weight, inv_scale.cuda(), out, EPS)
    _assert_fp8_close(out, fmt.quantize_fp8_activation(y, inv_scale), min_exact=0.999)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dim", [1024, 2048, 1040])  # 1040: 65 blocks, padded scale columns
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_quant_nvfp4(tk, rows, dim, weight_dtype):
    x = _activations(rows, dim)
    weight = (torch.randn(dim) * 0.5).to(weight_dtype).cuda()
    y = fmt.gemma_rmsnorm(x.cpu(), weight.cpu(), EPS)
    g = fmt.nvfp4_global_scale(y.abs().max().item())
    out, out_sf = _nvfp4_outputs(rows, dim)
    tk.rmsnorm_quant_nvfp4(x, weight, g.cuda(), out, out_sf, EPS)
    _assert_nvfp4_close(out, out_sf, y, g, min_exact=0.999)


# ── GeGLU ─────────────────────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("inner", [4096, 16384, 4304])  # expert MLP, Gemma 2B MLP, SigLIP width
def test_geglu_quant_fp8(tk, rows, inner):
    gate_up = _activations(rows, 2 * inner)
    y = fmt.geglu_tanh(gate_up.cpu())
    inv_scale = torch.tensor([448.0 / (0.5 * y.abs().max().item())])
    out = _poisoned((rows, inner), torch.float8_e4m3fn)
    tk.geglu_quant_fp8(gate_up, inv_scale.cuda(), out)
    _assert_fp8_close(out, fmt.quantize_fp8_activation(y, inv_scale), min_exact=0.99)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("inner", [4096, 16384, 4304])
def test_geglu_quant_nvfp4(tk, rows, inner):
    gate_up = _activations(rows, 2 * inner)
    y = fmt.geglu_tanh(gate_up.cpu())
    g = fmt.nvfp4_global_scale(y.abs().max().item())
    out, out_sf = _nvfp4_outputs(rows, inner)
    tk.geglu_quant_nvfp4(gate_up, g.cuda(), out, out_sf)
    _assert_nvfp4_close(out, out_sf, y, g, min_exact=0.99)


# ── CUDA graphs: outputs and scales passed in, nothing allocated per call ─────────────────────────────────────────
def test_ops_replay_in_a_cuda_graph(tk):
    rows, dim, inner = 10, 1024, 4096
    x, gate_up = _activations(rows, dim), _activations(rows, 2 * inner)
    weight = (torch.randn(dim) * 0.5).cuda()
    scale = torch.tensor([0.5]).cuda()
    outs = {
        "rms8": _poisoned((rows, dim), torch.float8_e4m3fn), "glu8": _poisoned((rows, inner), torch.float8_e4m3fn),
        "rms4": _nvfp4_outputs(rows, dim), "glu4": _nvfp4_outputs(rows, inner), "q4": _nvfp4_outputs(rows, dim),
    }

    def run_all():
        tk.rmsnorm_quant_fp8(x, weight, scale, outs["rms8"], EPS)
        tk.geglu_quant_fp8(gate_up, scale, outs["glu8"])
        tk.rmsnorm_quant_nvfp4(x, weight, scale, *outs["rms4"], EPS)
        tk.geglu_quant_nvfp4(gate_up, scale, *outs["glu4"])
        tk.quant_nvfp4(x, scale, *outs["q4"])

    def snapshot():
        tensors = [t for v in outs.values() for t in (v if isinstance(v, tuple) else (v,))]
        return [t.view(torch.uint8).clone() for t in tensors]

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        run_all()  # warm-up outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        run_all()
    x.copy_(_activations(rows, dim))
    gate_up.copy_(_activations(rows, 2 * inner))
    scale.fill_(0.25)
    graph.replay()
    torch.cuda.synchronize()
    replayed = snapshot()
    run_all()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(replayed, snapshot()))


# ── refusals: one-line KernelError before anything reaches CUDA ───────────────────────────────────────────────────
def _bad_calls(tk):
    x, w, s = _activations(4, 64), torch.ones(64).cuda(), torch.ones(1).cuda()
    fp8_out = torch.empty(4, 64, dtype=torch.float8_e4m3fn).cuda()
    q, sf = _nvfp4_outputs(4, 64)
    return [
        ("must be torch.bfloat16", lambda: tk.quant_nvfp4(x.float(), s, q, sf)),
        ("positive multiple of 16", lambda: tk.quant_nvfp4(_activations(4, 56), s, q, sf)),
        ("out_sf must have shape", lambda: tk.quant_nvfp4(x, s, q, sf[:-16])),
        ("out must have shape", lambda: tk.rmsnorm_quant_nvfp4(x, w, s, q[:2], sf)),
        ("must be contiguous", lambda: tk.rmsnorm_quant_fp8(_activations(64, 4).t(), w, s, fp8_out)),
        ("must be on a CUDA device", lambda: tk.rmsnorm_quant_fp8(x.cpu(), w.cpu(), s.cpu(), fp8_out.cpu())),
        ("weight must be a float32 or bfloat16", lambda: tk.rmsnorm_quant_fp8(x, w.half(), s, fp8_out)),
        ("weight must have shape", lambda: tk.rmsnorm_quant_fp8(x, w[:32], s, fp8_out)),
        ("inv_scale must have shape", lambda: tk.rmsnorm_quant_fp8(x, w, torch.ones(2).cuda(), fp8_out)),
        ("out must be torch.float8_e4m3fn", lambda: tk.geglu_quant_fp8(x, s, torch.empty(4, 32).cuda())),
        ("a multiple of 16", lambda: tk.geglu_quant_nvfp4(_activations(4, 48), s, q, sf)),
    ]


def test_ops_refuse_bad_input(tk):
    for match, call in _bad_calls(tk):
        with pytest.raises(tk.KernelError, match=match):
            call()

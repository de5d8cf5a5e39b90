"""CPU references of the quantized formats (triforce.quant.formats): exact values, round trips, error bounds."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from triforce.errors import TriforceError
from triforce.quant import formats as fmt


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _u8(rows):
    return torch.tensor(rows, dtype=torch.uint8)


# ── nibbles and INT4 ──────────────────────────────────────────────────────────────────────────────────────────────
def test_nibble_order_low_nibble_is_even_k():
    assert torch.equal(fmt.pack_nibbles(_u8([[1, 2, 3, 4]])), _u8([[0x21, 0x43]]))
    assert torch.equal(fmt.unpack_nibbles(_u8([[0x21, 0x43]])), _u8([[1, 2, 3, 4]]))


def test_pack_int4_twos_complement_bytes():
    q = torch.tensor([[-8, 7, -1, 0, 3, -3]], dtype=torch.int8)
    assert torch.equal(fmt.pack_int4(q), _u8([[0x78, 0x0F, 0xD3]]))


def test_int4_round_trip_every_byte():
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(2, 128)
    values = fmt.unpack_int4(every_byte)
    assert values.min() == -8 and values.max() == 7
    assert torch.equal(fmt.pack_int4(values), every_byte)


def test_int4_quantize_exact_on_hand_made_group():
    # amax 7 -> scale 1 exactly, so q = round(w): 2.5 and -0.5 round half to even (2 and 0).
    group = torch.tensor([7.0, -7.0, 3.0, -2.0, 0.0, 1.0, 2.5, -0.5] * 16)
    packed, scales = fmt.quantize_int4_g128(group.reshape(1, 128))
    assert scales.dtype == torch.bfloat16 and scales.item() == 1.0
    q = fmt.unpack_int4(packed)
    assert q[0, :8].tolist() == [7, -7, 3, -2, 0, 1, 2, 0]
    assert packed[0, 0].item() == 0x97  # k=0 -> 7 low, k=1 -> -7 (0x9) high


def test_int4_dequant_error_within_half_step():
    w = torch.randn(64, 512) * torch.logspace(-3, 1, 64)[:, None]
    packed, scales = fmt.quantize_int4_g128(w)
    deq = fmt.dequantize_int4_g128(packed, scales)
    half_step = (scales.float() / 2).repeat_interleave(128, dim=1)
    assert bool(((w - deq).abs() <= half_step * (1 + 1e-6)).all())
    assert fmt.unpack_int4(packed).abs().max() <= 7  # symmetric: -8 is never produced


def test_int4_zero_group_has_zero_scale_and_codes():
    packed, scales = fmt.quantize_int4_g128(torch.zeros(2, 256))
    assert scales.float().abs().sum() == 0 and packed.sum() == 0


@pytest.mark.parametrize("call, match", [
    (lambda: fmt.quantize_int4_g128(torch.randn(4, 100)), "K=100 is not a multiple of 128"),
    (lambda: fmt.pack_int4(torch.tensor([[8, 0]])), r"outside \[-8, 7\]"),
    (lambda: fmt.pack_int4(torch.tensor([[1.0, 0.0]])), "expected integer"),
    (lambda: fmt.pack_nibbles(_u8([[1, 2, 3]])), "odd"),
    (lambda: fmt.dequantize_int4_g128(_u8([[0] * 64]), torch.ones(1, 2)), "scales shape"),
])
def test_int4_bad_input_raises(call, match):
    with pytest.raises(TriforceError, match=match):
        call()


# ── INT4 in MMA-fragment order (the wheel's few-row kernel) ──────────────────────────────────────────────────────
def _mma_fragment_gemm(packed: torch.Tensor, frag_scales: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What w4a16_skinny.cu computes, written from the PTX fragment definitions of mma.m16n8k16 rather than from the
    packing code: lane (g, t) holds A regs {row g, slots 2t, 2t+1}, {row g+8, ...}, {row g, slots 2t+8, 2t+9},
    {row g+8, ...} from nibbles (0, 4), (1, 5), (2, 6), (3, 7) of word s, and B {slots 2t, 2t+1} = x[tok, 16t+4s+0..1],
    {slots 2t+8, 2t+9} = x[tok, 16t+4s+2..3]; integer codes u - 8 into the MMA, each group's sum times its scale."""
    tiles, chunks, _ = packed.shape
    m = x.shape[0]
    codes = fmt.unpack_nibbles(packed).reshape(tiles, chunks, 8, 4, 4, 8).float() - 8   # tile, chunk, g, t, s, nib
    out = torch.zeros(m, tiles * 16, dtype=torch.float64)
    for group in range(chunks // 2):
        part = torch.zeros(tiles, 16, m, dtype=torch.float64)
        for chunk in (2 * group, 2 * group + 1):
            for s in range(4):
                a = torch.zeros(tiles, 16, 16, dtype=torch.float64)
                b = torch.zeros(16, m, dtype=torch.float64)
                for g in range(8):
                    for t in range(4):
                        nib = codes[:, chunk, g, t, s].double()
                        for reg, (row, slot) in enumerate(((g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8))):
                            a[:, row, slot], a[:, row, slot + 1] = nib[:, reg], nib[:, reg + 4]
                        k0 = chunk * 64 + 16 * t + 4 * s
                        b[2 * t], b[2 * t + 1] = x[:, k0].double(), x[:, k0 + 1].double()
                        b[2 * t + 8], b[2 * t + 9] = x[:, k0 + 2].double(), x[:, k0 + 3].double()
                part += a @ b
        out += (part * frag_scales[:, group, :, None].double()).permute(2, 0, 1).reshape(m, -1)
    return out


def test_int4_fragments_round_trip_and_mma_semantics():
    n, k, m = 48, 256, 5
    qweight, scales = fmt.quantize_int4_g128(torch.randn(n, k))
    packed = fmt.pack_int4_fragments(qweight)
    assert packed.shape == (n // 16, k // 64, 512) and packed.dtype == torch.uint8
    assert torch.equal(fmt.unpack_int4_fragments(packed), qweight)
    frag_scales = fmt.pack_scales_fragments(scales)
    assert torch.equal(frag_scales[1, 1], scales[16:32, 1])
    x = torch.randn(m, k).to(torch.bfloat16)
    ref = x.double() @ fmt.dequantize_int4_g128(qweight, scales).double().T
    got = _mma_fragment_gemm(packed, frag_scales, x)
    assert torch.allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_interleave_gate_up_pairs_rows_g_and_g_plus_8():
    """After interleaving, fragment tile p's rows g and g + 8 are gate and up of feature 8p + g (GeGLU in registers)."""
    inter, k = 32, 128
    w = torch.arange(2 * inter, dtype=torch.float32)[:, None].expand(-1, k)
    tiles = fmt.interleave_gate_up(w).reshape(inter // 8, 16, k)
    for p in range(inter // 8):
        for g in range(8):
            assert tiles[p, g, 0] == 8 * p + g and tiles[p, g + 8, 0] == inter + 8 * p + g
    with pytest.raises(TriforceError, match="multiple of 8"):
        fmt.interleave_gate_up(torch.zeros(24, 4))


def test_int4_fragment_word_holds_one_mma_step():
    """Hand-made: only W[row 9, k 70] = 7 (tile 0, chunk 1, g 1, half 1, t 0, s 1, j2 1, j 0) -> nibble 3 of word 1
    of lane 4 in chunk 1 holds u = 15; every other nibble is u = 8 (q = 0)."""
    q = torch.zeros(16, 128, dtype=torch.int8)
    q[9, 70] = 7
    packed = fmt.pack_int4_fragments(fmt.pack_int4(q))
    codes = fmt.unpack_nibbles(packed).reshape(1, 2, 32, 4, 8)
    assert codes[0, 1, 4, 1, 3] == 15
    codes[0, 1, 4, 1, 3] = 8
    assert bool((codes == 8).all())


@pytest.mark.parametrize("call, match", [
    (lambda: fmt.pack_int4_fragments(torch.zeros(8, 64, dtype=torch.uint8)), "N % 16"),
    (lambda: fmt.pack_int4_fragments(torch.zeros(16, 32, dtype=torch.uint8)), "K % 128"),
    (lambda: fmt.unpack_int4_fragments(torch.zeros(1, 2, 256, dtype=torch.uint8)), "512"),
    (lambda: fmt.pack_scales_fragments(torch.zeros(8, 2, dtype=torch.bfloat16)), "N % 16"),
])
def test_int4_fragments_bad_input_raises(call, match):
    with pytest.raises(TriforceError, match=match):
        call()


# ── FP8 E4M3 ──────────────────────────────────────────────────────────────────────────────────────────────────────
def test_fp8_weight_exact_values_and_zero_row():
    w = torch.tensor([[448.0, -224.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [4.0, 2.0, -1.0, 0.5]])
    q, scale = fmt.quantize_fp8_weight(w)
    assert torch.equal(scale, torch.tensor([1.0, 0.0, 4.0 / 448], dtype=torch.float32))
    assert q[0].float().tolist() == [448.0, -224.0, 1.0, 0.0]
    assert q[1].float().abs().sum() == 0
    assert q[2].float()[0] == 448.0
    assert torch.equal(fmt.dequantize_fp8_weight(q, scale)[:2], w[:2])


def test_fp8_weight_error_bound():
    w = torch.randn(128, 256) * torch.logspace(-4, 2, 128)[:, None]
    q, scale = fmt.quantize_fp8_weight(w)
    err = (fmt.dequantize_fp8_weight(q, scale) - w).abs()
    # 3 mantissa bits: half an ulp is 2^-4 relative for normals; subnormals (below 2^-6) have absolute step 2^-9.
    bound = torch.maximum(w.abs() * 2.0**-4, scale[:, None] * 2.0**-10)
    assert bool((err <= bound * (1 + 1e-6)).all())


def test_fp8_activation_saturates_instead_of_nan():
    inv_scale = torch.tensor([2.0])
    q = fmt.quantize_fp8_activation(torch.tensor([1000.0, -1e9, 3.0, 0.1]), inv_scale)
    assert q.float().tolist() == [448.0, -448.0, 6.0, 0.203125]


def test_fp8_activation_scale():
    assert fmt.fp8_activation_scale(896.0).tolist() == [2.0]
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(TriforceError, match="amax must be finite and > 0"):
            fmt.fp8_activation_scale(bad)


def test_fp8_output_scale_divides_out_the_weight_scales_and_skips_zero_rows():
    # channel 1's raw GEMM output is 6 / 0.5 = 12, the largest; channel 2's weight row is all zero (scale 0)
    got = fmt.fp8_output_scale(torch.tensor([4.0, 6.0, 9.0]), torch.tensor([1.0, 0.5, 0.0]), headroom=4.0)
    assert got.dtype == torch.float32 and got.shape == (1,)
    assert float(got) == pytest.approx(4.0 * 12.0 / 448.0)


@pytest.mark.parametrize("call, match", [
    (lambda: fmt.fp8_output_scale(torch.ones(3), torch.ones(4), 4.0), "3,.*channel abs-maxes for .*4,"),
    (lambda: fmt.fp8_output_scale(torch.ones(3), torch.ones(3), 0.5), "headroom must be >= 1"),
    (lambda: fmt.fp8_output_scale(torch.zeros(3), torch.ones(3), 4.0), "finite and > 0, got 0.0"),
    (lambda: fmt.fp8_output_scale(torch.ones(2), torch.zeros(2), 4.0), "finite and > 0, got 0.0"),
    (lambda: fmt.fp8_output_scale(torch.tensor([1.0, math.inf]), torch.ones(2), 4.0), "finite and > 0, got inf"),
])
def test_fp8_output_scale_bad_input_raises(call, match):
    with pytest.raises(TriforceError, match=match):
        call()


# ── NVFP4 ─────────────────────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("x, code", [
    (0.0, 0), (0.25, 0), (0.2501, 1), (0.5, 1), (0.75, 2), (1.25, 2), (1.26, 3), (1.75, 4), (2.5, 4), (2.51, 5),
    (3.5, 6), (5.0, 6), (5.01, 7), (6.0, 7), (1e6, 7), (-0.5, 9), (-0.1, 8), (-6.0, 15), (-1e6, 15), (-3.4, 13),
])
def test_e2m1_round_to_nearest_even_and_saturate(x, code):
    assert fmt.e2m1_encode(torch.tensor([x])).item() == code


def test_e2m1_decode_encode_round_trip():
    codes = _u8([c for c in range(16) if c != 8])  # 8 is -0, which re-encodes as +0
    values = fmt.e2m1_decode(codes)
    assert values[:8].tolist() == list(fmt.E2M1_VALUES)
    assert torch.equal(fmt.e2m1_encode(values), codes)


def test_nvfp4_exact_on_hand_made_block():
    row = torch.tensor([6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.0, -6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0])
    g = torch.tensor([1.0])
    packed, sf = fmt.quantize_nvfp4(row.reshape(1, 16), g)
    assert sf.float().tolist() == [[1.0]]
    assert packed[0].tolist() == [0x67, 0x45, 0x23, 0x01, 0xEF, 0xCD, 0xAB, 0x09]
    assert torch.equal(fmt.dequantize_nvfp4(packed, sf, g)[0], row)


def test_nvfp4_block_scale_and_global_scale_exact():
    # amax 24 with g = 2: sf = e4m3(24 * 2/6) = 8; 24 * (2/8) = 6 -> code 7; 5 * 0.25 = 1.25 -> 1.0 (tie to even).
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 16] = 24.0, 5.0, 0.0
    packed, sf = fmt.quantize_nvfp4(x, torch.tensor([2.0]))
    assert sf.float().tolist() == [[8.0, 0.0]]  # the all-zero block gets scale 0
    assert packed[0, 0].item() == 0x27 and packed[0, 8:].sum() == 0
    assert fmt.dequantize_nvfp4(packed, sf, torch.tensor([2.0]))[0, :2].tolist() == [24.0, 4.0]


def _nvfp4_error_bound(x, sf, g):
    """Largest legal error per element: half the widest E2M1 gap (1.0) in block units, or the saturation excess."""
    unit = (sf.float() / g).repeat_interleave(fmt.NVFP4_BLOCK, dim=1)
    return torch.maximum(unit, x.abs() - fmt.E2M1_MAX * unit) * (1 + 1e-6)


def test_nvfp4_dequant_error_bound_random():
    x = torch.randn(64, 1024) * torch.logspace(-2, 2, 64)[:, None]
    g = fmt.nvfp4_global_scale(x.abs().max().item())
    packed, sf = fmt.quantize_nvfp4(x, g)
    deq = fmt.dequantize_nvfp4(packed, sf, g)
    assert bool(((deq - x).abs() <= _nvfp4_error_bound(x, sf, g)).all())
    assert ((deq - x).norm() / x.norm()).item() < 0.12


def test_nvfp4_large_activations_need_the_global_scale():
    """|x| up to 3e4: without a global scale (g = 1) every block with amax > 448*6 saturates its E4M3 scale at 448
    and its large values clip to 2688; g = 448*6/amax keeps the largest block scale exactly at 448."""
    x = torch.randn(16, 512) * 1e3
    x[:, ::37] = torch.empty(16, 14).uniform_(-3e4, 3e4)
    x[0, 0] = 3e4

    no_global = torch.tensor([1.0])
    packed, sf = fmt.quantize_nvfp4(x, no_global)
    deq = fmt.dequantize_nvfp4(packed, sf, no_global)
    assert sf.float().max() == 448.0 and deq.abs().max() == 448.0 * 6
    assert ((deq - x).norm() / x.norm()).item() > 0.5

    g = fmt.nvfp4_global_scale(x.abs().max().item())
    packed, sf = fmt.quantize_nvfp4(x, g)
    deq = fmt.dequantize_nvfp4(packed, sf, g)
    assert sf.float().max() == 448.0
    assert ((deq - x).norm() / x.norm()).item() < 0.12
    assert bool(((deq - x).abs() <= _nvfp4_error_bound(x, sf, g)).all())


def test_nvfp4_gemm_alpha_undoes_both_global_scales():
    """What the block-scaled GEMM computes (codes times block scales, times alpha) equals dequant(a) @ dequant(b)^T."""
    a, b = torch.randn(8, 256) * 50, torch.randn(16, 256) * 0.02
    g_a, g_b = fmt.nvfp4_global_scale(a.abs().max().item()), fmt.nvfp4_global_scale(b.abs().max().item())
    (qa, sfa), (qb, sfb) = fmt.quantize_nvfp4(a, g_a), fmt.quantize_nvfp4(b, g_b)
    scaled = lambda q, sf: (fmt.e2m1_decode(fmt.unpack_nibbles(q)).reshape(q.shape[0], -1, 16)
                            * sf.float()[..., None]).reshape(q.shape[0], -1)
    gemm = fmt.nvfp4_gemm_alpha(g_a, g_b) * (scaled(qa, sfa).double() @ scaled(qb, sfb).double().T)
    reference = fmt.dequantize_nvfp4(qa, sfa, g_a).double() @ fmt.dequantize_nvfp4(qb, sfb, g_b).double().T
    assert torch.allclose(gemm, reference, rtol=1e-5, atol=1e-5)  # fp32 scales: the formula, not rounding
    assert fmt.nvfp4_gemm_alpha(torch.tensor([2.0]), torch.tensor([4.0])).tolist() == [0.125]


@pytest.mark.parametrize("call, match", [
    (lambda: fmt.quantize_nvfp4(torch.randn(4, 40), torch.tensor([1.0])), "K=40 is not a multiple of 16"),
    (lambda: fmt.quantize_nvfp4(torch.randn(64), torch.tensor([1.0])), "expected a 2-D"),
    (lambda: fmt.nvfp4_global_scale(0.0), "amax must be finite and > 0"),
    (lambda: fmt.dequantize_nvfp4(_u8([[0] * 8]), torch.zeros(1, 2), torch.tensor([1.0])), "block scales shape"),
])
def test_nvfp4_bad_input_raises(call, match):
    with pytest.raises(TriforceError, match=match):
        call()


# ── scale-factor swizzle (CUTLASS SM100 block-scaled layout) ──────────────────────────────────────────────────────
def _cutlass_sf_offset(row: int, kblock: int, k: int) -> int:
    """Byte offset of scale (row, kblock), read off Sm1xxBlockScaledBasicChunk's K-major SfAtom:
    Shape ((32, 4), (16, 4)) Stride ((16, 4), (0, 1)) - row = r0 + 32*r1, column c - tiled by tile_to_shape with
    Step<_2,_1,_3> (K tiles fastest, then M tiles), 512 bytes per atom."""
    k_tiles = math.ceil(k // 16 / 4)
    atom = (row // 128) * k_tiles + kblock // 4
    return atom * 512 + (row % 32) * 16 + ((row % 128) // 32) * 4 + kblock % 4


@pytest.mark.parametrize("rows, k, size", [(10, 2048, 16384), (300, 4304, 104448), (128, 64, 512), (1, 16, 512)])
def test_sf_bytes_padding(rows, k, size):
    assert fmt.nvfp4_sf_bytes(rows, k) == size


@pytest.mark.parametrize("rows, k", [(10, 2048), (300, 4304), (129, 80)])
def test_swizzle_matches_cutlass_index_formula(rows, k):
    sf = torch.randint(1, 256, (rows, k // 16), dtype=torch.int32).to(torch.uint8)
    swizzled = fmt.swizzle_block_scales(sf)
    assert swizzled.numel() == fmt.nvfp4_sf_bytes(rows, k)
    offsets = torch.tensor([[_cutlass_sf_offset(r, kb, k) for kb in range(k // 16)] for r in range(rows)])
    assert torch.equal(swizzled[offsets], sf)
    covered = torch.zeros_like(swizzled, dtype=torch.bool)
    covered[offsets.flatten()] = True
    assert swizzled[~covered].sum() == 0  # padding is zero
    assert torch.equal(fmt.unswizzle_block_scales(swizzled, rows, k).view(torch.uint8), sf)


def test_swizzle_accepts_e4m3_and_round_trips_real_scales():
    x = torch.randn(200, 4304)
    g = fmt.nvfp4_global_scale(x.abs().max().item())
    packed, sf = fmt.quantize_nvfp4(x, g)
    back = fmt.unswizzle_block_scales(fmt.swizzle_block_scales(sf), 200, 4304)
    assert torch.equal(fmt.dequantize_nvfp4(packed, back, g), fmt.dequantize_nvfp4(packed, sf, g))


def test_int4_g128_bytes_are_the_packed_codes_and_scales():
    packed, scales = fmt.quantize_int4_g128(torch.randn(48, 384))
    assert fmt.int4_g128_bytes(48, 384) == packed.numel() * packed.element_size() + scales.numel() * scales.element_size()
    with pytest.raises(TriforceError, match="K a multiple of 128"):
        fmt.int4_g128_bytes(48, 200)


@pytest.mark.parametrize("call, match", [
    (lambda: fmt.nvfp4_sf_bytes(10, 24), "K=24 is not a multiple of 16"),
    (lambda: fmt.nvfp4_sf_bytes(0, 64), "must be positive"),
    (lambda: fmt.unswizzle_block_scales(torch.zeros(100, dtype=torch.uint8), 10, 64), "expected 512 uint8 bytes"),
    (lambda: fmt.swizzle_block_scales(torch.zeros(4, dtype=torch.uint8)), r"expected \[rows, K//16\]"),
])
def test_swizzle_bad_input_raises(call, match):
    with pytest.raises(TriforceError, match=match):
        call()


@pytest.mark.compile
def test_swizzle_matches_cutlass_layout_compiled(tmp_path):
    """Evaluate CUTLASS's own tile_atom_to_shape_SFA layout (host code, ~10 s of nvcc) and compare every offset."""
    import cutlass_library

    nvcc = shutil.which("nvcc")
    assert nvcc, "nvcc not on PATH"
    include = Path(cutlass_library.__file__).parent / "source" / "include"
    exe = tmp_path / "sf_layout_probe"
    probe = Path(__file__).parent / "data" / "sf_layout_probe.cu"
    subprocess.run([nvcc, "-std=c++17", f"-I{include}", "-o", str(exe), str(probe)], check=True)
    for rows, k in [(10, 2048), (300, 4304), (129, 80)]:
        lines = subprocess.run([str(exe), str(rows), str(k)], capture_output=True, text=True, check=True).stdout
        size, *entries = lines.split("\n")
        assert int(size) == fmt.nvfp4_sf_bytes(rows, k)
        sf = torch.randint(1, 256, (rows, k // 16), dtype=torch.int32).to(torch.uint8)
        swizzled = fmt.swizzle_block_scales(sf)
        table = torch.tensor([[int(v) for v in e.split()] for e in entries if e])
        assert torch.equal(swizzled[table[:, 2]], sf[table[:, 0], table[:, 1]])


# ── what the fused kernels compute before quantizing ──────────────────────────────────────────────────────────────
def test_gemma_rmsnorm_exact_values():
    x = torch.tensor([[3.0, 4.0]])
    y = fmt.gemma_rmsnorm(x, torch.tensor([0.0, 1.0]), eps=0.0)
    inv_rms = 1 / math.sqrt(12.5)
    assert torch.allclose(y, torch.tensor([[3 * inv_rms, 8 * inv_rms]]), rtol=1e-6)


def test_geglu_tanh_values():
    gate_up = torch.tensor([[0.0, 1.0, -1.0, 5.0, 2.0, -3.0]])  # gate [0, 1, -1], up [5, 2, -3]
    gelu = lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
    expected = torch.tensor([[0.0, gelu(1.0) * 2, gelu(-1.0) * -3]])
    assert torch.allclose(fmt.geglu_tanh(gate_up), expected, rtol=1e-6)

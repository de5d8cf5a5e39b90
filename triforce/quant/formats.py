"""CPU references of the quantized formats: they *define* what checkpoints store and what the CUDA kernels produce.

Formats (the canonical ones of the kernel package cutlass_sm110/; every kernel is tested against these functions):
- INT4 W4A16: symmetric signed int4 in [-8, 7], groups of 128 along K, bf16 scales; two codes per byte along K,
  low nibble = even k. w ~= q * scale.
- FP8 E4M3: weights per output channel (fp32 scale per row), activations per tensor (the kernels take inv_scale).
  Values saturate to +-448 (never NaN).
- NVFP4: E2M1 codes (sign bit 3; magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6), two per byte along K, low nibble = even k;
  16-element blocks along K with an E4M3 block scale, and a per-tensor fp32 global scale g:
  block_sf = e4m3(amax_block * (g / 6)), q = round_e2m1(x * (g / block_sf)), x ~= q * block_sf / g.
  The operation order (one division per block) is part of the definition: the CUDA kernels follow it exactly, so
  their codes are bit-identical to these for identical fp32 inputs.
- Block scales are stored in CUTLASS's SM100 block-scaled layout (cutlass/detail/sm100_blockscaled_layout.hpp,
  Sm1xxBlockScaledBasicChunk, K-major): atoms of 128 rows x 4 scale columns = 512 bytes, rows padded to 128 and
  K/16 padded to 4, atoms ordered K-fastest. Inside an atom, row r = 32*r1 + r0 and column c sit at r0*16 + r1*4 + c.

All math is fp32; rounding is round-to-nearest-even everywhere.
"""

from __future__ import annotations

import math

import torch

from ..errors import TriforceError

INT4_GROUP = 128
INT4_MIN, INT4_MAX = -8, 7
FP8_E4M3_MAX = 448.0
E2M1_MAX = 6.0
NVFP4_BLOCK = 16
# E2M1 magnitude of each 3-bit code (bit 3 is the sign).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# CUTLASS SM100 block-scaled scale-factor atom: 128 rows x 4 scale columns.
SF_ATOM_ROWS, SF_ATOM_COLS = 128, 4
SF_ATOM_BYTES = SF_ATOM_ROWS * SF_ATOM_COLS


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise TriforceError(message)


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def _require_2d_k_multiple(x: torch.Tensor, multiple: int, what: str) -> tuple[int, int]:
    _require(x.dim() == 2, f"{what}: expected a 2-D [rows, K] tensor, got shape {tuple(x.shape)}")
    rows, k = x.shape
    _require(k % multiple == 0, f"{what}: K={k} is not a multiple of {multiple}; pad K or pick another format")
    return rows, k


# ── nibbles ───────────────────────────────────────────────────────────────────────────────────────────────────────
def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 16) of shape [..., K] -> uint8 [..., K//2]; even k in the low nibble, odd k in the high."""
    _require(codes.dtype == torch.uint8, f"pack_nibbles: expected uint8 codes, got {codes.dtype}")
    _require(codes.shape[-1] % 2 == 0, f"pack_nibbles: last dimension {codes.shape[-1]} is odd")
    _require(bool((codes < 16).all()), "pack_nibbles: codes must be 4-bit (< 16)")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_nibbles: uint8 [..., K//2] -> uint8 codes [..., K]."""
    _require(packed.dtype == torch.uint8, f"unpack_nibbles: expected uint8, got {packed.dtype}")
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


# ── INT4, group 128 (W4A16) ───────────────────────────────────────────────────────────────────────────────────────
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Signed int4 values in [-8, 7] (any integer dtype) [N, K] -> canonical uint8 [N, K//2] (two's complement)."""
    _require(not q.is_floating_point(), f"pack_int4: expected integer values, got {q.dtype}")
    _require(bool(((q >= INT4_MIN) & (q <= INT4_MAX)).all()), "pack_int4: values outside [-8, 7]")
    return pack_nibbles((q.to(torch.int16) & 0xF).to(torch.uint8))


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Canonical uint8 [N, K//2] -> int8 [N, K] in [-8, 7] (sign-extends each nibble)."""
    nibbles = unpack_nibbles(packed).to(torch.int16)
    return torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8)


def quantize_int4_g128(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [N, K] -> (uint8 [N, K//2], bf16 scales [N, K//128]): scale = amax/7 rounded to bf16 first, then
    q = round(w / scale) clamped to [-8, 7], so that dequantization with the stored scale is the reference."""
    n, k = _require_2d_k_multiple(w, INT4_GROUP, "quantize_int4_g128")
    groups = w.float().reshape(n, k // INT4_GROUP, INT4_GROUP)
    scales = (groups.abs().amax(-1) / INT4_MAX).to(torch.bfloat16)
    divisor = torch.where(scales > 0, scales.float(), torch.ones_like(scales, dtype=torch.float32))
    q = torch.round(groups / divisor[..., None]).clamp(INT4_MIN, INT4_MAX).to(torch.int8)
    return pack_int4(q.reshape(n, k)), scales


def int4_g128_bytes(n: int, k: int) -> int:
    """Bytes of an [N, K] int4 group-128 weight: the codes (K/2 a row) and a bf16 scale a group (what a W4A16 GEMM
    streams; the benchmarks read its time against copy bandwidth on these bytes)."""
    _require(n > 0 and k > 0 and k % INT4_GROUP == 0, f"int4_g128_bytes: N={n}, K={k} (K a multiple of {INT4_GROUP})")
    return n * k // 2 + n * (k // INT4_GROUP) * 2


def dequantize_int4_g128(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(uint8 [N, K//2], bf16 [N, K//128]) -> fp32 weights [N, K] = q * scale."""
    q = unpack_int4(packed).float()
    n, k = q.shape
    _require(tuple(scales.shape) == (n, k // INT4_GROUP),
             f"dequantize_int4_g128: scales shape {tuple(scales.shape)} != {(n, k // INT4_GROUP)}")
    return (q.reshape(n, -1, INT4_GROUP) * scales.float()[..., None]).reshape(n, k)


# ── INT4 in MMA-fragment order (the wheel's few-row kernel, w4a16_skinny.cu) ─────────────────────────────────────
# One 16-byte lane fragment per (16-row tile, 64-k chunk, lane g*4 + t): rows g and g + 8, k in [16t, 16t + 16) of
# the chunk; word s holds the four k of MMA step s (16t + 4s + 0..3), nibble 4j + 2*j2 + half = row g + 8*half,
# k 16t + 4s + 2*j2 + j, as u = q + 8 (offset binary, so 0x4300 | u is bf16 128 + u).
FRAGMENT_ROWS, FRAGMENT_K = 16, 64


def _fragment_codes(qweight: torch.Tensor) -> torch.Tensor:
    """Canonical int4 [N, K/2] -> offset-binary codes viewed as [N/16, half, g, K/64, t, s, j2, j]."""
    _require(qweight.dtype == torch.uint8 and qweight.dim() == 2, "pack_int4_fragments: expected uint8 [N, K/2]")
    n, k = qweight.shape[0], qweight.shape[1] * 2
    _require(n % FRAGMENT_ROWS == 0 and k % INT4_GROUP == 0,
             f"pack_int4_fragments: needs N % {FRAGMENT_ROWS} == 0 and K % {INT4_GROUP} == 0 (got N={n}, K={k})")
    return (unpack_nibbles(qweight) ^ 8).reshape(n // 16, 2, 8, k // FRAGMENT_K, 4, 4, 2, 2)


def pack_int4_fragments(qweight: torch.Tensor) -> torch.Tensor:
    """Canonical int4 [N, K/2] -> uint8 [N/16, K/64, 512]: each lane's A fragments of a 16 x 64 chunk in 16 bytes."""
    codes = _fragment_codes(qweight).permute(0, 3, 2, 4, 5, 7, 6, 1)   # tile, chunk, g, t, s, j, j2, half
    n, k = qweight.shape[0], qweight.shape[1] * 2
    return pack_nibbles(codes.reshape(n // 16, k // FRAGMENT_K, 32 * 4 * 8)).contiguous()


def unpack_int4_fragments(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4_fragments: uint8 [N/16, K/64, 512] -> canonical int4 [N, K/2]."""
    _require(packed.dtype == torch.uint8 and packed.dim() == 3 and packed.shape[2] == 512,
             f"unpack_int4_fragments: expected uint8 [N/16, K/64, 512], got {tuple(packed.shape)}")
    tiles, chunks = packed.shape[:2]
    codes = unpack_nibbles(packed).reshape(tiles, chunks, 8, 4, 4, 2, 2, 2)  # tile, chunk, g, t, s, j, j2, half
    canonical = codes.permute(0, 7, 2, 1, 3, 4, 6, 5).reshape(tiles * 16, chunks * FRAGMENT_K) ^ 8
    return pack_nibbles(canonical)


def interleave_gate_up(t: torch.Tensor) -> torch.Tensor:
    """Rows [gate (I), up (I)] -> 8-row blocks gate[8p:8p+8], up[8p:8p+8]: a fragment tile's rows g and g + 8 are
    then gate and up of one feature, so the few-row kernel applies GeGLU in its registers."""
    _require(t.shape[0] % 16 == 0, f"interleave_gate_up: rows {t.shape[0]} are not gate + up of a multiple of 8")
    rows = t.shape[0]
    return t.reshape(2, rows // 16, 8, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


def pack_scales_fragments(scales: torch.Tensor) -> torch.Tensor:
    """bf16 scales [N, K/128] -> [N/16, K/128, 16]: a tile's 16 scales of one group in 32 contiguous bytes."""
    _require(scales.dim() == 2 and scales.shape[0] % FRAGMENT_ROWS == 0,
             f"pack_scales_fragments: expected [N, K/128] with N % 16 == 0, got {tuple(scales.shape)}")
    n, groups = scales.shape
    return scales.reshape(n // 16, 16, groups).transpose(1, 2).contiguous()


# ── FP8 E4M3 ──────────────────────────────────────────────────────────────────────────────────────────────────────
def e4m3_saturate(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> float8_e4m3fn, round-to-nearest-even, finite values beyond +-448 clamped to +-448."""
    return x.float().clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_fp8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [N, K] -> (float8_e4m3fn [N, K], fp32 per-output-channel scale [N]); scale = amax_row / 448.
    An all-zero row gets scale 0 and zero codes."""
    _require(w.dim() == 2, f"quantize_fp8_weight: expected [N, K], got shape {tuple(w.shape)}")
    scale = w.float().abs().amax(-1) / FP8_E4M3_MAX
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    return e4m3_saturate(w.float() / divisor[:, None]), scale


def dequantize_fp8_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(float8_e4m3fn [N, K], fp32 [N]) -> fp32 [N, K]."""
    return q.float() * scale.float()[:, None]


def fp8_activation_scale(amax: float) -> torch.Tensor:
    """Per-tensor activation scale from a calibrated amax: scale = amax / 448 (fp32 tensor [1]).
    The kernels take inv_scale = 1 / scale; the GEMM multiplies its result by scale."""
    _require(math.isfinite(amax) and amax > 0, f"fp8_activation_scale: amax must be finite and > 0, got {amax}")
    return torch.tensor([amax / FP8_E4M3_MAX], dtype=torch.float32)


def fp8_output_scale(chan_amax: torch.Tensor, weight_scale: torch.Tensor, headroom: float) -> torch.Tensor:
    """Per-tensor scale of an FP8 GEMM's E4M3 output, whose per-channel weight scales are deferred: the GEMM writes
    y_c / weight_scale_c / scale, so scale = headroom * max_c(chan_amax_c / weight_scale_c) / 448 (fp32 tensor [1]).
    chan_amax: the calibrated per-channel abs-max of the layer's real output (bias excluded); all-zero weight rows
    (scale 0) output 0 and are skipped. headroom >= 1 leaves room above the calibrated range."""
    _require(chan_amax.shape == weight_scale.shape, f"fp8_output_scale: {tuple(chan_amax.shape)} channel abs-maxes "
                                                    f"for {tuple(weight_scale.shape)} weight scales")
    _require(headroom >= 1, f"fp8_output_scale: headroom must be >= 1, got {headroom}")
    live = weight_scale > 0
    amax = float((chan_amax.float()[live] / weight_scale.float()[live]).max()) if live.any() else 0.0
    _require(math.isfinite(amax) and amax > 0, f"fp8_output_scale: the raw output abs-max must be finite and > 0, got {amax}")
    return torch.tensor([headroom * amax / FP8_E4M3_MAX], dtype=torch.float32)


def quantize_fp8_activation(x: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    """Activations (any shape) -> float8_e4m3fn = saturate(x * inv_scale), x taken in fp32."""
    return e4m3_saturate(x.float() * inv_scale.float().reshape(()))


# ── NVFP4: E2M1 codes, E4M3 block scales, fp32 global scale ───────────────────────────────────────────────────────
def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> uint8 E2M1 codes (bit 3 sign, bits 0-2 magnitude index), round-to-nearest-even, saturating at 6.

    Between codes i and i+1 a tie goes to the even code: the threshold is exclusive when i is even and inclusive
    when i is odd. The sign bit follows x < 0 (so small negatives become -0, code 8). NaN maps to code 0."""
    mag = x.float().abs()
    midpoints = [(a + b) / 2 for a, b in zip(E2M1_VALUES, E2M1_VALUES[1:])]
    code = torch.zeros_like(mag, dtype=torch.uint8)
    for lower_code, mid in enumerate(midpoints):
        passed = (mag >= mid) if lower_code % 2 else (mag > mid)
        code += passed.to(torch.uint8)
    return code | ((x < 0).to(torch.uint8) << 3)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """uint8 E2M1 codes -> fp32 values."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    mag = table[(codes & 0x7).long()]
    return torch.where((codes & 0x8) > 0, -mag, mag)


def nvfp4_global_scale(amax: float) -> torch.Tensor:
    """Per-tensor global scale g = 448 * 6 / amax (fp32 tensor [1]): the largest block scale then lands on 448,
    so E4M3 block scales cannot saturate however large the activations are."""
    _require(math.isfinite(amax) and amax > 0, f"nvfp4_global_scale: amax must be finite and > 0, got {amax}")
    return torch.tensor([FP8_E4M3_MAX * E2M1_MAX / amax], dtype=torch.float32)


def nvfp4_gemm_alpha(a_global_scale: torch.Tensor, b_global_scale: torch.Tensor) -> torch.Tensor:
    """alpha of nvfp4_gemm (fp32 [1]): the block-scaled GEMM sums q_a*sf_a * q_b*sf_b, so alpha = 1 / (g_a * g_b)."""
    return (1.0 / (a_global_scale.float().reshape(1) * b_global_scale.float().reshape(1))).to(torch.float32)


def nvfp4_block_scales(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] -> E4M3 block scales [M, K//16] (linear layout): e4m3(amax_block * (g / 6))."""
    m, k = _require_2d_k_multiple(x, NVFP4_BLOCK, "nvfp4_block_scales")
    amax = x.float().reshape(m, k // NVFP4_BLOCK, NVFP4_BLOCK).abs().amax(-1)
    g_over_6 = global_scale.float().reshape(()) / E2M1_MAX
    return e4m3_saturate(amax * g_over_6)


def quantize_nvfp4(x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (packed E2M1 uint8 [M, K//2], E4M3 block scales [M, K//16] in linear layout).
    Each block is multiplied by g / block_sf (0 for an all-zero block) before rounding to E2M1."""
    m, k = _require_2d_k_multiple(x, NVFP4_BLOCK, "quantize_nvfp4")
    sf = nvfp4_block_scales(x, global_scale).float()
    g = global_scale.float().reshape(())
    to_code_scale = torch.where(sf > 0, g / sf, torch.zeros_like(sf))
    blocks = x.float().reshape(m, k // NVFP4_BLOCK, NVFP4_BLOCK) * to_code_scale[..., None]
    return pack_nibbles(e2m1_encode(blocks.reshape(m, k))), sf.to(torch.float8_e4m3fn)


def _as_e4m3(sf: torch.Tensor) -> torch.Tensor:
    """Block scales given as float8_e4m3fn or as their raw uint8 bytes."""
    return sf.view(torch.float8_e4m3fn) if sf.dtype == torch.uint8 else sf


def dequantize_nvfp4(packed: torch.Tensor, block_sf: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """(uint8 [M, K//2], block scales [M, K//16] linear, as e4m3 or uint8 bytes, g) -> fp32 [M, K] = q * sf / g."""
    values = e2m1_decode(unpack_nibbles(packed))
    m, k = values.shape
    sf = _as_e4m3(block_sf).float()
    _require(tuple(sf.shape) == (m, k // NVFP4_BLOCK),
             f"dequantize_nvfp4: block scales shape {tuple(sf.shape)} != {(m, k // NVFP4_BLOCK)}")
    per_block = sf / global_scale.float().reshape(())
    return (values.reshape(m, -1, NVFP4_BLOCK) * per_block[..., None]).reshape(m, k)


# ── CUTLASS SM100 block-scaled scale-factor layout ────────────────────────────────────────────────────────────────
def nvfp4_sf_bytes(rows: int, k: int) -> int:
    """Bytes of a swizzled scale-factor tensor for a [rows, K] operand: rows padded to 128, K/16 padded to 4."""
    _require(rows > 0 and k > 0, f"nvfp4_sf_bytes: rows={rows} and K={k} must be positive")
    _require(k % NVFP4_BLOCK == 0, f"nvfp4_sf_bytes: K={k} is not a multiple of {NVFP4_BLOCK}")
    return _round_up(rows, SF_ATOM_ROWS) * _round_up(k // NVFP4_BLOCK, SF_ATOM_COLS)


def swizzle_block_scales(block_sf: torch.Tensor) -> torch.Tensor:
    """Linear block scales [rows, K//16] (e4m3 or uint8) -> swizzled uint8 [nvfp4_sf_bytes(rows, K)], padding 0.

    The padded [Mp, Kp] grid is viewed as (row tile, r1, r0, col tile, c) with row = 128*tile + 32*r1 + r0 and
    col = 4*tile + c, then laid out as (row tile, col tile, r0, r1, c): the CUTLASS atom order."""
    _require(block_sf.dim() == 2, f"swizzle_block_scales: expected [rows, K//16], got {tuple(block_sf.shape)}")
    rows, cols = block_sf.shape
    padded_rows, padded_cols = _round_up(rows, SF_ATOM_ROWS), _round_up(cols, SF_ATOM_COLS)
    grid = torch.zeros(padded_rows, padded_cols, dtype=torch.uint8)
    grid[:rows, :cols] = _as_e4m3(block_sf).view(torch.uint8)
    tiles = grid.view(padded_rows // SF_ATOM_ROWS, 4, 32, padded_cols // SF_ATOM_COLS, SF_ATOM_COLS)
    return tiles.permute(0, 3, 2, 1, 4).contiguous().view(-1)


def unswizzle_block_scales(swizzled: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """Swizzled uint8 bytes of a [rows, K] operand -> linear block scales float8_e4m3fn [rows, K//16]."""
    size = nvfp4_sf_bytes(rows, k)
    _require(swizzled.dtype == torch.uint8 and swizzled.numel() == size,
             f"unswizzle_block_scales: expected {size} uint8 bytes for rows={rows}, K={k}, "
             f"got {swizzled.numel()} {swizzled.dtype}")
    padded_rows, padded_cols = _round_up(rows, SF_ATOM_ROWS), size // _round_up(rows, SF_ATOM_ROWS)
    tiles = swizzled.reshape(padded_rows // SF_ATOM_ROWS, padded_cols // SF_ATOM_COLS, 32, 4, SF_ATOM_COLS)
    grid = tiles.permute(0, 3, 2, 1, 4).reshape(padded_rows, padded_cols)
    return grid[:rows, : k // NVFP4_BLOCK].contiguous().view(torch.float8_e4m3fn)


# ── what the fused activation-quantization kernels compute before quantizing (fp32) ─────────────────────────────
def gemma_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Gemma RMSNorm in fp32: x * rsqrt(mean(x^2) + eps) * (1 + w)."""
    xf = x.float()
    inv_rms = torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return xf * inv_rms * (1.0 + weight.float())


def geglu_tanh(gate_up: torch.Tensor) -> torch.Tensor:
    """GeGLU in fp32 on [M, 2I] (gate first, up second): gelu_tanh(gate) * up -> [M, I]."""
    _require(gate_up.shape[-1] % 2 == 0, f"geglu_tanh: last dimension {gate_up.shape[-1]} is odd")
    gate, up = gate_up.float().chunk(2, dim=-1)
    return torch.nn.functional.gelu(gate, approximate="tanh") * up

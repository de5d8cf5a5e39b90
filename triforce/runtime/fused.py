"""Fused elementwise kernels of the Plan A engine (Triton): each replaces 3-6 eager launches inside the graph.

residual add + (gated) + RMS/Layer norm (+ adaRMS scale/shift), RoPE + KV-cache write, GeGLU. fp32 math, bf16 out.
They also run under TRITON_INTERPRET=1 on a CPU, which is how CI checks them against the reference formulas.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..quant.formats import INT4_GROUP

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


class _Dependent:
    """Whether launches use programmatic dependent launch now (set by dependent_launches)."""
    on = False


@contextlib.contextmanager
def dependent_launches():
    """Inside, the denoise chain's kernels (add_norm, qkv_rope, mqa_attention_split, skinny_linear, gate_up_geglu,
    skinny_w4a16, euler_tail) launch with programmatic dependent launch (sm_90+): each is launched while the kernel
    before it still runs, waits for it on the GPU (griddepcontrol.wait), then lets the next one launch; at most two
    of the chain overlap, and no launch waits for the previous kernel's end (W4A16 expert layer 24.9 vs 30.3 us:
    bench/results/expert_layer-*-s6-launch-modes.json). Prefetching every kernel's weights into L2 before its wait
    measured slower (same records); only the QKV + RoPE kernel's int4 weights are (qkv_rope(prefetch=...), session
    13). Loads of what the chain never writes (norm vectors, rotary angles) go before the wait."""
    if INTERPRETED:
        raise ValueError("dependent launches need a GPU (griddepcontrol, sm_90+); the Triton interpreter has none")
    saved, _Dependent.on = _Dependent.on, True
    try:
        yield
    finally:
        _Dependent.on = saved


CARVEOUT_DEFAULT = -1                      # the driver's choice of the L1 / shared-memory split, per launch
_CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9


def check_carveout(percent: int) -> None:
    if not (percent == CARVEOUT_DEFAULT or 0 <= percent <= 100):
        raise ValueError(f"carveout: a percent 0..100 or {CARVEOUT_DEFAULT} (the driver's choice), got {percent}")


def _loaded(fn, keep=lambda kernel: True):
    """The compiled kernels of Triton function fn (those `keep` accepts), loaded on the GPU."""
    for cache in fn.device_caches.values():
        for kernel in list(cache[0].values()):
            if keep(kernel):
                kernel._init_handles()
                yield kernel


def _chain_kernels():
    """The compiled kernels that share the denoise chain's SMs: this package's Triton functions (fused,
    expert_layer) specialized for programmatic dependent launch (constexpr PDL true), and the L2 lookahead's
    prefetches launched beside the chain."""
    from . import expert_layer

    for module in (globals(), vars(expert_layer)):
        for fn in list(module.values()):
            if isinstance(fn, triton.runtime.JITFunction) and "PDL" in fn.arg_names:
                pdl = (fn.arg_names.index("PDL"),)
                yield from _loaded(fn, lambda kernel: kernel.src.constants.get(pdl))
    yield from _loaded(_l2_prefetch_kernel)


def set_chain_carveout(percent: int) -> int:
    """Ask for one L1 / shared-memory split (percent shared, or CARVEOUT_DEFAULT) in every compiled kernel of the
    dependent-launch chain (its PDL specializations; the same functions launched plain, in the prefix or vision,
    keep the driver's choice) and of the prefetches beside it; returns how many were set. Kernels that ask an SM for
    different splits may not run on it together, which the chain's early launches rely on. Call before capturing a
    graph."""
    check_carveout(percent)
    cuda = ctypes.CDLL("libcuda.so.1")
    count = 0
    try:
        kernels = list(_chain_kernels())
    except (AttributeError, KeyError, TypeError) as err:   # Triton's kernel cache is not what this reads
        raise RuntimeError(f"carveout: cannot read the compiled kernels of Triton {triton.__version__} ({err}); "
                           f"engine.set_carveout({CARVEOUT_DEFAULT}) leaves the split to the driver") from None
    for kernel in kernels:
        err = cuda.cuFuncSetAttribute(ctypes.c_void_p(kernel.function),
                                      _CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, ctypes.c_int(percent))
        if err:
            raise RuntimeError(f"carveout: cuFuncSetAttribute({kernel.name}, preferred carveout {percent}) failed "
                               f"with CUDA error {err}")
        count += 1
    return count


def launching_dependent() -> bool:
    """Whether kernels launched now are programmatic dependent launches (inside dependent_launches)."""
    return _Dependent.on


def _dependent() -> dict:
    """The launch keywords of a chain kernel: its PDL constexpr and Triton's launch_pdl option."""
    return {"PDL": _Dependent.on, "launch_pdl": _Dependent.on}


@triton.jit
def _await_previous(PDL: tl.constexpr):
    """With PDL: wait until the kernel before has finished and its writes are visible, then let the next launch.
    Nothing before this may read what the chain writes."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def _prefetch_l2(P, rows, stride, length, LINES: tl.constexpr):
    """Ask L2 for elements [0, length) of the rows P + rows * stride, one prefetch per 128-byte line (before a chain
    wait: the lines arrive while the kernel before still runs)."""
    per_line: tl.constexpr = 1024 // P.dtype.element_ty.primitive_bitwidth
    for c0 in range(0, length, LINES * per_line):
        cols = c0 + tl.arange(0, LINES) * per_line
        ptrs = P + rows[:, None] * stride + tl.where(cols < length, cols, 0)[None, :]
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                  is_pure=False, pack=1)


# How l2_prefetch asks L2 for the weights of a later chain kernel (L2Lookahead): one bulk prefetch a chunk through the
# TMA unit (cp.async.bulk.prefetch.L2, sm_90+). Session 19 also measured the same with an evict-last policy and one
# prefetch.global.L2 a 128-byte line; neither beat it, in the norms or beside the chain (engine_variants-plan*-
# *-s19-norm-lookahead.json, *-s19-lookahead-beside.json), so they were removed.
L2_PREFETCH_MAX_CHUNK = 0xFFFF << 4       # the sm_90 SASS (UBLKPF) keeps 16 bits of the size in 16-byte units
L2_PREFETCH_THREADS = 32                   # a program of l2_prefetch: one warp, one table row a thread
_BULK_PREFETCH = tl.constexpr("{ .reg .pred p; setp.ne.s32 p, $2, 0; "
                              "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }")


class L2Lookahead:
    """Tensors to ask into L2 ahead of the chain kernel that reads them (l2_prefetch): their bytes cut into
    16-byte-aligned chunks, one per thread of a launch of `programs` one-warp programs, as a device table of
    (address, bytes) rows; rows past the chunks are (0, 0). Built outside graph capture and kept alive with the graph
    that reads it."""

    def __init__(self, tensors, programs: int):
        slots = programs * L2_PREFETCH_THREADS
        bad = [f"{tuple(t.shape)} {t.dtype}" for t in tensors if not t.is_contiguous()]
        if bad or slots <= len(tensors):
            raise ValueError(f"L2 lookahead: contiguous tensors and more than {len(tensors)} prefetch threads "
                             f"expected, got {', '.join(bad) or 'contiguous tensors'}, {programs} programs")
        # each range trimmed to whole 16-byte units (bulk prefetches address them): at most 30 bytes a tensor left
        ranges = [(-(-t.data_ptr() // 16) * 16, (t.data_ptr() + t.numel() * t.element_size()) // 16 * 16)
                  for t in tensors]
        ranges = [(start, end - start) for start, end in ranges if end > start]
        total = sum(n for _, n in ranges)
        chunk = -(-max(1, -(-total // (slots - len(ranges)))) // 16) * 16
        if chunk > L2_PREFETCH_MAX_CHUNK:
            raise ValueError(f"L2 lookahead: {total} bytes over {programs} programs is more than "
                             f"{L2_PREFETCH_MAX_CHUNK} bytes a prefetch")
        rows = [(ptr + off, min(chunk, n - off)) for ptr, n in ranges for off in range(0, n, chunk)]
        table = torch.zeros(slots, 2, dtype=torch.int64)
        table[:len(rows)] = torch.tensor(rows, dtype=torch.int64).view(-1, 2)
        self.table = table.to(tensors[0].device)
        self.nbytes, self.chunk, self.programs = total, chunk, programs


@triton.jit
def _l2_prefetch_kernel(PF, THREADS: tl.constexpr):
    """This program's rows of an L2Lookahead table, one a thread, asked into L2 by bulk prefetches."""
    slot = tl.program_id(0) * THREADS + tl.arange(0, THREADS)
    addr = tl.load(PF + 2 * slot)
    size = tl.load(PF + 2 * slot + 1).to(tl.int32)
    tl.inline_asm_elementwise(_BULK_PREFETCH, "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1)


def l2_prefetch(lookahead: L2Lookahead) -> None:
    """Ask L2 for a lookahead's tensors: one plain launch of lookahead.programs one-warp programs. The launch lasts
    until its bytes have arrived, so it runs beside the chain on a stream of its own, never in it (issued from the
    chain's norms before their wait, the same prefetches cost Plan A's denoise 5.58-6.30 vs 4.73 ms,
    bench/results/engine_variants-plana-*-s19-norm-lookahead.json)."""
    _l2_prefetch_kernel[(lookahead.programs,)](lookahead.table, THREADS=L2_PREFETCH_THREADS,
                                               num_warps=L2_PREFETCH_THREADS // 32)


@triton.jit
def e4m3_range(x, QSCALE):
    """x times the static per-tensor activation scale, saturated to E4M3's range: what an FP8 GEMM's input kernel
    stores (the store converts)."""
    return tl.minimum(tl.maximum(x * tl.load(QSCALE), -448.0), 448.0)


@triton.jit
def _add_norm_kernel(X, Y, GATE, YB, SCALE, SHIFT, W, B, OUT, QSCALE, stride_x, stride_y, stride_out, N, eps,
                     HAS_Y: tl.constexpr, HAS_GATE: tl.constexpr, HAS_YB: tl.constexpr, HAS_SCALE: tl.constexpr,
                     HAS_SHIFT: tl.constexpr, LAYERNORM: tl.constexpr, QUANT: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    """One program per row. The per-column vectors (the step's adaRMS scale / shift, LayerNorm weights, a GEMM's
    deferred channel scale and bias: never written by the chain) load before the chain wait, so a miss to DRAM
    overlaps the kernel before (with qkv_rope's rotary angles: Plan A 10.52 vs 10.68 ms, Plan B unchanged, same
    run: bench/results/engine_variants-*-s13-early-constants*.json)."""
    cols = tl.arange(0, BLOCK)
    m = cols < N
    gate = tl.load(GATE + cols, mask=m, other=0.0).to(tl.float32) if HAS_Y and HAS_GATE else 1.0
    y_bias = tl.load(YB + cols, mask=m, other=0.0).to(tl.float32) if HAS_Y and HAS_YB else 0.0
    if LAYERNORM:
        scale = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        shift = tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
    else:
        scale = tl.load(SCALE + cols, mask=m, other=0.0).to(tl.float32) if HAS_SCALE else 1.0
        shift = tl.load(SHIFT + cols, mask=m, other=0.0).to(tl.float32) if HAS_SHIFT else 0.0
    _await_previous(PDL)
    row = tl.program_id(0)
    x = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_Y:
        x = x + (tl.load(Y + row * stride_y + cols, mask=m, other=0.0).to(tl.float32) * gate + y_bias)
        tl.store(X + row * stride_x + cols, x, mask=m)
    if LAYERNORM:
        mean = tl.sum(x, 0) / N
        xc = tl.where(m, x - mean, 0.0)
        h = xc * (1.0 / tl.sqrt(tl.sum(xc * xc, 0) / N + eps))
    else:
        h = x * (1.0 / tl.sqrt(tl.sum(x * x, 0) / N + eps))
    h = h * scale + shift
    if QUANT:   # FP8 E4M3 with a static per-tensor scale: the next GEMM reads it directly
        h = e4m3_range(h, QSCALE)
    tl.store(OUT + row * stride_out + cols, h.to(OUT.dtype.element_ty), mask=m)


def add_norm(x, out, y=None, gate=None, scale=None, shift=None, weight=None, bias=None, eps=1e-6, layernorm=False,
             quant_scale=None, y_bias=None):
    """x (fp32 residual, updated in place) += y [* gate] [+ y_bias]; out = norm(x) [* scale + shift] (RMS) or
    LayerNorm(w, b). gate / y_bias: a GEMM's deferred per-channel weight scales and its bias (FP8 layers).
    With quant_scale (fp32 [1], the inverse activation scale) out is FP8 E4M3 for an FP8 GEMM."""
    rows, n = x.shape
    dummy = x
    _add_norm_kernel[(rows,)](
        x, y if y is not None else dummy, gate if gate is not None else dummy, y_bias if y_bias is not None else dummy,
        scale if scale is not None else dummy, shift if shift is not None else dummy,
        weight if weight is not None else dummy, bias if bias is not None else dummy,
        out, quant_scale if quant_scale is not None else dummy, x.stride(0), y.stride(0) if y is not None else 0,
        out.stride(0), n, eps, HAS_Y=y is not None, HAS_GATE=gate is not None, HAS_YB=y_bias is not None,
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, LAYERNORM=layernorm, QUANT=quant_scale is not None,
        BLOCK=triton.next_power_of_2(n), num_warps=4 if n <= 1024 else 8, **_dependent())
    return out


@triton.jit
def _rope_qkv_kernel(QKV, POS, COS, SIN, QOUT, KC, VC, CS, S, kv_offset, stride_qkv,
                     H: tl.constexpr, D: tl.constexpr, HAS_CS: tl.constexpr, TOKENS: tl.constexpr):
    """One program per (block of TOKENS tokens, head): H query heads, then the key head (both rotated), then the
    value head."""
    s = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)[:, None]
    h = tl.program_id(1)
    half: tl.constexpr = D // 2
    i = tl.arange(0, half)[None, :]
    m = (s < S) & (i < half)
    src = QKV + s * stride_qkv + h * D
    x1 = tl.load(src + i, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(src + half + i, mask=m, other=0.0).to(tl.float32)
    if HAS_CS:   # an FP8 GEMM's per-output-channel weight scales, applied here instead of in its epilogue
        x1 = x1 * tl.load(CS + h * D + i)
        x2 = x2 * tl.load(CS + h * D + half + i)
    if h == H + 1:
        dst = VC + (kv_offset + s) * D
        tl.store(dst + i, x1.to(VC.dtype.element_ty), mask=m)
        tl.store(dst + half + i, x2.to(VC.dtype.element_ty), mask=m)
    else:
        pos = tl.load(POS + s, mask=s < S, other=0)
        cos = tl.load(COS + pos * half + i, mask=m, other=0.0)
        sin = tl.load(SIN + pos * half + i, mask=m, other=0.0)
        if h < H:
            dst = QOUT + (s * H + h) * D
        else:
            dst = KC + (kv_offset + s) * D
        tl.store(dst + i, (x1 * cos - x2 * sin).to(QOUT.dtype.element_ty), mask=m)
        tl.store(dst + half + i, (x2 * cos + x1 * sin).to(QOUT.dtype.element_ty), mask=m)


# tokens a program of rope_qkv takes (engine.set_prefix_rope_tokens measures the prefix's)
ROPE_TOKENS = (1, 2, 4, 8)


def rope_qkv(qkv, pos, cos, sin, q_out, k_cache, v_cache, kv_offset: int, heads: int, head_dim: int, channel_scale=None,
             tokens: int = 1):
    """qkv [S, (H+2)·D] -> q_out [S·H, D] (token-major, rotated), k_cache/v_cache rows kv_offset.. (k rotated).
    channel_scale: fp32 [(H+2)·D] multiplied into qkv first (an FP8 GEMM's deferred per-channel weight scales).
    tokens: how many tokens a program rotates (ROPE_TOKENS)."""
    if tokens not in ROPE_TOKENS:
        raise ValueError(f"rope_qkv: tokens a program must be one of {ROPE_TOKENS}, got {tokens}")
    rows = qkv.shape[0]
    _rope_qkv_kernel[(triton.cdiv(rows, tokens), heads + 2)](
        qkv, pos, cos, sin, q_out, k_cache, v_cache, channel_scale if channel_scale is not None else cos, rows,
        kv_offset, qkv.stride(0), H=heads, D=head_dim, HAS_CS=channel_scale is not None, TOKENS=tokens,
        num_warps=max(1, min(8, tokens * head_dim // 128)))


@triton.jit
def gelu_tanh_mul(g, u):
    """gelu_tanh(g) * u in fp32 (tanh(z) = 2 sigmoid(2z) - 1)."""
    z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
    return g * tl.sigmoid(2.0 * z) * u


@triton.jit
def _geglu_kernel(GU, OUT, QSCALE, CS, stride_gu, stride_out, I, QUANT: tl.constexpr, HAS_CS: tl.constexpr,
                  BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < I
    g = tl.load(GU + row * stride_gu + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(GU + row * stride_gu + I + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_CS:   # deferred per-channel weight scales of an FP8 gate/up GEMM
        g = g * tl.load(CS + cols, mask=m, other=0.0)
        u = u * tl.load(CS + I + cols, mask=m, other=0.0)
    h = gelu_tanh_mul(g, u)
    if QUANT:
        h = e4m3_range(h, QSCALE)
    tl.store(OUT + row * stride_out + cols, h.to(OUT.dtype.element_ty), mask=m)


def geglu(gate_up, out, quant_scale=None, channel_scale=None):
    """out = gelu_tanh(gate) * up for gate_up = [gate | up] along the last dim (FP8 out with quant_scale;
    channel_scale: fp32 [2I] deferred per-channel weight scales multiplied into gate_up first)."""
    rows, inter = out.shape
    block = 1024
    _geglu_kernel[(rows, triton.cdiv(inter, block))](
        gate_up, out, quant_scale if quant_scale is not None else gate_up,
        channel_scale if channel_scale is not None else gate_up, gate_up.stride(0), out.stride(0), inter,
        QUANT=quant_scale is not None, HAS_CS=channel_scale is not None, BLOCK=block, num_warps=4)
    return out


@triton.jit
def _gelu_kernel(X, OUT, QSCALE, CS, B, COLS, GELU: tl.constexpr, QUANT: tl.constexpr, HAS_CS: tl.constexpr,
                 HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    """One program per (row, block of columns) of a contiguous [rows, COLS] tensor."""
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < COLS
    offs = tl.program_id(0).to(tl.int64) * COLS + cols
    x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_CS:   # deferred per-channel weight scales and the bias of an FP8 GEMM
        x = x * tl.load(CS + cols, mask=m, other=0.0)
    if HAS_B:
        x = x + tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
    if GELU:
        z = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = x * tl.sigmoid(2.0 * z)
    if QUANT:
        x = e4m3_range(x, QSCALE)
    tl.store(OUT + offs, x.to(OUT.dtype.element_ty), mask=m)


def _elementwise(x, out, gelu: bool, quant_scale=None, channel_scale=None, bias=None, block: int = 1024):
    cols = x.shape[-1]
    _gelu_kernel[(x.numel() // cols, triton.cdiv(cols, block))](
        x, out, quant_scale if quant_scale is not None else x, channel_scale if channel_scale is not None else x,
        bias if bias is not None else x, cols, GELU=gelu, QUANT=quant_scale is not None,
        HAS_CS=channel_scale is not None, HAS_B=bias is not None, BLOCK=block, num_warps=4)
    return out


def gelu(x, out, quant_scale=None, channel_scale=None, bias=None):
    """out = gelu_tanh(x [* channel_scale] [+ bias]) for contiguous [rows, cols] tensors (in place when out is x;
    FP8 out with quant_scale). channel_scale (fp32 [cols]) and bias ([cols]): an FP8 GEMM's deferred epilogue."""
    return _elementwise(x, out, True, quant_scale, channel_scale, bias)


def quantize_fp8(x, out, quant_scale):
    """out = e4m3(clamp(x · quant_scale)) for contiguous tensors: the one unfused activation quantization (inputs
    that come from cuBLAS/FlashAttention)."""
    return _elementwise(x, out, False, quant_scale)


@triton.jit
def _euler_tail_kernel(X, Y, GATE, SCALE, SHIFT, WOUT, BOUT, XT, XT_OUT, WIN, BIN, XNEXT, W, A, COLS, stride_x,
                       stride_y, dt, eps, HAS_Y: tl.constexpr, HAS_NEXT: tl.constexpr, BLOCK_W: tl.constexpr,
                       BLOCK_A: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    """Program (action row r, block j of COLS columns of the width): final adaRMS norm of row r, v = h Wout^T + b,
    x_t' = x_t + dt·v (block 0 stores it into XT_OUT: the row's other programs still read XT), and the next
    residual's columns of block j, x_t' Win^T + b. What the chain never writes (the norm tables, the action
    projections' biases, this block's Win rows) loads before the chain wait, and Wout is asked into L2 there."""
    r = tl.program_id(0)
    j = tl.program_id(1)
    a = tl.arange(0, BLOCK_A)
    amask = a < A
    cols = tl.arange(0, BLOCK_W)
    cmask = cols < W
    scale = tl.load(SCALE + cols, mask=cmask, other=0.0)
    shift = tl.load(SHIFT + cols, mask=cmask, other=0.0)
    gate = tl.load(GATE + cols, mask=cmask, other=0.0) if HAS_Y else 1.0
    bout = tl.load(BOUT + a, mask=amask, other=0.0)
    if PDL:   # Wout into L2 while the kernel before runs (a step of expert weights has evicted it since)
        _prefetch_l2(WOUT, tl.where(a < A, a, 0), W, W, 8)
    if HAS_NEXT:
        n = j * COLS + tl.arange(0, BLOCK_N)
        nmask = (tl.arange(0, BLOCK_N) < COLS) & (n < W)
        win = tl.load(WIN + n[:, None] * A + a[None, :], mask=nmask[:, None] & amask[None, :], other=0.0)
        bin = tl.load(BIN + n, mask=nmask, other=0.0)
    _await_previous(PDL)
    x = tl.load(X + r * stride_x + cols, mask=cmask, other=0.0)
    if HAS_Y:
        x += tl.load(Y + r * stride_y + cols, mask=cmask, other=0.0).to(tl.float32) * gate
    h = x * (1.0 / tl.sqrt(tl.sum(x * x, 0) / W + eps)) * scale + shift
    h = h.to(tl.bfloat16).to(tl.float32)          # the engine's norm output is bf16, as everywhere else
    wo = tl.load(WOUT + a[:, None] * W + cols[None, :], mask=amask[:, None] & cmask[None, :], other=0.0)
    xt = tl.load(XT + r * A + a, mask=amask, other=0.0) + dt * (tl.sum(wo * h[None, :], 1) + bout)
    if j == 0:
        tl.store(XT_OUT + r * A + a, xt, mask=amask)
    if HAS_NEXT:
        tl.store(XNEXT + r * stride_x + n, tl.sum(win * xt[None, :], 1) + bin, mask=nmask)


TAIL_BLOCKS = 4    # programs a row of euler_tail (the next residual's width cut into that many blocks)


def euler_tail(x, scale, shift, w_out, b_out, x_t, x_t_out, dt: float, w_in=None, b_in=None, x_next=None, y=None,
               gate=None, eps: float = 1e-6, blocks: int = TAIL_BLOCKS, num_warps: int = 8):
    """The end of a denoise step in one launch: h = adaRMS(x [+ gate ⊙ y]) (bf16-rounded), x_t_out = x_t + dt ·
    (h Wout^T + b) (a buffer other than x_t: `blocks` programs a row read x_t), and with w_in the next step's
    residual x_next = x_t_out Win^T + b, its width over the `blocks` programs of a row. All fp32; x [M, W], x_t
    [M, A]."""
    rows, width = x.shape
    act = x_t.shape[1]
    if x_t_out.data_ptr() == x_t.data_ptr():
        raise ValueError("euler_tail: x_t_out must be a buffer other than x_t (the row's programs all read x_t)")
    if (w_out.shape != (act, width) or not x_t.is_contiguous() or x_t_out.shape != x_t.shape
            or not x_t_out.is_contiguous() or (w_in is not None and w_in.shape != (width, act))
            or blocks < 1 or width % blocks):
        raise ValueError(f"euler_tail: x [M, W], x_t and x_t_out [M, A] contiguous, Wout [A, W], Win [W, A], blocks "
                         f"dividing W; got x {tuple(x.shape)}, x_t {tuple(x_t.shape)}, x_t_out "
                         f"{tuple(x_t_out.shape)}, Wout {tuple(w_out.shape)}, blocks {blocks}")
    has_next = w_in is not None
    _euler_tail_kernel[(rows, blocks if has_next else 1)](
        x, y if y is not None else x, gate if gate is not None else x, scale, shift, w_out, b_out, x_t, x_t_out,
        w_in if has_next else w_out, b_in if has_next else b_out, x_next if has_next else x, width, act,
        width // blocks, x.stride(0), y.stride(0) if y is not None else 0, dt, eps, HAS_Y=y is not None,
        HAS_NEXT=has_next, BLOCK_W=triton.next_power_of_2(width), BLOCK_A=triton.next_power_of_2(act),
        BLOCK_N=triton.next_power_of_2(width // blocks), num_warps=num_warps, **_dependent())
    return x_next


def rope_tables(max_pos: int, head_dim: int, base: float, device):
    """cos/sin [max_pos, head_dim/2] fp32 for the half-split rotary embedding."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cos(ang).float().to(device).contiguous(), torch.sin(ang).float().to(device).contiguous()


@triton.jit
def dot_t(a, b, DOT_F32: tl.constexpr):
    """a [M, K] @ b [N, K]^T with an fp32 accumulator. DOT_F32: Triton's CPU interpreter cannot multiply bf16
    tiles, so it multiplies fp32 copies."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)))
    return tl.dot(a, tl.trans(b))


@triton.jit
def online_softmax_step(q, k, v, bias, m_i, l_i, acc, qk_scale, DOT_F32: tl.constexpr):
    """One key block of flash attention: the running (row max, row sum, output) updated with q k^T (scaled by
    qk_scale, which includes log2 e) plus the additive key bias [BLOCK_N] (0 or -inf), in the exp2 domain. (p @ v is
    written out here, not through a helper: through one, Triton scheduled the rescale and the MMA differently.)"""
    s = dot_t(q, k, DOT_F32) * qk_scale + bias[None, :] * 1.4426950408889634
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    if DOT_F32:
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i * alpha + tl.sum(p, 1), acc


@triton.jit
def _mqa_attention_kernel(Q, K, V, BIAS, O, QSCALE, R, T, qk_scale, stride_q, stride_k, stride_v, stride_o,
                          D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QUANT: tl.constexpr,
                          DOT_F32: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < R
    d = tl.arange(0, D)
    q = tl.load(Q + rows[:, None] * stride_q + d[None, :], mask=rmask[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)   # finite: a fully masked key block then contributes exactly 0
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(0, T, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < T
        k = tl.load(K + cols[:, None] * stride_k + d[None, :], mask=cmask[:, None], other=0.0)
        v = tl.load(V + cols[:, None] * stride_v + d[None, :], mask=cmask[:, None], other=0.0)
        bias = tl.load(BIAS + cols, mask=cmask, other=float("-inf")).to(tl.float32)
        m_i, l_i, acc = online_softmax_step(q, k, v, bias, m_i, l_i, acc, qk_scale, DOT_F32)
    _store_attention_part(O + rows[:, None] * stride_o + d[None, :], acc / l_i[:, None], QSCALE, rmask[:, None],
                          QUANT)


@triton.jit
def _packed_attention_kernel(QKV, O, QSCALE, T, H, qk_scale, stride_row, stride_o, D: tl.constexpr,
                             D_LO: tl.constexpr, D_HI: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             QUANT: tl.constexpr, DOT_F32: tl.constexpr, EVEN: tl.constexpr):
    """Unmasked attention of one (view, head) per program column, read straight from the fused QKV GEMM's output
    [views·T, 3·H·D] (q | k | v, head-major) and written as [views·T, H·D], the o projection's input. The head dim
    is D_LO columns (a power of two) plus, where D is not one, D_HI more (masked past D): SigLIP's 72 as 64 + 16,
    not padded to 128 (6.07 vs 6.34 us a call, bench/results/vision_ops-*-s13-head-split.json). EVEN: T is a
    multiple of both blocks, so no token or key mask (SigLIP's 256 tokens: 6.08 vs 6.15 us a call,
    vision_ops-*-s23-even.json)."""
    view, head = tl.program_id(1) // H, tl.program_id(1) % H
    t = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d0 = tl.arange(0, D_LO)
    tmask = (t[:, None] >= 0) if EVEN else (t[:, None] < T)
    cmask0 = d0[None, :] < D if D_LO > D else d0[None, :] >= 0      # D_LO > D: the head dim padded to D_LO
    base = QKV + view * T * stride_row + head * D
    q0 = tl.load(base + t[:, None] * stride_row + d0[None, :], mask=tmask & cmask0, other=0.0)
    if D_HI > 0:
        d1 = D_LO + tl.arange(0, D_HI)
        d1mask = d1[None, :] < D
        q1 = tl.load(base + t[:, None] * stride_row + d1[None, :], mask=tmask & d1mask, other=0.0)
        acc1 = tl.zeros([BLOCK_M, D_HI], tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, D_LO], tl.float32)
    for start in range(0, T, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = (cols[:, None] >= 0) if EVEN else (cols[:, None] < T)
        rows = base + cols[:, None] * stride_row
        k0 = tl.load(rows + H * D + d0[None, :], mask=cmask & cmask0, other=0.0)
        v0 = tl.load(rows + 2 * H * D + d0[None, :], mask=cmask & cmask0, other=0.0)
        s = dot_t(q0, k0, DOT_F32)
        if D_HI > 0:
            k1 = tl.load(rows + H * D + d1[None, :], mask=cmask & d1mask, other=0.0)
            v1 = tl.load(rows + 2 * H * D + d1[None, :], mask=cmask & d1mask, other=0.0)
            s += dot_t(q1, k1, DOT_F32)
        s = s * qk_scale if EVEN else s * qk_scale + tl.where(cols < T, 0.0, float("-inf"))[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        if DOT_F32:
            p = p.to(tl.float32)
            acc0 = acc0 * alpha[:, None] + tl.dot(p, v0.to(tl.float32))
        else:
            p = p.to(v0.dtype)
            acc0 = acc0 * alpha[:, None] + tl.dot(p, v0)
        if D_HI > 0:
            acc1 = acc1 * alpha[:, None] + tl.dot(p, v1.to(p.dtype))
    out_rows = O + (view * T + t)[:, None] * stride_o + head * D
    _store_attention_part(out_rows + d0[None, :], acc0 / l_i[:, None], QSCALE, tmask & cmask0, QUANT)
    if D_HI > 0:
        _store_attention_part(out_rows + d1[None, :], acc1 / l_i[:, None], QSCALE, tmask & d1mask, QUANT)


@triton.jit
def _store_attention_part(ptrs, out, QSCALE, mask, QUANT: tl.constexpr):
    """An attention output tile: bf16, or E4M3 for an FP8 o projection (static per-tensor scale)."""
    if QUANT:
        out = e4m3_range(out, QSCALE)
    tl.store(ptrs, out.to(ptrs.dtype.element_ty), mask=mask)


def attention_head_split(head_dim: int) -> tuple[int, int]:
    """(D_LO, D_HI) of _packed_attention_kernel: the largest power of two in the head dim, and the rest rounded up
    to a power of two of at least 16 (the MMA's K), 0 when nothing is left."""
    lo = 1 << (head_dim.bit_length() - 1)
    rest = head_dim - lo
    return lo, (0 if rest == 0 else max(16, triton.next_power_of_2(rest)))


def packed_attention(qkv, out, tokens: int, heads: int, head_dim: int, block_m: int = 64, block_n: int = 64,
                     num_warps: int = 4, num_stages: int = 3, quant_scale=None, head_split=None, keep_masks=False):
    """SigLIP's attention (no mask, softmax scale 1/sqrt(head_dim)) from the fused QKV output qkv [views·tokens,
    3·heads·head_dim] into out [views·tokens, heads·head_dim]: no permute copies on either side. Default launch
    shape: the fastest of bench/vision_ops.py (6.3 us against 9.7 for cuDNN SDPA plus the copies, H100).
    quant_scale: out is E4M3 for an FP8 o projection. head_split: (D_LO, D_HI) of the kernel's head dim, default
    attention_head_split(head_dim); (next power of two, 0) pads it instead (bench/vision_ops.py compares). The token
    / key masks are dropped where tokens is a multiple of both blocks; keep_masks keeps them (to compare)."""
    rows = qkv.shape[0]
    if qkv.shape[1] != 3 * heads * head_dim or rows % tokens or tuple(out.shape) != (rows, heads * head_dim):
        raise ValueError(f"packed_attention: qkv {tuple(qkv.shape)} / out {tuple(out.shape)} do not match "
                         f"{tokens} tokens x {heads} heads x {head_dim}")
    d_lo, d_hi = head_split or attention_head_split(head_dim)
    if d_lo + d_hi < head_dim or (d_hi and d_lo > head_dim):
        raise ValueError(f"packed_attention: head split {(d_lo, d_hi)} does not cover head dim {head_dim}")
    even = tokens % block_m == 0 and tokens % block_n == 0 and not keep_masks
    grid = (triton.cdiv(tokens, block_m), rows // tokens * heads)
    _packed_attention_kernel[grid](qkv, out, quant_scale if quant_scale is not None else qkv, tokens, heads,
                                   head_dim ** -0.5 * 1.4426950408889634, qkv.stride(0), out.stride(0), D=head_dim,
                                   D_LO=d_lo, D_HI=d_hi, BLOCK_M=block_m, BLOCK_N=block_n,
                                   QUANT=quant_scale is not None, DOT_F32=INTERPRETED,
                                   EVEN=even, num_warps=num_warps, num_stages=num_stages)
    return out


def mqa_attention(q, k, v, bias, out, block_m: int = 64, block_n: int = 64, num_warps: int = 4, num_stages: int = 2,
                  quant_scale=None):
    """Attention of every query row (all heads of all tokens, one kv head) over keys k/v [T, D] with an additive
    key bias [T] (0 or -inf). softmax scale 1/sqrt(D). Rows are independent, so their order is the caller's.
    quant_scale: out is E4M3 for an FP8 o projection. Default launch shape: the fastest of bench/prefix_attention.py
    at the prefix in the engine (16.6 us vs 22.5 for 32 rows; two programs a row block, each doing p v for half the
    head dim, took 14.1 us alone but slowed the prefix beside denoise step 0: 3.11 vs 3.02 ms, s12)."""
    rows, dim = q.shape
    keys = k.shape[0]
    _mqa_attention_kernel[(triton.cdiv(rows, block_m),)](
        q, k, v, bias, out, quant_scale if quant_scale is not None else q, rows, keys, dim ** -0.5 * 1.4426950408889634,
        q.stride(0), k.stride(0), v.stride(0), out.stride(0), D=dim, BLOCK_M=block_m, BLOCK_N=block_n,
        QUANT=quant_scale is not None, DOT_F32=INTERPRETED, num_warps=num_warps, num_stages=num_stages)
    return out


@triton.jit
def block_softmax(q, k, v, bias, qk_scale, DOT_F32: tl.constexpr):
    """One key block of split-KV attention: (row max, row sum, unnormalized p @ v) in the exp2 domain. Shared with
    the persistent expert layer."""
    s = dot_t(q, k, DOT_F32) * qk_scale + bias[None, :] * 1.4426950408889634
    m = tl.maximum(tl.max(s, 1), -1.0e30)             # a fully masked block gives p = 0, not NaN
    p = tl.exp2(s - m[:, None])
    if DOT_F32:
        acc = tl.dot(p, v.to(tl.float32))
    else:
        acc = tl.dot(p.to(v.dtype), v)
    return m, tl.sum(p, 1), acc


@triton.jit
def _mqa_partial_kernel(Q, K, V, BIAS, PO, PM, PL, R, T, qk_scale, stride_q, stride_k, stride_v,
                        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr,
                        PDL: tl.constexpr):
    """Split-KV pass: one key block per program; writes the block's row max, row sum and unnormalized output."""
    _await_previous(PDL)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(1)
    rmask = rows < R
    cols = split * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < T
    d = tl.arange(0, D)
    q = tl.load(Q + rows[:, None] * stride_q + d[None, :], mask=rmask[:, None], other=0.0)
    k = tl.load(K + cols[:, None] * stride_k + d[None, :], mask=cmask[:, None], other=0.0)
    v = tl.load(V + cols[:, None] * stride_v + d[None, :], mask=cmask[:, None], other=0.0)
    bias = tl.load(BIAS + cols, mask=cmask, other=float("-inf")).to(tl.float32)
    m, l, acc = block_softmax(q, k, v, bias, qk_scale, DOT_F32)
    base = split * R + rows
    tl.store(PM + base, m, mask=rmask)
    tl.store(PL + base, l, mask=rmask)
    tl.store(PO + base[:, None] * D + d[None, :], acc, mask=rmask[:, None])


@triton.jit
def _mqa_combine_kernel(PO, PM, PL, O, R, SPLITS, stride_o, D: tl.constexpr, SPLITS_PAD: tl.constexpr,
                        PDL: tl.constexpr):
    _await_previous(PDL)
    row = tl.program_id(0)
    sp = tl.arange(0, SPLITS_PAD)
    smask = sp < SPLITS
    m = tl.load(PM + sp * R + row, mask=smask, other=-1.0e30)
    mx = tl.max(m, 0)
    w = tl.where(smask, tl.exp2(m - mx), 0.0)
    total = tl.sum(w * tl.load(PL + sp * R + row, mask=smask, other=0.0), 0)
    d = tl.arange(0, D)
    acc = tl.load(PO + (sp[:, None] * R + row) * D + d[None, :], mask=smask[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], 0) / total
    tl.store(O + row * stride_o + d, out.to(O.dtype.element_ty))


def mqa_attention_split(q, k, v, bias, out, block_m: int = 16, block_n: int = 64):
    """mqa_attention for few query rows (the denoise step): the keys are split over programs, then combined, so
    the GPU is filled even with 80 rows. (The combine read by the o projection as it loads its input instead, one
    launch fewer, measured slower: every o program re-reads its head's partials; expert_layer-*-s7-fused-combine.json.)"""
    rows, dim = q.shape
    keys = k.shape[0]
    splits = triton.cdiv(keys, block_n)
    po = torch.empty(splits, rows, dim, dtype=torch.float32, device=q.device)
    pm = torch.empty(splits, rows, dtype=torch.float32, device=q.device)
    pl = torch.empty_like(pm)
    _mqa_partial_kernel[(triton.cdiv(rows, block_m), splits)](
        q, k, v, bias, po, pm, pl, rows, keys, dim ** -0.5 * 1.4426950408889634, q.stride(0), k.stride(0), v.stride(0),
        D=dim, BLOCK_M=block_m, BLOCK_N=block_n, DOT_F32=INTERPRETED, num_warps=4, **_dependent())
    _mqa_combine_kernel[(rows,)](po, pm, pl, out, rows, splits, out.stride(0), D=dim,
                                 SPLITS_PAD=triton.next_power_of_2(splits), num_warps=4, **_dependent())
    return out


@triton.jit
def _skinny_gemm_kernel(X, W, GATE, OUT, M, N, K, K_SPLIT, stride_x, stride_w, stride_o,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_GATE: tl.constexpr,
                        DOT_F32: tl.constexpr, PDL: tl.constexpr):
    """out[M, N] += [gate ⊙] x[M, K-range] @ w[N, K-range]^T for a few rows M (<= BLOCK_M): split-K partials meet by
    atomics in fp32 out, zeroed or the residual stream itself."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = tl.program_id(1) * K_SPLIT
    m = tl.arange(0, BLOCK_M)
    nmask = n < N
    _await_previous(PDL)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(k_start, k_start + K_SPLIT, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + m[:, None] * stride_x + k[None, :], mask=m[:, None] < M, other=0.0)
        w = tl.load(W + n[:, None] * stride_w + k[None, :], mask=nmask[:, None], other=0.0)
        acc += dot_t(x, w, DOT_F32)
    if HAS_GATE:
        acc = acc * tl.load(GATE + n, mask=nmask, other=0.0)[None, :]
    # relaxed: partial sums need no ordering among themselves (the default acq_rel costs a MEMBAR.GPU per atomic:
    # o 5.1 -> 4.3 us, down 6.3 -> 5.7 us, bench/results/expert_layer-*-s4*.json); the launch boundary publishes them
    tl.atomic_add(OUT + m[:, None] * stride_o + n[None, :], acc, mask=(m[:, None] < M) & nmask[None, :], sem="relaxed")


SKINNY_MAX_ROWS = 16     # where the few-row kernels measured faster than cuBLAS (the libero/droid horizons)


def _split_k(n_blocks: int, k_blocks: int, programs: int) -> int:
    """Split K (in powers of two that divide it) until about `programs` programs stream the weights."""
    split = 1
    while split * 2 <= k_blocks and n_blocks * split < programs and k_blocks % (split * 2) == 0:
        split *= 2
    return split


def skinny_linear(x, w, out=None, gate=None, block_n: int = 32, block_k: int = 128, programs: int = 256,
                  num_warps: int = 4, num_stages: int = 3):
    """y (fp32 [M, N]) = x [M, K] @ w [N, K]^T for M <= 16: weight streaming over about `programs` programs (split-K
    with atomics into `out`, which must be zeroed; allocated zeroed when not given). gate (fp32 [N]): out += gate ⊙
    (x @ w^T) instead, so with out the fp32 residual this is the gated residual add. Launch shape defaults:
    bench/results/expert_kernels-*.json (block_n 32 was fastest for the expert's o and down)."""
    rows, kdim = x.shape
    n = w.shape[0]
    if rows > SKINNY_MAX_ROWS or kdim % block_k:
        raise ValueError(f"skinny_linear takes <= {SKINNY_MAX_ROWS} rows and K % {block_k} == 0, got {tuple(x.shape)}")
    n_blocks, k_blocks = triton.cdiv(n, block_n), kdim // block_k
    split = _split_k(n_blocks, k_blocks, programs)
    if out is None:
        out = torch.zeros(rows, n, dtype=torch.float32, device=x.device)
    _skinny_gemm_kernel[(n_blocks, split)](x, w, gate if gate is not None else out, out, rows, n, kdim, kdim // split,
                                           x.stride(0), w.stride(0), out.stride(0), BLOCK_M=SKINNY_MAX_ROWS,
                                           BLOCK_N=block_n, BLOCK_K=block_k, HAS_GATE=gate is not None,
                                           DOT_F32=INTERPRETED, num_warps=num_warps, num_stages=num_stages,
                                           **_dependent())
    return out


@triton.jit
def _paired_rows_dot(X, W, SC, first, second, M, K, stride_x, stride_w, stride_sc, INT4: tl.constexpr,
                     BLOCK_M: tl.constexpr, PAIRS: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
                     PDL: tl.constexpr, PREFETCH: tl.constexpr = False):
    """x[M, K] @ w[rows]^T over all of K for weight rows interleaved as (first[c], second[c]) pairs; returns the two
    [BLOCK_M, PAIRS] halves (the pairs an epilogue combines: RoPE's rotated halves, GeGLU's gate and up).
    INT4: W is canonical int4 (uint8 [N, K/2]) with bf16 scales SC per BLOCK_K (the int4 group), dequantized as in
    _w4a16_group. PDL: the kernel's chain wait (_await_previous) is here."""
    r = tl.arange(0, 2 * PAIRS)
    rows = tl.where(r % 2 == 0, first, second)   # first/second: scalar bases; column c of a half is base + c
    rows = rows + r // 2
    if PREFETCH:   # the program's weight rows (and int4 scales) into L2 before the chain wait
        _prefetch_l2(W, rows, stride_w, K // 2 if INT4 else K, 4)
        if INT4:
            _prefetch_l2(SC, rows, stride_sc, K // BLOCK_K, 1)
    _await_previous(PDL)
    m = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, 2 * PAIRS], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if INT4:
            part = _w4a16_group(X, W, m, rows, tl.arange(0, BLOCK_K // 2), k0, stride_x, stride_w, m[:, None] < M,
                                rows >= 0, BLOCK_M, BLOCK_K // 2, DOT_F32)
            acc += part * tl.load(SC + rows * stride_sc + k0 // BLOCK_K).to(tl.float32)[None, :]
        else:
            k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(X + m[:, None] * stride_x + k[None, :], mask=m[:, None] < M, other=0.0)
            w = tl.load(W + rows[:, None] * stride_w + k[None, :])
            acc += dot_t(x, w, DOT_F32)
    return tl.split(tl.reshape(acc, [BLOCK_M, PAIRS, 2]))


@triton.jit
def _qkv_rope_kernel(X, W, SC, POS, COS, SIN, QOUT, KC, VC, M, K, kv_offset, stride_x, stride_w, stride_sc,
                     H: tl.constexpr, D: tl.constexpr, INT4: tl.constexpr, BLOCK_M: tl.constexpr, PAIRS: tl.constexpr,
                     BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr):
    """The expert's QKV projection for a few rows with RoPE and the K/V cache write as its epilogue (no qkv round
    trip, no rope launch). Program: head `hd` (H query heads, the key head, the value head), PAIRS dims i of the
    first half with their partners i + D/2, over all of K. PREFETCH (with PDL): its weights into L2 first."""
    half: tl.constexpr = D // 2
    per_head: tl.constexpr = half // PAIRS
    hd = tl.program_id(0) // per_head
    i0 = (tl.program_id(0) % per_head) * PAIRS
    m = tl.arange(0, BLOCK_M)
    i = i0 + tl.arange(0, PAIRS)
    pos = tl.load(POS + m, mask=m < M, other=0)       # the rotary angles: written before the chain, read before
    cos = tl.load(COS + pos[:, None] * half + i[None, :])   # its wait (inside _paired_rows_dot)
    sin = tl.load(SIN + pos[:, None] * half + i[None, :])
    x1, x2 = _paired_rows_dot(X, W, SC, hd * D + i0, hd * D + half + i0, M, K, stride_x, stride_w, stride_sc, INT4,
                              BLOCK_M, PAIRS, BLOCK_K, DOT_F32, PDL, PREFETCH)
    rmask = (m < M)[:, None]
    if hd == H + 1:
        dst = VC + (kv_offset + m)[:, None] * D + i[None, :]
    else:
        x1, x2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        if hd < H:
            dst = QOUT + (m * H + hd)[:, None] * D + i[None, :]
        else:
            dst = KC + (kv_offset + m)[:, None] * D + i[None, :]
    tl.store(dst, x1.to(QOUT.dtype.element_ty), mask=rmask)
    tl.store(dst + half, x2.to(QOUT.dtype.element_ty), mask=rmask)


def _few_row_weights(name: str, x, w, scales, n: int, block_k: int) -> tuple:
    """(W, SC, stride_sc, INT4, BLOCK_K) for a full-K few-row kernel: bf16 w [n, K] in steps of block_k, or canonical
    int4 w (uint8 [n, K/2]) with bf16 scales [n, K/INT4_GROUP], a group a step; raises naming the kernel and the
    shapes otherwise."""
    rows, kdim = x.shape
    int4 = scales is not None
    if int4 and block_k != INT4_GROUP:
        raise ValueError(f"{name}: int4 weights step one group, block_k={INT4_GROUP}, got {block_k}")
    want = ((n, kdim // 2), (n, kdim // INT4_GROUP)) if int4 else ((n, kdim),)
    got = (tuple(w.shape), tuple(scales.shape)) if int4 else (tuple(w.shape),)
    if rows > SKINNY_MAX_ROWS or kdim % block_k or got != want:
        raise ValueError(f"{name} takes x [M <= {SKINNY_MAX_ROWS}, K % {block_k} == 0] and "
                         f"{'int4 weights + scales' if int4 else 'bf16 weights'} {list(want)}, got x {tuple(x.shape)}, "
                         f"{list(got)}")
    return (w, scales, scales.stride(0), True, block_k) if int4 else (w, w, 0, False, block_k)


def qkv_rope(x, w, pos, cos, sin, q_out, k_cache, v_cache, kv_offset: int, heads: int, head_dim: int, scales=None,
             pairs: int = 16, block_k: int = 128, num_warps: int = 4, num_stages: int = 4, prefetch: bool = False):
    """rope_qkv(x @ w^T, ...) in one launch for x [M <= 16, K] bf16 and the fused QKV weight w [(H+2)·D, K] (bf16,
    or canonical int4 with `scales`, Plan B's W4A16): q_out [M·H, D] (token-major, rotated), k_cache/v_cache rows
    kv_offset.. (k rotated). Launch shape: bench/results/expert_layer-*-s5*.json (bf16: 5.6-5.7 us on the H100,
    where cuBLAS + rope_qkv took 7.0). prefetch: under dependent launches, the weights are asked into L2 before the
    chain wait (a no-op otherwise: nothing to overlap)."""
    if (head_dim // 2) % pairs:
        raise ValueError(f"qkv_rope: pairs={pairs} must divide half the head dim {head_dim}")
    wt, sc, stride_sc, int4, block_k = _few_row_weights("qkv_rope", x, w, scales, (heads + 2) * head_dim, block_k)
    grid = ((heads + 2) * (head_dim // 2 // pairs),)
    _qkv_rope_kernel[grid](x, wt, sc, pos, cos, sin, q_out, k_cache, v_cache, x.shape[0], x.shape[1], kv_offset,
                           x.stride(0), wt.stride(0), stride_sc, H=heads, D=head_dim, INT4=int4,
                           BLOCK_M=SKINNY_MAX_ROWS, PAIRS=pairs, BLOCK_K=block_k, DOT_F32=INTERPRETED,
                           PREFETCH=prefetch and _Dependent.on, num_warps=num_warps, num_stages=num_stages,
                           **_dependent())


@triton.jit
def _gate_up_geglu_kernel(X, W, SC, OUT, M, K, I, stride_x, stride_w, stride_sc, stride_o, INT4: tl.constexpr,
                          BLOCK_M: tl.constexpr, PAIRS: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
                          PDL: tl.constexpr):
    """gelu_tanh(x @ w_gate^T) * (x @ w_up^T) for a few rows, w = [gate | up] [2I, K]: PAIRS gate columns with their
    up columns per program, over all of K (no fp32 round trip, no GeGLU launch)."""
    c0 = tl.program_id(0) * PAIRS
    g, u = _paired_rows_dot(X, W, SC, c0, I + c0, M, K, stride_x, stride_w, stride_sc, INT4, BLOCK_M, PAIRS, BLOCK_K,
                            DOT_F32, PDL)
    m = tl.arange(0, BLOCK_M)
    c = c0 + tl.arange(0, PAIRS)
    tl.store(OUT + m[:, None] * stride_o + c[None, :], gelu_tanh_mul(g, u).to(OUT.dtype.element_ty),
             mask=(m < M)[:, None])


def gate_up_geglu(x, w, out, scales=None, pairs: int = 16, block_k: int = 128, num_warps: int = 4,
                  num_stages: int = 4):
    """geglu(x @ w^T) into out [M, I] in one launch for x [M <= 16, K] bf16 and w = [gate | up] [2I, K] (bf16, or
    canonical int4 with `scales`). Launch shape: bench/results/expert_layer-*-s5*.json (bf16: 8.1 us on the H100,
    where cuBLAS + geglu took 10.0)."""
    inter = w.shape[0] // 2
    if inter % pairs or out.shape != (x.shape[0], inter):
        raise ValueError(f"gate_up_geglu: out [M, I] with I % pairs == 0 expected, got out {tuple(out.shape)} for w "
                         f"{tuple(w.shape)}, pairs={pairs}")
    wt, sc, stride_sc, int4, block_k = _few_row_weights("gate_up_geglu", x, w, scales, 2 * inter, block_k)
    _gate_up_geglu_kernel[(inter // pairs,)](x, wt, sc, out, x.shape[0], x.shape[1], inter, x.stride(0), wt.stride(0),
                                             stride_sc, out.stride(0), INT4=int4, BLOCK_M=SKINNY_MAX_ROWS,
                                             PAIRS=pairs, BLOCK_K=block_k, DOT_F32=INTERPRETED, num_warps=num_warps,
                                             num_stages=num_stages, **_dependent())
    return out


class ZeroArena:
    """One zeroed fp32 block, handed out in slices: the split-K accumulators of a whole denoise step cost one memset
    instead of one per GEMM."""

    def __init__(self, floats: int, device):
        self.buf = torch.zeros(floats, dtype=torch.float32, device=device)
        self.used = 0

    def take(self, rows: int, cols: int):
        n = rows * cols
        if self.used + n > self.buf.numel():
            raise RuntimeError(f"ZeroArena of {self.buf.numel()} floats exhausted (asked {n} more after {self.used})")
        view = self.buf[self.used:self.used + n].view(rows, cols)
        self.used += n
        return view


@triton.jit
def _w4a16_group(X, QW, m, n, j, k0, stride_x, stride_qw, mmask, nmask, BLOCK_M: tl.constexpr, HALF: tl.constexpr,
                 DOT_F32: tl.constexpr):
    """x[M, group] @ W[N, group]^T for one int4 group without integer-to-float conversions: a two's-complement
    nibble u is u' = u ^ 8 offset by 8, and the bf16 bit pattern 0x4300 | u' is exactly 128 + u' = 136 + w, so w is
    that minus 136 (one exact bf16x2 add per two weights). x is loaded contiguous and split into even / odd k (the
    low / high nibbles of each byte): two half-K dots, the nibbles never interleaved. 1.4-2.9x the I2F conversion
    it replaced (bench/results/w4a16_sweep-*-s5.json)."""
    x = tl.load(X + m[:, None] * stride_x + (k0 + tl.arange(0, 2 * HALF))[None, :], mask=mmask, other=0.0)
    xe, xo = tl.split(tl.reshape(x, [BLOCK_M, HALF, 2]))
    p = tl.load(QW + n[:, None] * stride_qw + (k0 // 2 + j)[None, :], mask=nmask[:, None], other=0).to(tl.int16)
    lo = (p & 0xF) ^ 0x8
    hi = (p >> 4) ^ 0x8
    if DOT_F32:   # the interpreter has no bf16 bit casts: the same weights, u' - 8, in fp32
        part = (tl.dot(xe.to(tl.float32), tl.trans(lo.to(tl.float32) - 8.0))
                + tl.dot(xo.to(tl.float32), tl.trans(hi.to(tl.float32) - 8.0)))
    else:
        part = (tl.dot(xe, tl.trans((lo | 0x4300).to(tl.bfloat16, bitcast=True) - 136.0))
                + tl.dot(xo, tl.trans((hi | 0x4300).to(tl.bfloat16, bitcast=True) - 136.0)))
    return part


@triton.jit
def _skinny_w4a16_kernel(X, QW, SC, GATE, OUT, M, N, K, K_SPLIT, stride_x, stride_qw, stride_sc, stride_o,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr, GROUPS: tl.constexpr,
                         HAS_GATE: tl.constexpr, DOT_F32: tl.constexpr, PDL: tl.constexpr):
    """out[M, N] += [gate ⊙] x[M, K-range] @ dequant(W)[N, K-range]^T, W canonical int4 (low nibble = even k,
    group-128 bf16 scales). GROUPS groups per step, unrolled so their loads are in flight together; each group as in
    _w4a16_group."""
    HALF: tl.constexpr = GROUP // 2
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = tl.program_id(1) * K_SPLIT
    m = tl.arange(0, BLOCK_M)
    j = tl.arange(0, HALF)
    nmask = n < N
    mmask = m[:, None] < M
    _await_previous(PDL)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k_step in range(k_start, k_start + K_SPLIT, GROUP * GROUPS):
        for g in tl.static_range(GROUPS):
            k0 = k_step + g * GROUP
            part = _w4a16_group(X, QW, m, n, j, k0, stride_x, stride_qw, mmask, nmask, BLOCK_M, HALF, DOT_F32)
            s = tl.load(SC + n * stride_sc + k0 // GROUP, mask=nmask, other=0.0).to(tl.float32)
            acc += part * s[None, :]
    if HAS_GATE:
        acc = acc * tl.load(GATE + n, mask=nmask, other=0.0)[None, :]
    tl.atomic_add(OUT + m[:, None] * stride_o + n[None, :], acc, mask=mmask & nmask[None, :], sem="relaxed")  # as above


W4A16_MAX_ROWS = 64      # the few-row W4A16 kernel's largest row block


def skinny_w4a16(x, qweight, scales, out=None, gate=None, block_n: int | None = None, programs: int = 256,
                 groups: int | None = None, num_warps: int = 4, num_stages: int | None = None):
    """y (fp32 [M, N]) = x [M, K] @ dequant(W)^T for M <= 64 with canonical int4 weights (uint8 [N, K/2], bf16 scales
    [N, K/128]); split-K with atomics into a zeroed `out` like skinny_linear, and the same gated residual form.
    groups: int4 groups per loop step (their loads overlap). Launch-shape defaults: the fastest at the expert's
    shapes in bench/results/w4a16_sweep-*-s5.json (up to 16 rows: block_n 64, 2 groups where K allows, 2 stages;
    else block_n 128, 1 group, 3 stages; 4 warps)."""
    rows, kdim = x.shape
    few = rows <= 16
    block_n = block_n or (64 if few else 128)
    groups = groups or (2 if few and kdim % (2 * INT4_GROUP) == 0 else 1)
    num_stages = num_stages or (2 if few else 3)
    n = qweight.shape[0]
    group = INT4_GROUP
    if rows > W4A16_MAX_ROWS or kdim % (group * groups) or qweight.shape[1] * 2 != kdim:
        raise ValueError(f"skinny_w4a16: <= {W4A16_MAX_ROWS} rows, K % {group * groups} == 0 and weights [N, K/2]; "
                         f"got x {tuple(x.shape)}, w {tuple(qweight.shape)}")
    n_blocks = triton.cdiv(n, block_n)
    split = _split_k(n_blocks, kdim // (group * groups), programs)
    if out is None:
        out = torch.zeros(rows, n, dtype=torch.float32, device=x.device)
    _skinny_w4a16_kernel[(n_blocks, split)](x, qweight, scales, gate if gate is not None else out, out, rows, n, kdim,
                                            kdim // split, x.stride(0), qweight.stride(0), scales.stride(0),
                                            out.stride(0), BLOCK_M=16 if rows <= 16 else W4A16_MAX_ROWS,
                                            BLOCK_N=block_n, GROUP=group, GROUPS=groups, HAS_GATE=gate is not None,
                                            DOT_F32=INTERPRETED, num_warps=num_warps, num_stages=num_stages,
                                            **_dependent())
    return out

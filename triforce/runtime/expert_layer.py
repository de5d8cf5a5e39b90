"""The denoise step's action-expert layer in six launches, for a few rows (the action horizon).

The step is latency-bound: a kernel that moves 5 MB costs a few microseconds whatever it does, so what pays is
fewer launches, each streaming its weight slice once. Per layer, with x the fp32 residual [M, W] updated in place:

  1. qkv_rope:      q, K/V-cache rows = RoPE(adaRMS(x) @ Wqkv^T)   (norm folded in, RoPE + cache write in the epilogue)
  2-3.              attention over the prefix + action keys         (fused.mqa_attention_split: partials, combine)
  4. x += g1 * (att @ Wo^T)                                          (fused.skinny_linear, split-K atomics into x)
  5. gate_up_geglu: act = GeGLU(adaRMS(x) @ Wgu^T)                   (gate and up columns in one program)
  6. x += g2 * (act @ Wdown^T)                                       (fused.skinny_linear)

against nine launches and a memset with separate norm, RoPE and GeGLU kernels. Why the norm folds in exactly:
adaRMS(x) W^T = rsqrt(mean x²) · ((x ⊙ (1 + scale)) W^T) + shift W^T. The shift term is a constant of the flow step
(precomputed once, `shift_tables`), and the row scale is applied after the dot, so each program reads x and its
weight columns once, over the full K (K = width), and its epilogue sees final sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import fused

BLOCK_N = 16      # output columns per program and per half (RoPE pairs / gate-up pairs): 16 is tl.dot's minimum
BLOCK_K = 128     # the width must be a multiple
# Launch shapes per kernel (bench/expert_kernels.py sweeps them); PREFETCH: with PDL, stream the weight slice into L2
# before waiting for the previous kernel.
TUNING = {"qkv": {"BLOCK_K": 128, "num_warps": 4, "num_stages": 3},
          "gate_up": {"BLOCK_K": 128, "num_warps": 4, "num_stages": 3},
          "o": {"block_n": 64, "block_k": 128, "programs": 256, "num_warps": 4, "num_stages": 3},
          "down": {"block_n": 64, "block_k": 128, "programs": 256, "num_warps": 4, "num_stages": 3}}
PREFETCH = {"on": True}
MAX_ROWS = fused.SKINNY_ROWS_LIMIT   # rows (the action horizon) one program holds: pi05_base's 50 fits


@triton.jit
def _norm_gemv_kernel(X, XS, W, SHIFT, POS, COS, SIN, Q, KC, VC, ACT, M, I, kv_offset, stride_x, stride_w,
                      stride_act, eps, K: tl.constexpr, PF_LINES: tl.constexpr, QKV_ROPE: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr,
                      PREFETCH: tl.constexpr, DOT_F32: tl.constexpr):
    """Two column blocks a, b of adaRMS(x) @ W^T: RoPE pairs (d, d + D/2) of one head, or gate/up pairs (j, I + j)."""
    pid = tl.program_id(0)
    j = tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    mmask = m < M
    if QKV_ROPE:
        HALF: tl.constexpr = D // 2
        head = pid // (HALF // BLOCK_N)
        ci = (pid % (HALF // BLOCK_N)) * BLOCK_N + j        # column within the head's first half
        col_a = head * D + ci
        col_b = col_a + HALF
    else:
        col_a = pid * BLOCK_N + j
        col_b = I + col_a
    if PREFETCH:   # the weights do not depend on the previous kernel: stream them into L2 before waiting for it
        lines = tl.minimum(tl.arange(0, PF_LINES) * 64, K - 64)     # 64 bf16 = one 128-byte line
        fused.prefetch_l2(W + col_a[:, None] * stride_w + lines[None, :])
        fused.prefetch_l2(W + col_b[:, None] * stride_w + lines[None, :])
    fused.pdl_enter(USE_PDL)
    acc_a = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_b = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    ss = tl.zeros([BLOCK_M], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + m[:, None] * stride_x + k[None, :], mask=mmask[:, None], other=0.0)
        ss += tl.sum(x * x, 1)
        xm = (x * tl.load(XS + k)[None, :]).to(tl.bfloat16)
        wa = tl.load(W + col_a[:, None] * stride_w + k[None, :])
        wb = tl.load(W + col_b[:, None] * stride_w + k[None, :])
        if DOT_F32:   # Triton's CPU interpreter cannot multiply bf16 tiles
            acc_a += tl.dot(xm.to(tl.float32), tl.trans(wa.to(tl.float32)))
            acc_b += tl.dot(xm.to(tl.float32), tl.trans(wb.to(tl.float32)))
        else:
            acc_a += tl.dot(xm, tl.trans(wa))
            acc_b += tl.dot(xm, tl.trans(wb))
    rinv = 1.0 / tl.sqrt(ss / K + eps)
    a = acc_a * rinv[:, None] + tl.load(SHIFT + col_a)[None, :]
    b = acc_b * rinv[:, None] + tl.load(SHIFT + col_b)[None, :]
    if QKV_ROPE:
        pos = tl.load(POS + m, mask=mmask, other=0)
        cos = tl.load(COS + pos[:, None] * HALF + ci[None, :], mask=mmask[:, None], other=0.0)
        sin = tl.load(SIN + pos[:, None] * HALF + ci[None, :], mask=mmask[:, None], other=0.0)
        if head < H + 1:             # query heads and the key head are rotated
            ra = a * cos - b * sin
            rb = b * cos + a * sin
            if head < H:
                dst = Q + (m[:, None] * H + head) * D + ci[None, :]
            else:
                dst = KC + (kv_offset + m[:, None]) * D + ci[None, :]
            tl.store(dst, ra.to(Q.dtype.element_ty), mask=mmask[:, None])
            tl.store(dst + HALF, rb.to(Q.dtype.element_ty), mask=mmask[:, None])
        else:                        # the value head is stored as is
            dst = VC + (kv_offset + m[:, None]) * D + ci[None, :]
            tl.store(dst, a.to(VC.dtype.element_ty), mask=mmask[:, None])
            tl.store(dst + HALF, b.to(VC.dtype.element_ty), mask=mmask[:, None])
    else:
        h = a * tl.sigmoid(1.5957691216057308 * (a + 0.044715 * a * a * a)) * b     # gelu_tanh(gate) * up
        tl.store(ACT + m[:, None] * stride_act + col_a[None, :], h.to(ACT.dtype.element_ty), mask=mmask[:, None])


def _block_m(rows: int) -> int:
    if rows > MAX_ROWS:
        raise ValueError(f"the fused expert layer takes at most {MAX_ROWS} rows (the action horizon), got {rows}")
    return max(16, triton.next_power_of_2(rows))


def _launch(kernel: str, pdl: bool, k: int) -> dict:
    shape = {**TUNING[kernel], "BLOCK_K": min(TUNING[kernel]["BLOCK_K"], k)}    # a narrow model takes K in one block
    return {**shape, "USE_PDL": pdl, "PREFETCH": pdl and PREFETCH["on"], "DOT_F32": fused.INTERPRETED,
            **fused.pdl_launch(pdl)}


def _prefetch_lines(k: int) -> int:
    """128-byte lines of one bf16 weight row of length k, rounded up to a power of two (tl.arange)."""
    return triton.next_power_of_2(k // 64)


def _check_k(x, w, kernel: str):
    if x.shape[1] % min(TUNING[kernel]["BLOCK_K"], x.shape[1]) or x.shape[1] % BLOCK_K or w.shape[1] != x.shape[1] or x.dtype != torch.float32 or w.dtype != torch.bfloat16:
        raise ValueError(f"{kernel}: x fp32 [M, K] with K % {BLOCK_K} == 0 and bf16 weights [N, K]; "
                         f"got x {tuple(x.shape)} {x.dtype}, w {tuple(w.shape)} {w.dtype}")


def qkv_rope(x, scale1p, w_qkv, shift_w, pos, cos, sin, q, k_cache, v_cache, kv_offset: int, heads: int,
             head_dim: int, eps: float, pdl: bool = False):
    """q [M·H, D] (token-major) and K/V-cache rows kv_offset.. from adaRMS(x) (scale1p = 1 + scale, fp32 [W]) through
    the fused [q; k; v] weights [(H + 2)·D, W]; shift_w = W_qkv · shift (fp32 [(H + 2)·D], this step's).
    pdl: launch as a programmatic dependent of the previous kernel (fused.pdl_supported)."""
    _check_k(x, w_qkv, "qkv")
    half = head_dim // 2
    if half % BLOCK_N or w_qkv.shape[0] != (heads + 2) * head_dim:
        raise ValueError(f"qkv_rope: head_dim/2 % {BLOCK_N} == 0 and weights [(H + 2)·D, W]; got D={head_dim}, "
                         f"w {tuple(w_qkv.shape)}")
    rows = x.shape[0]
    grid = ((heads + 2) * (half // BLOCK_N),)
    _norm_gemv_kernel[grid](x, scale1p, w_qkv, shift_w, pos, cos, sin, q, k_cache, v_cache, q, rows, 0, kv_offset,
                            x.stride(0), w_qkv.stride(0), 0, eps, K=x.shape[1], PF_LINES=_prefetch_lines(x.shape[1]),
                            QKV_ROPE=True, H=heads, D=head_dim,
                            BLOCK_M=_block_m(rows), BLOCK_N=BLOCK_N, **_launch("qkv", pdl, x.shape[1]))


def gate_up_geglu(x, scale1p, w_gate_up, shift_w, act, eps: float, pdl: bool = False):
    """act (bf16 [M, I]) = gelu_tanh(gate) · up of adaRMS(x) @ [gate; up]^T (weights [2I, W]; shift_w = W · shift)."""
    _check_k(x, w_gate_up, "gate_up")
    inter = act.shape[1]
    if inter % BLOCK_N or w_gate_up.shape[0] != 2 * inter:
        raise ValueError(f"gate_up_geglu: I % {BLOCK_N} == 0 and weights [2I, W]; got act {tuple(act.shape)}, "
                         f"w {tuple(w_gate_up.shape)}")
    rows = x.shape[0]
    _norm_gemv_kernel[(inter // BLOCK_N,)](x, scale1p, w_gate_up, shift_w, x, x, x, act, act, act, act, rows, inter, 0,
                                           x.stride(0), w_gate_up.stride(0), act.stride(0), eps, K=x.shape[1],
                                           PF_LINES=_prefetch_lines(x.shape[1]),
                                           QKV_ROPE=False, H=1, D=2 * BLOCK_N, BLOCK_M=_block_m(rows), BLOCK_N=BLOCK_N,
                                           **_launch("gate_up", pdl, x.shape[1]))
    return act


def gated_residual(x, inp, w, gate, kernel: str, pdl: bool = False):
    """x += gate ⊙ (inp @ w^T): the o / down projection straight into the fp32 residual (fused.skinny_linear)."""
    return fused.skinny_linear(inp, w, out=x, gate=gate, pdl=pdl, prefetch=PREFETCH["on"], **TUNING[kernel])


def shift_tables(w, shift):
    """shift [steps, W] -> W · shift for every step (fp32 [steps, N]): the adaRMS shift through a bf16 GEMM's weights."""
    return (shift.float() @ w.float().t()).contiguous()

"""The action expert's whole layer in one persistent launch (the denoise step's hot loop, M <= 16 action rows).

Per layer the per-op path launches 10 kernels of 2-8 us each for 11.5 us of weight reads (bench/results/
expert_layer-*.json): every launch pays its ramp and tail. Here two programs per SM walk eight phases, separated
by grid-wide barriers (an arrival counter in global memory; every program must be resident, so a grid the GPU
cannot hold at once is refused):

  0  h = bf16(x / rms(x) ⊙ (1 + scale)), one program per action row (the adaRMS shift is carried through W:
     shift_through, precomputed per flow step)
  1  QKV of h (stream-K); the shift term and RoPE are applied to each partial before the atomics into an fp32
     qkv buffer (both are linear)
  2  split-KV attention per (head, key block); the action keys/values come straight from the qkv buffer
  3  combine of the key blocks -> bf16 attention rows; zeroes the qkv buffer for the next layer
  4  o (stream-K), gated, added into the fp32 residual
  5  h of the second adaRMS norm
  6  gate/up of h, whole column tiles per program, shift + GeGLU in the epilogue -> bf16 activations
  7  down (stream-K), gated, added into the residual

Stream-K: each program takes an equal contiguous share of the (column tile, K block) sequence, so every SM streams
the same weight bytes, loading one block ahead in its K loop; partial tiles meet by atomics. With `phase` set, one launch
runs one phase and no barrier: the CPU interpreter (which runs programs one after another) checks the numerics
that way, and the GPU bench compares it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .fused import INTERPRETED, block_softmax, dot_t

MAX_ROWS = 16          # one tl.dot row block: the libero and droid horizons (10, 15); pi05_base's 50 runs per-op
PHASES = 8

# Launch shape per GEMM phase: (columns per tile, K block of the inner loop). qkv, o and down are stream-K: each
# program takes an equal contiguous share of the (tile, K block) sequence and flushes partial tiles by atomics;
# gate/up gives each program whole tiles so the GeGLU runs in its epilogue (bench/expert_persistent.py sweeps these).
TILES = {"qkv": (16, 128), "o": (32, 256), "gate_up": (16, 128), "down": (32, 128)}
KEY_BLOCK = 32
PROGRAMS_PER_SM = 2    # two resident programs per SM stream the weights faster than one (the bench sweep)


@triton.jit
def _grid_sync(BAR, target):
    """Every program arrives (release), then waits until `target` arrivals are counted (acquire)."""
    tl.debug_barrier()
    tl.atomic_add(BAR, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _norm_rows(X, S, HB, pid, P, M, eps, W: tl.constexpr):
    """HB = bf16(x / rms(x) ⊙ (1 + scale)) for the M rows of the residual, one program per row."""
    cw = tl.arange(0, W)
    for r in range(pid, M, P):
        xr = tl.load(X + r * W + cw, cache_modifier=".cg")
        hr = xr * (1.0 / tl.sqrt(tl.sum(xr * xr, 0) / W + eps)) * tl.load(S + cw)
        tl.store(HB + r * W + cw, hr.to(tl.bfloat16))


@triton.jit
def _share(pid, P, TOTAL):
    """Program pid's contiguous share [start, end) of TOTAL work items."""
    return pid * TOTAL // P, (pid + 1) * TOTAL // P


@triton.jit
def _stream_residual(A, WT, G, X, pid, P, M, N: tl.constexpr, K: tl.constexpr, W: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr, BLOCK_M: tl.constexpr, DOT_F32: tl.constexpr):
    """X [M, W] += G ⊙ (A [M, K] bf16 @ WT [N, K]^T), stream-K over (column tile, K block). Each iteration loads
    the next block before multiplying this one (two blocks in flight without relying on the compiler's pipeliner)."""
    m = tl.arange(0, BLOCK_M)
    kk = tl.arange(0, BK)
    KB: tl.constexpr = K // BK
    start, end = _share(pid, P, (N // BN) * KB)
    for t in range(start // KB, (end + KB - 1) // KB):
        n = t * BN + tl.arange(0, BN)
        kb_lo = tl.maximum(start - t * KB, 0)
        kb_hi = tl.minimum(end - t * KB, KB)
        w_next = tl.load(WT + n[:, None] * K + (kb_lo * BK + kk)[None, :])
        a_next = tl.load(A + m[:, None] * K + (kb_lo * BK + kk)[None, :], mask=m[:, None] < M, other=0.0,
                         cache_modifier=".cg")
        acc = tl.zeros([BLOCK_M, BN], tl.float32)
        for kb in range(kb_lo, kb_hi):
            w = w_next
            a = a_next
            k = tl.minimum(kb + 1, kb_hi - 1) * BK + kk
            w_next = tl.load(WT + n[:, None] * K + k[None, :])
            a_next = tl.load(A + m[:, None] * K + k[None, :], mask=m[:, None] < M, other=0.0, cache_modifier=".cg")
            acc += dot_t(a, w, DOT_F32)
        tl.atomic_add(X + m[:, None] * W + n[None, :], acc * tl.load(G + n)[None, :], mask=m[:, None] < M,
                      sem="relaxed")


@triton.jit
def _expert_layer_kernel(
        X, S1, C1, G1, S2, C2, G2, WQKV, WO, WGU, WD, KC, VC, BIAS, POS, COS, SIN,
        HB, QKV, ACT, PO, PM, PL, ATT, BAR, M, SEQ, T, eps, qk_scale,
        W: tl.constexpr, H: tl.constexpr, D: tl.constexpr, F: tl.constexpr, NS: tl.constexpr, NS_PAD: tl.constexpr,
        QKV_BN: tl.constexpr, QKV_BK: tl.constexpr, O_BN: tl.constexpr, O_BK: tl.constexpr,
        GU_BN: tl.constexpr, GU_BK: tl.constexpr, DN_BN: tl.constexpr, DN_BK: tl.constexpr, BT: tl.constexpr,
        BLOCK_M: tl.constexpr, PHASE: tl.constexpr, DOT_F32: tl.constexpr):
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    m = tl.arange(0, BLOCK_M)
    mmask = m < M
    NQKV: tl.constexpr = (H + 2) * D
    HALF: tl.constexpr = D // 2
    d = tl.arange(0, D)

    # ── 0: adaRMS input of the next GEMM, once: h = bf16(x / rms(x) ⊙ (1 + scale)) (the shift comes through W) ──
    if PHASE == -1 or PHASE == 0:
        _norm_rows(X, S1, HB, pid, P, M, eps, W)
    if PHASE < 0:
        _grid_sync(BAR + 0, P)

    # ── 1: QKV of h (stream-K); the shift (through W) and RoPE are applied to each partial (both linear) ─────────────────
    if PHASE == -1 or PHASE == 1:
        TPH: tl.constexpr = HALF // QKV_BN             # column tiles per head half
        KB: tl.constexpr = W // QKV_BK
        start, end = _share(pid, P, (H + 2) * TPH * KB)
        for t in range(start // KB, (end + KB - 1) // KB):
            head = t // TPH
            j = (t % TPH) * QKV_BN + tl.arange(0, QKV_BN)
            c_lo = head * D + j
            kb0 = tl.maximum(start - t * KB, 0)
            kb1 = tl.minimum(end - t * KB, KB)
            kk = tl.arange(0, QKV_BK)
            w_lo = tl.load(WQKV + c_lo[:, None] * W + (kb0 * QKV_BK + kk)[None, :])   # prefetch, as in _stream_residual
            w_hi = tl.load(WQKV + (c_lo + HALF)[:, None] * W + (kb0 * QKV_BK + kk)[None, :])
            lo = tl.zeros([BLOCK_M, QKV_BN], tl.float32)
            hi = tl.zeros([BLOCK_M, QKV_BN], tl.float32)
            for kb in range(kb0, kb1):
                h = tl.load(HB + m[:, None] * W + (kb * QKV_BK + kk)[None, :], mask=m[:, None] < M, other=0.0,
                            cache_modifier=".cg")
                wl = w_lo
                wh = w_hi
                k = tl.minimum(kb + 1, kb1 - 1) * QKV_BK + kk
                w_lo = tl.load(WQKV + c_lo[:, None] * W + k[None, :])
                w_hi = tl.load(WQKV + (c_lo + HALF)[:, None] * W + k[None, :])
                lo += dot_t(h, wl, DOT_F32)
                hi += dot_t(h, wh, DOT_F32)
            first = (kb0 == 0).to(tl.float32)           # the shift term (shift @ W^T) is added once per column
            lo += first * tl.load(C1 + c_lo)[None, :]
            hi += first * tl.load(C1 + c_lo + HALF)[None, :]
            if head <= H:                              # queries and the key head rotate; the value head does not
                pos = tl.load(POS + m, mask=mmask, other=0)
                cos = tl.load(COS + pos[:, None] * HALF + j[None, :])
                sin = tl.load(SIN + pos[:, None] * HALF + j[None, :])
                lo, hi = lo * cos - hi * sin, hi * cos + lo * sin
            dst = QKV + m[:, None] * NQKV + c_lo[None, :]
            tl.atomic_add(dst, lo, mask=mmask[:, None], sem="relaxed")
            tl.atomic_add(dst + HALF, hi, mask=mmask[:, None], sem="relaxed")
    if PHASE < 0:
        _grid_sync(BAR + 1, P)

    # ── 2: split-KV attention per (head, key block); the action keys/values come from the qkv buffer ────────────
    if PHASE == -1 or PHASE == 2:
        for u in tl.range(pid, H * NS, P, num_stages=1):   # K/V tiles are 32 KB: no multi-buffering
            hd = u % H
            s = u // H
            q = tl.load(QKV + m[:, None] * NQKV + hd * D + d[None, :], mask=mmask[:, None], other=0.0,
                        cache_modifier=".cg").to(tl.bfloat16)
            cols = s * BT + tl.arange(0, BT)
            cached = cols < SEQ
            action = (cols >= SEQ) & (cols < T)
            arow = tl.where(action, cols - SEQ, 0)
            k = tl.where(cached[:, None], tl.load(KC + cols[:, None] * D + d[None, :], mask=cached[:, None], other=0.0),
                         tl.load(QKV + arow[:, None] * NQKV + H * D + d[None, :], mask=action[:, None], other=0.0,
                                 cache_modifier=".cg").to(tl.bfloat16))
            v = tl.where(cached[:, None], tl.load(VC + cols[:, None] * D + d[None, :], mask=cached[:, None], other=0.0),
                         tl.load(QKV + arow[:, None] * NQKV + (H + 1) * D + d[None, :], mask=action[:, None],
                                 other=0.0, cache_modifier=".cg").to(tl.bfloat16))
            bias = tl.load(BIAS + cols, mask=cols < T, other=float("-inf")).to(tl.float32)
            mx, lsum, acc = block_softmax(q, k, v, bias, qk_scale, DOT_F32)
            row = (s * H + hd) * BLOCK_M + m
            tl.store(PM + row, mx)
            tl.store(PL + row, lsum)
            tl.store(PO + row[:, None] * D + d[None, :], acc)
    if PHASE < 0:
        _grid_sync(BAR + 2, P)

    # ── 3: combine the key blocks into bf16 attention rows [M, H·D]; zero the qkv buffer for the next layer ──────
    if PHASE == -1 or PHASE == 3:
        sp = tl.arange(0, NS_PAD)
        smask = sp < NS
        for u in range(pid, H * M, P):
            hd = u // M
            r = u % M
            row = (sp * H + hd) * BLOCK_M + r
            pm = tl.load(PM + row, mask=smask, other=-1.0e30, cache_modifier=".cg")
            wgt = tl.where(smask, tl.exp2(pm - tl.max(pm, 0)), 0.0)
            total = tl.sum(wgt * tl.load(PL + row, mask=smask, other=0.0, cache_modifier=".cg"), 0)
            acc = tl.load(PO + row[:, None] * D + d[None, :], mask=smask[:, None], other=0.0, cache_modifier=".cg")
            tl.store(ATT + r * (H * D) + hd * D + d, (tl.sum(acc * wgt[:, None], 0) / total).to(tl.bfloat16))
        for z in range(pid * 1024, M * NQKV, P * 1024):
            zi = z + tl.arange(0, 1024)
            tl.store(QKV + zi, tl.zeros([1024], tl.float32), mask=zi < M * NQKV)
    if PHASE < 0:
        _grid_sync(BAR + 3, P)

    # ── 4: residual += g1 ⊙ (att Wo^T) ───────────────────────────────────────────────────────────────────────────
    if PHASE == -1 or PHASE == 4:
        _stream_residual(ATT, WO, G1, X, pid, P, M, W, H * D, W, O_BN, O_BK, BLOCK_M, DOT_F32)
    if PHASE < 0:
        _grid_sync(BAR + 4, P)

    # ── 5: adaRMS input of the next GEMM, once: h = bf16(x / rms(x) ⊙ (1 + scale)) (the shift comes through W) ──
    if PHASE == -1 or PHASE == 5:
        _norm_rows(X, S2, HB, pid, P, M, eps, W)
    if PHASE < 0:
        _grid_sync(BAR + 5, P)

    # ── 6: h -> gate/up, whole tiles per program, shift + GeGLU in the epilogue -> bf16 activations ────────────────
    if PHASE == -1 or PHASE == 6:
        for t in range(pid, F // GU_BN, P):
            n = t * GU_BN + tl.arange(0, GU_BN)
            kk = tl.arange(0, GU_BK)
            w_g = tl.load(WGU + n[:, None] * W + kk[None, :])           # prefetch, as in _stream_residual
            w_u = tl.load(WGU + (n + F)[:, None] * W + kk[None, :])
            g = tl.zeros([BLOCK_M, GU_BN], tl.float32)
            up = tl.zeros([BLOCK_M, GU_BN], tl.float32)
            for kb in range(0, W // GU_BK):
                h = tl.load(HB + m[:, None] * W + (kb * GU_BK + kk)[None, :], mask=m[:, None] < M, other=0.0,
                            cache_modifier=".cg")
                wg = w_g
                wu = w_u
                k = tl.minimum(kb + 1, W // GU_BK - 1) * GU_BK + kk
                w_g = tl.load(WGU + n[:, None] * W + k[None, :])
                w_u = tl.load(WGU + (n + F)[:, None] * W + k[None, :])
                g += dot_t(h, wg, DOT_F32)
                up += dot_t(h, wu, DOT_F32)
            g += tl.load(C2 + n)[None, :]
            up += tl.load(C2 + F + n)[None, :]
            act = g * tl.sigmoid(1.5957691216057308 * (g + 0.044715 * g * g * g)) * up
            tl.store(ACT + m[:, None] * F + n[None, :], act.to(tl.bfloat16), mask=mmask[:, None])
    if PHASE < 0:
        _grid_sync(BAR + 6, P)

    # ── 7: residual += g2 ⊙ (act Wd^T) ───────────────────────────────────────────────────────────────────────────
    if PHASE == -1 or PHASE == 7:
        _stream_residual(ACT, WD, G2, X, pid, P, M, W, F, W, DN_BN, DN_BK, BLOCK_M, DOT_F32)


@dataclass
class ExpertScratch:
    """The buffers one inference's persistent expert layers share. qkv must be zero when a layer starts (each layer
    zeroes it again after its attention); every launch has its own barrier counters (zeroed per inference)."""

    h: torch.Tensor
    qkv: torch.Tensor
    act: torch.Tensor
    po: torch.Tensor
    pm: torch.Tensor
    pl: torch.Tensor
    att: torch.Tensor
    barriers: torch.Tensor
    key_blocks: int
    key_block: int
    programs: int
    launches: int = 0

    @classmethod
    def allocate(cls, rows: int, width: int, keys: int, heads: int, head_dim: int, mlp: int, launches: int, device,
                 programs: int | None = None, key_block: int = KEY_BLOCK):
        if rows > MAX_ROWS:
            raise ValueError(f"the persistent expert layer takes <= {MAX_ROWS} action rows, got {rows}")
        ns = triton.cdiv(keys, key_block)
        if programs is None:
            programs = 4 if INTERPRETED else PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
        f32 = dict(dtype=torch.float32, device=device)
        return cls(h=torch.empty(rows, width, dtype=torch.bfloat16, device=device),
                   qkv=torch.zeros(rows, (heads + 2) * head_dim, **f32),
                   act=torch.empty(rows, mlp, dtype=torch.bfloat16, device=device),
                   po=torch.empty(ns * heads * MAX_ROWS, head_dim, **f32), pm=torch.empty(ns * heads * MAX_ROWS, **f32),
                   pl=torch.empty(ns * heads * MAX_ROWS, **f32),
                   att=torch.empty(rows, heads * head_dim, dtype=torch.bfloat16, device=device),
                   barriers=torch.zeros(launches * (PHASES - 1), dtype=torch.int32, device=device),
                   key_blocks=ns, key_block=key_block, programs=programs)


def _tile(tiles: dict, name: str, n: int, k: int) -> tuple[int, int]:
    """tiles[name] clipped to the layer (the tiny test config); the GEMM must split into whole tiles and K blocks."""
    bn, bk = min(tiles[name][0], n), min(tiles[name][1], k)
    if n % bn or k % bk or bn < 16 or bk < 16:
        raise ValueError(f"expert_layer: {name} of {n} columns x {k} inputs does not split into {bn} x {bk} blocks")
    return bn, bk


def shift_through(w, shift):
    """shift @ W^T in fp32 (shift [..., K], W bf16 [N, K]): an adaRMS shift carried through the GEMM it feeds,
    precomputed per flow step like the shift itself, so the kernel's GEMM reads x ⊙ (1 + scale) only."""
    return (shift.float() @ w.float().T).contiguous()


def expert_layer(x, ada1, ada2, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, bias, pos, cos, sin, seq: int,
                 scratch: ExpertScratch, eps: float, heads: int, head_dim: int, phase: int | None = None,
                 tiles: dict | None = None, num_warps: int = 4, num_stages: int = 3):
    """One expert layer on the fp32 residual x [M, W] (updated in place). ada1/ada2: the two adaRMS norms at this
    step as (1 + scale [W], shift_through(W_next, shift) [N of the GEMM it feeds], gate [W]), fp32; weights bf16 (fused [q; k; v] and [gate; up]); k/v caches hold the prefix
    in rows < seq; bias: additive key mask [seq + M]; pos: the action rows' positions. phase=None runs all six
    phases in one launch; phase=k runs phase k alone (the interpreter's way); phase=-2 runs only the barriers (what
    they cost, bench/expert_persistent.py). tiles / num_warps / num_stages: the
    launch shape (defaults: TILES, bench/expert_persistent.py sweeps them)."""
    rows, width = x.shape
    mlp = w_gate_up.shape[0] // 2
    keys = seq + rows
    if rows > MAX_ROWS or bias.shape[0] != keys or w_qkv.shape != ((heads + 2) * head_dim, width):
        raise ValueError(f"expert_layer: <= {MAX_ROWS} rows, bias [seq + M], w_qkv [(H+2)·D, W]; got x {tuple(x.shape)}, "
                         f"bias {tuple(bias.shape)}, w_qkv {tuple(w_qkv.shape)}")
    if triton.cdiv(keys, scratch.key_block) != scratch.key_blocks:
        raise ValueError(f"expert_layer: scratch was sized for {scratch.key_blocks} key blocks, this call has {keys} keys")
    (s1, c1, g1), (s2, c2, g2) = ada1, ada2
    if c1.shape[-1] != w_qkv.shape[0] or c2.shape[-1] != w_gate_up.shape[0]:
        raise ValueError(f"expert_layer: the shifts must come through the QKV / gate-up weights (shift_through); got "
                         f"{c1.shape[-1]} and {c2.shape[-1]} columns for {w_qkv.shape[0]} and {w_gate_up.shape[0]}")
    tiles = {**TILES, **(tiles or {})}
    tq, to, tg, td = [_tile(tiles, name, n, k) for name, n, k in (("qkv", head_dim // 2, width), ("o", width, heads * head_dim),
                                                            ("gate_up", mlp, width), ("down", width, mlp))]
    barriers = phase is None or phase == -2           # a launch with barriers takes the scratch's next counters
    if barriers and scratch.launches * (PHASES - 1) >= scratch.barriers.numel():
        raise RuntimeError(f"ExpertScratch: all {scratch.barriers.numel() // (PHASES - 1)} barrier slots used")
    bar = scratch.barriers[scratch.launches * (PHASES - 1):] if barriers else scratch.barriers
    args = (x, s1, c1, g1, s2, c2, g2, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, bias, pos, cos, sin,
            scratch.h, scratch.qkv, scratch.act, scratch.po, scratch.pm, scratch.pl, scratch.att, bar, rows, seq, keys, eps,
            head_dim ** -0.5 * 1.4426950408889634)
    meta = dict(
        W=width, H=heads, D=head_dim, F=mlp, NS=scratch.key_blocks, NS_PAD=triton.next_power_of_2(scratch.key_blocks),
        QKV_BN=tq[0], QKV_BK=tq[1], O_BN=to[0], O_BK=to[1], GU_BN=tg[0], GU_BK=tg[1], DN_BN=td[0], DN_BK=td[1],
        BT=scratch.key_block, BLOCK_M=MAX_ROWS, PHASE=-1 if phase is None else phase, DOT_F32=INTERPRETED,
        num_warps=num_warps, num_stages=num_stages)
    if barriers and not INTERPRETED:
        _check_resident(scratch.programs, args, meta, x.device)
    scratch.launches += barriers                       # only once nothing can refuse the call any more
    _expert_layer_kernel[(scratch.programs,)](*args, **meta)
    return x


_RESIDENT: dict = {}


def resident_programs(n_regs: int, shared: int, num_warps: int, props) -> int:
    """How many programs of one compiled kernel the GPU holds at once (registers, shared memory, threads per SM)."""
    threads = 32 * num_warps
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // max(1, n_regs * threads)
    by_smem = getattr(props, "shared_memory_per_multiprocessor", 233472) // max(1, shared + 1024)
    by_threads = getattr(props, "max_threads_per_multi_processor", 2048) // threads
    return props.multi_processor_count * min(by_regs, by_smem, by_threads)


def _check_resident(programs: int, args, meta, device) -> None:
    """The grid barriers wait for every program: a grid larger than what the GPU holds at once would hang, so it is
    refused before the first launch (once per compiled shape)."""
    key = (programs, device.index, tuple(sorted(meta.items())))
    if key not in _RESIDENT:
        compiled = _expert_layer_kernel.warmup(*args, grid=(programs,), **meta)
        compiled._init_handles()
        _RESIDENT[key] = resident_programs(compiled.n_regs, compiled.metadata.shared, meta["num_warps"],
                                           torch.cuda.get_device_properties(device))
    if programs > _RESIDENT[key]:
        raise RuntimeError(f"expert_layer: {programs} programs but this GPU holds {_RESIDENT[key]} of this kernel at "
                           f"once; its grid barriers would never complete (lower ExpertScratch.programs)")


def reference_layer(x, ada1, ada2, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, bias, pos, rope_base: float,
                    seq: int, eps: float, heads: int, head_dim: int):
    """The same layer in fp32 from the reference model's own pieces (runtime/model.py), without the engine's bf16
    roundings: what the interpreter test and bench/expert_persistent.py check the kernel against. ada1/ada2 are
    (1 + scale, shift, gate); bias is the additive key mask (0 / -inf). Returns the new residual."""
    from .model import ReferencePi05, gelu_tanh, rms_normalize, rope

    rows, hd = x.shape[0], heads * head_dim
    (s1, b1, g1), (s2, b2, g2) = ada1, ada2
    qkv = (rms_normalize(x, eps) * s1 + b1) @ w_qkv.float().T
    q = rope(qkv[:, :hd].view(rows, heads, head_dim).transpose(0, 1), pos, rope_base)      # [H, M, D]
    keys = torch.cat([k_cache[:seq].float(), rope(qkv[:, hd:hd + head_dim], pos, rope_base)])
    vals = torch.cat([v_cache[:seq].float(), qkv[:, hd + head_dim:]])
    att = ReferencePi05._attend(q, keys, vals, (bias == 0).expand(rows, -1), head_dim)
    x = x + g1 * (att.transpose(0, 1).reshape(rows, hd) @ w_o.float().T)
    gate, up = ((rms_normalize(x, eps) * s2 + b2) @ w_gate_up.float().T).chunk(2, -1)
    return x + g2 * ((gelu_tanh(gate) * up) @ w_down.float().T)

"""The action expert's whole layer in one persistent launch (the denoise step's hot loop, M <= 16 action rows).

Per layer the per-op path launches 10 kernels of 2-8 us each for 11.5 us of weight reads (bench/results/
expert_layer-*.json): every launch pays its ramp and tail. Here one program per SM walks six phases, separated by
grid-wide barriers (an arrival counter in global memory; every program is resident, the grid is the SM count):

  0  adaRMS norm (each program recomputes the 1/rms of the few rows) -> QKV, RoPE applied to the split-K partials
     (a rotation is linear), atomics into an fp32 qkv buffer
  1  split-KV attention per (head, key block); the action keys/values come straight from the qkv buffer
  2  combine of the key blocks -> bf16 attention rows; zeroes the qkv buffer for the next layer
  3  o, gated, added into the fp32 residual
  4  adaRMS norm -> gate/up, atomics into an fp32 buffer
  5  GeGLU read inside down, gated, added into the residual

Weight-streaming phases cut their GEMM into units (column tile x K chunk) that programs take round-robin, so every
SM streams a similar share of the weights. With `phase` set, one launch runs one phase and no barrier: the CPU
interpreter (which runs programs one after another) checks the numerics that way, and the GPU tests compare it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .fused import INTERPRETED

MAX_ROWS = 16          # one tl.dot row block: the libero and droid horizons (10, 15); pi05_base's 50 runs per-op
PHASES = 6

# Units per phase: (columns per tile, K chunk); each unit reads 16 KB of bf16 weights (bench/expert_persistent.py).
TILES = {"qkv": (16, 256), "o": (32, 256), "gate_up": (16, 256), "down": (32, 256)}
KEY_BLOCK = 64


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
def _row_rstd(X, M, eps, W: tl.constexpr, BLOCK_M: tl.constexpr):
    RC: tl.constexpr = 256 if W >= 256 else W
    m = tl.arange(0, BLOCK_M)
    ss = tl.zeros([BLOCK_M], tl.float32)
    for c0 in range(0, W, RC):
        c = c0 + tl.arange(0, RC)
        x = tl.load(X + m[:, None] * W + c[None, :], mask=m[:, None] < M, other=0.0, cache_modifier=".cg")
        ss += tl.sum(x * x, 1)
    return 1.0 / tl.sqrt(ss / W + eps)


@triton.jit
def _dot_t(a, w, DOT_F32: tl.constexpr):
    """a [BM, K] bf16 @ w [N, K]^T -> fp32 (the interpreter multiplies in fp32)."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)))
    return tl.dot(a, tl.trans(w))


@triton.jit
def _normed(X, rstd, S, B, m, k, M, W: tl.constexpr):
    """adaRMS output rows m, columns k of the residual, bf16 like every norm output of the engine."""
    x = tl.load(X + m[:, None] * W + k[None, :], mask=m[:, None] < M, other=0.0, cache_modifier=".cg")
    h = x * rstd[:, None] * tl.load(S + k)[None, :] + tl.load(B + k)[None, :]
    return h.to(tl.bfloat16)


@triton.jit
def _expert_layer_kernel(
        X, S1, B1, G1, S2, B2, G2, WQKV, WO, WGU, WD, KC, VC, BIAS, POS, COS, SIN,
        QKV, GU, PO, PM, PL, ATT, BAR, M, SEQ, T, eps, qk_scale,
        W: tl.constexpr, H: tl.constexpr, D: tl.constexpr, F: tl.constexpr, NS: tl.constexpr, NS_PAD: tl.constexpr,
        QKV_BN: tl.constexpr, QKV_KC: tl.constexpr, O_BN: tl.constexpr, O_KC: tl.constexpr,
        GU_BN: tl.constexpr, GU_KC: tl.constexpr, DN_BN: tl.constexpr, DN_KC: tl.constexpr, BT: tl.constexpr,
        BLOCK_M: tl.constexpr, PHASE: tl.constexpr, DOT_F32: tl.constexpr):
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    m = tl.arange(0, BLOCK_M)
    mmask = m < M
    NQKV: tl.constexpr = (H + 2) * D
    HALF: tl.constexpr = D // 2
    d = tl.arange(0, D)

    # ── 0: norm -> QKV with RoPE on the partials ────────────────────────────────────────────────────────────────
    if PHASE < 0 or PHASE == 0:
        rstd = _row_rstd(X, M, eps, W, BLOCK_M)
        pos = tl.load(POS + m, mask=mmask, other=0)
        TPH: tl.constexpr = HALF // QKV_BN            # column tiles per head half
        KS: tl.constexpr = W // QKV_KC
        for u in range(pid, (H + 2) * TPH * KS, P):
            t = u // KS
            k = (u % KS) * QKV_KC + tl.arange(0, QKV_KC)
            head = t // TPH
            j = (t % TPH) * QKV_BN + tl.arange(0, QKV_BN)
            c_lo = head * D + j
            h = _normed(X, rstd, S1, B1, m, k, M, W)
            lo = _dot_t(h, tl.load(WQKV + c_lo[:, None] * W + k[None, :]), DOT_F32)
            hi = _dot_t(h, tl.load(WQKV + (c_lo + HALF)[:, None] * W + k[None, :]), DOT_F32)
            if head <= H:                              # queries and the key head rotate; the value head does not
                cos = tl.load(COS + pos[:, None] * HALF + j[None, :])
                sin = tl.load(SIN + pos[:, None] * HALF + j[None, :])
                lo, hi = lo * cos - hi * sin, hi * cos + lo * sin
            dst = QKV + m[:, None] * NQKV + c_lo[None, :]
            tl.atomic_add(dst, lo, mask=mmask[:, None], sem="relaxed")
            tl.atomic_add(dst + HALF, hi, mask=mmask[:, None], sem="relaxed")
    if PHASE < 0:
        _grid_sync(BAR, P)

    # ── 1: split-KV attention per (head, key block); zero the gate/up buffer for phase 4 ───────────────────────
    if PHASE < 0 or PHASE == 1:
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
            sc = _dot_t(q, k, DOT_F32) * qk_scale + bias[None, :] * 1.4426950408889634
            mx = tl.maximum(tl.max(sc, 1), -1.0e30)         # a fully masked block gives p = 0, not NaN
            p = tl.exp2(sc - mx[:, None])
            if DOT_F32:
                acc = tl.dot(p, v.to(tl.float32))
            else:
                acc = tl.dot(p.to(tl.bfloat16), v)
            row = (s * H + hd) * BLOCK_M + m
            tl.store(PM + row, mx)
            tl.store(PL + row, tl.sum(p, 1))
            tl.store(PO + row[:, None] * D + d[None, :], acc)
        for z in range(pid * 1024, M * 2 * F, P * 1024):
            zi = z + tl.arange(0, 1024)
            tl.store(GU + zi, tl.zeros([1024], tl.float32), mask=zi < M * 2 * F)
    if PHASE < 0:
        _grid_sync(BAR + 1, P)

    # ── 2: combine the key blocks into bf16 attention rows [M, H·D]; zero the qkv buffer for the next layer ──────
    if PHASE < 0 or PHASE == 2:
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
        _grid_sync(BAR + 2, P)

    # ── 3: residual += g1 ⊙ (att Wo^T) ───────────────────────────────────────────────────────────────────────────
    if PHASE < 0 or PHASE == 3:
        KS3: tl.constexpr = (H * D) // O_KC
        for u in range(pid, (W // O_BN) * KS3, P):
            n = (u // KS3) * O_BN + tl.arange(0, O_BN)
            k = (u % KS3) * O_KC + tl.arange(0, O_KC)
            a = tl.load(ATT + m[:, None] * (H * D) + k[None, :], mask=mmask[:, None], other=0.0, cache_modifier=".cg")
            acc = _dot_t(a, tl.load(WO + n[:, None] * (H * D) + k[None, :]), DOT_F32) * tl.load(G1 + n)[None, :]
            tl.atomic_add(X + m[:, None] * W + n[None, :], acc, mask=mmask[:, None], sem="relaxed")
    if PHASE < 0:
        _grid_sync(BAR + 3, P)

    # ── 4: norm -> gate/up ──────────────────────────────────────────────────────────────────────────────────────
    if PHASE < 0 or PHASE == 4:
        rstd2 = _row_rstd(X, M, eps, W, BLOCK_M)
        KS4: tl.constexpr = W // GU_KC
        for u in range(pid, (F // GU_BN) * KS4, P):
            n = (u // KS4) * GU_BN + tl.arange(0, GU_BN)
            k = (u % KS4) * GU_KC + tl.arange(0, GU_KC)
            h = _normed(X, rstd2, S2, B2, m, k, M, W)
            g = _dot_t(h, tl.load(WGU + n[:, None] * W + k[None, :]), DOT_F32)
            up = _dot_t(h, tl.load(WGU + (n + F)[:, None] * W + k[None, :]), DOT_F32)
            dst = GU + m[:, None] * (2 * F) + n[None, :]
            tl.atomic_add(dst, g, mask=mmask[:, None], sem="relaxed")
            tl.atomic_add(dst + F, up, mask=mmask[:, None], sem="relaxed")
    if PHASE < 0:
        _grid_sync(BAR + 4, P)

    # ── 5: residual += g2 ⊙ (GeGLU(gate, up) Wd^T) ─────────────────────────────────────────────────────────────
    if PHASE < 0 or PHASE == 5:
        KS5: tl.constexpr = F // DN_KC
        for u in range(pid, (W // DN_BN) * KS5, P):
            n = (u // KS5) * DN_BN + tl.arange(0, DN_BN)
            k = (u % KS5) * DN_KC + tl.arange(0, DN_KC)
            src = GU + m[:, None] * (2 * F) + k[None, :]
            g = tl.load(src, mask=mmask[:, None], other=0.0, cache_modifier=".cg")
            up = tl.load(src + F, mask=mmask[:, None], other=0.0, cache_modifier=".cg")
            a = (g * tl.sigmoid(1.5957691216057308 * (g + 0.044715 * g * g * g)) * up).to(tl.bfloat16)
            acc = _dot_t(a, tl.load(WD + n[:, None] * F + k[None, :]), DOT_F32) * tl.load(G2 + n)[None, :]
            tl.atomic_add(X + m[:, None] * W + n[None, :], acc, mask=mmask[:, None], sem="relaxed")


@dataclass
class ExpertScratch:
    """The buffers one inference's persistent expert layers share. qkv must be zero when a layer starts (each layer
    zeroes it again after its attention); every launch has its own barrier counters (zeroed per inference)."""

    qkv: torch.Tensor
    gate_up: torch.Tensor
    po: torch.Tensor
    pm: torch.Tensor
    pl: torch.Tensor
    att: torch.Tensor
    barriers: torch.Tensor
    key_blocks: int
    programs: int
    launches: int = 0

    @classmethod
    def allocate(cls, rows: int, keys: int, heads: int, head_dim: int, mlp: int, launches: int, device,
                 programs: int | None = None):
        if rows > MAX_ROWS:
            raise ValueError(f"the persistent expert layer takes <= {MAX_ROWS} action rows, got {rows}")
        ns = triton.cdiv(keys, KEY_BLOCK)
        if programs is None:
            programs = 4 if INTERPRETED else torch.cuda.get_device_properties(device).multi_processor_count
        f32 = dict(dtype=torch.float32, device=device)
        return cls(qkv=torch.zeros(rows, (heads + 2) * head_dim, **f32), gate_up=torch.zeros(rows, 2 * mlp, **f32),
                   po=torch.empty(ns * heads * MAX_ROWS, head_dim, **f32), pm=torch.empty(ns * heads * MAX_ROWS, **f32),
                   pl=torch.empty(ns * heads * MAX_ROWS, **f32),
                   att=torch.empty(rows, heads * head_dim, dtype=torch.bfloat16, device=device),
                   barriers=torch.zeros(launches * (PHASES - 1), dtype=torch.int32, device=device),
                   key_blocks=ns, programs=programs)


def _tile(tiles: dict, name: str, n: int, k: int) -> tuple[int, int]:
    """tiles[name] clipped to the layer (the tiny test config); the GEMM must split into whole units."""
    bn, kc = min(tiles[name][0], n), min(tiles[name][1], k)
    if n % bn or k % kc or bn < 16 or kc < 16:
        raise ValueError(f"expert_layer: {name} of {n} columns x {k} inputs does not split into {bn} x {kc} units")
    return bn, kc


def expert_layer(x, ada1, ada2, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, bias, pos, cos, sin, seq: int,
                 scratch: ExpertScratch, eps: float, heads: int, head_dim: int, phase: int | None = None,
                 tiles: dict | None = None, num_warps: int = 4, num_stages: int = 3):
    """One expert layer on the fp32 residual x [M, W] (updated in place). ada1/ada2: (1 + scale, shift, gate) fp32 [W]
    of the two adaRMS norms at this step; weights bf16 (fused [q; k; v] and [gate; up]); k/v caches hold the prefix
    in rows < seq; bias: additive key mask [seq + M]; pos: the action rows' positions. phase=None runs all six
    phases in one launch; phase=k runs phase k alone (the interpreter's way). tiles / num_warps / num_stages: the
    launch shape (defaults: TILES, bench/expert_persistent.py sweeps them)."""
    rows, width = x.shape
    mlp = w_gate_up.shape[0] // 2
    keys = seq + rows
    if rows > MAX_ROWS or bias.shape[0] != keys or w_qkv.shape != ((heads + 2) * head_dim, width):
        raise ValueError(f"expert_layer: <= {MAX_ROWS} rows, bias [seq + M], w_qkv [(H+2)·D, W]; got x {tuple(x.shape)}, "
                         f"bias {tuple(bias.shape)}, w_qkv {tuple(w_qkv.shape)}")
    if triton.cdiv(keys, KEY_BLOCK) != scratch.key_blocks:
        raise ValueError(f"expert_layer: scratch was sized for {scratch.key_blocks} key blocks, this call has {keys} keys")
    if phase is None:
        if scratch.launches * (PHASES - 1) >= scratch.barriers.numel():
            raise RuntimeError(f"ExpertScratch: all {scratch.barriers.numel() // (PHASES - 1)} barrier slots used")
        bar = scratch.barriers[scratch.launches * (PHASES - 1):]
        scratch.launches += 1
    else:
        bar = scratch.barriers
    (s1, b1, g1), (s2, b2, g2) = ada1, ada2
    tiles = {**TILES, **(tiles or {})}
    tq, to, tg, td = (_tile(tiles, name, n, k) for name, n, k in (("qkv", head_dim // 2, width), ("o", width, heads * head_dim),
                                                            ("gate_up", mlp, width), ("down", width, mlp)))
    _expert_layer_kernel[(scratch.programs,)](
        x, s1, b1, g1, s2, b2, g2, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, bias, pos, cos, sin,
        scratch.qkv, scratch.gate_up, scratch.po, scratch.pm, scratch.pl, scratch.att, bar, rows, seq, keys, eps,
        head_dim ** -0.5 * 1.4426950408889634,
        W=width, H=heads, D=head_dim, F=mlp, NS=scratch.key_blocks, NS_PAD=triton.next_power_of_2(scratch.key_blocks),
        QKV_BN=tq[0], QKV_KC=tq[1], O_BN=to[0], O_KC=to[1], GU_BN=tg[0], GU_KC=tg[1], DN_BN=td[0], DN_KC=td[1],
        BT=KEY_BLOCK, BLOCK_M=MAX_ROWS, PHASE=-1 if phase is None else phase, DOT_F32=INTERPRETED,
        num_warps=num_warps, num_stages=num_stages)
    return x


def reference_layer(x, ada1, ada2, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, bias, pos, cos, sin, seq: int,
                    eps: float, heads: int, head_dim: int):
    """The same layer as plain fp32 torch (what the per-op engine computes, without its bf16 roundings): the
    formula tests and bench/expert_persistent.py check the kernel against. Returns the new residual."""
    import torch.nn.functional as F

    rows = x.shape[0]
    (s1, b1, g1), (s2, b2, g2) = ada1, ada2

    def rotate(t, c, s):
        t1, t2 = t[..., :head_dim // 2], t[..., head_dim // 2:]
        return torch.cat([t1 * c - t2 * s, t2 * c + t1 * s], -1)

    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * s1 + b1
    qkv = h @ w_qkv.float().T
    c, s = cos[pos.long()], sin[pos.long()]
    q = rotate(qkv[:, :heads * head_dim].view(rows, heads, head_dim), c[:, None], s[:, None])
    k = rotate(qkv[:, heads * head_dim:(heads + 1) * head_dim], c, s)
    keys = torch.cat([k_cache[:seq].float(), k])
    vals = torch.cat([v_cache[:seq].float(), qkv[:, (heads + 1) * head_dim:]])
    p = torch.softmax(torch.einsum("mhd,td->mht", q, keys) / head_dim ** 0.5 + bias.float(), -1)
    x = x + g1 * (torch.einsum("mht,td->mhd", p, vals).reshape(rows, -1) @ w_o.float().T)
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * s2 + b2
    gate, up = (h @ w_gate_up.float().T).chunk(2, -1)
    return x + g2 * ((F.gelu(gate, approximate="tanh") * up) @ w_down.float().T)

"""Run by tests/test_fused_kernels.py in a fresh process: TRITON_INTERPRET must be set before triton is imported.
Each Plan A fused kernel against the reference formula on CPU; prints one line per kernel, exits 1 on a mismatch."""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from triforce.runtime import fused  # noqa: E402
from triforce.runtime.model import rope  # noqa: E402

torch.manual_seed(0)
failures = []


def check(name, got, ref, tol):
    err = float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6))
    print(f"{name}: max rel err {err:.2e} (tol {tol})")
    if not err <= tol:
        failures.append(name)


def check_fp8(name, got, want, steps):
    """E4M3 codes against torch's E4M3 rounding of the reference: exact (steps 0) or within one E4M3 step (steps 1,
    for a reference rounded differently on the way). Triton's CPU interpreter drops the carry when rounding up into
    the next binade (1.96 -> 1.0, not 2.0); the GPU's cvt does not (tests/test_engine_gpu.py checks add_norm's
    output bit-exact there), so those codes pass; any other difference fails."""
    got, want = got.float(), want.float().to(torch.float8_e4m3fn).float()
    carry = (got != want) & (want.abs() == 2 * got.abs()) & (torch.log2(want.abs()) == torch.log2(want.abs()).round())
    off = (got != want) if steps == 0 else ((got - want).abs() > want.abs() / 8 + 2 ** -8)
    other = int((off & ~carry).sum())
    print(f"{name}: {other} codes off torch's E4M3 rounding ({int(carry.sum())} interpreter carry drops)")
    if other:
        failures.append(name)


try:
    with fused.dependent_launches():
        pass
    failures.append("dependent launches accepted by the interpreter")
except ValueError as err:
    print(f"dependent launches refused: {err}")

x = torch.randn(5, 96)
y, g, sc, sh = torch.randn(5, 96).bfloat16(), torch.randn(96), torch.randn(96), torch.randn(96)
out = torch.empty(5, 96, dtype=torch.bfloat16)
x0 = x.clone()
fused.add_norm(x, out, y=y, gate=g, scale=sc, shift=sh)
xr = x0 + y.float() * g
check("add_norm residual", x, xr, 1e-6)
check("add_norm adaRMS", out, xr * torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + 1e-6) * sc + sh, 1e-2)
w, b = torch.randn(96), torch.randn(96)
x = x0.clone()
fused.add_norm(x, out, weight=w, bias=b, layernorm=True)
check("add_norm layernorm", out, F.layer_norm(x0, (96,), w, b, 1e-6), 1e-2)
q8 = torch.empty(5, 96, dtype=torch.float8_e4m3fn)
inv = torch.tensor([4.0])
x = x0.clone()
fused.add_norm(x, q8, quant_scale=inv)
check_fp8("add_norm -> fp8", q8, (x0 * torch.rsqrt(x0.pow(2).mean(-1, keepdim=True) + 1e-6) * 4).clamp(-448, 448), 0)

S, H, D = 6, 2, 32
qkv = torch.randn(S, (H + 2) * D).bfloat16()
pos = torch.tensor([0, 1, 2, 5, 7, 9], dtype=torch.int32)
cos, sin = fused.rope_tables(20, D, 10000.0, "cpu")
q = torch.empty(S * H, D, dtype=torch.bfloat16)
kc, vc = torch.zeros(10, D, dtype=torch.bfloat16), torch.zeros(10, D, dtype=torch.bfloat16)
fused.rope_qkv(qkv, pos, cos, sin, q, kc, vc, 2, H, D)
check("rope q", q, rope(qkv[:, :H * D].float().view(S, H, D).transpose(0, 1), pos, 10000.0).transpose(0, 1).reshape(S * H, D), 1e-2)
check("rope k -> cache", kc[2:8], rope(qkv[:, H * D:(H + 1) * D].float(), pos, 10000.0), 1e-2)
check("v -> cache", vc[2:8], qkv[:, (H + 1) * D:], 0)

cs = torch.rand((H + 2) * D) + 0.5
q_cs = torch.empty(S * H, D, dtype=torch.bfloat16)
kc_cs, vc_cs = torch.zeros(10, D, dtype=torch.bfloat16), torch.zeros(10, D, dtype=torch.bfloat16)
fused.rope_qkv(qkv, pos, cos, sin, q_cs, kc_cs, vc_cs, 2, H, D, channel_scale=cs)
scaled = qkv.float() * cs
check("rope with deferred channel scales: q", q_cs, rope(scaled[:, :H * D].view(S, H, D).transpose(0, 1), pos, 10000.0).transpose(0, 1).reshape(S * H, D), 1e-2)
check("rope with deferred channel scales: v", vc_cs[2:8], scaled[:, (H + 1) * D:], 1e-2)
for tokens in (2, 4, 8):   # blocks of tokens a program, the last one partial (6 rows); the cache rows past them untouched
    q_t = torch.empty(S * H, D, dtype=torch.bfloat16)
    kc_t, vc_t = torch.zeros(10, D, dtype=torch.bfloat16), torch.zeros(10, D, dtype=torch.bfloat16)
    fused.rope_qkv(qkv, pos, cos, sin, q_t, kc_t, vc_t, 2, H, D, channel_scale=cs, tokens=tokens)
    check(f"rope, {tokens} tokens a program: the q, k, v of one a program", torch.cat([q_t, kc_t, vc_t]),
          torch.cat([q_cs, kc_cs, vc_cs]), 0)
try:
    fused.rope_qkv(qkv, pos, cos, sin, q_t, kc_t, vc_t, 2, H, D, tokens=3)
    failures.append("rope_qkv ran with 3 tokens a program")
except ValueError as err:
    print(f"refused: {err}")

# the few-row QKV with RoPE + cache write as its epilogue, against the projection then the reference rope
xh = torch.randn(S, 256).bfloat16()
wqkv = (torch.randn((H + 2) * D, 256) / 16).bfloat16()
proj = xh.float() @ wqkv.float().t()
q_f, kc_f, vc_f = torch.empty(S * H, D, dtype=torch.bfloat16), torch.zeros(10, D, dtype=torch.bfloat16), torch.zeros(10, D, dtype=torch.bfloat16)
fused.qkv_rope(xh, wqkv, pos, cos, sin, q_f, kc_f, vc_f, 2, H, D)
check("qkv_rope q", q_f, rope(proj[:, :H * D].view(S, H, D).transpose(0, 1), pos, 10000.0).transpose(0, 1).reshape(S * H, D), 1e-2)
check("qkv_rope k -> cache", kc_f[2:8], rope(proj[:, H * D:(H + 1) * D], pos, 10000.0), 1e-2)
check("qkv_rope v -> cache", vc_f[2:8], proj[:, (H + 1) * D:], 1e-2)
untouched = float(torch.cat([kc_f[:2], kc_f[8:], vc_f[:2], vc_f[8:]]).abs().max())
print(f"qkv_rope cache rows outside kv_offset..+M: max |value| {untouched} (want 0)")
if untouched:
    failures.append("qkv_rope wrote outside its cache rows")
wgu = (torch.randn(2 * 48, 256) / 16).bfloat16()
gproj = xh.float() @ wgu.float().t()
check("gate_up_geglu", fused.gate_up_geglu(xh, wgu, torch.empty(S, 48, dtype=torch.bfloat16), pairs=16),
      F.gelu(gproj[:, :48], approximate="tanh") * gproj[:, 48:], 1e-2)
for bad in (lambda: fused.qkv_rope(torch.randn(17, 256).bfloat16(), wqkv, pos, cos, sin, q_f, kc_f, vc_f, 2, H, D),
            lambda: fused.qkv_rope(xh, wqkv[:-1], pos, cos, sin, q_f, kc_f, vc_f, 2, H, D),
            lambda: fused.gate_up_geglu(xh, wgu, torch.empty(S, 40, dtype=torch.bfloat16))):
    try:
        bad()
        failures.append("a mis-shaped few-row epilogue call ran")
    except ValueError as err:
        print(f"refused: {err}")

gu = torch.randn(3, 80).bfloat16()
o = torch.empty(3, 40, dtype=torch.bfloat16)
check("geglu", fused.geglu(gu, o), F.gelu(gu[:, :40].float(), approximate="tanh") * gu[:, 40:].float(), 1e-2)
gcs = torch.rand(80) + 0.5
gs = gu.float() * gcs
check("geglu with deferred channel scales", fused.geglu(gu, torch.empty(3, 40, dtype=torch.bfloat16), channel_scale=gcs),
      F.gelu(gs[:, :40], approximate="tanh") * gs[:, 40:], 1e-2)
# an FP8 gate/up GEMM that wrote E4M3 (quant.quantize.E4M3_OUTPUTS): its output scale rides in the channel scales
gu8 = (torch.randn(3, 80) * 40).to(torch.float8_e4m3fn)
gs8 = gu8.float() * gcs * 0.02
check("geglu reading E4M3", fused.geglu(gu8, torch.empty(3, 40, dtype=torch.bfloat16), channel_scale=gcs * 0.02),
      F.gelu(gs8[:, :40], approximate="tanh") * gs8[:, 40:], 1e-2)
h = torch.randn(4, 64).bfloat16()
check("gelu", fused.gelu(h, torch.empty_like(h)), F.gelu(h.float(), approximate="tanh"), 1e-2)
h8, hcs, hb = (torch.randn(4, 64) * 40).to(torch.float8_e4m3fn), torch.rand(64) * 0.05, torch.randn(64).bfloat16()
check("gelu reading E4M3 (deferred scales and bias)", fused.gelu(h8, torch.empty(4, 64, dtype=torch.bfloat16),
                                                                 channel_scale=hcs, bias=hb),
      F.gelu(h8.float() * hcs + hb.float(), approximate="tanh"), 1e-2)
# one step: bf16 inputs times 3 land on exact E4M3 ties, which the interpreter rounds away from zero (cvt.rn: to even)
check_fp8("quantize_fp8 (an unfused producer's output)",
          fused.quantize_fp8(h, torch.empty(4, 64, dtype=torch.float8_e4m3fn), torch.tensor([3.0])),
          (h.float() * 3).clamp(-448, 448), 1)
hcs, hb = torch.rand(64) + 0.5, torch.randn(64).bfloat16()
check("gelu with an FP8 GEMM's deferred channel scales and bias",
      fused.gelu(h, torch.empty_like(h), channel_scale=hcs, bias=hb),
      F.gelu(h.float() * hcs + hb.float(), approximate="tanh"), 1e-2)
x = x0.clone()
yb = torch.randn(96).bfloat16()
fused.add_norm(x, out, y=y, gate=g, y_bias=yb, weight=w, bias=b, layernorm=True)
check("add_norm residual with a deferred bias", x, x0 + y.float() * g + yb.float(), 1e-6)

R, T = 40, 150
qa, ka, va = torch.randn(R, D).bfloat16(), torch.randn(T, D).bfloat16(), torch.randn(T, D).bfloat16()
valid = torch.ones(T, dtype=torch.bool)
valid[100:140] = False
valid[3] = False
bias = torch.zeros(T).masked_fill(~valid, float("-inf")).bfloat16()
ref = torch.softmax((qa.float() @ ka.float().T) * D ** -0.5 + bias.float(), -1) @ va.float()
check("mqa attention", fused.mqa_attention(qa, ka, va, bias, torch.empty(R, D, dtype=torch.bfloat16), 16, 32), ref, 1e-2)
a16 = fused.mqa_attention(qa, ka, va, bias, torch.empty(R, D, dtype=torch.bfloat16), 16, 32)
check_fp8("mqa attention -> fp8 (one step: the bf16 output rounds first)",
          fused.mqa_attention(qa, ka, va, bias, torch.empty(R, D, dtype=torch.float8_e4m3fn), 16, 32,
                              quant_scale=torch.tensor([8.0])), a16.float() * 8, 1)
check("mqa attention split-KV", fused.mqa_attention_split(qa, ka, va, bias, torch.empty(R, D, dtype=torch.bfloat16), 16, 32), ref, 1e-2)

Vw, Tk, Hh, Dh = 2, 40, 3, 72                             # SigLIP's attention: head dim 72, tokens not a block multiple
packed = torch.randn(Vw * Tk, 3 * Hh * Dh).bfloat16()
qkv5 = packed.float().view(Vw, Tk, 3, Hh, Dh).permute(2, 0, 3, 1, 4)
ref = F.scaled_dot_product_attention(qkv5[0], qkv5[1], qkv5[2]).transpose(1, 2).reshape(Vw * Tk, Hh * Dh)
check("packed attention (SigLIP, from the QKV output)",
      fused.packed_attention(packed, torch.empty(Vw * Tk, Hh * Dh, dtype=torch.bfloat16), Tk, Hh, Dh, 16, 16), ref, 1e-2)
a8 = fused.packed_attention(packed, torch.empty(Vw * Tk, Hh * Dh, dtype=torch.float8_e4m3fn), Tk, Hh, Dh, 16, 16,
                            quant_scale=torch.tensor([8.0]))
a16 = fused.packed_attention(packed, torch.empty(Vw * Tk, Hh * Dh, dtype=torch.bfloat16), Tk, Hh, Dh, 16, 16)
check_fp8("packed attention -> fp8 (one step: the bf16 output rounds first)", a8, a16.float() * 8, 1)
check("packed attention, head dim padded to 128 (the form before the split)",
      fused.packed_attention(packed, torch.empty(Vw * Tk, Hh * Dh, dtype=torch.bfloat16), Tk, Hh, Dh, 16, 16,
                             head_split=(128, 0)), a16.float(), 1e-2)
Te = 48                                                   # tokens a multiple of the blocks: no masks (EVEN)
packed_e = torch.randn(Vw * Te, 3 * Hh * Dh).bfloat16()
qkv5 = packed_e.float().view(Vw, Te, 3, Hh, Dh).permute(2, 0, 3, 1, 4)
ref = F.scaled_dot_product_attention(qkv5[0], qkv5[1], qkv5[2]).transpose(1, 2).reshape(Vw * Te, Hh * Dh)
even = fused.packed_attention(packed_e, torch.empty(Vw * Te, Hh * Dh, dtype=torch.bfloat16), Te, Hh, Dh, 16, 16)
check("packed attention, tokens a block multiple (no masks)", even, ref, 1e-2)
masked = fused.packed_attention(packed_e, torch.empty(Vw * Te, Hh * Dh, dtype=torch.bfloat16), Te, Hh, Dh, 16, 16,
                                keep_masks=True)
check("packed attention, the same with masks", masked, even.float(), 0)
Dp = 32                                                   # a power-of-two head dim: no second column part
packed_p = torch.randn(Vw * Tk, 3 * Hh * Dp).bfloat16()
qkv5 = packed_p.float().view(Vw, Tk, 3, Hh, Dp).permute(2, 0, 3, 1, 4)
ref = F.scaled_dot_product_attention(qkv5[0], qkv5[1], qkv5[2]).transpose(1, 2).reshape(Vw * Tk, Hh * Dp)
check("packed attention, head dim 32",
      fused.packed_attention(packed_p, torch.empty(Vw * Tk, Hh * Dp, dtype=torch.bfloat16), Tk, Hh, Dp, 16, 16), ref, 1e-2)
for bad in ((32, 16), (128, 16)):                           # short of 72 columns; padded and split at once
    try:
        fused.packed_attention(packed, torch.empty(Vw * Tk, Hh * Dh, dtype=torch.bfloat16), Tk, Hh, Dh, 16, 16,
                               head_split=bad)
        failures.append(f"packed attention took head split {bad} for head dim {Dh}")
    except ValueError:
        print(f"packed attention, head split {bad} for head dim {Dh}: refused")
if [fused.attention_head_split(d) for d in (72, 32, 64 + 40, 80)] != [(64, 16), (32, 0), (64, 64), (64, 16)]:
    failures.append(f"attention_head_split: {[fused.attention_head_split(d) for d in (72, 32, 104, 80)]}")
try:
    fused.packed_attention(packed, torch.empty(Vw * Tk, Hh * Dh, dtype=torch.bfloat16), 30, Hh, Dh)
    failures.append("packed attention took 80 rows as views of 30 tokens")
except ValueError:
    print("packed attention, rows not a multiple of the tokens: refused")

xs, ws = torch.randn(10, 512).bfloat16(), torch.randn(300, 512).bfloat16()
check("skinny gemm", fused.skinny_linear(xs, ws), xs.float() @ ws.float().T, 1e-5)
arena = fused.ZeroArena(10 * 300 * 2, "cpu")
check("skinny gemm into the zero arena", fused.skinny_linear(xs, ws, out=arena.take(10, 300)), xs.float() @ ws.float().T, 1e-5)
try:
    arena.take(10, 301)
    failures.append("arena overflow not detected")
except RuntimeError:
    print("arena overflow: refused")
res, gate = torch.randn(10, 300), torch.randn(300)
res0 = res.clone()
fused.skinny_linear(xs, ws, out=res, gate=gate)
check("skinny gemm as a gated residual add", res, res0 + gate * (xs.float() @ ws.float().T), 1e-5)

Mr, Wd, A = 5, 192, 24                                     # the end of a denoise step (euler_tail)
xr, yr, gr = torch.randn(Mr, Wd) * 2, torch.randn(Mr, Wd).bfloat16(), torch.rand(Wd)
sc, sh = torch.rand(Wd) + 0.5, torch.randn(Wd) * 0.1
wo, bo, wi, bi = torch.randn(A, Wd) / 14, torch.randn(A), torch.randn(Wd, A) / 5, torch.randn(Wd)
xt = torch.randn(Mr, A)
xt_ref = xt.clone()
xx = xr + yr.float() * gr
hr = (xx * torch.rsqrt(xx.pow(2).mean(-1, keepdim=True) + 1e-6) * sc + sh).bfloat16().float()
xt_ref += -0.1 * (hr @ wo.T + bo)
for blocks in (1, 2, 3):   # the next residual's width over 1-3 programs a row (3: blocks of 64 in a 64-wide tile)
    xn, xt_new = torch.empty(Mr, Wd), torch.empty_like(xt)
    fused.euler_tail(xr, sc, sh, wo, bo, xt, xt_new, -0.1, wi, bi, xn, y=yr, gate=gr, blocks=blocks)
    check(f"euler tail, {blocks} programs a row: x_t update", xt_new, xt_ref, 2e-2)
    check(f"euler tail, {blocks} programs a row: next residual", xn, xt_ref @ wi.T + bi, 2e-2)
xt_new = torch.empty_like(xt)
fused.euler_tail(xr, sc, sh, wo, bo, xt, xt_new, -0.1, y=yr, gate=gr)      # the last step: no next residual
check("euler tail, last step: x_t update", xt_new, xt_ref, 2e-2)
refused = (("a transposed action_out weight", lambda: fused.euler_tail(xr, sc, sh, wo.T.contiguous(), bo, xt,
                                                                       torch.empty_like(xt), -0.1)),
           ("x_t updated in place", lambda: fused.euler_tail(xr, sc, sh, wo, bo, xt, xt, -0.1)),
           ("blocks not dividing the width", lambda: fused.euler_tail(xr, sc, sh, wo, bo, xt, torch.empty_like(xt),
                                                                      -0.1, wi, bi, xn, blocks=5)))
for why, call in refused:
    try:   # refused before any launch, x_t untouched
        before = xt.clone()
        call()
        failures.append(f"euler tail: {why} was not refused")
    except ValueError as err:
        print(f"euler tail, {why}: refused ({str(err)[:40]}...)")
        if not torch.equal(xt, before):
            failures.append(f"euler tail: x_t changed by a refused call ({why})")

from triforce.quant import formats as fm  # noqa: E402

w4 = torch.randn(192, 512)
packed, scales = fm.quantize_int4_g128(w4)
deq = fm.dequantize_int4_g128(packed, scales)
check("skinny W4A16 (canonical int4)", fused.skinny_w4a16(xs, packed, scales), xs.float() @ deq.T, 1e-2)
# the fused-epilogue kernels on int4 weights (Plan B's W4A16 expert), against the dequantized weights
qkv4, qkv4_sc = fm.quantize_int4_g128(wqkv.float())
proj4 = xh.float() @ fm.dequantize_int4_g128(qkv4, qkv4_sc).T
q_4, kc_4, vc_4 = torch.empty(S * H, D, dtype=torch.bfloat16), torch.zeros(10, D, dtype=torch.bfloat16), torch.zeros(10, D, dtype=torch.bfloat16)
fused.qkv_rope(xh, qkv4, pos, cos, sin, q_4, kc_4, vc_4, 2, H, D, scales=qkv4_sc)
check("qkv_rope int4: q", q_4, rope(proj4[:, :H * D].view(S, H, D).transpose(0, 1), pos, 10000.0).transpose(0, 1).reshape(S * H, D), 1e-2)
check("qkv_rope int4: k -> cache", kc_4[2:8], rope(proj4[:, H * D:(H + 1) * D], pos, 10000.0), 1e-2)
check("qkv_rope int4: v -> cache", vc_4[2:8], proj4[:, (H + 1) * D:], 1e-2)
gu4, gu4_sc = fm.quantize_int4_g128(wgu.float())
g4 = xh.float() @ fm.dequantize_int4_g128(gu4, gu4_sc).T
check("gate_up_geglu int4", fused.gate_up_geglu(xh, gu4, torch.empty(S, 48, dtype=torch.bfloat16), scales=gu4_sc),
      F.gelu(g4[:, :48], approximate="tanh") * g4[:, 48:], 1e-2)
try:
    fused.gate_up_geglu(xh, gu4, torch.empty(S, 48, dtype=torch.bfloat16), scales=gu4_sc[:, :1])
    failures.append("gate_up_geglu ran with scales of the wrong shape")
except ValueError as err:
    print(f"refused: {err}")
xw = torch.randn(40, 512).bfloat16()          # 40 rows (the 64-row block), two groups per step
check("W4A16 at 40 rows, 2 groups a step", fused.skinny_w4a16(xw, packed, scales, groups=2, block_n=32),
      xw.float() @ deq.T, 1e-2)
res, gate = torch.randn(10, 192), torch.randn(192)
res0 = res.clone()
fused.skinny_w4a16(xs, packed, scales, out=res, gate=gate)
check("skinny W4A16 as a gated residual add", res, res0 + gate * (xs.float() @ deq.T), 1e-2)

# the engine's end of a denoise step (Pi05Engine._euler_end, shared by the per-op and persistent paths) is this kernel
from types import SimpleNamespace  # noqa: E402

from triforce.runtime.engine import Pi05Engine  # noqa: E402

steps = 3
stub = SimpleNamespace(cfg=SimpleNamespace(num_steps=steps, norm_eps=1e-6),
                       ada_final=(torch.rand(steps, Wd) + 0.5, torch.randn(steps, Wd) * 0.1, None),
                       action_out=(wo, bo), action_in=(wi, bi), tail_blocks=2)
for step in (0, steps - 1):
    nxt, xt_engine = Pi05Engine._euler_end(stub, step, xr, xt, yr, gr)
    want, xt_kernel = (None if step == steps - 1 else torch.empty_like(xr)), torch.empty_like(xt)
    fused.euler_tail(xr, stub.ada_final[0][step], stub.ada_final[1][step], wo, bo, xt, xt_kernel, -1.0 / steps,
                     *((wi, bi) if want is not None else (None, None)), want, y=yr, gate=gr, eps=1e-6,
                     blocks=stub.tail_blocks)
    if not torch.equal(xt_engine, xt_kernel) or (nxt is None) != (want is None) or (want is not None and not torch.equal(nxt, want)):
        failures.append(f"engine end of step {step}")
print("engine end of a denoise step (_euler_end): checked")

print("FAILED: " + ", ".join(failures) if failures else "all fused kernels match")
sys.exit(1 if failures else 0)

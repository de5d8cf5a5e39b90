"""GPU tests of the CUTLASS GEMM ops (triforce_kernels): correctness against an fp32 reference of the canonical
formats (triforce.quant.formats), poisoned outputs, CUDA-graph capture, and loud refusals of bad input.

Uses the installed triforce_kernels wheel if there is one, else a development build of cutlass_sm110/ for this GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from triforce.quant import formats

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cutlass_sm110"))

GEMMA_MLP = [(16384, 2048), (2048, 16384)]  # (N, K): gate/up and down projections of Gemma 2B
TOKENS = [10, 64, 712]


@pytest.fixture(scope="session")
def tk():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import devbuild

    return devbuild.load()


def _weights(n: int, k: int, gen: torch.Generator):
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.05
    return formats.quantize_int4_g128(w)


def _reference(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x.float() @ formats.dequantize_int4_g128(q, scales).T


def _run_w4a16(tk, x, packed_w, packed_s, n):
    m, k = x.shape
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")  # poisoned: every element must be written
    ws = torch.empty(tk.w4a16_workspace_size(m, n, k), dtype=torch.uint8, device="cuda")
    tk.w4a16_gemm(x, packed_w, packed_s, out, ws)
    torch.cuda.synchronize()
    return out


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="session")
def gemma_weights(tk):
    gen = torch.Generator(device="cuda").manual_seed(1)
    packed = {}
    for n, k in GEMMA_MLP:
        q, s = _weights(n, k, gen)
        packed[(n, k)] = (q, s, *tk.w4a16_prepack(q, s))
    return packed


@pytest.mark.parametrize("n,k", GEMMA_MLP)
@pytest.mark.parametrize("m", TOKENS)
def test_w4a16_matches_reference_on_gemma_shapes(tk, gemma_weights, m, n, k):
    q, s, pw, ps = gemma_weights[(n, k)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = _run_w4a16(tk, x, pw, ps, n)
    assert torch.isfinite(out).all(), "some outputs were never written (still NaN)"
    assert _rel_err(out, _reference(x, q, s)) < 1e-2


@pytest.mark.parametrize("m,n,k", [(1, 16, 128), (3, 272, 384), (17, 144, 256), (65, 1024, 1152), (129, 528, 640)])
def test_w4a16_matches_reference_on_ragged_shapes(tk, m, n, k):
    gen = torch.Generator(device="cuda").manual_seed(m * 7 + n)
    q, s = _weights(n, k, gen)
    pw, ps = tk.w4a16_prepack(q, s)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    out = _run_w4a16(tk, x, pw, ps, n)
    assert torch.isfinite(out).all()
    assert _rel_err(out, _reference(x, q, s)) < 1e-2


HOPPER_SCHEDULES = ["heuristic", "data_parallel", "stream_k", "stream_k_nd", "split_k:3", "split_k_nd:8"]


@pytest.mark.parametrize("schedule", HOPPER_SCHEDULES)
@pytest.mark.parametrize("m", [10, 64, 200])
def test_w4a16_every_schedule_matches_reference(tk, gemma_weights, schedule, m):
    if tk.family() != "hopper":
        pytest.skip("work decompositions exist only in the Hopper kernel")
    q, s, pw, ps = gemma_weights[(2048, 16384)]
    n, k = 2048, 16384
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    ws = torch.empty(tk.w4a16_workspace_size(m, n, k, schedule), dtype=torch.uint8, device="cuda")
    tk.w4a16_gemm(x, pw, ps, out, ws, schedule)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    assert _rel_err(out, _reference(x, q, s)) < 1e-2


def test_w4a16_is_exact_on_single_nonzero_weight(tk):
    """One weight of 1 at (n=5, k=77) with scale 1: the output column 5 equals x[:, 77] and every other is 0 —
    catches a wrong shuffle or nibble order that random data might average away."""
    n, k, m = 128, 256, 16
    codes = torch.zeros(n, k, dtype=torch.int8, device="cuda")
    codes[5, 77] = 1
    codes[100, 200] = -8
    q = formats.pack_int4(codes)
    s = torch.ones(n, k // 128, dtype=torch.bfloat16, device="cuda")
    pw, ps = tk.w4a16_prepack(q, s)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = _run_w4a16(tk, x, pw, ps, n).float()
    expect = torch.zeros(m, n, device="cuda")
    expect[:, 5] = x[:, 77].float()
    expect[:, 100] = -8 * x[:, 200].float()
    torch.testing.assert_close(out, expect, rtol=1e-2, atol=1e-2)


def test_w4a16_runs_in_a_cuda_graph(tk, gemma_weights):
    q, s, pw, ps = gemma_weights[(2048, 16384)]
    m, n, k = 10, 2048, 16384
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    ws = torch.empty(tk.w4a16_workspace_size(m, n, k), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        tk.w4a16_gemm(x, pw, ps, out, ws)  # warm-up outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            tk.w4a16_gemm(x, pw, ps, out, ws)
    out.fill_(float("nan"))
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert _rel_err(out, _reference(x, q, s)) < 1e-2


def _bad_inputs(tk):
    m, n, k = 10, 256, 512
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, s = _weights(n, k, gen)
    pw, ps = tk.w4a16_prepack(q, s)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    ws = torch.empty(tk.w4a16_workspace_size(m, n, k), dtype=torch.uint8, device="cuda")
    return x, pw, ps, out, ws


BAD_CASES = {
    "x fp16": lambda x, pw, ps, out, ws: (x.half(), pw, ps, out, ws),
    "x on cpu": lambda x, pw, ps, out, ws: (x.cpu(), pw, ps, out, ws),
    "x not contiguous": lambda x, pw, ps, out, ws: (torch.cat([x, x], 1)[:, ::2], pw, ps, out, ws),
    "x wrong K": lambda x, pw, ps, out, ws: (x[:, :384].contiguous(), pw, ps, out, ws),
    "out wrong rows": lambda x, pw, ps, out, ws: (x, pw, ps, out[:5], ws),
    "out fp32": lambda x, pw, ps, out, ws: (x, pw, ps, out.float(), ws),
    "unpacked scales": lambda x, pw, ps, out, ws: (x, pw, ps.t().contiguous(), out, ws),
    "weight int8": lambda x, pw, ps, out, ws: (x, pw.view(torch.int8), ps, out, ws),
    "workspace too small": lambda x, pw, ps, out, ws: (x, pw, ps, out, ws[: max(ws.numel() - 1, 0)]),
    "N not multiple of 16": lambda x, pw, ps, out, ws: (x, pw[:248], ps[:, :248].contiguous(), out[:, :248], ws),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_w4a16_refuses_bad_input(tk, case):
    x, pw, ps, out, ws = _bad_inputs(tk)
    if case == "workspace too small" and ws.numel() == 0:
        pytest.skip("this problem needs no workspace")
    out.fill_(1.0)
    with pytest.raises(tk.KernelError):
        tk.w4a16_gemm(*BAD_CASES[case](x, pw, ps, out, ws))
    torch.cuda.synchronize()
    assert bool((out == 1.0).all()), "a refused call must leave the output untouched"


def test_w4a16_prepack_refuses_bad_input(tk):
    q = torch.zeros(256, 200, dtype=torch.uint8, device="cuda")  # K = 400: not a multiple of 128
    with pytest.raises(tk.KernelError, match="multiple of 128"):
        tk.w4a16_prepack(q, torch.ones(256, 3, dtype=torch.bfloat16, device="cuda"))
    q = torch.zeros(8, 64, dtype=torch.uint8, device="cuda")  # N = 8: not whole 16-row shuffle atoms
    with pytest.raises(tk.KernelError, match="multiple of 16"):
        tk.w4a16_prepack(q, torch.ones(8, 1, dtype=torch.bfloat16, device="cuda"))
    q = torch.zeros(256, 256, dtype=torch.uint8, device="cuda")
    with pytest.raises(tk.KernelError, match="scales"):
        tk.w4a16_prepack(q, torch.ones(256, 3, dtype=torch.bfloat16, device="cuda"))


def test_nvfp4_refuses_loudly_off_blackwell(tk):
    if tk.family() == "blackwell":
        pytest.skip("this GPU runs the NVFP4 GEMM")
    assert not tk.has_op("nvfp4_gemm"), "a hopper wheel must not contain the NVFP4 GEMM"
    m, n, k = 16, 128, 256
    u8 = lambda *shape: torch.zeros(*shape, dtype=torch.uint8, device="cuda")  # noqa: E731
    with pytest.raises(tk.UnsupportedError, match="nvfp4_gemm.*built for"):
        tk.nvfp4_gemm(u8(m, k // 2), u8(tk.nvfp4_sf_bytes(m, k)), u8(n, k // 2), u8(tk.nvfp4_sf_bytes(n, k)),
                      torch.ones(1, device="cuda"), torch.empty(m, n, dtype=torch.bfloat16, device="cuda"), u8(16))
    with pytest.raises(tk.UnsupportedError):
        tk.nvfp4_workspace_size(m, n, k)


# ── few-row W4A16 (w4a16_skinny: warp-level MMA on the fragment layout, every family) ───────────────────────────
def _fragments(q, s):
    return formats.pack_int4_fragments(q), formats.pack_scales_fragments(s)


SKINNY_SHAPES = [(m, n, k) for m in (1, 5, 8, 10, 16, 17, 32, 40, 64) for n, k in ((1024, 4096), (2560, 1024))] + \
                [(10, 16384, 2048), (64, 2048, 16384), (3, 48, 384)]


@pytest.mark.parametrize("m, n, k", SKINNY_SHAPES)
def test_w4a16_skinny_matches_reference(tk, m, n, k):
    gen = torch.Generator(device="cuda").manual_seed(m * 7 + n + k)
    q, s = _weights(n, k, gen)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    out = torch.zeros(m, n, device="cuda")
    tk.w4a16_skinny(x, *_fragments(q, s), out)
    torch.cuda.synchronize()
    ref = _reference(x, q, s)
    assert _rel_err(out, ref) < 1e-5, "integer codes enter the MMA exactly; only fp32 summation order differs"


@pytest.mark.parametrize("splits, tiles_per_warp", [(1, 1), (1, 2), (3, 1), (16, 2), (1000, 1)])
def test_w4a16_skinny_every_launch_shape_adds_the_same(tk, splits, tiles_per_warp):
    """A gated residual add (the expert's o/down form) with a strided x; every split count and tile shape."""
    m, n, k = 10, 1024, 2048
    gen = torch.Generator(device="cuda").manual_seed(5)
    q, s = _weights(n, k, gen)
    x = torch.randn(m, 2 * k, device="cuda", dtype=torch.bfloat16, generator=gen)[:, :k]
    gate = torch.randn(n, device="cuda", generator=gen)
    residual = torch.randn(m, n, device="cuda", generator=gen)
    expect = residual + gate * _reference(x, q, s)
    tk.w4a16_skinny(x, *_fragments(q, s), residual, gate, splits=splits, tiles_per_warp=tiles_per_warp)
    torch.cuda.synchronize()
    torch.testing.assert_close(residual, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m, n, k, launch", [
    (1, 16384, 2048, dict(depth=2)), (10, 2048, 16384, dict(depth=2)), (16, 1024, 4096, dict(depth=2, splits=3)),
    (5, 48, 384, dict(depth=2)), (9, 2560, 1024, dict(depth=2, cta_warps=4, tiles_per_warp=2, splits=8)),
    (1, 1024, 1024, dict(depth=2, splits=1000)), (12, 1040, 2944, dict(depth=2, splits=2)),
    (16, 1040, 2944, dict(depth=2, tiles_per_warp=2)), (3, 48, 384, dict(depth=2, cta_warps=4, tiles_per_warp=2)),
    (7, 16384, 2048, dict(depth=2, tiles_per_warp=2)),
    (33, 2048, 16384, dict(depth=2, cta_warps=4, tiles_per_warp=2, splits=32)), (64, 1040, 2944, dict(depth=2)),
    (64, 2048, 16384, dict(depth=2, tiles_per_warp=2, splits=32))])
def test_w4a16_skinny_streamed_adds_the_same(tk, m, n, k, launch):
    """The register-streamed form (depth > 0) as a gated residual add with a strided x: ring depths past a CTA's
    groups (K = 384), partial CTAs of tiles (N = 48, 1040; with 2 tiles a warp, a warp's second tile past N: 65 and
    3 tiles), uneven splits (23 groups over 2), splits past the group count, 17-64 rows (token tiles of 4 and 8)."""
    gen = torch.Generator(device="cuda").manual_seed(m + n + k)
    q, s = _weights(n, k, gen)
    x = torch.randn(m, 2 * k, device="cuda", dtype=torch.bfloat16, generator=gen)[:, :k]
    gate = torch.randn(n, device="cuda", generator=gen)
    residual = torch.randn(m, n, device="cuda", generator=gen)
    expect = residual + gate * _reference(x, q, s)
    tk.w4a16_skinny(x, *_fragments(q, s), residual, gate, **launch)
    torch.cuda.synchronize()
    torch.testing.assert_close(residual, expect, rtol=1e-4, atol=1e-4)


def test_w4a16_skinny_is_exact_on_single_nonzero_weight(tk):
    n, k, m = 32, 256, 12
    codes = torch.zeros(n, k, dtype=torch.int8, device="cuda")
    codes[5, 77], codes[30, 200] = 1, -8
    q = formats.pack_int4(codes)
    s = torch.ones(n, k // 128, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.zeros(m, n, device="cuda")
    tk.w4a16_skinny(x, *_fragments(q, s), out)
    expect = torch.zeros(m, n, device="cuda")
    expect[:, 5], expect[:, 30] = x[:, 77].float(), -8 * x[:, 200].float()
    torch.testing.assert_close(out, expect, rtol=0, atol=0)


@pytest.mark.parametrize("depth", [0, 2])
def test_w4a16_skinny_in_a_graph_with_dependent_launches(tk, depth):
    """Captured as a chain of programmatic dependent launches accumulating into one output: each call must see the
    one before it (the engine's denoise chain form), in both forms."""
    m, n, k = 10, 1024, 4096
    gen = torch.Generator(device="cuda").manual_seed(9)
    q, s = _weights(n, k, gen)
    w, sc = _fragments(q, s)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    out = torch.zeros(m, n, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        tk.w4a16_skinny(x, w, sc, out, dependent=True, depth=depth)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(8):
                tk.w4a16_skinny(x, w, sc, out, dependent=True, depth=depth)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, 8 * _reference(x, q, s), rtol=1e-4, atol=1e-3)


SKINNY_BAD = {
    "65 rows": lambda x, w, s, out: (torch.zeros(65, 512, device="cuda", dtype=torch.bfloat16), w, s, out[:1].expand(65, -1)),
    "x fp16": lambda x, w, s, out: (x.half(), w, s, out),
    "out bf16": lambda x, w, s, out: (x, w, s, out.bfloat16()),
    "canonical weight": lambda x, w, s, out: (x, w.reshape(256, 256), s, out),
    "canonical scales": lambda x, w, s, out: (x, w, s.reshape(256, 4), out),
    "x wrong K": lambda x, w, s, out: (x[:, :384].contiguous(), w, s, out),
    "x column stride": lambda x, w, s, out: (torch.cat([x, x], 1)[:, ::2], w, s, out),
    "streamed depth 3": lambda x, w, s, out: (x, w, s, out, None, 0, 0, False, 3),
    "streamed 2 warps": lambda x, w, s, out: (x, w, s, out, None, 0, 0, False, 2, 2),
    "streamed shape not compiled": lambda x, w, s, out: (x, w, s, out, None, 0, 1, False, 2, 4),
    "cta_warps without depth": lambda x, w, s, out: (x, w, s, out, None, 0, 0, False, 0, 4),
}


@pytest.mark.parametrize("case", list(SKINNY_BAD))
def test_w4a16_skinny_refuses_bad_input(tk, case):
    m, n, k = 10, 256, 512
    q, s = _weights(n, k, torch.Generator(device="cuda").manual_seed(3))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.ones(m, n, device="cuda")
    with pytest.raises(tk.KernelError):
        tk.w4a16_skinny(*SKINNY_BAD[case](x, *_fragments(q, s), out))
    torch.cuda.synchronize()
    assert bool((out == 1.0).all()), "a refused call must leave the output untouched"


@pytest.mark.parametrize("m, stages", [(1, 0), (10, 0), (16, 0), (40, 0), (64, 0), (1, 8), (10, 8), (64, 8)])
def test_w4a16_skinny_geglu_matches_reference(tk, m, stages):
    """The expert's gate/up (I = 4096, K = 1024) with its GeGLU: gate/up interleaved in 8-row blocks, act written;
    with the default pipeline and with 8 stages."""
    inter, k = 4096, 1024
    gen = torch.Generator(device="cuda").manual_seed(m)
    q, s = _weights(2 * inter, k, gen)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    act = torch.full((m, inter), float("nan"), device="cuda", dtype=torch.bfloat16)   # every element must be written
    tk.w4a16_skinny_geglu(x, *_fragments(formats.interleave_gate_up(q), formats.interleave_gate_up(s)), act,
                          stages=stages)
    torch.cuda.synchronize()
    ref = formats.geglu_tanh(_reference(x, q, s))
    assert torch.isfinite(act).all()
    assert _rel_err(act, ref) < 1e-2, "bf16 output"


def test_w4a16_skinny_geglu_refuses_other_stages(tk):
    q, s = _weights(256, 256, torch.Generator(device="cuda").manual_seed(0))
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    act = torch.zeros(4, 128, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(tk.KernelError, match="stages must be one of"):
        tk.w4a16_skinny_geglu(x, *_fragments(formats.interleave_gate_up(q), formats.interleave_gate_up(s)), act,
                              stages=6)


def test_set_chain_carveout_refuses_a_bad_percent(tk):
    for percent in (101, -2):
        with pytest.raises(tk.KernelError, match="a percent 0..100 or -1"):
            tk.set_chain_carveout(percent)
    tk.set_chain_carveout(-1)   # the driver's choice, as before


# ── mqa_cluster_attention (the denoise step's attention in one launch) ─────────────────────────────────────────────
def _attention_reference(q, k, v, bias):
    s = q.float() @ k.float().T / q.shape[1] ** 0.5 + bias.float()
    return torch.softmax(s, -1) @ v.float()


def _attention_operands(rows, keys, dim, gen, masked=()):
    q, k, v = (torch.randn(n, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for n in (rows, keys, keys))
    bias = torch.zeros(keys, device="cuda", dtype=torch.bfloat16)
    for lo, hi in masked:
        bias[lo:hi] = float("-inf")
    return q, k, v, bias


@pytest.mark.parametrize("rows,keys,dim,max_splits,masked", [
    (80, 538, 256, 16, [(20, 200), (338, 528)]),  # the denoise step: 10 actions x 8 heads, 528-slot prefix
    (80, 538, 256, 8, [(20, 200), (338, 528)]),
    (80, 2048, 128, 16, [(1000, 1100)]),
    (80, 538, 256, 5, []),
    (80, 538, 256, 8, [(0, 528)]),                 # whole key blocks masked
    (37, 1000, 128, 8, [(900, 990)]),
    (16, 1024, 256, 8, []),
    (10, 33, 64, 8, []),
    (1, 7, 256, 1, []),
])
def test_mqa_cluster_attention_matches_reference(tk, rows, keys, dim, max_splits, masked):
    gen = torch.Generator(device="cuda").manual_seed(rows + keys)
    q, k, v, bias = _attention_operands(rows, keys, dim, gen, masked)
    out = torch.full_like(q, float("nan"))          # poisoned: every element must be written
    tk.mqa_cluster_attention(q, k, v, bias, out, static_keys=keys // 2, max_splits=max_splits)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    assert _rel_err(out, _attention_reference(q, k, v, bias)) < 1e-2, "bf16 probabilities"


def test_mqa_cluster_attention_row_strided_views(tk):
    """q and out as column slices of wider buffers, k/v as rows of a longer cache: the engine's views (and its
    max_splits, 0: the largest cluster the GPU schedules)."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    q, k, v, bias = _attention_operands(80, 600, 256, gen)
    wide = torch.randn(80, 512, device="cuda", dtype=torch.bfloat16, generator=gen)
    wide[:, 128:384] = q
    out = torch.zeros(80, 512, device="cuda", dtype=torch.bfloat16)
    tk.mqa_cluster_attention(wide[:, 128:384], k[:538], v[:538], bias[:538], out[:, 256:], static_keys=528)
    torch.cuda.synchronize()
    assert _rel_err(out[:, 256:], _attention_reference(q, k[:538], v[:538], bias[:538])) < 1e-2
    assert bool((out[:, :256] == 0).all()), "nothing outside out's view is written"


def test_mqa_cluster_attention_in_a_graph_with_dependent_launches(tk):
    """Captured as dependent launches after the writes of the step's own keys and queries (rows >= static_keys):
    each call must see what was written just before it, while the static keys may be read early."""
    rows, keys, static = 80, 538, 528
    gen = torch.Generator(device="cuda").manual_seed(11)
    q, k, v, bias = _attention_operands(rows, keys, 256, gen)
    steps = [(torch.randn_like(q), torch.randn(keys - static, 256, device="cuda", generator=gen).bfloat16(),
              torch.randn(keys - static, 256, device="cuda", generator=gen).bfloat16()) for _ in range(3)]
    outs = [torch.full_like(q, float("nan")) for _ in steps]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        tk.mqa_cluster_attention(q, k, v, bias, outs[0], static_keys=static, dependent=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for (qs, ks, vs), out in zip(steps, outs):
                q.copy_(qs)
                k[static:].copy_(ks)
                v[static:].copy_(vs)
                tk.mqa_cluster_attention(q, k, v, bias, out, static_keys=static, dependent=True)
    graph.replay()
    torch.cuda.synchronize()
    for (qs, ks, vs), out in zip(steps, outs):
        ref = _attention_reference(qs, torch.cat([k[:static], ks]), torch.cat([v[:static], vs]), bias)
        assert _rel_err(out, ref) < 1e-2


ATTENTION_BAD = {
    "head dim 96": lambda q, k, v, b, o: (q[:, :96], k[:, :96], v[:, :96], b, o[:, :96]),
    "2049 keys": lambda q, k, v, b, o: (q, k.repeat(4, 1)[:2049], v.repeat(4, 1)[:2049],
                                        b.repeat(4)[:2049].contiguous(), o),
    "q fp16": lambda q, k, v, b, o: (q.half(), k, v, b, o),
    "v rows": lambda q, k, v, b, o: (q, k, v[:-1], b, o),
    "bias length": lambda q, k, v, b, o: (q, k, v, b[:-1].contiguous(), o),
    "out rows": lambda q, k, v, b, o: (q, k, v, b, o[:-1]),
    "k column stride": lambda q, k, v, b, o: (q, torch.cat([k, k], 1)[:, ::2], v, b, o),
}


@pytest.mark.parametrize("case", list(ATTENTION_BAD))
def test_mqa_cluster_attention_refuses_bad_input(tk, case):
    q, k, v, bias = _attention_operands(80, 538, 256, torch.Generator(device="cuda").manual_seed(2))
    out = torch.ones_like(q)
    with pytest.raises(tk.KernelError):
        tk.mqa_cluster_attention(*ATTENTION_BAD[case](q, k, v, bias, out))
    for kwargs in ({"static_keys": 539}, {"static_keys": -1}, {"max_splits": 17}, {"max_splits": -1}):
        with pytest.raises(tk.KernelError):
            tk.mqa_cluster_attention(q, k, v, bias, out, **kwargs)
    torch.cuda.synchronize()
    assert bool((out == 1.0).all()), "a refused call must leave the output untouched"

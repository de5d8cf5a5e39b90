"""GPU tests of cuBLASLt with a chosen algorithm (triforce_kernels.lt_matmul) and of the engine's GEMM tuner
(triforce.runtime.gemm_tuning): every candidate agrees with torch's own op, in and out of a CUDA graph, and bad
input is refused in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from triforce.errors import TriforceError
from triforce.runtime import gemm_tuning

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cutlass_sm110"))

E4M3 = torch.float8_e4m3fn
SHAPES = [(512, 1152, 1152), (528, 2560, 2048), (16, 64, 96)]   # SigLIP o, the prefix's QKV, a small one


@pytest.fixture(scope="session")
def tk():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import devbuild

    return devbuild.load()


def _cos(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


def _bf16_problem(m, n, k, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=g) * k ** -0.5).bfloat16()
    b = torch.randn(n, device="cuda", generator=g).bfloat16()
    return x, w, b


def _fp8_problem(m, n, k, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(m, k, device="cuda", generator=g) * 8).to(E4M3)
    w = (torch.randn(n, k, device="cuda", generator=g) * 8).to(E4M3)
    sx = torch.tensor(0.02, device="cuda")
    sw = torch.tensor(1.0 / (64 * k ** 0.5), device="cuda")
    return x, w, sx, sw


def _workspace(info):
    return torch.empty(max(1, int(info[:, 0].max())), dtype=torch.uint8, device="cuda")


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("bias,gelu", [(False, False), (True, False), (True, True)])
def test_bf16_candidates_agree_with_torch(tk, m, n, k, bias, gelu):
    x, w, b = _bf16_problem(m, n, k)
    b = b if bias else None
    if gelu:
        ref = torch._addmm_activation(b, x, w.t(), use_gelu=True)
    else:
        ref = x @ w.t() if b is None else torch.addmm(b, x, w.t())
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    algos, info = tk.lt_matmul_algos(x, w, out, bias=b, gelu=gelu)
    assert algos.shape[0] >= 1 and tuple(algos.shape[1:]) == (64,) and tuple(info.shape[1:]) == (6,)
    ws = _workspace(info)
    for i in range(algos.shape[0]):
        out.fill_(float("nan"))
        tk.lt_matmul(x, w, out, algos[i], ws, bias=b, gelu=gelu)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all(), f"candidate {i} {info[i].tolist()} left non-finite values"
        assert _cos(out, ref) > 0.9999, f"candidate {i} {info[i].tolist()}"
        assert (out.float() - ref.float()).abs().max() <= 0.02 * ref.float().abs().max() + 1e-3


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("out_dtype,fast_accum", [(torch.bfloat16, False), (torch.bfloat16, True), (E4M3, False)])
def test_fp8_candidates_agree_with_scaled_mm(tk, m, n, k, out_dtype, fast_accum):
    x, w, sx, sw = _fp8_problem(m, n, k)
    ref = torch._scaled_mm(x, w.t(), scale_a=sx, scale_b=sw, out_dtype=out_dtype, use_fast_accum=fast_accum)
    exact = (x.float() @ w.float().t()) * (sx * sw)
    out = torch.empty(m, n, dtype=out_dtype, device="cuda")
    algos, info = tk.lt_matmul_algos(x, w, out, sx, sw, fast_accum=fast_accum)
    assert algos.shape[0] >= 1
    ws = _workspace(info)
    for i in range(algos.shape[0]):
        out.zero_()
        tk.lt_matmul(x, w, out, algos[i], ws, sx, sw, fast_accum=fast_accum)
        torch.cuda.synchronize()
        assert _cos(out, ref) > (0.9999 if out_dtype == torch.bfloat16 else 0.999), f"candidate {i} {info[i].tolist()}"
        assert _cos(out, exact) > 0.999


def test_fp8_e4m3_output_saturates(tk):
    x, w, sx, sw = _fp8_problem(64, 256, 512)
    big = sx * 1e4                               # every output far beyond 448
    out = torch.empty(64, 256, dtype=E4M3, device="cuda")
    algos, info = tk.lt_matmul_algos(x, w, out, big, sw)
    tk.lt_matmul(x, w, out, algos[0], _workspace(info), big, sw)
    torch.cuda.synchronize()
    got = out.float()
    assert not torch.isnan(got).any() and got.abs().max() == 448


def test_lt_matmul_in_a_cuda_graph(tk):
    x, w, b = _bf16_problem(528, 2560, 2048)
    out = torch.empty(528, 2560, dtype=torch.bfloat16, device="cuda")
    algos, info = tk.lt_matmul_algos(x, w, out, bias=b)
    ws = _workspace(info)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        tk.lt_matmul(x, w, out, algos[-1], ws, bias=b)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            tk.lt_matmul(x, w, out, algos[-1], ws, bias=b)
    x.copy_(torch.randn_like(x.float()).bfloat16())
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert _cos(out, torch.addmm(b, x, w.t())) > 0.9999


def _bad(tk, case):
    x, w, b = _bf16_problem(64, 256, 512)
    x8, w8, sx, sw = _fp8_problem(64, 256, 512)
    out = torch.empty(64, 256, dtype=torch.bfloat16, device="cuda")
    algos, info = tk.lt_matmul_algos(x, w, out)
    ws = _workspace(info)
    calls = {
        "mixed input dtypes": lambda: tk.lt_matmul(x, w8, out, algos[0], ws),
        "e4m3 out from bf16": lambda: tk.lt_matmul(x, w, out.to(E4M3), algos[0], ws),
        "fp8 without scales": lambda: tk.lt_matmul(x8, w8, out, algos[0], ws),
        "fast accum on bf16": lambda: tk.lt_matmul(x, w, out, algos[0], ws, fast_accum=True),
        "algo on the GPU": lambda: tk.lt_matmul(x, w, out, algos[0].cuda(), ws),
        "algo too short": lambda: tk.lt_matmul(x, w, out, algos[0][:32], ws),
        "out wrong shape": lambda: tk.lt_matmul(x, w, out[:, :128], algos[0], ws),
        "K not 16-byte rows": lambda: tk.lt_matmul_algos(x[:, :500].contiguous(), w[:, :500].contiguous(), out),
        "bias wrong length": lambda: tk.lt_matmul(x, w, out, algos[0], ws, bias=b[:128]),
        "vector scale": lambda: tk.lt_matmul(x8, w8, out, algos[0], ws, sx.expand(2).contiguous(), sw),
    }
    return calls[case]


@pytest.mark.parametrize("case", ["mixed input dtypes", "e4m3 out from bf16", "fp8 without scales", "fast accum on bf16",
                                  "algo on the GPU", "algo too short", "out wrong shape", "K not 16-byte rows",
                                  "bias wrong length", "vector scale"])
def test_lt_matmul_refuses_bad_input(tk, case):
    with pytest.raises(tk.KernelError) as err:
        _bad(tk, case)()
    assert "\n" not in str(err.value)


def test_tuner_chooses_and_agrees_with_torch(tk):
    log = []
    tuner = gemm_tuning.GemmTuner(tk, log=log.append)
    x, w, b = _bf16_problem(528, 2560, 2048)
    op = lambda wi: torch.addmm(b, x, wi.t())  # noqa: E731
    got = tuner.matmul(x, w, torch.bfloat16, op, bias=b)
    assert _cos(got, op(w)) > 0.9999
    (row,) = tuner.table()
    assert row["candidates"] >= 1 and row["torch_us"] > 0 and row["runs"] in ("torch", "cuBLASLt")
    assert row["us"] <= row["torch_us"]               # never slower than torch's op in its own timing
    assert len(log) == 1 and "528x2560x2048 bf16->bf16 +bias" in log[0]
    again = tuner.matmul(x, w, torch.bfloat16, op, bias=b)      # a tuned shape is not timed again
    assert len(log) == 1 and _cos(again, got) > 0.99999


def test_tuner_fp8_e4m3_out_and_unaligned_rows(tk):
    tuner = gemm_tuning.GemmTuner(tk, log=lambda s: None)
    x, w, sx, sw = _fp8_problem(528, 4096, 2048)
    op = lambda wi: torch._scaled_mm(x, wi.t(), scale_a=sx, scale_b=sw, out_dtype=E4M3)  # noqa: E731
    got = tuner.matmul(x, w, E4M3, op, scale_x=sx, scale_w=sw)
    assert got.dtype == E4M3 and _cos(got, op(w)) > 0.999
    xb, wb, _ = _bf16_problem(512, 1152, 588)          # SigLIP's patch embedding: 1176-byte rows, torch's op runs
    opb = lambda wi: xb @ wi.t()  # noqa: E731
    assert _cos(tuner.matmul(xb, wb, torch.bfloat16, opb), opb(wb)) > 0.99999
    assert tuner.table()[-1]["runs"] == "torch" and "16-byte" in tuner.table()[-1]["note"]


def test_tuner_refuses_an_untuned_shape_during_capture(tk):
    tuner = gemm_tuning.GemmTuner(tk, log=lambda s: None)
    x, w, _ = _bf16_problem(64, 256, 512)
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), pytest.raises(TriforceError, match="not tuned before the graph capture"):
        with torch.cuda.graph(graph, stream=stream):
            tuner.matmul(x, w, torch.bfloat16, lambda wi: x @ wi.t())

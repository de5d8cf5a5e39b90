"""W4A16 GEMM vs cuBLAS bf16 (torch.mm) on the Gemma 2B MLP shapes: relative error, median time, weight bandwidth.

    python3 bench/kernel_bench.py [--out DIR] [--commit SHA] [--iters 100]

Builds (or loads) triforce_kernels for this GPU, checks each op against an fp32 reference of the canonical int4
format, times every case with CUDA events after warm-up (median of --iters runs, rotating over enough weight copies
that the weights come from device memory, not L2), and compares the weight bytes/s with a measured device copy.
Prints a table and writes bench/results/kernel_bench_<gpu>_<date>.json (device, date, command, commit, figures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "cutlass_sm110")]

from triforce import report as rep  # noqa: E402
from triforce import timing  # noqa: E402
from triforce.quant import formats  # noqa: E402

SHAPES = [(16384, 2048), (2048, 16384)]  # (N, K): Gemma 2B MLP gate/up and down
TOKENS = [10, 64, 712]
# Hopper work decompositions timed beside 'auto' (triforce_kernels._W4A16_MODES).
SCHEDULES = ["heuristic", "data_parallel", "stream_k", "stream_k_nd", "split_k:2", "split_k:4", "split_k:8",
             "split_k_nd:4", "split_k_nd:8", "split_k_nd:16"]


def median_ms(fn, iters: int, warmup_s: float = 0.3) -> float:
    """Median of `iters` event-timed calls of fn(i) after `warmup_s` seconds of warm-up calls."""
    start_wall = torch.cuda.Event(enable_timing=True)
    end_wall = torch.cuda.Event(enable_timing=True)
    start_wall.record()
    i = 0
    while True:  # warm up for a fixed time so clocks settle
        fn(i)
        i += 1
        end_wall.record()
        end_wall.synchronize()
        if start_wall.elapsed_time(end_wall) > warmup_s * 1e3:
            break
    index = iter(range(iters))
    return statistics.median(ms for _, ms in timing.back_to_back(lambda: fn(next(index)), iters))


def graph_median_ms(fn, calls: int, iters: int) -> float:
    """Per-call device time without host overhead: `calls` calls fn(0..calls-1) captured in one CUDA graph, each
    replay timed with events after warm-up; the median replay over `iters` replays, divided by `calls`."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(calls):  # first calls (workspace init, lazy module load) outside the capture
            fn(i)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for i in range(calls):
                fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    return median_ms(lambda i: graph.replay(), iters) / calls


def host_us(fn, calls: int = 200) -> float:
    """Host time of one call (the GPU keeps up, so this is the Python + C++ launch path alone)."""
    import time

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda i: dst.copy_(src), 20)
    return 2 * src.numel() / ms / 1e6


def copies_for(bytes_each: int, l2_bytes: int) -> int:
    """Enough weight copies that a rotation over them touches at least 2x the L2."""
    return max(2, math.ceil(2 * l2_bytes / bytes_each))


def bench_shape(tk, n: int, k: int, iters: int, l2: int, gen: torch.Generator) -> list[dict]:
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.05
    q, s = formats.quantize_int4_g128(w)
    w_bf16 = formats.dequantize_int4_g128(q, s).to(torch.bfloat16)  # cuBLAS gets the same (dequantized) weights
    pw, ps = tk.w4a16_prepack(q, s)
    int4_bytes = pw.numel() + ps.numel() * 2
    int4_sets = [(pw, ps)] + [(pw.clone(), ps.clone()) for _ in range(copies_for(int4_bytes, l2) - 1)]
    bf16_sets = [w_bf16] + [w_bf16.clone() for _ in range(copies_for(w_bf16.numel() * 2, l2) - 1)]
    rows = []
    for m in TOKENS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        ref = x.float() @ formats.dequantize_int4_g128(q, s).T
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
        ws = torch.empty(tk.w4a16_workspace_size(m, n, k), dtype=torch.uint8, device="cuda")
        tk.w4a16_gemm(x, pw, ps, out, ws)
        out_mm = torch.mm(x, w_bf16.t())
        torch.cuda.synchronize()
        err = ((out.float() - ref).norm() / ref.norm()).item()
        err_mm = ((out_mm.float() - ref).norm() / ref.norm()).item()
        w4_call = lambda i: tk.w4a16_gemm(x, *int4_sets[i % len(int4_sets)], out, ws)  # noqa: E731
        mm_call = lambda i: torch.mm(x, bf16_sets[i % len(bf16_sets)].t(), out=out_mm)  # noqa: E731
        t_w4 = graph_median_ms(w4_call, 2 * len(int4_sets), iters)
        t_mm = graph_median_ms(mm_call, 2 * len(bf16_sets), iters)
        t_w4_eager = median_ms(w4_call, iters)
        t_mm_eager = median_ms(mm_call, iters)
        schedules = {}
        for name in SCHEDULES if tk.family() == "hopper" else []:
            ws_s = torch.empty(tk.w4a16_workspace_size(m, n, k, name), dtype=torch.uint8, device="cuda")
            out_s = torch.full_like(out, float("nan"))
            tk.w4a16_gemm(x, pw, ps, out_s, ws_s, name)
            torch.cuda.synchronize()
            call = lambda i, ws_s=ws_s, out_s=out_s, name=name: tk.w4a16_gemm(  # noqa: E731
                x, *int4_sets[i % len(int4_sets)], out_s, ws_s, name)
            schedules[name] = {"ms": graph_median_ms(call, 2 * len(int4_sets), iters),
                               "rel_err": ((out_s.float() - ref).norm() / ref.norm()).item(),
                               "workspace_bytes": ws_s.numel()}
        sched = tk._w4a16_schedule("bench", "auto", m, n, k)
        host = {"wrapper_us": host_us(lambda: tk.w4a16_gemm(x, pw, ps, out, ws)),
                "extension_call_us": host_us(lambda: tk._ext().w4a16_gemm(x, pw, ps, out, ws, *sched)),
                "workspace_size_us": host_us(lambda: tk.w4a16_workspace_size(m, n, k)),
                "torch_mm_us": host_us(lambda: torch.mm(x, w_bf16.t(), out=out_mm))}
        rows.append({
            "M": m, "N": n, "K": k,
            "w4a16_rel_err": err, "cublas_bf16_rel_err": err_mm, "all_written": bool(torch.isfinite(out).all()),
            "w4a16_ms": t_w4, "cublas_bf16_ms": t_mm, "speedup": t_mm / t_w4,
            "w4a16_eager_ms": t_w4_eager, "cublas_bf16_eager_ms": t_mm_eager,
            "auto_schedule": tk.w4a16_auto_schedule(m, n, k), "schedules": schedules, "host_overhead": host,
            "w4a16_weight_bytes": int4_bytes, "w4a16_weight_gbs": int4_bytes / t_w4 / 1e6,
            "cublas_weight_gbs": w_bf16.numel() * 2 / t_mm / 1e6,
            "w4a16_tflops": 2 * m * n * k / t_w4 / 1e9, "cublas_tflops": 2 * m * n * k / t_mm / 1e9,
            "int4_weight_copies": len(int4_sets), "bf16_weight_copies": len(bf16_sets),
        })
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=100, help="timed runs per case (median; at least 50)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for the JSON result")
    ap.add_argument("--commit", default=None, help="git commit of the code measured (when run outside a checkout)")
    ap.add_argument("--verbose-build", action="store_true", help="show the extension build's compiler lines")
    args = ap.parse_args()
    if args.iters < 50:
        ap.error("--iters must be at least 50")
    if not torch.cuda.is_available():
        print("error: kernel_bench needs a CUDA GPU", file=sys.stderr)
        return 2

    import devbuild

    print("building/loading triforce_kernels ...", flush=True)
    tk = devbuild.load(verbose=args.verbose_build)
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    copy_gbs = copy_bandwidth_gbs()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for n, k in SHAPES:
        print(f"timing N={n} K={k} ...", flush=True)
        rows += bench_shape(tk, n, k, args.iters, l2, gen)
    for r in rows:
        r["w4a16_copy_bw_fraction"] = r["w4a16_weight_gbs"] / copy_gbs

    print(f"\n{props.name}: device copy {copy_gbs:.0f} GB/s (read+write), L2 {l2 >> 20} MiB, median of {args.iters}")
    print("times: per GEMM inside a CUDA graph (device time); eager: one Python call each, host overhead included")
    head = (f"{'M':>5} {'N':>6} {'K':>6} | {'w4a16 us':>9} {'cuBLAS us':>9} {'speedup':>7} | {'w4 GB/s':>8} "
            f"{'%copy':>6} | {'eager w4':>8} {'eager mm':>8} | {'rel err':>8} {'cuBLAS err':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['M']:>5} {r['N']:>6} {r['K']:>6} | {r['w4a16_ms'] * 1e3:>9.1f} {r['cublas_bf16_ms'] * 1e3:>9.1f} "
              f"{r['speedup']:>7.2f} | {r['w4a16_weight_gbs']:>8.0f} {100 * r['w4a16_copy_bw_fraction']:>5.0f}% | "
              f"{r['w4a16_eager_ms'] * 1e3:>8.1f} {r['cublas_bf16_eager_ms'] * 1e3:>8.1f} | "
              f"{r['w4a16_rel_err']:>8.1e} {r['cublas_bf16_rel_err']:>10.1e}")

    if any(r["schedules"] for r in rows):
        print("\nper schedule (us inside a CUDA graph; * = fastest):")
        print(f"{'M':>5} {'N':>6} {'K':>6} | " + " ".join(f"{s_:>13}" for s_ in SCHEDULES))
        for r in rows:
            best = min(r["schedules"], key=lambda s_: r["schedules"][s_]["ms"])
            cells = [f"{r['schedules'][s_]['ms'] * 1e3:>12.1f}{'*' if s_ == best else ' '}" for s_ in SCHEDULES]
            print(f"{r['M']:>5} {r['N']:>6} {r['K']:>6} | " + " ".join(cells))
    print("\nhost time per call (us): wrapper / extension call / workspace_size / torch.mm")
    for r in rows:
        h = r["host_overhead"]
        print(f"{r['M']:>5} {r['N']:>6} {r['K']:>6} | {h['wrapper_us']:8.1f} {h['extension_call_us']:8.1f} "
              f"{h['workspace_size_us']:8.1f} {h['torch_mm_us']:8.1f}")

    now = dt.datetime.now(dt.timezone.utc)
    result = {
        "device": props.name, "compute_capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
        "date": now.isoformat(timespec="seconds"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": args.commit or rep.git_commit(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "host": platform.node(), "kernel_family": tk.family(), "iters": args.iters,
        "timing": ("*_ms: CUDA-graph replays of 2x(weight copies) calls timed with CUDA events after warm-up, median "
                   "replay / calls; *_eager_ms: CUDA events around one Python call, median; weights rotated over "
                   "copies covering 2x L2"),
        "data": "random normal weights (x0.05) quantized int4 g128, random normal bf16 activations",
        "device_copy_gbs": copy_gbs, "rows": rows,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"kernel_bench_{props.name.replace(' ', '_')}_{now:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
    bad = [r for r in rows if not r["all_written"] or not r["w4a16_rel_err"] < 1e-2
           or any(not v["rel_err"] < 1e-2 for v in r["schedules"].values())]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

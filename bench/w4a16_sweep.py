#!/usr/bin/env python3
"""The few-row W4A16 kernels at M <= 64 against the copy bandwidth on their weight bytes (the Plan B issue asks
>= 70%), on the Pi0.5 GEMMs that stream the most int4 bytes, with cuBLAS bf16 on the same shapes in the same run:
- triton: fused.skinny_w4a16 (canonical int4, int4 groups dequantized into tl.dot), its launch-shape grid on request;
- mma: the wheel's w4a16_skinny (warp-level MMA on prepacked fragments, cp.async weight stream), its splits and
  tiles-per-warp grid (needs the kernel wheel or bench/with_devbuild.py);
- cutlass: the wheel's w4a16_gemm (CUTLASS's Hopper mixed-input GEMM, warpgroup MMA, token tiles 16 / 64 / 128; what
  the engine runs above 64 rows), bf16 out, its schedules (session 18).
Every entry: a CUDA graph of calls over weight copies that overflow L2, median of 50 replays after warm-up, per call.
Also each kernel's default and best launch shape as the engine's denoise chain launches them (engine.DENOISE_LAUNCHES
"dependent"): each call a programmatic dependent launch that waits on the GPU for the call before it (the calls
accumulate into one output, a true dependency); per call, a throughput in a chain of GEMMs, not one GEMM's latency.
Also, per shape, a device-to-device copy moving the same bytes (read + written = the int4 weight bytes) timed the
same way: what a kernel of this size reaches of the 1 GiB copy's bandwidth when it only moves bytes (launch, ramp-up
and tail included), the ceiling the W4A16 figure is read against (session 18); and a kernel that only reads the same
bytes (each program sums its contiguous slice of int32, 16-byte loads; the fastest of a few launch shapes), since a
weight stream reads and writes nothing back, and reads alone may run the DRAM faster than a copy's mix; that
kernel also chained as the W4A16 kernels are (dependent launches, its first block read before the wait: session 27),
the ceiling of the chained figures.
Records bench/results/w4a16_sweep-<gpu>-<date>.json.
    python3 bench/with_devbuild.py bench/w4a16_sweep.py [--engine-shape-only] [--triton-grid] [--chain-grid]
        [--kernels mma] [--streamed-only] [--splits 2,4] [--rows 1,10] [--out-dir bench/results]"""

import contextlib
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.quant import formats as fm  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.timing import copy_gbs, time_graph_us  # noqa: E402

SHAPES = [("gemma gate (half of gate/up)", 16384, 2048), ("gemma down", 2048, 16384), ("expert gate_up", 8192, 1024),
          ("expert down", 1024, 4096)]
ROWS = (1, 10, 64)
DEFAULT: dict = {}     # each kernel's default launch shape (what the engine runs), then the grids around it
TRITON_GRID = [DEFAULT] + [dict(block_n=bn, groups=g, num_warps=w, num_stages=2)
                           for bn, g, w in itertools.product((64, 128, 256), (1, 2), (4, 8))]
# splits 3 / 6 / 24: the most CTAs that fit the H100's resident slots once (3 a SM x 132) for the Gemma gate (128 row
# blocks), the expert gate/up (64) and the Gemma down (16); the default rounds that count up (a partial second wave)
# depth: the register-streamed form (session 28; any M <= 64 since session 30): each warp's weights in a ring of
# `depth` groups of registers, x and scales in shared memory once a CTA, no barrier a group; cta_warps warps a CTA of
# tiles_per_warp 16-row tiles, splits CTAs along K (0: at most 8 groups a CTA and two CTAs a SM). 16 tiles a CTA (2 a
# warp) halve the x slice each CTA reads from L2 (M / (4 * tiles a CTA) of the weight bytes: 31% at M = 10 with 8).
# (Session 30 removed, having lost at every point: depth 4, 4 warps of one tile and 16 warps a CTA
# (w4a16_sweep-nvidia-h100-*-s30-tiles-a-cta.json), and the x slice arriving group by group behind an mbarrier a
# group (tied or lost: *-s30-x-by-group.json). Session 31 removed two more forms that lost at every point: each
# warpgroup's four tiles as one Hopper wgmma with x read from shared memory by the tensor cores (1.28-1.46x slower:
# *-s31-warpgroup.json), and the splits' sums meeting in a cluster's shared memory before one reduction into out
# (1.21-2.08x slower: *-s31-cluster.json).)
STREAMED_SPLITS = (0, 2, 3, 4, 6, 8, 12, 16, 24, 32)
MMA_GRID = ([DEFAULT] + [dict(splits=sp) for sp in (1, 2, 3, 4, 6, 24)] + [dict(tiles_per_warp=t) for t in (1, 2)]
            + [dict(depth=2, cta_warps=w, tiles_per_warp=t, splits=sp)
               for (w, t), sp in itertools.product(((8, 1), (4, 2), (8, 2)), STREAMED_SPLITS)])
# (session 27's 16-byte reductions of four features and split MMA chains lost or tied at every shape and in Plan B,
# and were removed: w4a16_sweep-nvidia-h100-*-s27-forms.json; session 26's direct form, restored in session 27 to
# time it chained, stayed below this grid's best chained shape: w4a16_sweep-nvidia-h100-*-s27-direct-chained.json;
# and the add form with 5 / 8 stages, every group of a CTA requested before the chain wait, lost chained:
# w4a16_sweep-nvidia-h100-*-s27-stages.json)
# (session 18's clusters of 2 / 4 CTAs and session 21's K tiles of 128 at the token tile 64 tied the default and were
# removed: w4a16_sweep-nvidia-h200-*-s18-clusters.json, w4a16_sweep-nvidia-h100-*-s21-k128.json)
CUTLASS_GRID = [DEFAULT] + [dict(schedule=s) for s in ("heuristic", "stream_k", "stream_k_nd", "split_k:2", "split_k:4")]
# session 5 compared the int4 -> bf16 conversion (I2F) with the bit-pattern dequant that replaced it, at the engine's
# launch shape then: 1.4-2.9x faster (bench/results/w4a16_sweep-*-s5.json, "convert_default" / "magic_default")


def per_call_us(call, copies, dependent=False):
    """Per call of call(i) over the copies, in one CUDA graph; dependent: as programmatic dependent launches (the
    engine's denoise chain form)."""
    with fused.dependent_launches() if dependent else contextlib.nullcontext():
        return time_graph_us([lambda i=i: call(i) for i in range(copies)], warmup_s=0.3)


def kernels(tk, triton_grid: bool):
    """name -> (prepare(q, s) -> weights, call(x, weights, acc, shape, dependent), grid, read(acc) -> the last call's
    fp32 result)."""
    out = {"triton": (lambda q, s: (q, s), lambda x, w, acc, shape, dep: fused.skinny_w4a16(x, *w, out=acc, **shape),
                      TRITON_GRID if triton_grid else [DEFAULT], lambda acc: acc)}
    if tk is not None:
        out["mma"] = (lambda q, s: (fm.pack_int4_fragments(q), fm.pack_scales_fragments(s)),
                      lambda x, w, acc, shape, dep: tk.w4a16_skinny(x, *w, acc, dependent=dep, **shape), MMA_GRID,
                      lambda acc: acc)
    if tk is not None and tk.has_op("w4a16_gemm"):
        out["cutlass"] = cutlass_kernel(tk)
    return out


def cutlass_kernel(tk):
    """The CUTLASS GEMM in the sweep's form: it writes bf16 (a buffer per M and schedule, with its workspace, made
    before any timing); `acc` is left alone and read() returns the last output."""
    buffers, last = {}, [None]

    def call(x, w, acc, shape, dep):
        m, n, k, schedule = x.shape[0], acc.shape[1], x.shape[1], shape.get("schedule", "auto")
        if (m, n, schedule) not in buffers:
            buffers[m, n, schedule] = (torch.empty(m, n, dtype=torch.bfloat16, device="cuda"),
                                       torch.empty(max(1, tk.w4a16_workspace_size(m, n, k, schedule)),
                                                   dtype=torch.uint8, device="cuda"))
        out, ws = buffers[m, n, schedule]
        tk.w4a16_gemm(x, *w, out, ws, schedule)
        last[0] = out

    return tk.w4a16_prepack, call, CUTLASS_GRID, lambda acc: last[0].float()


def timed(call, x, weights, acc, shape, copies, int4_bytes, copy, dependent=False) -> dict:
    us = per_call_us(lambda i: call(x, weights[i], acc, shape, dependent), copies, dependent)
    return {"shape": shape, "us": us, "copy_fraction": int4_bytes / (us * 1e-6) / 1e9 / copy}


def sweep_kernel(call, grid, read, x, weights, acc, ref, copies, int4_bytes, copy, chain_grid=False) -> dict:
    tried = []
    for shape in grid:
        try:
            acc0 = torch.zeros_like(acc)
            call(x, weights[0], acc0, shape, False)
            err = float((read(acc0) - ref).norm() / ref.norm())
            tried.append({**timed(call, x, weights, acc, shape, copies, int4_bytes, copy), "rel_err": err})
        except Exception as e:    # a shape that does not compile or launch is a result too
            tried.append({"shape": shape, "error": str(e).splitlines()[0][:100]})
    ok = [t for t in tried if "us" in t]
    best = min(ok, key=lambda t: t["us"])
    default = next(t for t in ok if t["shape"] == DEFAULT)
    if chain_grid:   # every launch shape chained, and the fastest of them chained
        tried_chained = [timed(call, x, weights, acc, t["shape"], copies, int4_bytes, copy, dependent=True)
                         for t in ok]
        chain = {"default": next(t for t in tried_chained if t["shape"] == DEFAULT),
                 "best": min(tried_chained, key=lambda t: t["us"]), "tried": tried_chained}
    else:            # the default and the plain best shape chained
        chain = {label: timed(call, x, weights, acc, t["shape"], copies, int4_bytes, copy, dependent=True)
                 for label, t in (("default", default), ("best", best))}
    return {"default": default, "best": best, "tried": tried, "chained": chain}


def same_bytes_copy_us(moved: int) -> float:
    """Per-call us of a device-to-device copy of moved / 2 bytes (read + written = moved), over buffers covering 2x
    the 50 MB L2, in the sweep's CUDA-graph timing."""
    half = moved // 2 // 16 * 16
    pairs = max(2, int(2 * 50e6 // (2 * half)) + 1)
    bufs = [(torch.empty(half, dtype=torch.uint8, device="cuda"), torch.empty(half, dtype=torch.uint8, device="cuda"))
            for _ in range(pairs)]
    for src, _ in bufs:
        src.random_(0, 255)
    return per_call_us(lambda i: bufs[i][1].copy_(bufs[i][0]), pairs)


@triton.jit
def _read_kernel(X, OUT, BLOCK: tl.constexpr, ITERS: tl.constexpr, PDL: tl.constexpr):
    """Sums this program's ITERS contiguous blocks of int32 (no mask: the buffer is a whole number of slices), so
    the bytes are only read. PDL: chained as the W4A16 kernels are (their form: the first block is read before the
    wait on the kernel before, as the few-row kernel requests its first weights)."""
    base = tl.program_id(0).to(tl.int64) * ITERS * BLOCK
    acc = tl.load(X + base + tl.arange(0, BLOCK))
    fused._await_previous(PDL)
    for i in range(1, ITERS):
        acc += tl.load(X + base + i * BLOCK + tl.arange(0, BLOCK))
    tl.store(OUT + tl.program_id(0), tl.sum(acc, 0))


READ_BLOCK = 1024                   # int32 a block: 4 KB, 8 a thread of 4 warps (two 16-byte loads)
READ_SLICES = (1, 4, 8, 16, 32)     # blocks a program: 4224 ... 132 programs for the Gemma weights


def same_bytes_read_us(nbytes: int, chained: bool = False) -> tuple[float, dict, int]:
    """Per-call us of the fastest read-only launch shape over (at least) nbytes, over buffers covering 2x the 50 MB
    L2, in the sweep's CUDA-graph timing: (us, shape, bytes read). chained: as dependent launches (the W4A16
    kernels' chained form)."""
    best = None
    for iters in READ_SLICES:
        programs = -(-nbytes // (4 * READ_BLOCK * iters))
        read = programs * iters * READ_BLOCK * 4
        bufs = [torch.randint(0, 7, (read // 4,), dtype=torch.int32, device="cuda")
                for _ in range(max(2, int(2 * 50e6 // read) + 1))]
        out = torch.empty(programs, dtype=torch.int32, device="cuda")
        us = per_call_us(lambda i: _read_kernel[(programs,)](bufs[i], out, BLOCK=READ_BLOCK, ITERS=iters, num_warps=4,
                                                             PDL=chained, launch_pdl=chained), len(bufs), chained)
        expect = int(bufs[-1].view(programs, -1).sum(1, dtype=torch.int64).sum())
        if int(out.sum(dtype=torch.int64)) != expect:
            raise RuntimeError(f"read-only kernel summed {int(out.sum())}, expected {expect}")
        if best is None or us / read < best[0] / best[2]:
            best = (us, {"programs": programs, "blocks_a_program": iters}, read)
    return best


def sweep_shape(name, n, k, copy, table, grid_too, rows_m=ROWS, chain_grid=False):
    copies = max(2, int(2 * 50e6 // (n * k // 2)) + 1)          # int4 copies covering 2x the 50 MB L2
    q = [fm.quantize_int4_g128(torch.randn(n, k, device="cuda") * 0.05) for _ in range(copies)]
    w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(max(2, int(2 * 50e6 // (n * k * 2)) + 1))]
    int4_bytes = fm.int4_g128_bytes(n, k)
    ref_w = fm.dequantize_int4_g128(*q[0])
    prepared = {kname: ([prep(*qs) for qs in q], call, grid if grid_too else [DEFAULT], read)
                for kname, (prep, call, grid, read) in table.items()}
    same = same_bytes_copy_us(int4_bytes)
    read_us, read_shape, read_bytes = same_bytes_read_us(int4_bytes)
    read_fraction = read_bytes / (read_us * 1e-6) / 1e9 / copy
    chained_us, chained_shape, chained_bytes = same_bytes_read_us(int4_bytes, chained=True)
    chained_read = {"us": chained_us, "bytes": chained_bytes, "shape": chained_shape,
                    "copy_fraction": chained_bytes / (chained_us * 1e-6) / 1e9 / copy}
    print(f"{name}: a copy moving the same {int4_bytes / 1e6:.1f} MB {same:.2f} us = "
          f"{int4_bytes / (same * 1e-6) / 1e9 / copy:.0%} of copy BW; reading {read_bytes / 1e6:.1f} MB "
          f"{read_us:.2f} us = {read_fraction:.0%} ({read_shape}), chained {chained_us:.2f} us = "
          f"{chained_read['copy_fraction']:.0%}", flush=True)
    out = []
    for m in rows_m:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        acc = torch.zeros(m, n, device="cuda")
        ref = x.float() @ ref_w.T
        cublas = per_call_us(lambda i: torch.mm(x, w16[i % len(w16)].t()), len(w16))
        row = {"gemm": name, "m": m, "n": n, "k": k, "int4_bytes": int4_bytes, "cublas_bf16_us": cublas,
               "same_bytes_copy_us": same, "same_bytes_copy_fraction": int4_bytes / (same * 1e-6) / 1e9 / copy,
               "same_bytes_read": {"us": read_us, "bytes": read_bytes, "shape": read_shape,
                                   "copy_fraction": read_fraction, "chained": chained_read}}
        for kname, (weights, call, grid, read) in prepared.items():
            r = row[kname] = sweep_kernel(call, grid, read, x, weights, acc, ref, copies, int4_bytes, copy,
                                          chain_grid and grid_too)
            r["best_vs_cublas"] = cublas / r["best"]["us"]
            print(f"{name} M={m} {kname}: best {r['best']['shape']} {r['best']['us']:.2f} us = "
                  f"{r['best']['copy_fraction']:.0%} of copy BW (default {r['default']['us']:.2f} us, cuBLAS bf16 "
                  f"{cublas:.2f} us); chained {r['chained']['best']['copy_fraction']:.0%}", flush=True)
        out.append(row)
    return out


def main():
    ap = rep.bench_parser(__doc__)
    ap.add_argument("--engine-shape-only", action="store_true", help="only each kernel's default launch shape")
    ap.add_argument("--rows", default=",".join(map(str, ROWS)), help="token counts M, comma-separated")
    ap.add_argument("--shapes", type=int, default=len(SHAPES), help="only the first N GEMM shapes")
    ap.add_argument("--triton-grid", action="store_true", help="also the Triton kernel's launch-shape grid (sessions "
                    "3-5 swept it: w4a16_sweep-*-s5.json)")
    ap.add_argument("--chain-grid", action="store_true", help="time every launch shape chained too (not only the "
                    "default and the best)")
    ap.add_argument("--kernels", default="", help="only these kernels (comma-separated: triton, mma, cutlass)")
    ap.add_argument("--streamed-only", action="store_true", help="of the mma kernel's grid, only its default and the "
                    "register-streamed shapes (depth > 0)")
    ap.add_argument("--splits", default="", help="of the streamed shapes, only these splits (comma-separated)")
    a = ap.parse_args()
    torch.manual_seed(0)
    try:
        import triforce_kernels as tk
        tk = tk if tk.has_op("w4a16_skinny") else None
    except ImportError:
        tk = None
    table = kernels(tk, a.triton_grid)
    if a.kernels:
        wanted = a.kernels.split(",")
        if unknown := sorted(set(wanted) - set(table)):
            raise SystemExit(f"w4a16_sweep: no kernel {unknown} here (have {sorted(table)})")
        table = {name: table[name] for name in wanted}
    if a.streamed_only and "mma" in table:
        prepare, call, grid, read = table["mma"]
        table["mma"] = (prepare, call, [s for s in grid if s == DEFAULT or s.get("depth")], read)
    if a.splits and "mma" in table:
        keep = {int(v) for v in a.splits.split(",")}
        prepare, call, grid, read = table["mma"]
        table["mma"] = (prepare, call, [s for s in grid if not s.get("depth") or s["splits"] in keep], read)
    copy = copy_gbs()
    rows_m = tuple(int(v) for v in a.rows.split(","))
    rows = [r for name, n, k in SHAPES[:a.shapes]
            for r in sweep_shape(name, n, k, copy, table, not a.engine_shape_only, rows_m, a.chain_grid)]
    rep.print_table(f"few-row W4A16 at M <= 64 (copy {copy:.0f} GB/s; us per call; chained: dependent launches)",
                    ["gemm", "M", "kernel", "default us", "best us", "best shape", "best % of copy BW",
                     "cuBLAS bf16 us", "chained us", "chained % of copy BW", "same-bytes copy % of copy BW",
                     "same-bytes read % of copy BW", "chained read % of copy BW"],
                    [[r["gemm"], r["m"], kname, r[kname]["default"]["us"], r[kname]["best"]["us"],
                      str(r[kname]["best"]["shape"]), f"{r[kname]['best']['copy_fraction']:.0%}", r["cublas_bf16_us"],
                      r[kname]["chained"]["best"]["us"], f"{r[kname]['chained']['best']['copy_fraction']:.0%}",
                      f"{r['same_bytes_copy_fraction']:.0%}", f"{r['same_bytes_read']['copy_fraction']:.0%}",
                      f"{r['same_bytes_read']['chained']['copy_fraction']:.0%}"]
                     for r in rows for kname in table])
    rep.record_run(a.out_dir, "w4a16_sweep", {
        "copy_gbs": copy, "kernels": list(table), "rows": rows,
        "timing": "per call: CUDA graph of calls over weight copies covering 2x L2, CUDA events, median of 50 replays"})


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Warp-level bf16 MMA (mma.sync m16n8k16, what the few-row W4A16 kernel multiplies with) against cuBLAS's bf16
GEMM, in one run: can a kernel on that instruction reach #4's 70% of copy bandwidth at M = 32 / 64?

bench/mma_rate.cu is compiled here with nvcc (any CUDA 13 toolkit: CUDA_HOME, the pinned PyPI one, or PATH) for the
GPU's arch and launched through the driver API on torch's stream: warps a SM x independent MMAs a warp (ILP), each
launch about 1 ms of MMAs on register operands, timed as Phase 0 times its GEMM ceiling (launches back to back
between CUDA events, the median of those 1-2 s in). Beside it, that ceiling (cuBLAS's 8192^3 bf16 GEMM) and the
1 GiB copy's bandwidth. Then, for the Gemma gate (16384 x 2048, the W4A16 sweep's shape) at M = 10 / 16 / 32 / 64: the
time its MMAs take at mma.sync's best measured rate and at the streamed form's occupancy (8 warps a SM, 2 tiles a
warp: ILP 2 x the token tiles), against the time #4's 70% allows. Records bench/results/mma_rate-<gpu>-<date>.json.
    python3 bench/mma_rate.py [--warps 4,8,16,32] [--ilp 1,2,4,8,16] [--out-dir bench/results]"""

from __future__ import annotations

import ctypes
import math
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triforce import report as rep  # noqa: E402
from triforce.errors import TriforceError  # noqa: E402
from triforce.quant.formats import int4_g128_bytes  # noqa: E402

SOURCE = Path(__file__).resolve().with_suffix(".cu")
ILPS = (1, 2, 4, 8, 16)
FLOP_PER_MMA = 2 * 16 * 8 * 16
WARPS_A_CTA = 4
GATE = {"gemm": "gemma gate (half of gate/up)", "n": 16384, "k": 2048}   # bench/w4a16_sweep.py's first shape
TARGET_COPY_FRACTION = 0.70
STREAMED = {"warps_per_sm": 8, "tiles_per_warp": 2}   # the streamed form's (8, 2, *) shapes, one CTA a SM


def gemm_mmas(m: int, n: int, k: int) -> int:
    """m16n8k16 MMAs of a few-row GEMM with the weights as A (16 output features) and x as B (8 tokens a tile)."""
    return (n // 16) * (k // 16) * math.ceil(m / 8)


def streamed_ilp(m: int) -> int:
    """Independent MMAs a warp of the streamed form issues a k step: its tiles x the token tiles."""
    return STREAMED["tiles_per_warp"] * math.ceil(m / 8)


def projections(rates: dict, best_tflops: float, copy_gbs: float, ms=(10, 16, 32, 64)) -> list[dict]:
    """For the Gemma gate at each M: the MMAs' time at the best rate and at the streamed form's (warps, ILP) rate
    (`rates`: {(warps_per_sm, ilp): TFLOP/s}), against the time #4's 70% of copy bandwidth allows."""
    rows = []
    for m in ms:
        flop = gemm_mmas(m, GATE["n"], GATE["k"]) * FLOP_PER_MMA
        target_us = int4_g128_bytes(GATE["n"], GATE["k"]) / (TARGET_COPY_FRACTION * copy_gbs * 1e3)
        shape = (STREAMED["warps_per_sm"], streamed_ilp(m))
        at_shape = rates.get(shape)
        rows.append({"m": m, "mma_gflop": flop / 1e9, "target_us": target_us,
                     "best_rate_us": flop / (best_tflops * 1e6), "streamed_shape": list(shape),
                     "streamed_rate_tflops": at_shape,
                     "streamed_rate_us": flop / (at_shape * 1e6) if at_shape else None})
    return rows


def parse_points(warps: str, ilps: str) -> tuple[list[int], list[int]]:
    """--warps / --ilp checked before any GPU work: warps a SM in multiples of a CTA's 4 (at most 64), ILPs of the
    compiled ones."""
    try:
        w, i = [int(v) for v in warps.split(",")], [int(v) for v in ilps.split(",")]
    except ValueError:
        raise TriforceError(f"--warps / --ilp take comma-separated integers (got {warps!r}, {ilps!r})") from None
    if bad := [v for v in w if v <= 0 or v > 64 or v % WARPS_A_CTA]:
        raise TriforceError(f"--warps {bad}: warps a SM must be multiples of {WARPS_A_CTA} (a CTA's) up to 64")
    if bad := [v for v in i if v not in ILPS]:
        raise TriforceError(f"--ilp {bad}: not compiled (mma_rate.cu has {list(ILPS)})")
    return w, i


def compile_cubin(arch: str, out_dir: Path) -> Path:
    """nvcc -cubin of mma_rate.cu for arch (e.g. sm_90a); a failure names the compiler and its last lines."""
    from triforce.kernels import _gencode, find_toolchain

    tc = find_toolchain()
    cubin = out_dir / f"mma_rate.{arch}.cubin"
    proc = subprocess.run([str(tc.nvcc), "-cubin", "-O3", _gencode(arch), "-o", str(cubin), str(SOURCE)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        detail = " ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-2:])
        raise TriforceError(f"nvcc {tc.version} at {tc.nvcc} cannot compile {SOURCE.name} for {arch}: {detail}")
    return cubin


class Driver:
    """The few driver-API calls the probe needs, on the context torch made current."""

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")

    def check(self, what: str, status: int) -> None:
        if status != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(status, ctypes.byref(name))
            raise TriforceError(f"{what} failed: {(name.value or b'?').decode()} ({status})")

    def load(self, cubin: Path, names: list[str]) -> dict:
        module = ctypes.c_void_p()
        self.image = cubin.read_bytes()   # the driver reads it during the call; kept for the module's life anyway
        self.check(f"cuModuleLoadData({cubin.name})", self.lib.cuModuleLoadData(ctypes.byref(module), self.image))
        funcs = {}
        for name in names:
            fn = ctypes.c_void_p()
            self.check(f"cuModuleGetFunction({name})",
                       self.lib.cuModuleGetFunction(ctypes.byref(fn), module, name.encode()))
            funcs[name] = fn
        return funcs

    def registers(self, fn) -> int:
        regs = ctypes.c_int()
        self.check("cuFuncGetAttribute", self.lib.cuFuncGetAttribute(ctypes.byref(regs), 4, fn))  # NUM_REGS
        return regs.value

    def resident_ctas(self, fn, threads: int) -> int:
        n = ctypes.c_int()
        occupancy = self.lib.cuOccupancyMaxActiveBlocksPerMultiprocessor
        self.check("cuOccupancyMaxActiveBlocksPerMultiprocessor",
                   occupancy(ctypes.byref(n), fn, threads, ctypes.c_size_t(0)))
        return n.value

    def launch(self, fn, grid: int, threads: int, stream: int, iters: int, seed: int, out_ptr: int) -> None:
        args = [ctypes.c_int(iters), ctypes.c_uint32(seed), ctypes.c_void_p(out_ptr)]
        params = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
        self.check("cuLaunchKernel", self.lib.cuLaunchKernel(fn, grid, 1, 1, threads, 1, 1, 0,
                                                             ctypes.c_void_p(stream), params, None))


class Probe:
    """mma_rate.cu compiled for this GPU and loaded: `run(ilp, warps_per_sm, iters, seed)` enqueues one launch on
    torch's current stream and returns its output (one float a thread)."""

    def __init__(self, work_dir: Path):
        import torch

        major, minor = torch.cuda.get_device_capability()
        self.arch = f"sm_{major}{minor}{'a' if major >= 9 else ''}"
        torch.zeros(1, device="cuda")   # torch's context current on this thread before the driver calls
        self.sms = torch.cuda.get_device_properties(0).multi_processor_count
        self.driver = Driver()
        self.funcs = self.driver.load(compile_cubin(self.arch, work_dir), [f"mma_rate_ilp{i}" for i in ILPS])

    def fn(self, ilp: int):
        return self.funcs[f"mma_rate_ilp{ilp}"]

    def grid(self, warps_per_sm: int) -> int:
        return self.sms * warps_per_sm // WARPS_A_CTA   # CTAs of 4 warps, spread evenly: warps_per_sm on each SM

    def run(self, ilp: int, warps_per_sm: int, iters: int, seed: int = 1):
        import torch

        grid = self.grid(warps_per_sm)
        out = torch.empty(grid * WARPS_A_CTA * 32, dtype=torch.float32, device="cuda")
        self.driver.launch(self.fn(ilp), grid, WARPS_A_CTA * 32, torch.cuda.current_stream().cuda_stream, iters,
                           seed, out.data_ptr())
        return out

    def flop(self, ilp: int, warps_per_sm: int, iters: int) -> int:
        return self.grid(warps_per_sm) * WARPS_A_CTA * iters * ilp * FLOP_PER_MMA


def measure(probe: Probe, warps: list[int], ilps: list[int]) -> list[dict]:
    """Each point timed as Phase 0 times cuBLAS (time_sustained: launches back to back, the median of those starting
    1-2 s in), so both run at the clocks the power limiter settles to."""
    from triforce.timing import time_sustained

    rows = []
    for w in warps:
        for ilp in ilps:
            fn = probe.fn(ilp)
            fit = probe.driver.resident_ctas(fn, WARPS_A_CTA * 32) * WARPS_A_CTA   # launched beyond it: waves
            # about 1 ms a launch at 600 TFLOP/s: long against the launch itself
            iters = max(64, int(600e12 * 1e-3 / (probe.grid(w) * WARPS_A_CTA * ilp * FLOP_PER_MMA)))
            t = time_sustained(lambda: probe.run(ilp, w, iters))
            rows.append({"warps_per_sm": w, "ilp": ilp, "iters": iters, "registers": probe.driver.registers(fn),
                         "warps_that_fit_a_sm": fit, "ms": t["median_ms"],
                         "tflops": probe.flop(ilp, w, iters) / (t["median_ms"] * 1e-3) / 1e12})
            print(f"  {w:2d} warps/SM, ILP {ilp:2d}: {rows[-1]['tflops']:6.1f} TFLOP/s "
                  f"({rows[-1]['registers']} registers, at most {fit} warps fit a SM)", flush=True)
    return rows


def main():
    ap = rep.bench_parser(__doc__)
    ap.add_argument("--warps", default="4,8,16,32", help="warps a SM, comma-separated (multiples of 4)")
    ap.add_argument("--ilp", default=",".join(map(str, ILPS)), help=f"independent MMAs a warp, of {ILPS}")
    a = ap.parse_args()
    try:
        warps, ilps = parse_points(a.warps, a.ilp)
    except TriforceError as err:
        raise SystemExit(f"mma_rate: {err}") from None
    import torch

    from triforce.timing import copy_gbs, time_sustained

    if not torch.cuda.is_available():
        raise SystemExit("mma_rate: needs a CUDA GPU; none is visible")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            probe = Probe(Path(tmp))
            rows = measure(probe, warps, ilps)
        except TriforceError as err:
            raise SystemExit(f"mma_rate: {err}") from None
    x = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    gemm_tflops = 2 * 8192**3 / (time_sustained(lambda: x @ x)["median_ms"] * 1e-3) / 1e12
    copy = copy_gbs()
    best = max(rows, key=lambda r: r["tflops"])
    rates = {(r["warps_per_sm"], r["ilp"]): r["tflops"] for r in rows}
    proj = projections(rates, best["tflops"], copy)
    rep.print_table(f"mma.sync m16n8k16 bf16 on {probe.arch} ({probe.sms} SMs; cuBLAS bf16 8192^3 sustained "
                    f"{gemm_tflops:.0f} TFLOP/s in this run)",
                    ["warps/SM", "ILP", "registers", "warps that fit a SM", "TFLOP/s", "x cuBLAS bf16"],
                    [[r["warps_per_sm"], r["ilp"], r["registers"], r["warps_that_fit_a_sm"], f"{r['tflops']:.1f}",
                      f"{r['tflops'] / gemm_tflops:.2f}"] for r in rows])
    rep.print_table(f"Gemma gate {GATE['n']}x{GATE['k']}: its MMAs' time against #4's 70% of copy BW "
                    f"({copy:.0f} GB/s)",
                    ["M", "MMA GFLOP", "70% target us", f"at best {best['tflops']:.0f} TFLOP/s, us",
                     "streamed (warps/SM, ILP)", "at that rate, us"],
                    [[p["m"], f"{p['mma_gflop']:.2f}", f"{p['target_us']:.2f}", f"{p['best_rate_us']:.2f}",
                      str(tuple(p["streamed_shape"])),
                      f"{p['streamed_rate_us']:.2f}" if p["streamed_rate_us"] else "not timed"] for p in proj])
    rep.record_run(a.out_dir, "mma_rate", {
        "arch": probe.arch, "sms": probe.sms, "cublas_bf16_8192_tflops": gemm_tflops, "copy_gbs": copy,
        "rows": rows, "best": best, "gemma_gate_projection": proj,
        "timing": "each point and cuBLAS: time_sustained (Phase 0's): launches of ~1 ms back to back between CUDA "
                  "events, the median of those starting 1-2 s in"})


if __name__ == "__main__":
    main()

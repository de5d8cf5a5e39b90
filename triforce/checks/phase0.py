"""Phase 0: what this GPU is, whether the kernel wheel fits it, its measured ceilings, and the roofline of every
Pi0.5 GEMM per precision with a per-stage precision recommendation. Without a GPU: says so, exit code 4."""

from __future__ import annotations

from .. import report as rep
from ..roofline import analyse, hardware_table
from ..runtime.config import load_config


def kernel_wheel_status(capability: str | None) -> dict:
    """Does triforce_kernels import, and was it built for this GPU's arch?"""
    try:
        import triforce_kernels
    except ImportError as err:
        return {"importable": False, "error": str(err), "hint": "build with `invoke build-kernels` and `invoke deploy`"}
    info = triforce_kernels.build_info() if hasattr(triforce_kernels, "build_info") else {}
    built_cc = info.get("compute_capability")
    return {"importable": True, "build_info": info,
            "matches_gpu": None if capability is None or built_cc is None else built_cc == capability}


def measure_ceilings(runs: int = 20) -> dict:
    """Device-to-device copy bandwidth (bytes read + written; median of `runs` timed copies) and dense GEMM
    throughput, bf16 and fp8: the 8192^3 GEMM's sustained rate (timing.time_sustained: calls back to back, the median
    of those starting 1-2 s into the run, once the power limiter has settled)."""
    import torch

    from ..timing import copy_gbs, time_sustained

    out = {"copy_gbs": copy_gbs(runs), "gemm_timing": "8192^3, calls back to back, median of those 1-2 s in"}
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    mm = time_sustained(lambda: torch.mm(a, b, out=c))
    out["tflops"] = {"bf16": 2 * n**3 / (mm["median_ms"] * 1e-3) / 1e12}
    if torch.cuda.get_device_capability() >= (8, 9):
        a8, b8 = a.to(torch.float8_e4m3fn), b.t().contiguous().to(torch.float8_e4m3fn).t()
        one = torch.ones((), device="cuda")
        f8 = time_sustained(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
        out["tflops"]["fp8"] = 2 * n**3 / (f8["median_ms"] * 1e-3) / 1e12
    return out


def gpu_precisions(capability: str) -> list[str]:
    major = int(capability.split(".")[0])
    precisions = ["bf16", "w4a16"]
    if capability >= "8.9" or major >= 9:
        precisions.insert(1, "fp8")
    if major in (10, 11):
        precisions.append("nvfp4")
    return precisions


def run(config: str = "pi05_libero") -> tuple[dict, int]:
    cfg = load_config(config)
    thor = hardware_table()["thor"]
    thor_estimate = {"label": "ESTIMATE from Thor's published figures (not measured)", **analyse(cfg, thor["tflops"], thor["bandwidth_gbs"], thor["precisions"])}
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        return {"status": "no_gpu", "message": "no CUDA GPU visible (or torch missing): nothing to measure here",
                "kernel_wheel": kernel_wheel_status(None), "thor_estimate": thor_estimate}, rep.EXIT_NO_GPU
    props = torch.cuda.get_device_properties(0)
    capability = f"{props.major}.{props.minor}"
    ceilings = measure_ceilings()
    roof = analyse(cfg, ceilings["tflops"], ceilings["copy_gbs"], gpu_precisions(capability))
    return {"status": "ok", "gpu": props.name, "compute_capability": capability, "config": config,
            "kernel_wheel": kernel_wheel_status(capability), "measured": ceilings, "roofline": roof,
            "thor_estimate": thor_estimate}, rep.EXIT_PASS


def print_summary(report: dict) -> None:
    m = report["measured"]
    rep.print_table(f"Phase 0 — {report['gpu']} (cc {report['compute_capability']})", ["ceiling", "measured"],
                    [["copy GB/s", m["copy_gbs"]]] + [[f"{p} TFLOP/s", v] for p, v in m["tflops"].items()])
    roof = report["roofline"]
    precs = list(roof["total_floor_ms"])
    rows = [[g["stage"], g["gemm"], "x".join(map(str, g["mnk"])), g["repeat"], g["bound_bf16"]] +
            [g["floor_ms"][p] * 1e3 for p in precs] for g in roof["gemms"]]
    rep.print_table("Pi0.5 GEMMs (standard workload): floor per call in us", ["stage", "gemm", "MxNxK", "x", "bf16 bound"] + precs, rows)
    rows = [[s, roof["recommendation"][s]] + [t[p] for p in precs] for s, t in roof["stage_floor_ms"].items()]
    rows.append(["thor estimate", str(report["thor_estimate"]["recommendation"])] + [""] * len(precs))
    rep.print_table("per-stage GEMM floor (ms per inference) and recommended precision", ["stage", "recommend"] + precs, rows)

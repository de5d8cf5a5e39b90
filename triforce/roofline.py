"""Roofline of every Pi0.5 GEMM of the standard workload, per precision: memory- or compute-bound, the floor time,
and the precision each stage should use on a given GPU (measured ceilings, or published ones for an estimate)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources

from .runtime.config import ModelConfig

# Within this fraction of the fastest, the more precise choice wins (precision is not free).
PREFER_PRECISE_WITHIN = 0.10
PRECISION_ORDER = ["bf16", "fp8", "w4a16", "nvfp4"]   # most to least precise


@dataclass(frozen=True)
class Gemm:
    stage: str      # vision | prefix | expert
    name: str
    m: int
    n: int
    k: int
    repeat: int     # layers × steps it runs per inference


def hardware_table() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("hardware.toml").read_text())


def workload_gemms(cfg: ModelConfig, views: int = 2, prompt_bucket: int = 16) -> list[Gemm]:
    v, p, e = cfg.vision, cfg.prefix, cfg.expert
    mv, mp, me = views * cfg.tokens_per_image, views * cfg.tokens_per_image + prompt_bucket, cfg.action_horizon
    qkv = lambda t: (t.num_heads + 2 * t.kv_heads) * t.dim_head  # noqa: E731
    return [
        Gemm("vision", "qkv", mv, 3 * v.width, v.width, v.depth), Gemm("vision", "o", mv, v.width, v.width, v.depth),
        Gemm("vision", "fc1", mv, v.mlp_dim, v.width, v.depth), Gemm("vision", "fc2", mv, v.width, v.mlp_dim, v.depth),
        Gemm("vision", "projector", mv, p.width, v.width, 1),
        Gemm("prefix", "qkv", mp, qkv(p), p.width, p.depth), Gemm("prefix", "o", mp, p.width, p.num_heads * p.dim_head, p.depth - 1),
        Gemm("prefix", "gate_up", mp, 2 * p.mlp_dim, p.width, p.depth - 1), Gemm("prefix", "down", mp, p.width, p.mlp_dim, p.depth - 1),
        Gemm("expert", "qkv", me, qkv(e), e.width, e.depth * cfg.num_steps),
        Gemm("expert", "o", me, e.width, e.num_heads * e.dim_head, e.depth * cfg.num_steps),
        Gemm("expert", "gate_up", me, 2 * e.mlp_dim, e.width, e.depth * cfg.num_steps),
        Gemm("expert", "down", me, e.width, e.mlp_dim, e.depth * cfg.num_steps),
    ]


def gemm_floor_ms(g: Gemm, precision: str, tflops: dict, bandwidth_gbs: float) -> tuple[float, str]:
    """(floor time of one call in ms, 'memory' or 'compute'): max of bytes / bandwidth and flops / throughput."""
    spec = hardware_table()["precision"][precision]
    flops = 2.0 * g.m * g.n * g.k
    nbytes = g.n * g.k * spec["weight_bits"] / 8 + g.m * g.k * spec["act_bytes"] + g.m * g.n * 2
    t_mem = nbytes / (bandwidth_gbs * 1e9)
    t_math = flops / (tflops[spec["math"]] * 1e12)
    return max(t_mem, t_math) * 1e3, "memory" if t_mem >= t_math else "compute"


def analyse(cfg: ModelConfig, tflops: dict, bandwidth_gbs: float, precisions: list[str]) -> dict:
    """Per GEMM and per stage: bound and floor per precision; the recommended precision per stage."""
    usable = [p for p in PRECISION_ORDER if p in precisions and hardware_table()["precision"][p]["math"] in tflops]
    gemms, stages = [], {}
    for g in workload_gemms(cfg):
        floors = {p: gemm_floor_ms(g, p, tflops, bandwidth_gbs) for p in usable}
        gemms.append({"stage": g.stage, "gemm": g.name, "mnk": [g.m, g.n, g.k], "repeat": g.repeat,
                      "bound_bf16": floors["bf16"][1], "floor_ms": {p: f[0] for p, f in floors.items()}})
        st = stages.setdefault(g.stage, {p: 0.0 for p in usable})
        for p in usable:
            st[p] += floors[p][0] * g.repeat
    recommend = {stage: _recommend(times) for stage, times in stages.items()}
    return {"gemms": gemms, "stage_floor_ms": stages, "recommendation": recommend,
            "total_floor_ms": {p: sum(st[p] for st in stages.values()) for p in usable}}


def _recommend(times: dict) -> str:
    best = min(times.values())
    for p in PRECISION_ORDER:
        if p in times and times[p] <= best * (1 + PREFER_PRECISE_WITHIN):
            return p
    return "bf16"

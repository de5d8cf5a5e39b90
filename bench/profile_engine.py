#!/usr/bin/env python3
"""Where the Plan A engine's time goes: kernel time per name for one eager forward (torch.profiler), and the
candidate attention backends / GEMM shapes of the denoise step timed alone. Run on a GPU; prints tables."""

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from triforce.report import print_table  # noqa: E402
from triforce.runtime.observation import check_observation  # noqa: E402
from triforce.runtime.policy import Policy  # noqa: E402
from triforce.timing import time_cuda  # noqa: E402
from triforce.workload import random_noise, random_observation  # noqa: E402


def kernel_table(engine, cfg, top):
    obs = check_observation(random_observation(cfg, np.random.default_rng(0)), cfg)
    bufs = engine._new_buffers(engine._key(obs))
    bufs[0].copy_(torch.from_numpy(obs.images[:2]))
    bufs[2][:16] = True
    bufs[3].copy_(torch.from_numpy(random_noise(cfg, np.random.default_rng(1))))
    with torch.no_grad():
        for _ in range(2):
            engine._forward(bufs)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            engine._forward(bufs)
            torch.cuda.synchronize()
    agg = defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            agg[ev.name[:90]][0] += 1
            agg[ev.name[:90]][1] += ev.device_time_total / 1e3
    total = sum(v[1] for v in agg.values())
    rows = sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]
    print_table(f"kernels of one eager forward: {sum(v[0] for v in agg.values())} launches, {total:.2f} ms of kernel time",
                ["kernel", "count", "total ms", "avg us"], [[k, c, t, t / c * 1e3] for k, (c, t) in rows])


def attention_table(cfg, seq):
    e = cfg.expert
    rows = []
    for label, q_rows, keys in (("expert", cfg.action_horizon * e.num_heads, seq + cfg.action_horizon),
                                ("prefix", seq * e.num_heads, seq)):
        q = torch.randn(1, 1, q_rows, e.dim_head, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 1, keys, e.dim_head, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        mask = torch.zeros(1, 1, 1, keys, device="cuda", dtype=torch.bfloat16)
        for name, backend in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("flash(no mask)", SDPBackend.FLASH_ATTENTION)):
            m = None if "flash" in name else mask
            try:
                with sdpa_kernel([backend]):
                    t = time_cuda(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m), runs=50, warmup_s=0.2)
                rows.append([label, name, q_rows, keys, t["median_ms"] * 1e3])
            except RuntimeError as err:
                rows.append([label, name, q_rows, keys, f"unsupported: {str(err)[:60]}"])
    print_table("attention backends (us)", ["site", "backend", "query rows", "keys", "median us"], rows)


def gemm_table(engine, cfg):
    rows = []
    layer = engine.expert_layers[0]
    for name in ("qkv", "o", "gate_up", "down"):
        w = layer[name].weight
        x = torch.randn(cfg.action_horizon, w.shape[1], device="cuda", dtype=torch.bfloat16)
        t = time_cuda(lambda: x @ w.t(), runs=100, warmup_s=0.2)
        gbs = w.numel() * 2 / (t["median_ms"] * 1e-3) / 1e9
        rows.append([f"expert {name}", f"{cfg.action_horizon}x{w.shape[1]}x{w.shape[0]}", t["median_ms"] * 1e3, gbs])
    print_table("denoise GEMMs alone (weights cached in L2 when small: an upper bound)", ["gemm", "MxKxN", "median us", "weight GB/s"], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="pi05_libero", help="model config")
    ap.add_argument("--top", type=int, default=30, help="rows of the kernel table")
    ap.add_argument("--plan", default="a", help="a or b")
    ap.add_argument("--recipe", default="h100", help="plan b recipe")
    args = ap.parse_args()
    policy = Policy.load(f"synthetic:{args.config}", args.config, plan=args.plan,
                         recipe=args.recipe if args.plan == "b" else None)
    cfg = policy.config
    kernel_table(policy.backend, cfg, args.top)
    if args.plan == "a":
        attention_table(cfg, 2 * cfg.tokens_per_image + cfg.token_bucket(16))
        gemm_table(policy.backend, cfg)


if __name__ == "__main__":
    main()

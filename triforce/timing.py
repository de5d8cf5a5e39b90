"""Timing with device events after warm-up; the median is the figure, the spread goes along."""

from __future__ import annotations

import time

import numpy as np


def time_cuda(fn, runs: int = 50, warmup_s: float = 1.0, min_warmup: int = 5) -> dict:
    """Median/p10/p90 in ms of `fn` (enqueues device work) timed with CUDA events, after >= warmup_s of warm-up
    (FP8 and clocks settle; on Thor the FP8 power limiter engages after ~0.5 s)."""
    import torch

    start = time.perf_counter()
    done = 0
    while done < min_warmup or time.perf_counter() - start < warmup_s:
        fn()
        torch.cuda.synchronize()
        done += 1
    samples = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b))
    return summarize(samples)


def time_wall(fn, runs: int = 50, warmup: int = 3) -> dict:
    """Median wall time in ms of a call that synchronizes itself (e.g. a predict call returning host arrays)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return summarize(samples)


def summarize(samples) -> dict:
    arr = np.asarray(samples, dtype=np.float64)
    return {"median_ms": float(np.median(arr)), "p10_ms": float(np.percentile(arr, 10)),
            "p90_ms": float(np.percentile(arr, 90)), "runs": int(arr.size)}

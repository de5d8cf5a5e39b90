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


def time_sustained(fn, warmup_s: float = 1.0, window_s: float = 1.0) -> dict:
    """Median/p10/p90 in ms of `fn` (enqueues device work) called back to back with no host sync between calls, each
    call between CUDA events, over the calls that start in [warmup_s, warmup_s + window_s) of the run: its sustained
    rate once clocks and the power limiter have settled. On the lent H100 the 8192^3 bf16 GEMM runs ~790 TFLOP/s for
    its first 50 ms and 680-700 from 1 s on, while time_cuda (a sync after every call) read it at 553-656 across runs
    and 582 / 652 on one machine minutes apart (bench/results/bf16_peak_profile-*-s24.json)."""
    import torch

    fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(3):      # the fastest of three (idle clocks still ramping) sizes the run: enough calls to cover it
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        per_call.append(time.perf_counter() - t)
    calls = int((warmup_s + window_s) / max(min(per_call), 1e-5) * 1.25) + 8
    return summarize(window(back_to_back(fn, calls), warmup_s * 1e3, (warmup_s + window_s) * 1e3))


def back_to_back(fn, calls: int) -> list:
    """(ms since the first call's start, ms) of each of `calls` calls of fn enqueued back to back, no host sync
    between them, each between CUDA events."""
    import torch

    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    first = events[0][0]
    return [(first.elapsed_time(a), a.elapsed_time(b)) for a, b in events]


def window(samples, start_ms: float, end_ms: float) -> list:
    """The durations of the (start ms, duration ms) samples that start in [start_ms, end_ms); an error if none do
    (the run was shorter than the window: nothing measured there)."""
    inside = [d for s, d in samples if start_ms <= s < end_ms]
    if not inside:
        last = samples[-1][0] if samples else 0.0
        raise RuntimeError(f"no call started in the timing window {start_ms:.0f}-{end_ms:.0f} ms (the run's last "
                           f"call started at {last:.0f} ms)")
    return inside


def time_graph_us(calls, runs: int = 50, warmup_s: float = 0.3) -> float:
    """Median us per call of `calls` (a list of no-argument callables that enqueue device work), captured in order
    into one CUDA graph (so launch overhead is out, as in the engine) after one warm-up pass on a side stream."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return time_cuda(graph.replay, runs=runs, warmup_s=warmup_s)["median_ms"] * 1e3 / len(calls)


def copy_gbs(runs: int = 20) -> float:
    """Device-to-device copy of 1 GiB, bytes read + written per second in GB/s: the bandwidth ceiling that Phase 0
    and the weight-streaming benchmarks compare against."""
    import torch

    src = torch.empty(2**30 // 2, dtype=torch.bfloat16, device="cuda").uniform_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 2 / (time_cuda(lambda: dst.copy_(src), runs=runs, warmup_s=0.5)["median_ms"] * 1e-3) / 1e9


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

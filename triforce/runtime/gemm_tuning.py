"""Which cuBLASLt algorithm runs each of the engine's large GEMMs (SigLIP at 512 image rows, the prefix at 528 tokens).

torch's GEMM ops run the first answer of cuBLASLt's heuristic. Where the row count is not a multiple of the tile
(528 = 4 x 128 + 16) that answer need not be the fastest. Before a shape's first capture, the tuner times cuBLASLt's
candidates for each GEMM (the kernel wheel's lt_matmul) against torch's own op, each in a CUDA graph, with the weights
rotated through copies larger than L2 (in an inference each layer's weights come from DRAM). A candidate whose output
differs from torch's is rejected; torch's op stays where no candidate is faster. Every choice is logged.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch

from ..errors import TriforceError
from . import jit_warmup

MAX_CANDIDATES = 24          # cuBLASLt heuristic answers timed per GEMM (it offered 8 on the H100)
MAX_WORKSPACE = 32 << 20     # bytes a candidate may ask for (split-K partials)
ROTATION_BYTES = 160 << 20   # weight copies cycled in the timed graph: > 3x the H100's 50 MB L2
CALLS = (8, 64)              # GEMMs per timed graph (min, max)
REPLAYS = 5                  # timed replays; the median is kept
MIN_COSINE = {torch.bfloat16: 0.9999, torch.float8_e4m3fn: 0.999}   # agreement with torch's op, by output type


@dataclass(frozen=True)
class GemmKey:
    m: int
    n: int
    k: int
    dtype_in: str
    dtype_out: str
    bias: bool
    gelu: bool
    fast_accum: bool

    def label(self) -> str:
        flags = "".join(f" {f}" for f, on in (("+bias", self.bias), ("gelu", self.gelu), ("fast-accum", self.fast_accum)) if on)
        return f"{self.m}x{self.n}x{self.k} {self.dtype_in}->{self.dtype_out}{flags}"


@dataclass
class Choice:
    key: GemmKey
    algo: torch.Tensor | None    # None: torch's op runs (it was fastest, or no candidate could run)
    info: dict | None            # the chosen candidate's fields (triforce_kernels.LT_ALGO_FIELDS)
    us: float | None             # per call of what runs, in the timed graph
    torch_us: float | None
    best_candidate_us: float | None
    candidates: int
    rejected: int
    note: str = ""
    workspace: torch.Tensor | None = None   # the chosen candidate's, allocated once at tuning (never in a capture)

    def record(self) -> dict:
        """The choice as a report row (the workspace tensor left out)."""
        return {**asdict(self.key), "label": self.key.label(), "runs": "torch" if self.algo is None else "cuBLASLt",
                "us": self.us, "torch_us": self.torch_us, "best_candidate_us": self.best_candidate_us,
                "speedup_vs_torch": round(self.torch_us / self.us, 4) if self.us and self.torch_us else None,
                "candidates": self.candidates, "rejected": self.rejected, "algo": self.info, "note": self.note}


def run(tuner, x, w, out_dtype, torch_op, **epilogue) -> torch.Tensor:
    """A layer's GEMM: torch_op(w), or where the layer has a tuner (the engine's tuned stages), the tuner's choice."""
    return torch_op(w) if tuner is None else tuner.matmul(x, w, out_dtype, torch_op, **epilogue)


def _name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float8_e4m3fn: "e4m3"}[dtype]


def _median_us(fn, weights: list, calls: int) -> float:
    """Per-call device time of fn(weights[i % len]) for `calls` calls captured in one graph (median of REPLAYS)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in range(calls):
            fn(weights[c % len(weights)])
    graph.replay()                                        # warm-up
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / calls)
    del graph
    return statistics.median(times)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().flatten(), b.float().flatten()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=1e-30))


class GemmTuner:
    """Chooses, per GEMM shape and form, between torch's op and cuBLASLt's candidates (run by the kernel wheel), once,
    in eager mode (the engine's warm-up forward runs every GEMM before the capture). The GEMMs of one shape share their
    choice's workspace: they must run in stream order (the engine runs vision, then the prefix, on one stream each)."""

    def __init__(self, kernels, log=print):
        self.kernels = kernels
        self.log = log
        self.choices: dict[GemmKey, Choice] = {}

    def matmul(self, x, w, out_dtype, torch_op, scale_x=None, scale_w=None, bias=None, gelu=False,
               fast_accum=False) -> torch.Tensor:
        """epilogue(scale_x * scale_w * x @ w^T + bias) in out_dtype by this shape's choice. torch_op(w) is torch's own
        form of the same GEMM (the baseline, and what runs where it wins)."""
        key = GemmKey(x.shape[0], w.shape[0], x.shape[1], _name(x.dtype), _name(out_dtype), bias is not None, gelu,
                      fast_accum)
        choice = self.choices.get(key)
        if choice is None:
            if jit_warmup.in_dry_forward():
                return torch_op(w)
            if torch.cuda.is_current_stream_capturing():
                raise TriforceError(f"GEMM {key.label()} was not tuned before the graph capture (the warm-up forward "
                                    f"runs every GEMM first)")
            choice = self.choices[key] = self._tune(key, x, w, out_dtype, torch_op, scale_x, scale_w, bias, gelu,
                                                    fast_accum)
        if choice.algo is None:
            return torch_op(w)
        out = torch.empty(x.shape[0], w.shape[0], dtype=out_dtype, device=x.device)
        self.kernels.lt_matmul(x, w, out, choice.algo, choice.workspace, scale_x, scale_w, bias, gelu, fast_accum)
        return out

    def _rotation(self, w: torch.Tensor) -> list:
        """Copies of w (its bytes, so the GEMM draws the same power) cycled so the timed calls read DRAM, not L2."""
        copies = max(1, min(CALLS[1], ROTATION_BYTES // (w.numel() * w.element_size())))
        return [w] + [w.clone() for _ in range(copies - 1)]

    def _tune(self, key, x, w, out_dtype, torch_op, scale_x, scale_w, bias, gelu, fast_accum) -> Choice:
        if not self.kernels.lt_rows_fit(key.k, key.n, x.element_size(), out_dtype.itemsize):
            choice = Choice(key, None, None, None, None, None, 0, 0, "rows not 16-byte multiples: cuBLASLt's "
                                                                      "candidates need them; torch's op runs")
            self.log(f"[gemm] {key.label()}: torch ({choice.note})")
            return choice
        out = torch.empty(key.m, key.n, dtype=out_dtype, device=x.device)
        algos, info = self.kernels.lt_matmul_algos(x, w, out, scale_x, scale_w, bias, gelu, fast_accum,
                                                   MAX_CANDIDATES, MAX_WORKSPACE)
        reference = torch_op(w)
        weights = self._rotation(w)
        calls = max(CALLS[0], min(CALLS[1], len(weights)))
        torch_us = _median_us(torch_op, weights, calls)
        workspace = torch.empty(max(1, int(info[:, 0].max()) if len(info) else 1), dtype=torch.uint8, device=x.device)
        best, rejected = None, 0
        fields = self.kernels.LT_ALGO_FIELDS
        for i in range(algos.shape[0]):
            run = lambda wi, a=algos[i]: self.kernels.lt_matmul(x, wi, out, a, workspace, scale_x, scale_w, bias,  # noqa: E731
                                                                  gelu, fast_accum)
            try:
                run(w)
                torch.cuda.synchronize()
            except RuntimeError:             # a candidate cuBLASLt offers but refuses at run time
                rejected += 1
                continue
            if not _cosine(out, reference) >= MIN_COSINE[out_dtype]:
                rejected += 1
                continue
            us = _median_us(run, weights, calls)
            if best is None or us < best[0]:
                best = (us, i)
        del weights
        best_us = best[0] if best else None
        if best is None or best_us >= torch_us:
            choice = Choice(key, None, None, torch_us, torch_us, best_us, algos.shape[0], rejected,
                            "torch's op was fastest" if best else "no candidate ran and agreed with torch's op")
        else:
            chosen = dict(zip(fields, (int(v) for v in info[best[1]])))
            choice = Choice(key, algos[best[1]].clone(), chosen, best_us, torch_us, best_us, algos.shape[0], rejected,
                            workspace=torch.empty(max(1, chosen["workspace"]), dtype=torch.uint8, device=x.device))
        runs = f"cuBLASLt {choice.info}" if choice.algo is not None else "torch"
        self.log(f"[gemm] {key.label()}: {runs}, {choice.us:.2f} us vs torch {torch_us:.2f} us (best of "
                 f"{choice.candidates} candidates {best_us or float('nan'):.2f} us, {rejected} rejected)")
        return choice

    def table(self) -> list:
        """Every choice made, as rows for the reports."""
        return [c.record() for c in self.choices.values()]

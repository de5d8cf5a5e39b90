"""Cold start: compile every Triton kernel an inference launches in parallel, before the first (warm-up) run.

On a machine that never ran the engine, Triton compiles ~20 kernel specializations one after another during the
first forward (most of a fresh cold start). Its compiler releases the GIL (MLIR passes, ptxas), so threads overlap
them. A dry forward inside `submitting(Compiles(workers))` has each Triton launch only submit a compile
(`warmup=True`) of its specialization to a thread pool; the forward's torch work runs on whatever the skipped kernels
left in their buffers, which nothing keeps. `Compiles.wait()` collects them; the real warm-up then finds every kernel
compiled (Pi05Engine.start_compiles, used by capture and by Policy.load before the checkpoint read).
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from triton.runtime.jit import JITFunction


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _arg_key(v):
    """What Triton specializes a launch on, over-approximated (a finer key only costs a duplicate compile)."""
    if isinstance(v, torch.Tensor):
        return ("tensor", v.dtype, v.data_ptr() % 16 == 0)
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return ("int", v == 1, v % 16 == 0)
    if isinstance(v, float):
        return "float"
    return repr(v)


def _constexpr_or_key(fn, i: int, v):
    params = getattr(fn, "params", None)
    if params is not None and i < len(params) and params[i].is_constexpr:
        return repr(v)
    return _arg_key(v)


def _stand_in(v):
    """What a queued compile keeps of a launch argument: for a tensor, a tiny one that Triton specializes alike
    (dtype, device, 16-byte alignment of its address), so no compile holds engine memory while it waits (Policy.load
    reads the checkpoint meanwhile: the placeholder weights must go)."""
    if not isinstance(v, torch.Tensor):
        return v
    base = torch.empty(32, dtype=v.dtype, device=v.device)
    return base[(v.data_ptr() % 16) // v.element_size():]


def _compile(run, fn, args, grid, kwargs) -> str | None:
    """One specialization compiled, then made ready to launch: Triton loads the module and builds its launcher (a C
    extension compiled per signature) only at a kernel's first launch, which from an empty cache cost the first
    forward ~4 s one by one (bench/results/capture_breakdown-*-s5*.json). Returns why that preparation failed, if it
    did (the first launch then does it, and raises what is really wrong); a compile error raises."""
    kernel = run(fn, *args, grid=grid, warmup=True, **kwargs)
    prepare = getattr(kernel, "_init_handles", None)
    try:
        if prepare is not None:
            prepare()
    except Exception as err:      # noqa: BLE001 (reported by Compiles.unprepared, never swallowed silently)
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


class Compiles:
    """Triton compiles submitted to a thread pool, one per specialization; wait() raises the first error, naming
    the kernel. unprepared (after wait): kernels compiled but not made ready to launch, with why."""

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="triton-compile")
        self.futures, self.seen = {}, set()
        self.unprepared: dict = {}

    def submit(self, run, fn, args, grid, kwargs) -> None:
        key = (id(fn), tuple(_constexpr_or_key(fn, i, a) for i, a in enumerate(args)),
               tuple(sorted((k, repr(v)) for k, v in kwargs.items())))    # keywords: constexprs and launch options
        if key not in self.seen:
            self.seen.add(key)
            future = self.pool.submit(_compile, run, fn, tuple(_stand_in(a) for a in args), grid, kwargs)
            self.futures[future] = getattr(fn, "__name__", repr(fn))

    def cancel(self) -> None:
        """Drop the compiles not started and their errors (the caller is raising its own); returns at once."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        try:
            for future, name in self.futures.items():
                try:
                    why = future.result()
                except Exception as err:
                    raise RuntimeError(f"Triton kernel {name} failed to compile: {err}") from err
                if why:
                    self.unprepared[name] = why
        finally:
            self.pool.shutdown(wait=True)


_DRY = False       # inside submitting(): a dry forward


@contextlib.contextmanager
def submitting(compiles: Compiles):
    """Inside: Triton launches only submit their compile to `compiles` (nothing runs); the patch is gone on exit,
    while the compiles go on until compiles.wait()."""
    original = JITFunction.run

    def submit(self, *args, grid, warmup, **kwargs):
        if warmup:
            return original(self, *args, grid=grid, warmup=True, **kwargs)
        compiles.submit(original, self, args, grid, kwargs)
        return None

    global _DRY
    JITFunction.run = submit
    _DRY = True
    try:
        yield
    finally:
        JITFunction.run = original
        _DRY = False


def in_dry_forward() -> bool:
    """Whether a dry forward is running (its outputs are garbage: no timing or tuning may be based on it)."""
    return _DRY

"""runtime/jit_warmup.py on CPU: a dry forward's Triton launches become one compile per specialization, run on
threads; a compile error surfaces naming the kernel; the patch is gone afterwards. (Triton's real compile needs a
GPU driver, so the compile itself is a stand-in here; tests/test_engine_gpu.py runs the real one on the H100.)"""

import threading

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from triforce.runtime import jit_warmup


@triton.jit
def _scale_kernel(X, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < n) * 2, mask=offs < n)


@pytest.fixture
def fake_compile(monkeypatch):
    """JITFunction.run as it is before `submitting` patches it: records each warm-up compile and its thread."""
    calls = []

    def run(self, *args, grid, warmup, **kwargs):
        assert warmup, "a launch escaped the dry run"
        if kwargs.get("BLOCK") == 7:
            raise ValueError("arange's range must be a power of 2")
        calls.append((self.__name__, args[1], kwargs["BLOCK"], threading.current_thread().name))

    monkeypatch.setattr(JITFunction, "run", run)
    return calls


def test_each_specialization_compiles_once_on_a_worker_thread(fake_compile):
    x = torch.ones(64)
    unpatched = JITFunction.run
    compiles = jit_warmup.Compiles(4)
    with jit_warmup.submitting(compiles):
        for _ in range(5):                                   # the same launch every layer: one compile
            _scale_kernel[(1,)](x, 64, BLOCK=64)
        _scale_kernel[(1,)](x, 1, BLOCK=64)                  # n == 1 is its own specialization
        _scale_kernel[(1,)](x, 64, BLOCK=128)                # so is another constexpr
        assert JITFunction.run is not unpatched              # patched inside
    compiles.wait()
    assert sorted((c[1], c[2]) for c in fake_compile) == [(1, 64), (64, 64), (64, 128)]
    assert all(c[0] == "_scale_kernel" and c[3].startswith("triton-compile") for c in fake_compile)


def test_a_compile_error_names_the_kernel_and_the_patch_is_removed(fake_compile):
    patched = JITFunction.run
    compiles = jit_warmup.Compiles(2)
    with jit_warmup.submitting(compiles):
        _scale_kernel[(1,)](torch.ones(8), 8, BLOCK=7)
    with pytest.raises(RuntimeError, match="Triton kernel _scale_kernel failed to compile: arange's range"):
        compiles.wait()
    assert JITFunction.run is patched


def test_compiles_go_on_after_the_submitting_block(fake_compile):
    """Policy.load's way: the dry forward submits inside `submitting`, the patch is gone after it, and wait()
    later collects the compiles (and their errors)."""
    patched = JITFunction.run
    compiles = jit_warmup.Compiles(2)
    with jit_warmup.submitting(compiles):
        _scale_kernel[(1,)](torch.ones(8), 8, BLOCK=8)
        _scale_kernel[(1,)](torch.ones(8), 8, BLOCK=7)
    assert JITFunction.run is patched
    with pytest.raises(RuntimeError, match="_scale_kernel failed to compile"):
        compiles.wait()
    assert [c[2] for c in fake_compile] == [8]


def test_queued_compiles_hold_no_launch_tensors(fake_compile, monkeypatch):
    """A queued compile gets a tiny stand-in for each tensor, specialized alike (dtype, 16-byte alignment), so the
    weights of the dry forward can be freed before it runs."""
    seen = []
    monkeypatch.setattr(JITFunction, "run", lambda self, *args, grid, warmup, **kw: seen.append(args))
    big = torch.ones(4096)
    compiles = jit_warmup.Compiles(1)
    with jit_warmup.submitting(compiles):
        _scale_kernel[(1,)](big, 64, BLOCK=64)
        _scale_kernel[(1,)](big[1:], 64, BLOCK=128)             # 4 bytes past a 16-byte boundary
    compiles.wait()
    (aligned, _), (shifted, _) = sorted(seen, key=lambda a: a[0].data_ptr() % 16)
    assert aligned.numel() <= 32 and aligned.dtype == big.dtype and aligned.data_ptr() % 16 == 0
    assert shifted.data_ptr() % 16 == 4 and shifted.untyped_storage().data_ptr() != big.untyped_storage().data_ptr()


def test_cancelled_compiles_raise_nothing(fake_compile):
    """A failed checkpoint read cancels the queued compiles: its error is reported, not a compile's."""
    compiles = jit_warmup.Compiles(1)
    with jit_warmup.submitting(compiles):
        _scale_kernel[(1,)](torch.ones(8), 8, BLOCK=7)      # would fail to compile
    compiles.cancel()
    assert compiles.pool._shutdown


def test_compiled_kernels_are_made_ready_on_the_workers(monkeypatch):
    """After its compile a worker loads the kernel and builds its launcher (Triton's _init_handles), so the first
    forward does not; a preparation that fails is reported by name, and the first launch is left to do it."""
    prepared = []

    class Kernel:
        def __init__(self, block):
            self.block = block

        def _init_handles(self):
            if self.block == 128:
                raise OSError("no C compiler")
            prepared.append((self.block, threading.current_thread().name))

    monkeypatch.setattr(JITFunction, "run", lambda self, *args, grid, warmup, **kw: Kernel(kw["BLOCK"]))
    compiles = jit_warmup.Compiles(2)
    with jit_warmup.submitting(compiles):
        _scale_kernel[(1,)](torch.ones(8), 8, BLOCK=64)
        _scale_kernel[(1,)](torch.ones(8), 8, BLOCK=128)
    compiles.wait()
    assert [p[0] for p in prepared] == [64] and prepared[0][1].startswith("triton-compile")
    assert compiles.unprepared == {"_scale_kernel": "no C compiler"}


def test_default_workers_leaves_a_core():
    assert 1 <= jit_warmup.default_workers() <= 8

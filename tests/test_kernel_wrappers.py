"""The triforce_kernels wrappers on a machine without the extension or a GPU: the refusals that happen before any
CUDA work, and the scale-factor size against the CPU reference of the format (triforce.quant.formats)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from triforce.quant import formats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cutlass_sm110"))
tk = importlib.import_module("triforce_kernels")


def _extension_loads() -> bool:
    try:
        tk._ext()
        return True
    except tk.UnsupportedError:
        return False


def test_a_missing_extension_is_refused_in_one_line():
    if _extension_loads():
        pytest.skip("the extension is installed here")
    with pytest.raises(tk.UnsupportedError, match=r"compiled extension _C does not load.*install the wheel") as err:
        tk.w4a16_workspace_size(10, 256, 512)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("m,n,k,match", [
    (10, 250, 512, "N=250 must be a multiple of 16"),
    (10, 256, 500, "K=500 must be a multiple of 128"),
    (0, 256, 512, "must be positive"),
])
def test_w4a16_bad_dims_are_refused_before_cuda(m, n, k, match):
    with pytest.raises(tk.KernelError, match=match):
        tk.w4a16_workspace_size(m, n, k)


@pytest.mark.parametrize("schedule", ["split_k", "split_k:x", "stream_k:2", "fastest"])
def test_w4a16_unknown_schedule_is_refused(schedule):
    with pytest.raises(tk.KernelError, match="unknown schedule"):
        tk.w4a16_workspace_size(10, 256, 512, schedule)


@pytest.mark.parametrize("rows,k", [(1, 16), (10, 2048), (128, 64), (129, 1152), (712, 16384), (16384, 2048)])
def test_nvfp4_sf_bytes_matches_the_format_reference(rows, k):
    assert tk.nvfp4_sf_bytes(rows, k) == formats.nvfp4_sf_bytes(rows, k)


def test_nvfp4_sf_bytes_refuses_k_off_the_block():
    with pytest.raises(tk.KernelError, match="multiple of 16"):
        tk.nvfp4_sf_bytes(10, 40)

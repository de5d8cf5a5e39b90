"""The Plan A engine's Triton kernels, checked against their reference formulas on CPU (Triton's interpreter)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fused_kernels_match_reference_formulas():
    r = subprocess.run([sys.executable, str(REPO / "tests/fused_interpret_check.py")], cwd=REPO, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all fused kernels match" in r.stdout


def test_w4a16_few_row_kernel_refuses_more_than_64_rows():
    import pytest
    import torch

    from triforce.runtime import fused

    x, w, sc = torch.zeros(65, 256, dtype=torch.bfloat16), torch.zeros(32, 128, dtype=torch.uint8), torch.zeros(32, 2)
    with pytest.raises(ValueError, match="<= 64 rows"):
        fused.skinny_w4a16(x, w, sc)


def test_chain_carveout_refuses_a_bad_percent():
    import pytest

    from triforce.runtime import fused

    for percent in (101, -2):
        with pytest.raises(ValueError, match="carveout: a percent 0..100"):
            fused.set_chain_carveout(percent)

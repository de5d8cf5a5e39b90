"""The persistent expert layer (runtime/expert_layer.py) on CPU: its six phases in Triton's interpreter against the
layer's fp32 formula, and what it refuses."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_expert_layer_phases_match_the_fp32_layer():
    r = subprocess.run([sys.executable, str(REPO / "tests/expert_layer_interpret_check.py")], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the persistent expert layer matches" in r.stdout

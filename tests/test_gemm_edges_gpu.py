"""GPU tests of programmatic edges into library GEMMs (triforce.runtime.gemm_edges): the probe tells a kernel that
waits for the kernel before it from one that does not, and the engine's edges change no result."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from triforce.errors import TriforceError
from triforce.runtime import gemm_edges
from triforce.runtime.config import load_config
from triforce.runtime.policy import Policy
from triforce.workload import cosine, random_noise, random_observation

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cutlass_sm110"))
TINY = load_config("pi05_tiny")


@pytest.fixture(scope="module")
def tk():
    import devbuild

    return devbuild.load()


def test_probe_refuses_a_kernel_that_does_not_wait():
    """torch's elementwise kernels have no griddepcontrol.wait: on a programmatic edge they read the input early."""
    x = torch.randn(512, 1152, device="cuda").bfloat16()
    out = torch.empty_like(x)
    waits, note = gemm_edges.probe_waits(lambda xi: torch.mul(xi, 2, out=out), x, out)
    assert not waits and "read its input before" in note


def test_probe_of_cublaslt_candidates(tk):
    """Every cuBLASLt candidate at SigLIP's QKV shape either waits (its output then exact) or is refused by name;
    the tuner's chosen kernel is among those that wait on this GPU."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(512, 1152, device="cuda", generator=g).bfloat16()
    w = (torch.randn(3456, 1152, device="cuda", generator=g) * 1152 ** -0.5).bfloat16()
    out = torch.empty(512, 3456, dtype=torch.bfloat16, device="cuda")
    algos, info = tk.lt_matmul_algos(x, w, out, None, None, None, False, False, 8, 32 << 20)
    seen = []
    for i in range(algos.shape[0]):
        ws = torch.empty(max(1, int(info[i, 0])), dtype=torch.uint8, device="cuda")
        run = lambda xi, a=algos[i]: tk.lt_matmul(xi, w, out, a, ws, None, None, None, False, False)  # noqa: E731
        seen.append(gemm_edges.probe_waits(run, x.clone(), out))
    assert seen and any(waits for waits, _ in seen), seen
    assert all(waits or note.startswith(("refused", "no programmatic edge")) for waits, note in seen), seen


def test_engine_gemm_edges_keep_the_actions(tk, capsys):
    rng = np.random.default_rng(31)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    policy = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="a")
    eng = policy.backend
    want = policy.infer(obs, noise)
    for stages in (("vision",), ("prefix",), ("vision", "prefix")):
        for trigger in (False, True):
            eng.set_gemm_edges(stages, trigger)
            for _ in range(3):
                assert cosine(policy.infer(obs, noise), want) >= 0.99999, (stages, trigger)
    out = capsys.readouterr().out
    made = [int(line.split(": ")[1].split()[0]) for line in out.splitlines() if "GEMM launches on programmatic" in line]
    assert made and max(made) > 0, out[-2000:]
    assert eng.launch_settings()["gemm_edges"] == {"stages": ["vision", "prefix"], "early_trigger": True}
    with pytest.raises(TriforceError, match="programmatic GEMM edges in expert"):
        eng.set_gemm_edges(("expert",))
    eng.set_gemm_tuning(("vision",))
    with pytest.raises(TriforceError, match="programmatic GEMM edges in prefix: that stage's GEMMs are not tuned"):
        eng.set_gemm_edges(("prefix",))

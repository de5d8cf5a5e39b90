"""Phase 0 without a GPU (documented exit code 4, report still written) and the roofline it recommends from."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triforce.roofline import analyse, hardware_table, workload_gemms
from triforce.runtime.config import load_config

REPO = Path(__file__).resolve().parents[1]
LIBERO = load_config("pi05_libero")


def test_workload_gemm_shapes():
    g = {(x.stage, x.name): x for x in workload_gemms(LIBERO)}
    assert (g["prefix", "gate_up"].m, g["prefix", "gate_up"].n, g["prefix", "gate_up"].k) == (528, 32768, 2048)
    assert (g["expert", "down"].m, g["expert", "down"].repeat) == (10, 180)
    assert g["prefix", "down"].repeat == 17          # the last prefix layer stops after its K/V


def test_roofline_picks_precision_per_stage():
    thor = hardware_table()["thor"]
    rec = analyse(LIBERO, thor["tflops"], thor["bandwidth_gbs"], thor["precisions"])["recommendation"]
    assert rec["expert"] == "w4a16"                 # weight-read bound at M = 10
    h100 = analyse(LIBERO, {"bf16": 600, "fp8": 1200}, 3000, ["bf16", "fp8", "w4a16"])
    assert h100["recommendation"] == {"vision": "fp8", "prefix": "fp8", "expert": "w4a16"}
    bounds = {(g["stage"], g["gemm"]): g["bound_bf16"] for g in h100["gemms"]}
    assert bounds["prefix", "gate_up"] == "compute" and bounds["expert", "gate_up"] == "memory"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report")
def test_phase0_without_gpu_exits_4_with_a_report(tmp_path):
    r = subprocess.run([sys.executable, "scripts/phase0_environment_check.py", "--report-dir", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 4, r.stderr
    report = json.loads((tmp_path / "phase0.json").read_text())
    assert report["status"] == "no_gpu" and report["thor_estimate"]["label"].startswith("ESTIMATE")
    assert "commit" in report and report["device"]["gpu"] is None


def test_validation_scripts_reject_bad_arguments(tmp_path):
    for script, args in (("validate_plan_a.py", ["--runs", "0"]), ("validate_plan_b.py", ["--calibration", "0"]),
                         ("phase0_environment_check.py", ["--config", "nope"])):
        r = subprocess.run([sys.executable, f"scripts/{script}", "--report-dir", str(tmp_path), *args], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.startswith("error:"), (script, r.stderr)


def test_sustained_timing_keeps_the_calls_that_start_in_its_window():
    """Phase 0's GEMM rate is the median of the calls starting 1-2 s into a back-to-back run (timing.window): a
    fast first burst (the power limiter not yet engaged) and calls after the window stay out; a run too short for the
    window is an error, not a figure from the wrong calls."""
    from triforce.timing import summarize, window

    burst = [(t, 1.3) for t in range(0, 60)]                       # ~790 TFLOP/s before the limiter engages
    settled = [(t, 1.6) for t in range(60, 2400, 2)]
    samples = burst + settled
    inside = window(samples, 1000.0, 2000.0)
    assert len(inside) == 500 and set(inside) == {1.6}
    assert summarize(inside)["median_ms"] == 1.6
    with pytest.raises(RuntimeError, match="no call started in the timing window 1000-2000 ms"):
        window(burst, 1000.0, 2000.0)


def test_plan_a_report_reads_each_stage_against_its_bf16_floor():
    """#3's stage target computed by the validation itself: the stages' times over the bf16 floors that the run's own
    ceilings give (vision / prefix / denoise -> the roofline's vision / prefix / expert), met or missed."""
    from triforce.checks.plan_a import _floor_note, stages_vs_floors

    ceilings = {"copy_gbs": 2990.0, "tflops": {"bf16": 690.0}}
    floors = analyse(LIBERO, ceilings["tflops"], ceilings["copy_gbs"], ["bf16"])["stage_floor_ms"]
    stages = stages_vs_floors({"vision": 1.53, "prefix": 3.99, "denoise_total": 4.22}, floors)
    assert set(stages) == {"vision", "prefix", "expert"}
    for stage, ms in (("vision", 1.53), ("prefix", 3.99), ("expert", 4.22)):
        assert stages[stage]["x_floor"] == pytest.approx(ms / floors[stage]["bf16"])
        assert stages[stage]["within_target"] == (ms <= 2 * floors[stage]["bf16"])
    assert not stages["vision"]["within_target"] and stages["prefix"]["within_target"]   # 0.61 / 2.9 ms floors
    report = {"stage_roofline": {"ceilings": ceilings, "target_x_floor": 2.0, "stages": stages}}
    note = _floor_note(report, "vision")
    assert note.startswith(f"{stages['vision']['x_floor']:.2f}x its bf16 floor") and note.endswith("missed)")
    assert "bf16 690 TFLOP/s, copy 2990 GB/s" in note
    assert _floor_note({}, "vision") == ""


def test_back_to_back_pairs_each_call_with_its_own_events(monkeypatch):
    """timing.back_to_back: one event pair a call, enqueued with no sync between calls; each sample is (start since the
    first call's start, the call's own duration). CUDA events replaced by a fake device clock that each call advances."""
    from triforce import timing

    clock = [0.0]

    class FakeEvent:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = clock[0]

        def elapsed_time(self, other):
            return other.t - self.t

    syncs = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: syncs.append(clock[0]))
    durations = iter([2.0, 1.0, 1.5])
    samples = timing.back_to_back(lambda: clock.__setitem__(0, clock[0] + next(durations)), 3)
    assert samples == [(0.0, 2.0), (2.0, 1.0), (3.0, 1.5)] and syncs == [4.5]

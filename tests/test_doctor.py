"""invoke doctor: real probes of this machine's toolchain, and what it says when a piece is missing or too old."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _doctor(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "doctor", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def _fake_cuda_home(tmp_path: Path, version: str | None) -> Path:
    """A CUDA_HOME whose bin/nvcc prints an old release (or that has no nvcc at all)."""
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    if version:
        nvcc = home / "bin" / "nvcc"
        nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {version[:4]}, V{version}'\n")
        nvcc.chmod(0o755)
    return home


def test_doctor_json_reports_the_pinned_toolchain():
    proc = _doctor("--json")
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert proc.returncode == 0 and report["ok"], proc.stdout
    assert checks["target"]["value"].startswith("thor: sm_110a")
    assert checks["nvcc"]["value"].startswith("13.0.88")
    assert "compute_110" in checks["nvcc archs"]["value"].split()
    assert checks["compile sm_110a"]["ok"]
    assert checks["cuobjdump"]["ok"] and "nvdisasm" in checks["cuobjdump"]["value"]
    assert "nvidia-cutlass 4.2.0.0" in checks["CUTLASS (pinned)"]["value"]
    assert "built for CUDA 13" in checks["torch"]["value"]
    assert {"GPU", "Docker engine", "CUTLASS (patched)"} <= set(checks)
    table = _doctor()
    assert table.returncode == 0 and "ready to build" in table.stdout and "how to get it" in table.stdout


def test_doctor_says_how_to_get_a_missing_nvcc(tmp_path):
    proc = _doctor("--json", env={"CUDA_HOME": str(_fake_cuda_home(tmp_path, None))})
    report = json.loads(proc.stdout)
    nvcc = next(c for c in report["checks"] if c["name"] == "nvcc")
    assert proc.returncode == 1 and not report["ok"]
    assert "has no bin/nvcc" in nvcc["value"] and "pip install -e ." in nvcc["fix"]


def test_doctor_flags_an_nvcc_too_old_for_the_target(tmp_path):
    proc = _doctor("--json", env={"CUDA_HOME": str(_fake_cuda_home(tmp_path, "12.8.93"))})
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert proc.returncode == 1
    assert checks["nvcc"]["value"].startswith("12.8.93")
    assert not checks["compile sm_110a"]["ok"] and "older than 13.0" in checks["compile sm_110a"]["value"]


def test_doctor_unknown_target_is_one_line_error():
    proc = _doctor("--target", "xavier")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: unknown target 'xavier': choose one of thor, blackwell, hopper, local"

"""validate: plan -> script dispatch, on this host (--local) and inside the eval container (reports copied back)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from triforce import container, validate
from triforce.errors import TriforceError

REPO = Path(__file__).resolve().parents[1]


def _validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "validate", *args], cwd=REPO, capture_output=True,
                          text=True)


def _one_line_error(result, code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr


def test_plans_map_to_the_contract_scripts_and_exit_codes():
    assert validate.plan_script("0") == "scripts/phase0_environment_check.py"
    assert validate.plan_script("a") == "scripts/validate_plan_a.py"
    assert validate.plan_script("b") == "scripts/validate_plan_b.py"
    assert [validate.meaning(c) for c in (0, 1, 2, 4)] == ["pass", "a gate failed", "bad input", "no usable GPU"]
    with pytest.raises(TriforceError, match="unknown validation plan 'c': choose one of 0, a, b"):
        validate.plan_script("c")


def test_bad_flags_fail_before_any_engine_is_contacted():
    _one_line_error(_validate("--plan", "z", "--host", "tcp://127.0.0.1:1"), 1, "unknown validation plan 'z'")
    _one_line_error(_validate("--plan", "0", "--local", "--host", "tcp://127.0.0.1:1"), 1, "--local runs on this host")


def test_local_plan0_on_a_host_without_gpu_exits_4_with_a_report(tmp_path):
    result = _validate("--plan", "0", "--local", "--report-dir", str(tmp_path))
    assert result.returncode == 4, result.stdout + result.stderr
    report = tmp_path / "phase0.json"
    assert json.loads(report.read_text())  # a real, parseable report
    assert f"plan 0 on this host: exit 4 (no usable GPU); reports: {report}" in result.stdout


def test_extra_args_after_double_dash_reach_the_script(tmp_path):
    result = _validate("--plan", "0", "--local", "--report-dir", str(tmp_path), "--", "--no-such-flag")
    assert result.returncode == 2 and "--no-such-flag" in result.stderr  # argparse: bad input
    assert "exit 2 (bad input)" in result.stdout and not list(tmp_path.iterdir())


@pytest.mark.docker
def test_plan0_in_the_container_without_gpu_reports_4_and_copies_the_report_back(docker_engine, eval_container,
                                                                                  tmp_path):
    result = _validate("--plan", "0", "--container", eval_container, "--report-dir", str(tmp_path))
    assert result.returncode == 4, result.stdout + result.stderr
    report = tmp_path / "phase0.json"
    assert json.loads(report.read_text())
    assert f"plan 0 on container {eval_container} on unix:///var/run/docker.sock: exit 4 (no usable GPU)" in result.stdout
    assert "$ python3 /opt/triforce/scripts/phase0_environment_check.py --report-dir /tmp/triforce-reports/" \
        in result.stdout
    leftovers = container.exec_capture(docker_engine, eval_container, ["ls", "-A", validate.CONTAINER_REPORT_ROOT])[1]
    assert leftovers.strip() == ""


@pytest.mark.docker
def test_a_script_missing_from_the_image_says_rebuild(docker_engine, eval_image):
    name = "triforce-test-validate-old"
    container.up(docker_engine, name, eval_image.tag, mounts={}, replace=True)
    try:
        container.exec_capture(docker_engine, name, ["rm", "/opt/triforce/scripts/phase0_environment_check.py"])
        _one_line_error(_validate("--plan", "0", "--container", name), 1,
                        "/opt/triforce/scripts/phase0_environment_check.py is missing in container")
    finally:
        docker_engine.api.remove_container(name, force=True)

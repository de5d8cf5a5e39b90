"""scripts/libero_eval.py: the openpi LIBERO client loop against the stand-in simulator, with scripted clients of our
own (an oracle that reaches the target, one that does nothing) and end to end against `invoke serve` (pi05_tiny, CPU)."""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import subprocess
import sys

import numpy as np
import pytest

from serve_process import REPO, ServeProcess
from triforce.errors import TriforceError

# openpi-client 0.1.2 connects without a context manager; websockets >= 17.1 warns about it
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
SCRIPT = REPO / "scripts" / "libero_eval.py"


@pytest.fixture(scope="module")
def le():
    spec = importlib.util.spec_from_file_location("libero_eval", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["libero_eval"] = module  # its dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules["libero_eval"]


class Oracle:
    """Plans straight to the task's target from the state it is sent (what a perfect policy would do)."""

    def __init__(self, targets, scale, horizon=10):
        self.targets, self.scale, self.horizon, self.requests = targets, scale, horizon, []

    def infer(self, obs):
        self.requests.append(obs)
        pos, target = np.array(obs["observation/state"][:3], np.float64), np.asarray(self.targets[obs["prompt"]])
        chunk = np.zeros((self.horizon, 7), np.float32)
        for row in chunk:
            row[:3] = np.clip((target - pos) / self.scale, -1, 1)
            pos = pos + row[:3] * self.scale
        chunk[:, 6] = -1.0
        return {"actions": chunk}


class Counting:
    """Returns chunks whose rows say (chunk number, row), to check which rows are executed."""

    def __init__(self, horizon=10):
        self.horizon, self.calls = horizon, 0

    def infer(self, obs):
        self.calls += 1
        chunk = np.zeros((self.horizon, 7), np.float32)
        chunk[:, 3] = self.calls
        chunk[:, 4] = np.arange(self.horizon)
        return {"actions": chunk}


def _suites(le, spec):
    return le.standin_suites(["standin_reach"], 7, spec)


def test_quat_to_axis_angle(le):
    assert np.allclose(le.quat_to_axis_angle([0, 0, 0, 1]), 0)
    s = math.sin(math.pi / 4)
    assert np.allclose(le.quat_to_axis_angle([0, 0, s, s]), [0, 0, math.pi / 2])
    assert np.allclose(le.quat_to_axis_angle([1, 0, 0, 0]), [math.pi, 0, 0])


def test_request_matches_openpis_libero_client(le):
    rng = np.random.default_rng(0)
    obs = {"agentview_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
           "robot0_eye_in_hand_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
           "robot0_eef_pos": np.array([1.0, 2.0, 3.0]), "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
           "robot0_gripper_qpos": np.array([0.04, -0.04])}
    req = le.make_request(obs, "reach red", 224)
    assert set(req) == {"observation/image", "observation/wrist_image", "observation/state", "prompt"}
    assert np.array_equal(req["observation/image"], obs["agentview_image"][::-1, ::-1])  # rotated 180 degrees
    assert req["observation/wrist_image"].shape == (224, 224, 3) and req["observation/wrist_image"].dtype == np.uint8
    assert np.allclose(req["observation/state"], [1, 2, 3, 0, 0, 0, 0.04, -0.04])


def test_oracle_succeeds_everywhere(le):
    spec = le.libero_spec()
    targets = {t["prompt"]: t["target"] for t in spec["standin"]["suites"]["standin_reach"]["tasks"]}
    results = le.evaluate(Oracle(targets, spec["standin"]["step_scale"]), _suites(le, spec), 3, spec)
    assert results["standin_reach"]["episodes"] == 6 and results["standin_reach"]["success_rate"] == 1.0


def test_replans_every_five_actions_and_fails_on_budget(le):
    spec = le.libero_spec()
    task = _suites(le, spec)[0].tasks[0]
    executed = []
    step = task.step
    task.step = lambda action: (executed.append(action), step(action))[1]
    client = Counting()
    result = le.run_episode(task, 0, client, spec["standin"]["max_steps"], spec)
    assert not result.success and result.steps == 40 and result.queries == client.calls == 8
    assert executed[:spec["num_steps_wait"]] == [spec["dummy_action"]] * spec["num_steps_wait"]
    rows = [(a[3], a[4]) for a in executed[spec["num_steps_wait"]:]]
    assert rows == [(c, r) for c in range(1, 9) for r in range(5)]  # rows 0-4 of each chunk, in order


def test_short_chunks_and_bad_actions_are_errors(le):
    spec = le.libero_spec()
    task = _suites(le, spec)[0].tasks[0]
    with pytest.raises(TriforceError, match="at least 5 steps of 7 dims"):
        le.run_episode(task, 0, Counting(horizon=3), 40, spec)
    task.reset(0)
    with pytest.raises(TriforceError, match="expected 7 finite values"):
        task.step([0.0] * 6)


@pytest.mark.parametrize("meta, env, rates, expected", [
    ({"plan": "a", "synthetic": False}, "libero", [0.96, 0.99], {"applies": True, "passed": True, "threshold": 0.95}),
    ({"plan": "a", "synthetic": False}, "libero", [0.96, 0.94], {"applies": True, "passed": False}),
    ({"plan": "b", "synthetic": False}, "libero", [0.91], {"applies": True, "passed": True, "threshold": 0.90}),
    ({"plan": "a", "synthetic": True}, "libero", [1.0], {"applies": False, "reason": "synthetic weights"}),
    ({"plan": "a", "synthetic": False}, "standin", [1.0], {"applies": False, "reason": "stand-in simulator"}),
    ({"plan": "ref", "synthetic": False}, "libero", [1.0], {"applies": False}),
])
def test_criterion(le, meta, env, rates, expected):
    results = {f"s{i}": {"success_rate": r} for i, r in enumerate(rates)}
    got = le.criterion(results, meta, env, le.libero_spec())
    assert {k: got.get(k) for k in expected} == expected


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_end_to_end_through_invoke_serve(tmp_path):
    server = ServeProcess("--checkpoint", "synthetic:pi05_tiny", "--config", "pi05_tiny", "--plan", "ref",
                          "--device", "cpu", "--port", "0")
    try:
        report_path = tmp_path / "libero.json"
        run = _run("--port", str(server.port), "--env", "standin", "--episodes", "1", "--report", str(report_path))
        assert run.returncode == 0, run.stderr
        report = json.loads(report_path.read_text())
        suite = report["suites"]["standin_reach"]
        assert suite["episodes"] == 2 and 0.0 <= suite["success_rate"] <= 1.0
        assert report["server"]["config"] == "pi05_tiny" and report["replan_steps"] == 5
        assert report["criterion"] == {"applies": False, "reason": "no LIBERO criterion for plan 'ref'"}
        assert "standin_reach: " in run.stdout and "criterion: not applied" in run.stdout
        assert run.stdout.count("queries") == 2  # one progress line per episode
    finally:
        assert server.stop() == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (("--env", "standin", "--suites", "nope"), "unknown stand-in suite 'nope'"),
    (("--env", "standin", "--episodes", "0"), "--episodes 0"),
    (("--env", "standin", "--port", "PORT"), "no policy server at ws://127.0.0.1:"),
])
def test_bad_arguments(args, message, tmp_path):
    args = tuple(str(_free_port()) if a == "PORT" else a for a in args)
    run = _run(*args, "--report", str(tmp_path / "r.json"), "--timeout", "5")
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("error: ") and message in run.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("libero") is not None, reason="LIBERO is installed here")
def test_libero_env_without_libero_says_so(tmp_path):
    run = _run("--env", "libero", "--report", str(tmp_path / "r.json"))
    assert run.returncode != 0 and "error: LIBERO's simulator is not importable" in run.stderr

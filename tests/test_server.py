"""`invoke serve` as a real subprocess (pi05_tiny, plan ref, CPU) on 127.0.0.1, driven by openpi-client's real
WebsocketClientPolicy and by raw websockets clients for the frames openpi-client cannot send."""

from __future__ import annotations

import json
import shutil
import socket
import threading

import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from serve_process import ServeProcess
from triforce.errors import TriforceError
from triforce.server import measure_round_trip, pack, unpack

# openpi-client 0.1.2 connects without a context manager; websockets >= 17.1 warns about it
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
TINY = ("--checkpoint", "synthetic:pi05_tiny", "--config", "pi05_tiny", "--plan", "ref", "--device", "cpu")
TIMEOUT = 60


def libero_obs(seed: int = 0, prompt: str = "pick bowl") -> dict:
    rng = np.random.default_rng(seed)
    return {"observation/image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
            "observation/state": rng.standard_normal(8).astype(np.float32), "prompt": prompt}


@pytest.fixture(scope="module")
def server():
    proc = ServeProcess(*TINY, "--port", "0")
    assert proc.port, proc.output()
    yield proc
    assert proc.stop() == 0, proc.output()


def raw_client(port: int):
    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=TIMEOUT).__enter__()
    metadata = msgpack_numpy.unpackb(ws.recv(timeout=TIMEOUT))
    return ws, metadata


def test_codec_is_openpis():
    obs = libero_obs()
    obs["scalar"] = np.float32(1.5)
    assert pack(obs) == msgpack_numpy.packb(obs)  # byte for byte what openpi's client sends
    back = unpack(msgpack_numpy.packb(obs))
    assert np.array_equal(back["observation/image"], obs["observation/image"]) and back["scalar"] == np.float32(1.5)
    with pytest.raises(TriforceError, match="not openpi msgpack-numpy"):
        unpack(b"\xc1garbage")
    with pytest.raises(TriforceError, match="text frame"):
        unpack("hello")


def test_openpi_client_gets_metadata_and_actions(server):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    meta = client.get_server_metadata()
    assert meta["config"] == "pi05_tiny" and meta["action_horizon"] == 5 and meta["action_dims"] == 7
    assert meta["tokenizer"] == "byte-standin" and meta["synthetic"] is True and meta["actions_unnormalized"] is False
    first = client.infer(libero_obs(0))
    second = client.infer(libero_obs(1))
    for reply in (first, second):
        assert reply["actions"].shape == (5, 7) and reply["actions"].dtype == np.float32
        assert np.isfinite(reply["actions"]).all()
        assert reply["server_timing"]["infer_ms"] >= reply["policy_timing"]["infer_ms"] > 0
    assert "prev_total_ms" not in first["server_timing"] and second["server_timing"]["prev_total_ms"] > 0
    assert not np.array_equal(first["actions"], second["actions"])
    client._ws.close()


def test_malformed_observations_get_an_error_and_the_connection_goes_on(server):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    bad = libero_obs()
    bad["observation/state"] = np.zeros(3)
    with pytest.raises(RuntimeError, match="error: 'observation/state' has 3 values: expected 8"):
        client.infer(bad)
    with pytest.raises(RuntimeError, match="error: observation lacks"):
        client.infer({"prompt": "pick bowl"})
    with pytest.raises(RuntimeError, match="more than max_token_len=16"):
        client.infer(libero_obs(prompt="a prompt that is much too long"))
    assert client.infer(libero_obs())["actions"].shape == (5, 7)
    client._ws.close()
    ws, _ = raw_client(server.port)
    with ws:
        for frame, message in ((b"\xc1 not msgpack", "not openpi msgpack-numpy"), ("text", "text frame"),
                               (msgpack_numpy.packb([1, 2]), "observation is a list")):
            ws.send(frame)
            reply = ws.recv(timeout=TIMEOUT)
            assert isinstance(reply, str) and message in reply
        ws.send(msgpack_numpy.packb(libero_obs()))
        assert unpack(ws.recv(timeout=TIMEOUT))["actions"].shape == (5, 7)


def test_client_leaving_mid_request_does_not_wedge_the_server(server):
    for _ in range(3):  # leave while queued or while inferring: both must be harmless
        ws, _ = raw_client(server.port)
        ws.send(msgpack_numpy.packb(libero_obs()))
        ws.close()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)  # and one that never says hello
    sock.close()
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    assert client.infer(libero_obs())["actions"].shape == (5, 7)
    client._ws.close()


def test_several_clients_are_served_in_turn(server):
    n = 3
    barrier, replies, errors = threading.Barrier(n, timeout=TIMEOUT), [], []

    def run():
        try:
            client = WebsocketClientPolicy("127.0.0.1", server.port)
            barrier.wait()
            for i in range(2):
                replies.append(client.infer(libero_obs(i)))
            client._ws.close()
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT * 2)
    assert not errors and len(replies) == 2 * n
    assert all(r["actions"].shape == (5, 7) for r in replies)
    # one model at a time: requests that arrive together wait for the ones ahead of them
    model_ms = np.median([r["policy_timing"]["infer_ms"] for r in replies])
    assert max(r["server_timing"]["queue_ms"] for r in replies) > 0.3 * model_ms


def test_health_check(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_measure_round_trip(server):
    result = measure_round_trip("127.0.0.1", server.port, 3, libero_obs, warmup=1)
    assert result["n"] == 3
    assert result["round_trip_ms"] >= result["server_infer_ms"] >= result["policy_infer_ms"] > 0
    assert result["overhead_ms"] >= 0
    with pytest.raises(TriforceError, match="refused the observation: error: observation lacks"):
        measure_round_trip("127.0.0.1", server.port, 1, lambda: {"prompt": "x"}, warmup=0)


def test_measure_round_trip_without_a_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TriforceError, match="no policy server at"):
        measure_round_trip("127.0.0.1", port, 1, libero_obs, timeout_s=5)


def test_sigterm_closes_clients_and_exits_cleanly():
    proc = ServeProcess(*TINY, "--port", "0")
    ws, _ = raw_client(proc.port)
    ws.send(msgpack_numpy.packb(libero_obs()))
    assert unpack(ws.recv(timeout=TIMEOUT))["actions"].shape == (5, 7)
    assert proc.stop() == 0
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd.code == 1001
    assert "stopped: 1 connections, 1 requests served, 0 errors" in proc.output(settle=5)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """pi05_tiny weights laid out like a real openpi checkpoint: model.safetensors + assets/<asset_id>/norm_stats.json.
    q01 == q99 == 10 + dim, so unnormalized actions are those constants whatever the model predicts."""
    from triforce.runtime.checkpoint import write_synthetic
    from triforce.runtime.config import load_config

    root = tmp_path_factory.mktemp("ckpt")
    shutil.copy(write_synthetic(load_config("pi05_tiny")), root / "model.safetensors")
    q = [10.0 + i for i in range(7)]
    stats = {"state": {"q01": [0.0] * 8, "q99": [1.0] * 8}, "actions": {"q01": q, "q99": q}}
    (root / "assets" / "physical-intelligence" / "libero").mkdir(parents=True)
    (root / "assets" / "physical-intelligence" / "libero" / "norm_stats.json").write_text(json.dumps({"norm_stats": stats}))
    return root


def test_real_checkpoint_unnormalizes_and_needs_a_tokenizer_for_text(checkpoint_dir):
    proc = ServeProcess("--checkpoint", str(checkpoint_dir), "--config", "pi05_tiny", "--plan", "ref", "--device", "cpu",
                        "--port", "0")
    try:
        client = WebsocketClientPolicy("127.0.0.1", proc.port)
        assert client.get_server_metadata()["tokenizer"] is None
        assert client.get_server_metadata()["actions_unnormalized"] is True
        with pytest.raises(RuntimeError, match="no tokenizer.*--tokenizer"):
            client.infer(libero_obs())
        obs = libero_obs()
        del obs["prompt"]
        obs.update(tokenized_prompt=np.array([2, 40, 41, 13], np.int32), tokenized_prompt_mask=np.ones(4, bool))
        actions = client.infer(obs)["actions"]
        assert actions.shape == (5, 7)
        assert np.allclose(actions, np.arange(10.0, 17.0)[None, :], atol=1e-4)
        client._ws.close()
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("args, message", [
    (("--config", "pi05_base", "--checkpoint", "synthetic:pi05_base", *TINY[4:], "--port", "0"),
     "no I/O spec for model config 'pi05_base'"),
    ((*TINY, "--port", "http"), "--port 'http' is not a number"),
    ((*TINY, "--port", "0", "--tokenizer", "/nonexistent/tok.model"), "tokenizer file /nonexistent/tok.model does not exist"),
    ((*TINY, "--port", "0", "--norm-stats", "/nonexistent/norm_stats.json"), "no norm stats at /nonexistent/norm_stats.json"),
    ((*TINY[:4], "--plan", "a", "--device", "cpu", "--port", "0"), "plan a"),  # no GPU here; a GPU refuses device cpu
])
def test_bad_flags_fail_in_one_line(args, message):
    proc = ServeProcess(*args)
    out = proc.output(settle=5)
    assert proc.port is None and proc.proc.returncode != 0
    assert message in out and out.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in out


def test_port_in_use_and_checkpoint_without_norm_stats(checkpoint_dir, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = ServeProcess(*TINY, "--port", str(busy.getsockname()[1]))
        assert proc.port is None and "error: cannot listen on 127.0.0.1" in proc.output(settle=5)
    (tmp_path / "model.safetensors").symlink_to(checkpoint_dir / "model.safetensors")
    proc = ServeProcess("--checkpoint", str(tmp_path), "--config", "pi05_tiny", "--plan", "ref", "--device", "cpu",
                        "--port", "0")
    assert proc.port is None and "error: no norm stats at" in proc.output(settle=5)

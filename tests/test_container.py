"""up / exec / archives / engines, against the real local Docker engine (and dead ones)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from triforce import container
from triforce.errors import TriforceError

REPO = Path(__file__).resolve().parents[1]
UP_NAME = "triforce-test-up"


def _invoke(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _one_line_error(result: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr


# ── engines ──────────────────────────────────────────────────────────────────────────────────────────────────────────
def test_unreachable_engines_are_one_line_errors(tmp_path):
    _one_line_error(_invoke("up", "--host", "tcp://127.0.0.1:1"), 1,
                    "Docker engine at tcp://127.0.0.1:1 is unreachable (connection refused)")
    dead = tmp_path / "dead.sock"  # a socket file nobody listens on any more
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(dead))
    sock.close()
    _one_line_error(_invoke("deploy", "--host", f"unix://{dead}"), 1, f"Docker engine at unix://{dead} is unreachable")
    with pytest.raises(TriforceError, match="neither an engine URL .* nor a docker context"):
        container.connect("no-such-context")


def test_an_unreachable_ssh_engine_is_a_one_line_error():
    """ssh:// (a robot of the fleet) goes through paramiko: a dead host is one line, no ssh noise on stderr."""
    _one_line_error(_invoke("validate", "--plan", "0", "--host", "ssh://robot@127.0.0.1:1"), 1,
                    "Docker engine at ssh://robot@127.0.0.1:1 is unreachable")


def test_several_hosts_report_each_and_fail_if_any_did():
    lines = []

    def work(engine, log):
        log("reached")
        return 0

    code = container.on_hosts(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"], work, log=lines.append)
    assert code == 1
    assert lines[-2:] == ["tcp://127.0.0.1:1: FAILED (exit 1)", "tcp://127.0.0.1:2: FAILED (exit 1)"]
    assert any(line.startswith("[tcp://127.0.0.1:2] error: Docker engine") for line in lines)


@pytest.mark.docker
def test_several_hosts_one_good_one_dead(docker_engine, eval_container):
    result = _invoke("up", "--name", eval_container, "--image", "triforce-test/turbo_pi_eval:hopper",
                     "--host", "unix:///var/run/docker.sock", "--host", "tcp://127.0.0.1:1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[unix:///var/run/docker.sock] reused container" in result.stdout
    assert "unix:///var/run/docker.sock: ok" in result.stdout and "tcp://127.0.0.1:1: FAILED (exit 1)" in result.stdout


@pytest.mark.docker
def test_docker_contexts_and_docker_host_select_the_engine(docker_engine, eval_image, eval_container, tmp_path):
    """A fleet is addressed like the docker CLI does: --host <context>, the current context, or DOCKER_HOST."""
    cli_env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    subprocess.run(["docker", "context", "create", "robot-01", "--docker", "host=unix:///var/run/docker.sock"],
                   env=cli_env, check=True, capture_output=True)
    args = ["up", "--name", eval_container, "--image", eval_image.tag]
    by_name = _invoke(*args, "--host", "robot-01", env={"DOCKER_CONFIG": str(tmp_path)})
    assert by_name.returncode == 0 and "on context robot-01" in by_name.stdout, by_name.stdout + by_name.stderr
    subprocess.run(["docker", "context", "use", "robot-01"], env=cli_env, check=True, capture_output=True)
    current = _invoke(*args, env={"DOCKER_CONFIG": str(tmp_path)})
    assert current.returncode == 0 and "on context robot-01" in current.stdout, current.stdout + current.stderr
    _one_line_error(_invoke(*args, env={"DOCKER_HOST": "tcp://127.0.0.1:1"}), 1,
                    "Docker engine at DOCKER_HOST=tcp://127.0.0.1:1 is unreachable")


@pytest.fixture(scope="module")
def ssh_robot(tmp_path_factory):
    """This machine's engine behind a private sshd, reached as ssh://robot-sim the way a robot of the fleet is: through
    ~/.ssh/config and known_hosts of a throwaway HOME (nothing of the real user's ssh setup is touched)."""
    tmp = tmp_path_factory.mktemp("ssh")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
    (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\nAuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        f"PidFile {tmp / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"StrictModes no\nPermitRootLogin prohibit-password\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(f"Host robot-sim\n  HostName 127.0.0.1\n  User root\n"
                                          f"  IdentityFile {tmp / 'client_key'}\n")
    host_pub = (tmp / "host_key.pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    for _ in range(50):
        with socket.socket() as conn:
            if conn.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    # The docker SDK takes the port from the URL (default 22), not from ~/.ssh/config.
    yield f"ssh://robot-sim:{port}", {"HOME": str(home)}
    sshd.terminate()
    sshd.wait(timeout=10)


@pytest.mark.docker
def test_the_fleet_path_over_ssh(docker_engine, eval_image, ssh_robot, tmp_path):
    """up and validate against ssh://robot-sim, and validate against two hosts at once with per-host reports."""
    name = "triforce-test-ssh"
    url, env = ssh_robot
    try:
        first = _invoke("up", "--name", name, "--image", eval_image.tag, "--host", url,
                        "--checkpoint-cache", str(tmp_path / "openpi"), "--reports-dir", str(tmp_path / "mounted"),
                        env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"created container {name} ({eval_image.tag}) on {url}" in first.stdout
        both = _invoke("validate", "--plan", "0", "--container", name, "--report-dir", str(tmp_path / "reports"),
                       "--host", url, "--host", "unix:///var/run/docker.sock", env=env)
        assert both.returncode == 4, both.stdout + both.stderr  # no GPU on either: the script's own code
        assert f"{url}: FAILED (exit 4)" in both.stdout
        assert any(line.startswith(f"[{url}] plan 0 on container {name}") for line in both.stdout.splitlines())
        reports = sorted(p.relative_to(tmp_path / "reports").as_posix() for p in (tmp_path / "reports").rglob("*.json"))
        assert reports == sorted([f"ssh_robot-sim_{url.rsplit(':', 1)[1]}/phase0.json",
                                  "unix_var_run_docker.sock/phase0.json"])
    finally:
        if container.inspect(docker_engine, name):
            docker_engine.api.remove_container(name, force=True)


# ── up ───────────────────────────────────────────────────────────────────────────────────────────────────────────────
@pytest.fixture
def up_name(docker_engine):
    yield UP_NAME
    if container.inspect(docker_engine, UP_NAME):
        docker_engine.api.remove_container(UP_NAME, force=True)


@pytest.mark.docker
def test_up_is_idempotent_and_refuses_a_name_clash(docker_engine, eval_image, base_image, up_name, tmp_path):
    args = ["up", "--name", up_name, "--image", eval_image.tag, "--checkpoint-cache", str(tmp_path / "openpi"),
            "--reports-dir", str(tmp_path / "reports"), "--kernel-cache", str(tmp_path / "triton")]
    first = _invoke(*args)
    assert first.returncode == 0, first.stderr
    assert f"created container {up_name}" in first.stdout and "GPU: none" in first.stdout
    first_id = container.inspect(docker_engine, up_name)["Id"]
    binds = container.inspect(docker_engine, up_name)["HostConfig"]["Binds"]
    assert f"{tmp_path / 'openpi'}:/root/.cache/openpi:rw" in binds
    assert f"{tmp_path / 'reports'}:/opt/triforce/reports:rw" in binds
    assert f"{tmp_path / 'triton'}:/root/.triton/cache:rw" in binds

    second = _invoke(*args)
    assert second.returncode == 0 and f"reused container {up_name}" in second.stdout
    assert container.inspect(docker_engine, up_name)["Id"] == first_id

    docker_engine.api.stop(up_name, timeout=1)
    _one_line_error(_invoke("validate", "--plan", "0", "--container", up_name), 1,
                    f"container {up_name} on unix:///var/run/docker.sock is exited, not running")
    third = _invoke(*args)
    assert third.returncode == 0 and f"started container {up_name}" in third.stdout
    assert container.inspect(docker_engine, up_name)["Id"] == first_id

    # A same-named container of another image: refused unless --replace.
    docker_engine.api.remove_container(up_name, force=True)
    docker_engine.api.create_container(base_image, name=up_name, command=["sleep", "infinity"])
    _one_line_error(_invoke(*args), 1, f"container {up_name} on unix:///var/run/docker.sock runs another image")
    # The same tag rebuilt (a new image id) is not the same image either.
    docker_engine.api.remove_container(up_name, force=True)
    docker_engine.api.tag(base_image, "triforce-test/rebuilt", "1")
    docker_engine.api.create_container("triforce-test/rebuilt:1", name=up_name, command=["sleep", "infinity"])
    docker_engine.api.tag(eval_image.tag, "triforce-test/rebuilt", "1", force=True)
    _one_line_error(_invoke(*args[:3], "--image", "triforce-test/rebuilt:1"), 1,
                    f"container {up_name} on unix:///var/run/docker.sock runs an older build of triforce-test/rebuilt:1")
    docker_engine.api.remove_image("triforce-test/rebuilt:1")
    replaced = _invoke(*args, "--replace")
    assert replaced.returncode == 0 and f"replaced container {up_name}" in replaced.stdout
    info = container.inspect(docker_engine, up_name)
    assert info["Config"]["Image"] == eval_image.tag and info["State"]["Status"] == "running"


@pytest.mark.docker
def test_up_without_the_image_says_build_it(docker_engine, up_name):
    _one_line_error(_invoke("up", "--name", up_name, "--image", "triforce-test/never-built:1"), 1,
                    "image triforce-test/never-built:1 not found")
    assert container.inspect(docker_engine, up_name) is None


@pytest.mark.docker
def test_a_thor_image_needs_the_nvidia_runtime(docker_engine, up_name):
    """Jetson containers run with --runtime nvidia: an engine without it is refused, not silently run without GPU."""
    docker_engine.api.import_image_from_data(b"\0" * 1024, repository="triforce-test/thor-labelled", tag="1",
                                             changes=["LABEL org.triforce.target=thor", 'CMD ["sleep", "infinity"]'])
    _one_line_error(_invoke("up", "--name", up_name, "--image", "triforce-test/thor-labelled:1"), 3,
                    "(target thor) needs the 'nvidia' runtime but the engine at unix:///var/run/docker.sock has only")
    assert container.inspect(docker_engine, up_name) is None


# ── exec and archives ────────────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.docker
def test_exec_streams_both_streams_and_returns_the_exit_code(docker_engine, eval_container):
    lines = []
    code = container.exec_stream(docker_engine, eval_container,
                                 ["sh", "-c", "echo one; echo two >&2; printf 'no newline'; exit 3"], log=lines.append)
    assert code == 3
    assert lines == ["one", "two", "no newline"] or sorted(lines) == ["no newline", "one", "two"]


@pytest.mark.docker
def test_put_and_get_archive_round_trip(docker_engine, eval_container, tmp_path):
    src = tmp_path / "payload.json"
    src.write_text('{"ok": true}\n')
    container.put_files(docker_engine, eval_container, "/tmp/roundtrip/in", [src])
    assert container.exec_capture(docker_engine, eval_container, ["cat", "/tmp/roundtrip/in/payload.json"])[1] == \
        src.read_text()
    written = container.get_dir(docker_engine, eval_container, "/tmp/roundtrip", tmp_path / "back")
    assert written == [tmp_path / "back" / "in" / "payload.json"] and written[0].read_text() == src.read_text()
    with pytest.raises(TriforceError, match="does not exist in"):
        container.get_dir(docker_engine, eval_container, "/tmp/not-there", tmp_path / "none")


@pytest.mark.docker
def test_missing_container_is_a_one_line_error(docker_engine):
    _one_line_error(_invoke("validate", "--plan", "0", "--container", "triforce-test-absent"), 1,
                    "container triforce-test-absent not found on unix:///var/run/docker.sock: create it with `invoke up")


# ── build-kernels --in-container ────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.docker
def test_build_kernels_in_container_runs_the_task_on_the_mounted_checkout(docker_engine, eval_image):
    """The test image has no CUDA: the in-container task must run on /src and fail with the build stage's own error."""
    result = _invoke("build-kernels", "--in-container", "--target", "hopper", "--image", eval_image.tag)
    assert "$ python3 -m invoke build-kernels --target hopper  (checkout mounted at /src)" in result.stdout
    assert result.returncode != 0 and "error:" in result.stdout + result.stderr


def test_build_kernels_in_container_refuses_paths_outside_the_checkout():
    _one_line_error(_invoke("build-kernels", "--in-container", "--target", "hopper", "--wheel-dir", "/tmp/elsewhere"),
                    1, "--wheel-dir /tmp/elsewhere is outside the checkout")

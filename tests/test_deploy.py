"""deploy: real wheels + manifest (WheelRecord schema) into a real container; verification, rollback by fault injection."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from triforce import container, deploy
from triforce.manifest import WheelRecord, sha256_of, write_manifest

REPO = Path(__file__).resolve().parents[1]
DEPLOY_CONTAINER = "triforce-test-deploy"
PKG, OTHER = "triforce-probe-kernels", "triforce-probe-extra"
# The test image is Debian bookworm (CPython 3.11, amd64) labelled for target hopper (sm_90a).
PY, PLAT = "cp311", "linux_x86_64"


def make_wheel(folder: Path, dist: str, version: str, init_py: str, python_tag: str = PY, platform_tag: str = PLAT,
               arch: str = "sm_90a", compute_capability: str = "9.0", torch_version: str = "") -> WheelRecord:
    """A real (tiny) platform wheel and its manifest record, as build-kernels writes them."""
    module, stem = dist.replace("-", "_"), f"{dist.replace('-', '_')}-{version}"
    name = f"{stem}-{python_tag}-{python_tag}-{platform_tag}.whl"
    files = {
        f"{module}/__init__.py": init_py,
        f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{stem}.dist-info/WHEEL": (f"Wheel-Version: 1.0\nGenerator: triforce-tests\nRoot-Is-Purelib: false\n"
                                    f"Tag: {python_tag}-{python_tag}-{platform_tag}\n"),
    }
    record_lines = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record_lines.append(f"{path},sha256={digest},{len(text.encode())}")
    record_lines.append(f"{stem}.dist-info/RECORD,,")
    with zipfile.ZipFile(folder / name, "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)
        whl.writestr(f"{stem}.dist-info/RECORD", "\n".join(record_lines) + "\n")
    base = version.split("+")[0]
    return WheelRecord(
        wheel=name, sha256=sha256_of(folder / name), package=dist, version=version, arch=arch,
        compute_capability=compute_capability, cuda_version="13.0.88", cutlass_version="4.2.0.0",
        cutlass_patch_stamp={}, torch_version=torch_version, python_tag=python_tag, platform_tag=platform_tag,
        git_commit="test", built_at="2026-01-01T00:00:00Z",
        import_check=f"import {module} as m; assert m.VERSION == {base!r}, m.VERSION")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheels")
    good = "VERSION = '{}'\n"
    records = {
        "v1": make_wheel(folder, PKG, "0.1.0+cu130.sm90a", good.format("0.1.0")),
        # Fault injection: installs fine, but importing it fails.
        "v2_broken": make_wheel(folder, PKG, "0.2.0+cu130.sm90a", "raise ImportError('injected: kernel library missing')\n"),
        "v3": make_wheel(folder, PKG, "0.3.0+cu130.sm90a", good.format("0.3.0")),
        "other": make_wheel(folder, OTHER, "1.0.0+cu130.sm90a", good.format("1.0.0")),
        "aarch64": make_wheel(folder, PKG, "0.4.0+cu130.sm110a", good.format("0.4.0"), platform_tag="linux_aarch64",
                              arch="sm_110a", compute_capability="11.0"),
        "sm110_on_x86": make_wheel(folder, PKG, "0.5.0+cu130.sm110a", good.format("0.5.0"), arch="sm_110a",
                                   compute_capability="11.0"),
        "needs_torch": make_wheel(folder, PKG, "0.6.0+cu130.sm90a", good.format("0.6.0"), torch_version="2.9.0"),
    }
    write_manifest(folder, {r.wheel: r for r in records.values()})
    return folder, records


@pytest.fixture(scope="module")
def target(docker_engine, eval_image, tmp_path_factory):
    """A container of its own: deploys change what is installed in it."""
    if container.inspect(docker_engine, DEPLOY_CONTAINER):  # left over by an interrupted session: start clean
        docker_engine.api.remove_container(DEPLOY_CONTAINER, force=True)
    container.up(docker_engine, DEPLOY_CONTAINER, eval_image.tag, mounts={})
    yield DEPLOY_CONTAINER
    docker_engine.api.remove_container(DEPLOY_CONTAINER, force=True)


def _deploy(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "deploy", "--container", DEPLOY_CONTAINER,
                           "--wheel-dir", str(folder), *args], cwd=REPO, capture_output=True, text=True)


def _installed(engine, name: str, dist: str) -> str | None:
    """Import the package afresh in the container: its VERSION, or None when it does not import."""
    module = dist.replace("-", "_")
    code, out, _ = container.exec_capture(engine, name, ["python3", "-c", f"import {module}; print({module}.VERSION)"])
    return out.strip() if code == 0 else None


def _one_line_error(result, code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr


# ── checks without an engine ─────────────────────────────────────────────────────────────────────────────────────────
FACTS = deploy.ContainerFacts(platform="linux-aarch64", python_tag="cp312", torch="2.9.0a0+50eac811a6.nv25.09",
                              compute_capability="11.0", gpu_note="NVIDIA Thor", installed={}, target_arch="sm_110a")


def test_misfit_checks_platform_python_torch_and_arch(tmp_path):
    rec = replace(make_wheel(tmp_path, PKG, "0.1.0", ""), python_tag="cp312", platform_tag="linux_aarch64",
                  arch="sm_110a", compute_capability="11.0", torch_version=FACTS.torch)
    assert deploy.misfit(rec, FACTS) is None
    assert "linux_x86_64" in deploy.misfit(replace(rec, platform_tag="linux_x86_64"), FACTS)
    assert "cp311" in deploy.misfit(replace(rec, python_tag="cp311"), FACTS)
    assert "torch 2.9.0" in deploy.misfit(replace(rec, torch_version="2.9.0"), FACTS)
    assert "targets sm_110a" in deploy.misfit(replace(rec, arch="sm_100a", compute_capability="10.0"), FACTS)
    assert "pairs arch sm_110a with compute capability 10.0" in deploy.misfit(replace(rec, compute_capability="10.0"),
                                                                             FACTS)
    on_b200 = replace(FACTS, compute_capability="10.0", target_arch=None)
    assert "GPU is 10.0" in deploy.misfit(rec, on_b200)


# ── against the real engine ──────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.docker
def test_dry_run_checks_and_changes_nothing(docker_engine, target, wheels):
    folder, recs = wheels
    result = _deploy(folder, "--wheel", recs["v1"].wheel, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would install: {PKG} 0.1.0+cu130.sm90a" in result.stdout and "no GPU visible" in result.stdout
    assert _installed(docker_engine, target, PKG) is None
    assert container.exec_capture(docker_engine, target, ["test", "-e", deploy.WHEEL_HOME + "/incoming"])[0] != 0


@pytest.mark.docker
def test_deploy_installs_and_verifies(docker_engine, target, wheels):
    folder, recs = wheels
    result = _deploy(folder, "--wheel", recs["v1"].wheel)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"installed: {PKG} 0.1.0+cu130.sm90a ({recs['v1'].wheel}), previously not installed" in result.stdout
    assert _installed(docker_engine, target, PKG) == "0.1.0"


@pytest.mark.docker
def test_failed_import_check_rolls_back_to_the_previous_version(docker_engine, target, wheels):
    folder, recs = wheels
    result = _deploy(folder, "--wheel", recs["v2_broken"].wheel)
    _one_line_error(result, 1, f"deploy of {recs['v2_broken'].wheel} to container {DEPLOY_CONTAINER}")
    assert "import check" in result.stderr and f"rolled back ({PKG} 0.1.0+cu130.sm90a restored)" in result.stderr
    assert "injected: kernel library missing" in result.stdout  # the failing import's output was streamed
    assert _installed(docker_engine, target, PKG) == "0.1.0"
    # The kept state is consistent: a good upgrade afterwards works and reports v1 as what it replaced.
    upgrade = _deploy(folder, "--wheel", recs["v3"].wheel)
    assert upgrade.returncode == 0 and "previously 0.1.0+cu130.sm90a" in upgrade.stdout, upgrade.stderr
    assert _installed(docker_engine, target, PKG) == "0.3.0"


@pytest.mark.docker
def test_a_failure_rolls_back_every_wheel_of_the_run(docker_engine, target, wheels):
    folder, recs = wheels
    result = _deploy(folder, "--wheel", recs["other"].wheel, "--wheel", recs["v2_broken"].wheel)
    _one_line_error(result, 1, f"{OTHER} uninstalled, as before")
    assert _installed(docker_engine, target, OTHER) is None
    assert _installed(docker_engine, target, PKG) == "0.3.0"


@pytest.mark.docker
@pytest.mark.parametrize("key, text", [
    ("aarch64", "it is built for linux_aarch64 but the container is linux-x86_64"),
    ("sm110_on_x86", "it is built for sm_110a but the container's image targets sm_90a"),
    ("needs_torch", "built against torch 2.9.0 but the container has no torch"),
])
def test_wheels_that_do_not_fit_are_refused_before_anything_is_copied(docker_engine, target, wheels, key, text):
    folder, recs = wheels
    _one_line_error(_deploy(folder, "--wheel", recs[key].wheel), 3, text)
    assert container.exec_capture(docker_engine, target, ["test", "-e", deploy.WHEEL_HOME + "/incoming"])[0] != 0
    assert _installed(docker_engine, target, PKG) == "0.3.0"


@pytest.mark.docker
def test_bad_manifest_inputs(docker_engine, target, wheels, tmp_path):
    folder, recs = wheels
    _one_line_error(_deploy(folder, "--wheel", "nope.whl"), 1, "nope.whl is not in the wheel manifest")
    # Only a wheel for another platform: nothing to deploy by default.
    only = make_wheel(tmp_path, PKG, "0.4.0", "VERSION = '0.4.0'\n", platform_tag="linux_aarch64", arch="sm_110a",
                      compute_capability="11.0")
    write_manifest(tmp_path, {only.wheel: only})
    _one_line_error(_deploy(tmp_path), 3, "no wheel in the manifest fits")
    # Bytes changed after the build.
    with open(tmp_path / only.wheel, "ab") as f:
        f.write(b"tampered")
    write_manifest(tmp_path, {only.wheel: replace(only, platform_tag=PLAT, arch="sm_90a", compute_capability="9.0")})
    _one_line_error(_deploy(tmp_path), 1, "does not match its manifest sha256")
    _one_line_error(_deploy(tmp_path / "empty"), 1, "no manifest.json in")
    assert _installed(docker_engine, target, PKG) == "0.3.0"

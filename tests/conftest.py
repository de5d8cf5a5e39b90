"""Shared pytest fixtures. Each owner keeps their fixtures in their own clearly named block."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest


# ── Docker engine, local base image and eval image (owner: container/deploy/validate) ───────────────────────────────
# No registry is reachable in CI: the base image is made from Debian with debootstrap and `docker import`, cached by
# tag so later sessions reuse it. The eval image is built from docker/Dockerfile.j2 on top of it (target hopper: amd64
# like this machine), with the host CA bundle so pip inside the build reaches PyPI through this machine's proxy.
TEST_BASE_IMAGE = "triforce-test/bookworm-python:1"
TEST_EVAL_IMAGE = "triforce-test/turbo_pi_eval:hopper"
TEST_EVAL_CONTAINER = "triforce-test-eval"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BASE_PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"


@pytest.fixture(scope="session")
def docker_engine():
    from triforce import container
    from triforce.errors import TriforceError

    try:
        return container.connect()
    except TriforceError as err:
        pytest.fail(f"docker tests need a running engine (.ci/run starts dockerd): {err}")


def _apt_mirror() -> str:
    """The Debian mirror apt uses on this machine (debootstrap fetches from it)."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if path.is_file():
            match = re.search(r"(?:URIs:|deb)\s+(https?://\S+/debian)\b", path.read_text())
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def base_image(docker_engine):
    from docker.errors import NotFound

    try:
        docker_engine.api.inspect_image(TEST_BASE_IMAGE)
        return TEST_BASE_IMAGE
    except NotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="triforce-base-") as tmp:
        rootfs, archive = Path(tmp) / "rootfs", Path(tmp) / "rootfs.tar"
        print(f"debootstrap bookworm ({BASE_PACKAGES}) from {_apt_mirror()} ...", flush=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs),
                        _apt_mirror()], check=True)
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        repo, tag = TEST_BASE_IMAGE.rsplit(":", 1)
        docker_engine.api.import_image_from_file(
            str(archive), repository=repo, tag=tag,
            changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["bash"]'])
    return TEST_BASE_IMAGE


@pytest.fixture(scope="session")
def eval_image(docker_engine, base_image):
    from triforce import image

    spec = image.make_spec("hopper", base_image=base_image, tag=TEST_EVAL_IMAGE, ca_bundle=HOST_CA_BUNDLE)
    image.build_image(docker_engine, spec)
    return spec  # .tag, and .commit as recorded (HEAD moves while others commit to the shared tree)


@pytest.fixture(scope="session")
def eval_container(docker_engine, eval_image, tmp_path_factory):
    """One running eval container for the session (removed at the end)."""
    from triforce import container

    cache = tmp_path_factory.mktemp("openpi-cache")
    container.up(docker_engine, TEST_EVAL_CONTAINER, eval_image.tag, mounts={str(cache): "/root/.cache/openpi"},
                 replace=True)
    yield TEST_EVAL_CONTAINER
    docker_engine.api.remove_container(TEST_EVAL_CONTAINER, force=True)
# ── end of container/deploy/validate block ───────────────────────────────────────────────────────────────────────────

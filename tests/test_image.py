"""build-image: the rendered Dockerfile (Thor on NGC arm64) and real builds through the local engine."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from triforce import image, report
from triforce.errors import TriforceError, UnsupportedError

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True)


def test_thor_dockerfile_is_right_for_ngc_arm64():
    text = image.render_dockerfile(image.make_spec("thor"))
    from_lines = [line for line in text.splitlines() if line.startswith("FROM")]
    assert from_lines == ["FROM --platform=linux/arm64 nvcr.io/nvidia/pytorch:25.09-py3"]
    commit = report.git_commit(short=True)
    for label in ['org.triforce.target="thor"', 'org.triforce.arch="sm_110a"', 'org.triforce.platform="linux/arm64"',
                  f'org.triforce.commit="{commit}"']:
        assert label in text
    assert "TRITON_PTXAS_PATH=/usr/local/cuda/bin/ptxas" in text
    # torch and the CUDA wheels come from the NGC image: never pip-installed, the project goes in with --no-deps.
    deps_run, project_run = [block for block in text.split("\nRUN ")[1:]]
    assert '"torch' not in deps_run and '"nvidia-cuda-nvcc' not in deps_run and '"nvidia-curand' not in deps_run
    assert '"nvidia-cutlass==4.2.0.0"' in deps_run and '"invoke==3.0.3"' in deps_run
    assert "--no-deps" in project_run and "/opt/triforce" in project_run
    assert "build-ca.crt" not in text  # no CA bundle unless asked for


def test_print_task_outputs_the_rendered_dockerfile():
    result = _invoke("build-image", "--target", "thor", "--print")
    assert result.returncode == 0, result.stderr
    assert result.stdout == image.render_dockerfile(image.make_spec("thor"))


def test_light_dependencies_are_pyproject_minus_torch_and_cuda():
    deps = image.light_dependencies()
    names = [image._requirement_name(d) for d in deps]
    assert "torch" not in names and not [n for n in names if n.startswith("nvidia-") and n != "nvidia-cutlass"]
    assert {"invoke", "docker", "jinja2", "safetensors", "nvidia-cutlass"} <= set(names)


def test_base_image_and_tag_overrides():
    spec = image.make_spec("hopper", base_image="example.org/base:1", tag="mine:1")
    text = image.render_dockerfile(spec)
    assert "FROM --platform=linux/amd64 example.org/base:1" in text and 'org.triforce.arch="sm_90a"' in text
    assert spec.tag == "mine:1" and image.make_spec("hopper").tag == "turbo_pi_eval:hopper"


def test_bad_image_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(TriforceError, match="unknown target 'orin'"):
        image.make_spec("orin")
    with pytest.raises(TriforceError, match="target 'local' has no image"):
        image.make_spec("local")
    result = _invoke("build-image", "--target", "thor", "--ca-bundle", str(tmp_path / "none.pem"), "--print")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: CA bundle") and result.stderr.count("\n") == 1


@pytest.mark.docker
def test_cross_platform_build_is_refused(docker_engine):
    with pytest.raises(UnsupportedError, match="cannot cross-build"):
        image.build_image(docker_engine, image.make_spec("thor"))
    result = _invoke("build-image", "--target", "thor")
    assert result.returncode == 3 and result.stderr.count("\n") == 1 and "docker buildx build" in result.stderr


@pytest.mark.docker
def test_build_from_template_records_target_arch_commit(docker_engine, base_image, eval_image):
    labels = docker_engine.api.inspect_image(eval_image.tag)["Config"]["Labels"]
    assert labels["org.triforce.target"] == "hopper" and labels["org.triforce.arch"] == "sm_90a"
    assert labels["org.triforce.commit"] == eval_image.commit != "unknown"
    assert labels["org.triforce.base-image"] == base_image


@pytest.mark.docker
def test_build_error_names_the_failing_step(docker_engine):
    """An engine-side failure arrives as errorDetail inside HTTP 200: it must fail the build and name the step."""
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w") as tar:
        info = tarfile.TarInfo("etc")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    docker_engine.api.import_image_from_data(empty.getvalue(), repository="triforce-test/no-shell", tag="1")
    spec = image.make_spec("hopper", base_image="triforce-test/no-shell:1", tag="triforce-test/broken:1")
    with pytest.raises(TriforceError, match=r"failed at step \d+/\d+ \(RUN python3 -m pip install"):
        image.build_image(docker_engine, spec, log=lambda line: None)

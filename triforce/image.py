"""The eval image `turbo_pi_eval`: render docker/Dockerfile.j2 for a target and build it through the docker SDK.

Build path: the SDK's low-level `APIClient.build` drives the engine's classic builder (no BuildKit). The classic builder
cannot cross-build, so a target whose platform differs from the engine's is refused: build on a machine of that
platform (e.g. `--host ssh://thor-01`), or feed `invoke build-image --print` to `docker buildx build --platform ...`.
"""

from __future__ import annotations

import fnmatch
import io
import re
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import container, report
from .errors import TriforceError, UnsupportedError
from .targets import Target, get_target

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
SOURCE_DIR = "src"                  # the checkout's files inside the build context
CA_BUNDLE_NAME = "build-ca.crt"     # the optional CA bundle inside the build context
_ENGINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_STEP_RE = re.compile(r"^Step (\d+/\d+) : (.*)$")


@dataclass(frozen=True)
class ImageSpec:
    target: Target
    base_image: str
    tag: str
    commit: str
    ca_bundle: Path | None


def image_config() -> dict:
    path = DOCKER_DIR / "image.toml"
    if not path.is_file():
        raise TriforceError(f"{path} not found: build-image runs from a Triforce source checkout")
    return tomllib.loads(path.read_text())


def default_tag(target_name: str) -> str:
    return image_config()["tag"].format(target=target_name)


def light_dependencies() -> list[str]:
    """pyproject's dependencies minus what the NGC base image provides (torch, CUDA): never replace those."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    cfg = image_config()

    def provided(name: str) -> bool:
        return name not in cfg["install_anyway"] and any(fnmatch.fnmatch(name, p) for p in cfg["provided_by_base"])

    return [req for req in project["dependencies"] if not provided(_requirement_name(req))]


def _requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[@]", req, maxsplit=1)[0].lower().replace("_", "-")


def make_spec(target_name: str, base_image: str | None = None, tag: str | None = None,
              ca_bundle: str | None = None) -> ImageSpec:
    target = get_target(target_name)
    if target.name == "local":
        raise TriforceError("target 'local' has no image: choose thor, blackwell or hopper (or use --local)")
    bundle = Path(ca_bundle).expanduser() if ca_bundle else None
    if bundle is not None and not bundle.is_file():
        raise TriforceError(f"CA bundle {bundle} not found: pass an existing PEM file to --ca-bundle or leave it out")
    return ImageSpec(target=target, base_image=base_image or target.base_image, tag=tag or default_tag(target.name),
                     commit=report.git_commit(short=True), ca_bundle=bundle)


def render_dockerfile(spec: ImageSpec) -> str:
    cfg = image_config()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(DOCKER_DIR), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("Dockerfile.j2").render(
        target=spec.target, base_image=spec.base_image, commit=spec.commit, label_prefix=cfg["label_prefix"],
        project_dir=cfg["project_dir"], source_dir=SOURCE_DIR, light_dependencies=light_dependencies(),
        ca_bundle=CA_BUNDLE_NAME if spec.ca_bundle else "",
        pip_env="PIP_CERT=/etc/triforce/build-ca.crt " if spec.ca_bundle else "")


def build_context(spec: ImageSpec) -> io.BytesIO:
    """An in-memory tar: the rendered Dockerfile, the declared checkout paths under src/, and the CA bundle."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", render_dockerfile(spec).encode())
        for rel in image_config()["context"]:
            path = REPO_ROOT / rel
            if not path.exists():
                raise TriforceError(f"{path} (listed in docker/image.toml context) is missing from the checkout")
            tar.add(path, arcname=f"{SOURCE_DIR}/{rel}", filter=_skip_caches)
        if spec.ca_bundle:
            _add_bytes(tar, CA_BUNDLE_NAME, spec.ca_bundle.read_bytes())
    buf.seek(0)
    return buf


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _skip_caches(info: tarfile.TarInfo):
    parts = Path(info.name).parts
    return None if "__pycache__" in parts or info.name.endswith(".pyc") or info.name.endswith(".egg-info") else info


def check_platform(engine: container.Engine, spec: ImageSpec) -> None:
    arch = engine.api.version().get("Arch", "unknown")
    builds = f"linux/{_ENGINE_ARCH.get(arch, arch)}"
    if builds != spec.target.platform:
        raise UnsupportedError(
            f"target {spec.target.name} is {spec.target.platform} but the engine at {engine.where} builds {builds}: "
            f"the docker SDK's classic builder cannot cross-build; run build-image against a {spec.target.platform} "
            f"engine (--host ssh://<thor>) or pipe `invoke build-image --print` into `docker buildx build --platform "
            f"{spec.target.platform}`")


def build_image(engine: container.Engine, spec: ImageSpec, log=print) -> str:
    """Build spec.tag on the engine, streaming the builder's output; return the image id.

    The engine reports a failed step inside a successful HTTP response (`errorDetail`): that becomes a TriforceError
    naming the step."""
    check_platform(engine, spec)
    log(f"building {spec.tag} for {spec.target.name} ({spec.target.platform}) from {spec.base_image} on "
        f"{engine.where}: classic builder via the docker SDK (no BuildKit)")
    step, image_id = "(before the first step)", None
    try:
        for chunk in engine.api.build(fileobj=build_context(spec), custom_context=True, tag=spec.tag, rm=True,
                                      forcerm=True, decode=True, platform=spec.target.platform,
                                      buildargs=container.proxy_env()):
            if "errorDetail" in chunk or "error" in chunk:
                message = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error", "")
                raise TriforceError(f"image build of {spec.tag} failed at step {step}: {_one_line(message)}")
            text = chunk.get("stream", "")
            for line in text.splitlines():
                match = _STEP_RE.match(line.strip())
                if match:
                    step = f"{match.group(1)} ({_clip(match.group(2), 60)})"
                if line.strip():
                    log(line.rstrip())
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except container.DockerAPIError as err:
        raise TriforceError(f"image build of {spec.tag} on {engine.where} was refused: {_one_line(str(err))}") from None
    if image_id is None:
        image_id = engine.api.inspect_image(spec.tag)["Id"]
    log(f"built {spec.tag} ({image_id[:19]})")
    return image_id


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, width: int) -> str:
    text = _one_line(text)
    return text if len(text) <= width else text[:width - 3] + "..."

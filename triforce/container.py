"""The eval container `turbo_pi_eval` and the Docker engine it runs on (local, DOCKER_HOST, a docker context, ssh://).

Everything goes through the docker SDK's low-level APIClient: engine connection, `up`, exec with streamed output and
an exit code, and put/get of files with tar archives. Engine paths (bind mounts) are paths on the engine's host.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import docker
from docker.constants import DEFAULT_UNIX_SOCKET
from docker.context.config import get_current_context_name
from docker.errors import APIError, DockerException, NotFound
from docker.types import DeviceRequest
from paramiko.ssh_exception import SSHException

from .errors import TriforceError, UnsupportedError
from .targets import get_target

DockerAPIError = APIError
PING_TIMEOUT_S = 15  # first contact; ssh to a robot can take a few seconds
LABEL_PREFIX = "org.triforce"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
Log = Callable[[str], None]


@dataclass
class Engine:
    api: docker.APIClient
    where: str          # how the user named it: the --host value, a context name, DOCKER_HOST, or the default URL

    @property
    def is_local(self) -> bool:
        """Bind mounts of this checkout only make sense on an engine of this machine."""
        return self.api.base_url == "http+docker://localhost"  # what the SDK makes of a unix:// socket


# ── engine connection ────────────────────────────────────────────────────────────────────────────────────────────────
def connect(host: str | None = None) -> Engine:
    """An engine by URL (unix://, tcp://, ssh://), by docker context name, or from DOCKER_HOST / the current context."""
    where, kwargs = _client_kwargs(host)
    try:
        api = docker.APIClient(timeout=PING_TIMEOUT_S, **kwargs)
        api.ping()
    except (DockerException, OSError, SSHException) as err:
        raise TriforceError(f"Docker engine at {where} is unreachable ({_short(err)}): start dockerd there or fix "
                            f"--host / DOCKER_HOST / the docker context") from None
    api.timeout = None  # builds and validation runs stream for long; only the first contact is time-limited
    return Engine(api=api, where=where)


def _client_kwargs(host: str | None) -> tuple[str, dict]:
    """Resolve the engine as the docker CLI does: --host, DOCKER_HOST, DOCKER_CONTEXT, then the current context."""
    if host and "://" in host:
        return host, _url_kwargs(host)
    if host:
        return f"context {host}", _context_kwargs(host)
    if os.environ.get("DOCKER_HOST"):
        kwargs = docker.utils.kwargs_from_env()  # also DOCKER_TLS_VERIFY / DOCKER_CERT_PATH
        return f"DOCKER_HOST={os.environ['DOCKER_HOST']}", {**kwargs, **_url_kwargs(kwargs["base_url"])}
    name = os.environ.get("DOCKER_CONTEXT") or get_current_context_name()
    if name == "default":
        return DEFAULT_UNIX_SOCKET.replace("http+unix://", "unix://"), {}
    return f"context {name}", _context_kwargs(name)


def _context_kwargs(name: str) -> dict:
    """A docker CLI context from its store ($DOCKER_CONFIG or ~/.docker)/contexts: meta/<sha256(name)>/meta.json, TLS
    material in tls/<sha256(name)>/docker/. (The SDK's own reader only finds the store when a config.json exists.)"""
    store = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "contexts"
    context_id = hashlib.sha256(name.encode()).hexdigest()
    meta = store / "meta" / context_id / "meta.json"
    if not meta.is_file():
        raise TriforceError(f"'{name}' is neither an engine URL (unix://, tcp://, ssh://) nor a docker context in "
                            f"{store}: see `docker context ls`")
    endpoint = json.loads(meta.read_text()).get("Endpoints", {}).get("docker", {})
    if not endpoint.get("Host"):
        raise TriforceError(f"docker context {name} ({meta}) has no docker endpoint: recreate it with "
                            f"`docker context create {name} --docker host=...`")
    kwargs = _url_kwargs(endpoint["Host"])
    tls = store / "tls" / context_id / "docker"
    if tls.is_dir():
        cert = (str(tls / "cert.pem"), str(tls / "key.pem")) if (tls / "cert.pem").is_file() else None
        ca = str(tls / "ca.pem") if (tls / "ca.pem").is_file() else None
        kwargs["tls"] = docker.tls.TLSConfig(client_cert=cert, ca_cert=ca,
                                             verify=bool(ca) and not endpoint.get("SkipTLSVerify"))
    return kwargs


def _url_kwargs(url: str) -> dict:
    """ssh:// goes through paramiko (docker[ssh]), which reads ~/.ssh/config and trusts only ~/.ssh/known_hosts."""
    return {"base_url": url}


_KNOWN_CAUSES = ("Connection refused", "No such file or directory", "Permission denied", "timed out",
                 "Name or service not known", "Temporary failure in name resolution", "No route to host")


def _short(err: Exception) -> str:
    """The cause in a few words: the SDK's messages nest several layers of urllib3 detail."""
    text = " ".join(str(err).split())
    for cause in _KNOWN_CAUSES:
        if cause.lower() in text.lower():
            return cause.lower()
    return text if len(text) < 160 else text[:157] + "..."


def proxy_env() -> dict:
    """Proxy settings of this shell, passed to builds (docker's predefined build args)."""
    return {k: os.environ[k] for k in _PROXY_VARS if os.environ.get(k)}


# ── several engines ──────────────────────────────────────────────────────────────────────────────────────────────────
def on_hosts(hosts: list[str] | None, work: Callable[[Engine, Log], int], log: Log = print) -> int:
    """Run work(engine, log) against each host (None: the default engine) and return the worst exit code.

    One host: its error propagates as is. Several: each host's failure is reported on its line, the rest still run,
    and a per-host summary follows."""
    hosts = list(hosts or [None])
    if len(hosts) == 1:
        return work(connect(hosts[0]), log)
    results = {}
    for host in hosts:
        def host_log(line, _host=host):
            log(f"[{_host}] {line}")
        try:
            results[host] = work(connect(host), host_log)
        except TriforceError as err:
            host_log(f"error: {err}")
            results[host] = err.exit_code
    for host, code in results.items():
        log(f"{host}: {'ok' if code == 0 else f'FAILED (exit {code})'}")
    return max(results.values())


# ── container state ──────────────────────────────────────────────────────────────────────────────────────────────────
def inspect(engine: Engine, name: str) -> dict | None:
    try:
        return engine.api.inspect_container(name)
    except NotFound:
        return None


def require_running(engine: Engine, name: str) -> dict:
    info = inspect(engine, name)
    if info is None:
        raise TriforceError(f"container {name} not found on {engine.where}: create it with `invoke up --name {name}`")
    state = info["State"]["Status"]
    if state != "running":
        raise TriforceError(f"container {name} on {engine.where} is {state}, not running: start it with "
                            f"`invoke up --name {name}`")
    return info


def image_labels(engine: Engine, image: str) -> dict:
    try:
        return engine.api.inspect_image(image)["Config"].get("Labels") or {}
    except NotFound:
        raise TriforceError(f"image {image} not found on {engine.where}: build it with `invoke build-image`") from None


# ── up ───────────────────────────────────────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class UpResult:
    name: str
    image: str
    action: str     # created | reused | started | replaced
    gpu: str        # how the GPU is given to it


def up(engine: Engine, name: str, image: str, mounts: dict[str, str], replace: bool = False, log: Log = print
       ) -> UpResult:
    """Create and start the eval container, or reuse the one already there when it runs the same image.

    mounts: engine-host path -> container path."""
    if not _has_image(engine, image):
        raise TriforceError(f"image {image} not found on {engine.where}: build it with `invoke build-image`")
    image_id = engine.api.inspect_image(image)["Id"]
    existing = inspect(engine, name)
    action = "created"
    if existing is not None:
        if existing["Image"] == image_id:
            if existing["State"]["Status"] == "running":
                return UpResult(name, image, "reused", _gpu_of(existing))
            engine.api.start(name)
            _wait_running(engine, name)
            return UpResult(name, image, "started", _gpu_of(existing))
        if not replace:
            other = existing["Config"]["Image"]
            what = f"an older build of {image}" if other == image else f"another image ({other}, not {image})"
            raise TriforceError(f"container {name} on {engine.where} runs {what}: pass --replace to recreate it, "
                                f"or choose another --name")
        log(f"removing container {name} (image {existing['Config']['Image']}) to replace it")
        engine.api.remove_container(name, force=True)
        action = "replaced"
    host_config, gpu = _host_config(engine, image, mounts)
    engine.api.create_container(image, name=name, command=["sleep", "infinity"], host_config=host_config,
                                labels={f"{LABEL_PREFIX}.role": "eval"})
    engine.api.start(name)
    _wait_running(engine, name)
    return UpResult(name, image, action, gpu)


def _has_image(engine: Engine, image: str) -> bool:
    try:
        engine.api.inspect_image(image)
        return True
    except NotFound:
        return False


def _host_config(engine: Engine, image: str, mounts: dict[str, str]) -> tuple[dict, str]:
    """The target's runtime (nvidia on Jetson), or all GPUs by device request where the engine has nvidia's runtime."""
    target_name = image_labels(engine, image).get(f"{LABEL_PREFIX}.target")
    runtime = get_target(target_name).docker_runtime if target_name else ""
    runtimes = engine.api.info().get("Runtimes") or {}
    binds = {src: {"bind": dst, "mode": "rw"} for src, dst in mounts.items()}
    if runtime:
        if runtime not in runtimes:
            raise UnsupportedError(f"image {image} (target {target_name}) needs the '{runtime}' runtime but the engine "
                                   f"at {engine.where} has only {', '.join(runtimes) or 'none'}: install "
                                   f"nvidia-container-toolkit there (JetPack ships it)")
        return engine.api.create_host_config(binds=binds, runtime=runtime, init=True, ipc_mode="host"), \
            f"runtime {runtime}"
    if "nvidia" in runtimes:
        request = DeviceRequest(count=-1, capabilities=[["gpu"]])
        return engine.api.create_host_config(binds=binds, device_requests=[request], init=True, ipc_mode="host"), \
            "all GPUs (device request)"
    return engine.api.create_host_config(binds=binds, init=True, ipc_mode="host"), \
        "none: the engine has no nvidia runtime (GPU checks will report no GPU)"


def _gpu_of(info: dict) -> str:
    host = info["HostConfig"]
    if host.get("Runtime") and host["Runtime"] != "runc":
        return f"runtime {host['Runtime']}"
    return "all GPUs (device request)" if host.get("DeviceRequests") else "none"


def _wait_running(engine: Engine, name: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = inspect(engine, name)
        if info and info["State"]["Status"] == "running":
            return
        if info and info["State"]["Status"] == "exited":
            break
        time.sleep(0.2)
    logs = engine.api.logs(name, tail=5).decode(errors="replace")
    raise TriforceError(f"container {name} on {engine.where} did not stay running ({_short(Exception(logs))}): "
                        f"check `docker logs {name}`")


# ── exec ─────────────────────────────────────────────────────────────────────────────────────────────────────────────
def exec_stream(engine: Engine, name: str, argv: list[str], log: Log = print, env: dict | None = None,
                workdir: str | None = None) -> int:
    """Run argv in the container, stream its stdout/stderr line by line to log, return its exit code."""
    exec_id = engine.api.exec_create(name, argv, environment=env, workdir=workdir)["Id"]
    pending = {0: b"", 1: b""}
    for chunks in engine.api.exec_start(exec_id, stream=True, demux=True):
        for i, chunk in enumerate(chunks):
            if not chunk:
                continue
            *lines, pending[i] = (pending[i] + chunk).split(b"\n")
            for line in lines:
                log(line.decode(errors="replace").rstrip("\r"))
    for rest in pending.values():
        if rest:
            log(rest.decode(errors="replace"))
    return engine.api.exec_inspect(exec_id)["ExitCode"]


def exec_capture(engine: Engine, name: str, argv: list[str], env: dict | None = None) -> tuple[int, str, str]:
    """Run argv in the container; return (exit code, stdout, stderr)."""
    exec_id = engine.api.exec_create(name, argv, environment=env)["Id"]
    out, err = engine.api.exec_start(exec_id, demux=True)
    code = engine.api.exec_inspect(exec_id)["ExitCode"]
    return code, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")


# ── files in and out ─────────────────────────────────────────────────────────────────────────────────────────────────
def put_files(engine: Engine, name: str, dest_dir: str, files: list[Path]) -> None:
    """Copy local files into dest_dir of the container (created if missing)."""
    code, _, err = exec_capture(engine, name, ["mkdir", "-p", dest_dir])
    if code != 0:
        raise TriforceError(f"cannot create {dest_dir} in {name} on {engine.where}: {_short(Exception(err))}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in files:
            tar.add(path, arcname=Path(path).name)
    if not engine.api.put_archive(name, dest_dir, buf.getvalue()):
        raise TriforceError(f"copying {len(files)} file(s) into {name}:{dest_dir} on {engine.where} failed")


def get_dir(engine: Engine, name: str, path: str, local_dir: Path) -> list[Path]:
    """Copy the contents of a container directory into local_dir; return the files written."""
    try:
        stream, _ = engine.api.get_archive(name, path)
    except NotFound:
        raise TriforceError(f"{path} does not exist in {name} on {engine.where}: nothing to copy back") from None
    buf = io.BytesIO(b"".join(stream))
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    written = []
    top = PurePosixPath(path).name
    with tarfile.open(fileobj=buf) as tar:
        for member in tar.getmembers():
            rel = PurePosixPath(member.name).relative_to(top) if member.name != top else None
            if rel is None or not member.isfile() or ".." in rel.parts:
                continue
            dest = local_dir.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(member).read())
            written.append(dest)
    return written


# ── one-off runs (build-kernels --in-container) ──────────────────────────────────────────────────────────────────────
def run_once(engine: Engine, image: str, argv: list[str], binds: dict[str, str], workdir: str, env: dict,
             log: Log = print) -> int:
    """Run argv in a fresh container of image (removed afterwards), streaming its output; return its exit code.

    It gets the same runtime/GPU as `up` gives the eval container (the build imports torch and checks the wheel)."""
    host_config, gpu = _host_config(engine, image, binds)
    log(f"[{image}] GPU: {gpu}")
    created = engine.api.create_container(image, command=argv, working_dir=workdir, environment=env,
                                          host_config=host_config, user=f"{os.getuid()}:{os.getgid()}",
                                          labels={f"{LABEL_PREFIX}.role": "build"})
    cid = created["Id"]
    try:
        engine.api.start(cid)
        pending = b""
        for chunk in engine.api.logs(cid, stream=True, follow=True):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                log(line.decode(errors="replace").rstrip("\r"))
        if pending:
            log(pending.decode(errors="replace"))
        return engine.api.wait(cid)["StatusCode"]
    finally:
        engine.api.remove_container(cid, force=True)


def invoke_in_image(engine: Engine, image: str, invoke_argv: list[str], src_dir: Path, log: Log = print) -> int:
    """`python3 -m invoke <argv>` in a fresh container of image with this checkout bind-mounted at /src (its tasks.py
    and triforce/ are the ones used), as this user, so what it writes (wheels/) lands here owned by us."""
    if not engine.is_local:
        raise UnsupportedError(f"building in a container bind-mounts this checkout, so it needs an engine on this "
                               f"machine, not {engine.where}: run the same command on that host instead")
    env = {"PYTHONPATH": "/src", "HOME": "/tmp", "TRIFORCE_CACHE_DIR": "/src/.cache/triforce"}
    log(f"[{image}] $ python3 -m invoke {' '.join(invoke_argv)}  (checkout mounted at /src)")
    return run_once(engine, image, ["python3", "-m", "invoke", *invoke_argv],
                    binds={str(Path(src_dir).resolve()): "/src"}, workdir="/src", env=env, log=log)


def build_kernels_in_container(image: str | None, target: str, flags: dict, src_dir: str, host: str | None = None,
                               log: Log = print) -> int:
    """`invoke build-kernels` with the given flags, run inside the target's image on the mounted checkout."""
    from .image import default_tag

    argv = ["build-kernels"]
    for key, value in flags.items():
        if value is None:
            continue  # the container reads the same invoke.yaml defaults from the mounted checkout
        if key in ("wheel_dir", "cutlass_dir"):
            value = _mounted_path(value, src_dir, key)
        argv += [f"--{key.replace('_', '-')}", str(value)]
    engine = connect(host)
    image = image or default_tag(target)
    platform = image_labels(engine, image).get(f"{LABEL_PREFIX}.platform")
    arch = engine.api.version().get("Arch")
    if platform and platform != f"linux/{arch}":
        raise UnsupportedError(f"image {image} is {platform} but the engine at {engine.where} runs linux/{arch}: "
                               f"build in the container on a {platform} machine (e.g. on the Thor itself)")
    return invoke_in_image(engine, image, argv, Path(src_dir), log)


def _mounted_path(value: str, src_dir: str, flag: str) -> str:
    """A path as the container sees it: only the checkout is mounted (at /src)."""
    path = Path(src_dir, value).resolve()
    root = Path(src_dir).resolve()
    if path != root and root not in path.parents:
        raise TriforceError(f"--{flag.replace('_', '-')} {value} is outside the checkout, the only folder mounted into "
                            f"the build container: use a path inside {root}")
    return str(PurePosixPath("/src", *path.relative_to(root).parts))

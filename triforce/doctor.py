"""doctor: what the kernel build and the container stages need, found or not, and how to get what is missing."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from . import cutlass, kernels, sass
from .errors import TriforceError
from .targets import get_target


@dataclass
class Check:
    name: str
    ok: bool
    value: str
    fix: str = ""          # how to get it, when not ok
    required: bool = True  # a missing optional piece (Docker, GPU) does not fail the report


def _probe(name: str, fn, fix: str, required: bool = True) -> Check:
    """Run one probe; a TriforceError becomes a failed check carrying its message."""
    try:
        return fn()
    except TriforceError as err:
        return Check(name, False, str(err), fix, required)


def _target_check(target: str) -> Check:
    t = get_target(target)
    if t.arch == "none":
        return Check("target", False, f"{t.name}: no GPU to detect the arch from", "pass --target thor|blackwell|hopper")
    return Check("target", True, f"{t.name}: {t.arch} (cc {t.compute_capability}, {t.platform}, {t.family})")


def _nvcc_checks(arch: str) -> list[Check]:
    fix = "pip install -e . (pins nvidia-cuda-nvcc==13.0.88 and its nvvm/crt/cccl), or set CUDA_HOME to CUDA 13"
    try:
        tc = kernels.find_toolchain()
    except TriforceError as err:
        return [Check("nvcc", False, str(err), fix)]
    archs = subprocess.run([str(tc.nvcc), "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout.split()
    checks = [Check("nvcc", True, f"{tc.version} at {tc.nvcc} ({tc.origin}); CUDA_HOME for the build: {tc.cuda_home}"),
              Check("nvcc archs", bool(archs), " ".join(archs) or "nvcc --list-gpu-arch printed nothing", fix)]
    if arch and arch != "none":
        try:
            kernels.require_nvcc_for(tc, arch)
            with tempfile.TemporaryDirectory() as tmp:
                kernels.smoke_compile(tc, arch, Path(tmp))
            checks.append(Check(f"compile {arch}", True, "a test kernel compiles"))
        except TriforceError as err:
            checks.append(Check(f"compile {arch}", False, str(err), fix))
    return checks


def _cuobjdump_check() -> Check:
    tool = sass.find_cuobjdump()
    has_nvdisasm = (tool.parent / "nvdisasm").is_file() or shutil.which("nvdisasm")
    if not has_nvdisasm:
        return Check("cuobjdump", False, f"{tool}, but no nvdisasm beside it (cuobjdump -sass needs it)",
                     "pip install -e . (pins nvidia-cuda-nvdisasm)")
    return Check("cuobjdump", True, f"{tool} (+ nvdisasm), for the SASS gate")


def _cutlass_checks() -> list[Check]:
    source, version = cutlass.pinned_source()
    checks = [Check("CUTLASS (pinned)", True, f"nvidia-cutlass {version}, CUTLASS {cutlass.cutlass_version(source)} "
                                              f"source at {source}")]
    root = cutlass.default_cutlass_dir()
    if not (root / cutlass.VERSION_HEADER).is_file():
        checks.append(Check("CUTLASS (patched)", False, f"not materialized at {root}",
                            "invoke patch-cutlass (build-kernels also does it on first use)", required=False))
    else:
        status = cutlass.check(root)
        checks.append(Check("CUTLASS (patched)", status.ok,
                            f"{root}: " + ("SM110 rules applied" if status.ok else status.problems[0]),
                            "invoke patch-cutlass", required=False))
    return checks


def _torch_checks() -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("torch", False, "not installed", "pip install -e . (pins torch)")]
    cuda = torch.version.cuda
    checks = [Check("torch", bool(cuda), f"{torch.__version__} built for CUDA {cuda}" if cuda else
                    f"{torch.__version__} is a CPU-only build", "install a CUDA 13 torch build (pip install -e .)")]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        checks.append(Check("GPU", True, f"{torch.cuda.get_device_name(0)}, compute capability {major}.{minor}"))
    else:
        checks.append(Check("GPU", False, "none visible (fine for building; validate/bench need one)",
                            "run GPU stages on Thor or a lent GPU", required=False))
    return checks


def _docker_check() -> Check:
    fix = "install and start the Docker engine (apt-get install docker.io; dockerd), or set DOCKER_HOST"
    try:
        import docker
        client = docker.from_env(timeout=5)
        version = client.version().get("Version", "?")
        return Check("Docker engine", True, f"reachable, version {version}", required=False)
    except Exception as err:  # the SDK raises several types (DockerException, requests errors): all mean unreachable
        return Check("Docker engine", False, f"not reachable ({type(err).__name__})", fix, required=False)


def probe(target: str) -> dict:
    """Every check, in the order a build needs them; report['ok'] is False when a required piece is missing."""
    target_check = _target_check(target)  # an unknown target is bad input: it raises
    arch = get_target(target).arch if target_check.ok else ""
    checks = [target_check, Check("python", True, f"{sys.version.split()[0]} at {sys.executable}")]
    checks += _nvcc_checks(arch)
    checks.append(_probe("cuobjdump", _cuobjdump_check, "pip install -e . (pins nvidia-cuda-cuobjdump)"))
    try:
        checks += _cutlass_checks()
    except TriforceError as err:
        checks.append(Check("CUTLASS (pinned)", False, str(err), "pip install -e . (pins nvidia-cutlass==4.2.0.0)"))
    checks += _torch_checks()
    checks.append(_docker_check())
    return {"target": target, "ok": all(c.ok for c in checks if c.required), "checks": [asdict(c) for c in checks]}


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)


def to_table(report: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"triforce doctor (target {report['target']})", show_lines=False)
    for col in ("check", "status", "found", "how to get it"):
        table.add_column(col, overflow="fold")
    for c in report["checks"]:
        status = "ok" if c["ok"] else ("MISSING" if c["required"] else "missing (optional)")
        table.add_row(c["name"], status, c["value"], "" if c["ok"] else c["fix"])
    out = io.StringIO()
    Console(file=out, width=160, force_terminal=False).print(table)
    verdict = "ready to build" if report["ok"] else "NOT ready: fix the MISSING rows"
    return out.getvalue() + verdict

"""Targets as data: triforce/data/targets.toml, resolved to a Target (the `local` one from the GPU, if any)."""

from __future__ import annotations

import platform as _platform
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from .errors import TriforceError, UnsupportedError

# Arch names that carry the arch-specific tensor-core instructions, and the compute capability they run on.
_ARCH_RE = re.compile(r"^sm_(\d+)([af]?)$")
KNOWN_ARCHS = {"sm_90a": "9.0", "sm_100a": "10.0", "sm_100f": "10.0", "sm_110a": "11.0", "sm_110f": "11.0"}


@dataclass(frozen=True)
class Target:
    name: str
    arch: str
    compute_capability: str
    platform: str
    base_image: str
    docker_runtime: str
    description: str
    env: dict = field(default_factory=dict)
    tensor_core_sass: tuple = ()

    @property
    def family(self) -> str:
        """Kernel family: 'blackwell' (tcgen05: sm_100a/sm_110a) or 'hopper' (wgmma: sm_90a)."""
        return arch_family(self.arch)


def _table() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("targets.toml").read_text())


def target_names() -> list[str]:
    return list(_table())


def get_target(name: str) -> Target:
    table = _table()
    if name not in table:
        raise TriforceError(f"unknown target '{name}': choose one of {', '.join(table)}")
    spec = dict(table[name])
    if name == "local":
        spec.update(_detect_local())
    spec["tensor_core_sass"] = tuple(spec.get("tensor_core_sass") or tensor_core_sass_for(spec["arch"]))
    return Target(name=name, **spec)


def validate_arch(arch: str) -> str:
    """Accept only arch names whose kernels carry tensor-core code; explain why plain names are refused."""
    m = _ARCH_RE.match(arch or "")
    if not m:
        raise TriforceError(f"unknown arch '{arch}': expected one of {', '.join(KNOWN_ARCHS)}")
    if not m.group(2):
        raise UnsupportedError(
            f"arch '{arch}' has no 'a'/'f' suffix: nvcc would compile the tcgen05/wgmma kernels to a stub with no "
            f"tensor-core code (it traps at run time); use '{arch}a'")
    if arch not in KNOWN_ARCHS:
        raise TriforceError(f"unknown arch '{arch}': expected one of {', '.join(KNOWN_ARCHS)}")
    return arch


def arch_family(arch: str) -> str:
    return "hopper" if arch.startswith("sm_90") else "blackwell"


def tensor_core_sass_for(arch: str) -> tuple:
    for spec in _table().values():
        if spec["arch"] == arch:
            return tuple(spec["tensor_core_sass"])
    return ("HGMMA", "QGMMA") if arch_family(arch) == "hopper" else ("UTCQMMA", "UTCHMMA", "UTCOMMA", "UTCMMA")


def arch_for_capability(major: int, minor: int) -> str:
    cc = f"{major}.{minor}"
    for arch, arch_cc in KNOWN_ARCHS.items():
        if arch_cc == cc and arch.endswith("a"):
            return arch
    raise UnsupportedError(f"GPU compute capability {cc} has no Triforce kernel target (supported: 9.0, 10.0, 11.0)")


def _detect_local() -> dict:
    """The local target: arch from the first visible GPU; without one there is nothing to build for."""
    machine = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}.get(_platform.machine(), _platform.machine())
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        return {"arch": "none", "compute_capability": "none", "platform": machine}
    major, minor = torch.cuda.get_device_capability(0)
    return {"arch": arch_for_capability(major, minor), "compute_capability": f"{major}.{minor}", "platform": machine}

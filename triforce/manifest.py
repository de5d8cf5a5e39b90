"""wheels/manifest.json: the build identity of every kernel wheel, read by deploy to check it fits a container.

The contract between `build-kernels` (writes) and `deploy` (reads). One entry per wheel file, keyed by file name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import TriforceError

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class WheelRecord:
    wheel: str               # file name inside the wheel directory
    sha256: str
    package: str             # distribution name, e.g. triforce-kernels
    version: str             # full version including the local label, e.g. 0.1.0+cu130.sm110a
    arch: str                # sm_110a, sm_100a, sm_90a
    compute_capability: str  # the GPU capability the arch runs on, e.g. 11.0
    cuda_version: str        # nvcc that compiled it, e.g. 13.0.88
    cutlass_version: str
    cutlass_patch_stamp: dict  # the patch stamp (rules applied) of the CUTLASS tree it was built from
    torch_version: str       # the torch it was built against (the one that must import it)
    python_tag: str          # cp311, cp312
    platform_tag: str        # linux_x86_64, linux_aarch64
    git_commit: str
    built_at: str            # ISO-8601 UTC
    import_check: str        # Python statement that must succeed after install (deploy runs it in the container)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(wheel_dir: Path) -> dict[str, WheelRecord]:
    path = Path(wheel_dir) / MANIFEST_NAME
    if not path.is_file():
        raise TriforceError(f"no {MANIFEST_NAME} in {wheel_dir}: run `invoke build-kernels` first")
    try:
        raw = json.loads(path.read_text())
        names = {f.name for f in fields(WheelRecord)}
        return {name: WheelRecord(**{k: v for k, v in rec.items() if k in names}) for name, rec in raw["wheels"].items()}
    except (ValueError, KeyError, TypeError) as err:
        raise TriforceError(f"{path} is not a valid Triforce manifest ({err}): rebuild with `invoke build-kernels`") from None


def write_manifest(wheel_dir: Path, records: dict[str, WheelRecord]) -> Path:
    """Merge records into the manifest (other arches' wheels stay listed), written atomically."""
    wheel_dir = Path(wheel_dir)
    path = wheel_dir / MANIFEST_NAME
    existing = {}
    if path.is_file():
        existing = {k: asdict(v) for k, v in read_manifest(wheel_dir).items() if (wheel_dir / k).is_file()}
    existing.update({k: asdict(v) for k, v in records.items()})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"schema": 1, "wheels": existing}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def verify_wheel(wheel_dir: Path, record: WheelRecord) -> Path:
    """The wheel exists and its bytes are the ones the manifest describes."""
    path = Path(wheel_dir) / record.wheel
    if not path.is_file():
        raise TriforceError(f"manifest lists {record.wheel} but {path} does not exist: rebuild with `invoke build-kernels`")
    if sha256_of(path) != record.sha256:
        raise TriforceError(f"{path} does not match its manifest sha256 (modified after the build?): rebuild it")
    return path

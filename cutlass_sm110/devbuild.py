"""Development build of triforce_kernels._C for the GPU at hand (tests and benches on a lent GPU, no wheel).

The wheel is built by triforce/kernels.py; this compiles the same units of kernels.toml with the same flags through
torch.utils.cpp_extension.load, and registers the module as `triforce_kernels._C` so the wrappers use it.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Compute capability -> (family, TORCH_CUDA_ARCH_LIST entry). 'a' targets only: plain ones compile to stubs.
_ARCHS = {(9, 0): ("hopper", "9.0a"), (10, 0): ("blackwell", "10.0a"), (11, 0): ("blackwell", "11.0a")}
# the arch a prebuild compiles a family for (bench/prebuild_device.sh): the lent GPU's, or Thor's
_PREBUILD_ARCH = {"hopper": "9.0a", "blackwell": "11.0a"}


def cutlass_source() -> Path:
    """CUTLASS source root (include/, tools/util/include): TRIFORCE_CUTLASS_SOURCE, the carried copy, or the wheel."""
    for cand in (os.environ.get("TRIFORCE_CUTLASS_SOURCE"), REPO / ".device_carry" / "cutlass"):
        if cand and (Path(cand) / "include" / "cutlass").is_dir():
            return Path(cand)
    try:
        import cutlass_library  # the pinned nvidia-cutlass wheel
    except ImportError:
        raise RuntimeError("devbuild: no CUTLASS source: set TRIFORCE_CUTLASS_SOURCE to a tree with include/ and "
                           "tools/util/include, copy one to .device_carry/cutlass, or pip install "
                           "nvidia-cutlass==4.2.0.0") from None
    return Path(cutlass_library.__file__).parent / "source"


def units(family: str) -> list[dict]:
    table = tomllib.loads((HERE / "kernels.toml").read_text())
    return [u for u in table["unit"] if family in u["families"]]


def library_flags(family: str, build_dir: Path) -> tuple[list[str], list[str]]:
    """(include paths, linker flags) of the CUDA libraries the family's units link (kernels.toml `libraries`), found
    as the wheel build finds them (triforce.kernels.cuda_library)."""
    from torch.utils import cpp_extension

    if str(REPO) not in sys.path:       # a prebuild runs with only cutlass_sm110 on the path
        sys.path.insert(0, str(REPO))
    from triforce.kernels import cuda_library

    includes, ldflags = [], []
    for name in sorted({lib for u in units(family) for lib in u.get("libraries", ())}):
        headers, shared = cuda_library(name, Path(cpp_extension.CUDA_HOME or "/usr/local/cuda"), build_dir / "include")
        includes.append(str(headers))
        ldflags += [f"-L{shared.parent}", f"-l:{shared.name}"]
    return includes, ldflags


def _family_arch() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("devbuild: no CUDA GPU visible; build wheels with `invoke build-kernels` instead")
    cc = torch.cuda.get_device_capability()
    if cc not in _ARCHS:
        raise RuntimeError(f"devbuild: compute capability {cc[0]}.{cc[1]} has no kernel family; expected one of "
                           f"{sorted(_ARCHS)}")
    return _ARCHS[cc]


def fingerprint(family: str, arch: str) -> dict:
    """What a build depends on: torch and Python (the extension's ABI), the arch, every source and header."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for f in sorted(HERE.glob("csrc/*")) + [HERE / "kernels.toml", Path(__file__)]:
        digest.update(f.name.encode() + f.read_bytes())
    return {"torch": torch.__version__, "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "family": family,
            "arch": arch, "sources": digest.hexdigest()}


def _register(module):
    sys.modules["triforce_kernels._C"] = module
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import triforce_kernels

    triforce_kernels._C = module
    return triforce_kernels


def compile_extension(family: str, arch: str, build_dir: Path, verbose: bool = False):
    """Compile the family's units with torch's ninja build into build_dir/_C.so and import it (no GPU needed)."""
    from torch.utils import cpp_extension

    os.environ["TORCH_CUDA_ARCH_LIST"] = arch  # exactly one -gencode, the arch-specific one
    src = cutlass_source()
    define = f"-DTRIFORCE_FAMILY_{family.upper()}"
    sources = [str(HERE / s) for u in units(family) for s in u["sources"]]
    build_dir.mkdir(parents=True, exist_ok=True)
    lib_includes, ldflags = library_flags(family, build_dir)
    return cpp_extension.load(
        name="_C", sources=sources, build_directory=str(build_dir), verbose=verbose,
        extra_include_paths=[str(src / "include"), str(src / "tools" / "util" / "include"), str(HERE / "csrc"),
                             *lib_includes],
        extra_ldflags=ldflags,
        extra_cflags=["-O2", define],  # the C++ standard torch's headers need (torch picks it)
        extra_cuda_cflags=["-std=c++17", "--expt-relaxed-constexpr", "-DNDEBUG", define])


def prebuilt_dir(family: str) -> Path:
    return REPO / ".device_carry" / f"devbuild-{family}"


def load_prebuilt(family: str, arch: str):
    """The carried build of this exact checkout, torch and Python (bench/prebuild_device.sh), or None."""
    import importlib.util
    import json

    folder = prebuilt_dir(family)
    stamp, so = folder / "stamp.json", folder / "_C.so"
    if not (stamp.is_file() and so.is_file()):
        return None
    want = fingerprint(family, arch)
    if json.loads(stamp.read_text()) != want:
        print(f"[devbuild] {folder} is for another checkout, torch or Python; compiling", flush=True)
        return None
    spec = importlib.util.spec_from_file_location("_C", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f"[devbuild] using the carried build {so}", flush=True)
    return module


def build(verbose: bool = False):
    import torch  # noqa: F401  (the extension links against its libraries)

    family, arch = _family_arch()
    module = load_prebuilt(family, arch)
    if module is None:
        build_dir = Path(os.environ.get("TRIFORCE_DEVBUILD_DIR", REPO / "build" / f"devbuild-{family}"))
        module = compile_extension(family, arch, build_dir, verbose)
    return _register(module)


def prebuild(family: str) -> Path:
    """Compile a family's extension here (no GPU) for a lent GPU with this Python and torch, with its stamp."""
    import json
    import shutil

    arch = _PREBUILD_ARCH[family]
    stamp = fingerprint(family, arch)   # of the sources as the compile starts (an edit meanwhile must not match)
    build_dir = REPO / "build" / f"prebuild-{family}"
    compile_extension(family, arch, build_dir, verbose=False)
    folder = prebuilt_dir(family)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stamp.json").unlink(missing_ok=True)   # no valid stamp beside a library being replaced
    shutil.copy2(build_dir / "_C.so", folder / "_C.so")
    (folder / "stamp.json").write_text(json.dumps(stamp, indent=1) + "\n")
    return folder / "_C.so"


def load(verbose: bool = False):
    """The installed triforce_kernels if its extension imports, else a development build of this checkout."""
    try:
        import triforce_kernels
        from triforce_kernels import _C  # noqa: F401

        return triforce_kernels
    except ImportError:
        return build(verbose)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--prebuild" or sys.argv[2] not in _PREBUILD_ARCH:
        sys.exit("usage: devbuild.py --prebuild hopper|blackwell")
    print(prebuild(sys.argv[2]))

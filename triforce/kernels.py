"""build-kernels: compile the CUTLASS units of cutlass_sm110/kernels.toml for one arch into a wheel + manifest.

The compile runs torch.utils.cpp_extension (CUDAExtension, BuildExtension, ninja) in a child Python, because torch
reads CUDA_HOME when it is imported and the build pins its own nvcc. The ninja build directory build/kernels/<arch>/
is kept, so a rebuild with nothing changed only relinks, re-gates and re-packs. After every build the SASS gate
(triforce/sass.py) must pass before a wheel is written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Callable

from . import cutlass, sass
from .errors import TriforceError, UnsupportedError
from .manifest import WheelRecord, sha256_of, write_manifest
from .report import git_commit
from .targets import KNOWN_ARCHS, arch_family, get_target, tensor_core_sass_for, validate_arch

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNELS_DIR = REPO_ROOT / "cutlass_sm110"
PACKAGE = "triforce_kernels"
_NVCC_VERSION_RE = re.compile(r"release (\d+)\.(\d+), V(\d+\.\d+\.\d+)")
_NINJA_STEP_RE = re.compile(r"^\[(\d+)/(\d+)\]\s")
_UNIT_KEYS = {"name", "sources", "families", "gemm_kernel_regex", "include_examples_common", "tensor_core_sass",
              "libraries"}


def _toolchain_data() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("toolchain.toml").read_text())


# ── kernels.toml ───────────────────────────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Unit:
    name: str
    sources: tuple
    families: tuple
    gemm_kernel_regex: str = ""
    include_examples_common: bool = False
    tensor_core_sass: tuple = ()   # overrides the target's opcodes (e.g. warp-level HMMA for a few-row kernel)
    libraries: tuple = ()          # CUDA libraries the unit links (e.g. cublasLt), found beside the toolkit or on PyPI


@dataclass(frozen=True)
class KernelSpec:
    root: Path
    name: str
    version: str
    units: tuple

    def units_for(self, family: str) -> list[Unit]:
        units = [u for u in self.units if family in u.families]
        if not units:
            raise UnsupportedError(f"{self.root / 'kernels.toml'} declares no unit for the {family} family: add one "
                                   f"with families = [\"{family}\"]")
        if not any(u.gemm_kernel_regex for u in units):
            raise TriforceError(f"{self.root / 'kernels.toml'}: no {family} unit declares gemm_kernel_regex, so the "
                                "SASS gate would pass vacuously: declare it for the GEMM units")
        return units


def load_spec(kernels_dir: Path = KERNELS_DIR) -> KernelSpec:
    path = Path(kernels_dir).resolve() / "kernels.toml"
    if not path.is_file():
        raise TriforceError(f"no kernels.toml in {kernels_dir}: the kernel sources (cutlass_sm110/) are missing")
    try:
        raw = tomllib.loads(path.read_text())
        package = raw["package"]
        units = []
        for u in raw["unit"]:
            unknown = set(u) - _UNIT_KEYS
            if unknown or not {"name", "sources", "families"} <= set(u):
                raise TriforceError(f"{path}: unit '{u.get('name', '?')}' needs name, sources, families and may add "
                                    f"gemm_kernel_regex, include_examples_common, tensor_core_sass, libraries "
                                    f"(unknown: {sorted(unknown)})")
            re.compile(u.get("gemm_kernel_regex", ""))
            units.append(Unit(u["name"], tuple(u["sources"]), tuple(u["families"]), u.get("gemm_kernel_regex", ""),
                              bool(u.get("include_examples_common", False)), tuple(u.get("tensor_core_sass", ())),
                              tuple(u.get("libraries", ()))))
    except (KeyError, TypeError, tomllib.TOMLDecodeError, re.error) as err:
        raise TriforceError(f"{path} is not a valid kernels.toml ({type(err).__name__}: {err}): see the format in "
                            "README 'Build the kernels'") from None
    missing = [s for u in units for s in u.sources if not (path.parent / s).is_file()]
    if missing:
        raise TriforceError(f"{path} lists sources that do not exist: {', '.join(missing)}")
    return KernelSpec(path.parent, package["name"], package["version"], tuple(units))


# ── toolchain ──────────────────────────────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Toolchain:
    nvcc: Path
    cuda_home: Path
    version: str   # e.g. 13.0.88
    origin: str    # CUDA_HOME, PyPI nvidia-cuda-nvcc, or PATH

    @property
    def cuda_tag(self) -> str:
        major, minor = self.version.split(".")[:2]
        return f"cu{major}{minor}"


def _pypi_cuda_home() -> Path | None:
    try:
        import nvidia
    except ImportError:
        return None
    for base in nvidia.__path__:
        if (Path(base) / "cu13" / "bin" / "nvcc").is_file():
            return Path(base) / "cu13"
    return None


def nvcc_version(nvcc: Path) -> str:
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as err:
        raise TriforceError(f"cannot run {nvcc} ({err}): fix CUDA_HOME or reinstall nvidia-cuda-nvcc") from None
    m = _NVCC_VERSION_RE.search(out)
    if not m:
        raise TriforceError(f"{nvcc} --version does not print a CUDA release: is it nvcc?")
    return m.group(3)


def _cuda_home_of(nvcc: Path) -> Path:
    """The toolkit root nvcc itself uses (a wrapper script on PATH may live elsewhere): from its dry run."""
    out = subprocess.run([str(nvcc), "--dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
    m = re.search(r"^#\$ TOP=(.+)$", out.stderr + out.stdout, re.M)
    return Path(m.group(1)).resolve() if m else nvcc.resolve().parent.parent


def find_toolchain() -> Toolchain:
    """The pinned nvcc: CUDA_HOME if set, else PyPI nvidia-cuda-nvcc (site-packages nvidia/cu13), else PATH."""
    if os.environ.get("CUDA_HOME"):
        home = Path(os.environ["CUDA_HOME"])
        nvcc = home / "bin" / "nvcc"
        if not nvcc.is_file():
            raise TriforceError(f"CUDA_HOME={home} has no bin/nvcc: point it at a CUDA 13 toolkit or unset it to use "
                                "the pinned PyPI nvcc")
        return Toolchain(nvcc, home, nvcc_version(nvcc), "CUDA_HOME")
    home = _pypi_cuda_home()
    if home:
        return Toolchain(home / "bin" / "nvcc", home, nvcc_version(home / "bin" / "nvcc"), "PyPI nvidia-cuda-nvcc")
    found = shutil.which("nvcc")
    if found:
        nvcc = Path(found)
        return Toolchain(nvcc, _cuda_home_of(nvcc), nvcc_version(nvcc), "PATH")
    raise TriforceError("no nvcc found (CUDA_HOME unset, no PyPI nvidia-cuda-nvcc, none on PATH): run "
                        "`pip install -e .` (it pins nvidia-cuda-nvcc==13.0.88)")


def require_nvcc_for(tc: Toolchain, arch: str) -> None:
    need = _toolchain_data()["min_nvcc"][arch]
    have = tuple(int(x) for x in tc.version.split(".")[:2])
    if have < tuple(int(x) for x in need.split(".")):
        raise UnsupportedError(f"nvcc {tc.version} at {tc.nvcc} ({tc.origin}) is older than {need}, the first that "
                               f"compiles {arch}: install nvidia-cuda-nvcc==13.0.88 (`pip install -e .`) or point "
                               "CUDA_HOME at CUDA 13")


def smoke_compile(tc: Toolchain, arch: str, workdir: Path) -> None:
    """Compile a one-line kernel for arch: a broken toolchain fails here in a second, not after a long build."""
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "smoke.cu"
    src.write_text("__global__ void triforce_smoke(float* x) { x[0] = 1.f; }\n")
    proc = subprocess.run([str(tc.nvcc), "-c", str(src), "-o", str(workdir / "smoke.o"), _gencode(arch)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        detail = " ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-2:])
        raise TriforceError(f"nvcc {tc.version} at {tc.nvcc} cannot compile for {arch} ({detail}): reinstall the "
                            "pinned toolchain (`pip install -e .` pins nvidia-nvvm/crt/cccl to match nvcc)")


def _gencode(arch: str) -> str:
    num = arch.removeprefix("sm_")
    return f"-gencode=arch=compute_{num},code=sm_{num}"


def default_jobs() -> int:
    """As many parallel nvcc jobs as cores and available memory allow (one CUTLASS TU peaks at ~6.5 GB)."""
    available_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                available_kb = int(line.split()[1])
    by_memory = int(available_kb / (_toolchain_data()["jobs"]["gb_per_job"] * 1024 * 1024))
    return max(1, min(os.cpu_count() or 1, by_memory))


# ── resolving what to build ────────────────────────────────────────────────────────────────────────────────────────
def resolve_arch(target: str | None, arch: str | None) -> str:
    """--arch if given (validated), else the target's arch."""
    if arch:
        return validate_arch(arch)
    spec = get_target(target or "thor")
    if spec.arch == "none":
        raise UnsupportedError(f"target '{spec.name}' found no GPU to take the arch from: pass --arch (e.g. sm_110a) "
                               "or --target thor|blackwell|hopper")
    return validate_arch(spec.arch)


# ── the compile (child process) ────────────────────────────────────────────────────────────────────────────────────
def _compile_config(spec: KernelSpec, units: list[Unit], arch: str, root: Path, tc: Toolchain, build_dir: Path) -> dict:
    family = arch_family(arch)
    flags = _toolchain_data()["flags"]
    include_dirs = [root / "include", root / "tools" / "util" / "include", spec.root / "csrc"]
    if any(u.include_examples_common for u in units):
        include_dirs.append(root / "examples" / "common")
    # PyPI's CUDA runtime ships only libcudart.so.13; the link needs a libcudart.so next to it.
    link_dir = build_dir / "link"
    link_dir.mkdir(parents=True, exist_ok=True)
    cudart = next(iter(sorted((tc.cuda_home / "lib").glob("libcudart.so.*"))), None) if (tc.cuda_home / "lib").is_dir() else None
    if cudart and not (tc.cuda_home / "lib" / "libcudart.so").exists():
        _link_unversioned(cudart, link_dir / "libcudart.so")
    libraries = sorted({lib for u in units for lib in u.libraries})
    for lib in libraries:
        headers, shared = cuda_library(lib, tc.cuda_home, build_dir / "include")
        include_dirs.append(headers)
        _link_unversioned(shared, link_dir / f"lib{lib}.so")
    return {
        "name": f"{PACKAGE}._C",
        "sources": [str(spec.root / s) for u in units for s in u.sources],
        "include_dirs": [str(p) for p in include_dirs],
        "library_dirs": [str(link_dir)],
        "libraries": libraries,
        "define_macros": [[f"TRIFORCE_FAMILY_{family.upper()}", None]],
        "cxx": flags["cxx"],
        "nvcc": flags["nvcc"] + [_gencode(arch)],
        "build_temp": str(build_dir / "obj"),
        "build_lib": str(build_dir / "lib"),
    }


def _link_unversioned(target: Path, link: Path) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def cuda_library(name: str, cuda_home: Path, shim: Path) -> tuple[Path, Path]:
    """(include folder, shared library) of a CUDA library a unit links: the toolkit's own, else the PyPI wheel
    (nvidia-cublas for cublasLt) beside torch in this Python. The include folder (shim) holds links to only this
    library's headers (cublasLt.h, cublas_api.h, ...): its PyPI include folder whole would put that copy's CUDA runtime
    headers before the toolkit's for every unit. Shared by the wheel build and cutlass_sm110/devbuild.py."""
    roots = [cuda_home]
    try:
        import nvidia
        roots += [Path(base) / "cu13" for base in nvidia.__path__]
    except ImportError:
        pass
    for root in roots:
        header = root / "include" / f"{name}.h"
        shared = sorted(p for d in ("lib64", "lib") for p in (root / d).glob(f"lib{name}.so*")) if header.is_file() else []
        if shared:
            family = re.match(r"[a-z]+", name).group(0)      # cublasLt -> cublas
            shim.mkdir(parents=True, exist_ok=True)
            for found in header.parent.glob(f"{family}*.h"):
                _link_unversioned(found, shim / found.name)
            return shim, shared[0]
    raise TriforceError(f"the CUDA library {name} (header {name}.h and lib{name}.so) is neither in {cuda_home} nor "
                        f"in a PyPI nvidia/cu13 package of this Python: install torch's CUDA libraries (pip install "
                        f"nvidia-cublas) or point CUDA_HOME at a full toolkit")


def _run_child_build(config: dict, tc: Toolchain, jobs: int, build_dir: Path, log: Callable[[str], None]) -> None:
    config_path = build_dir / "compile.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env.pop("TORCH_CUDA_ARCH_LIST", None)  # the explicit -gencode is the only arch (torch may not know 11.0a)
    env.update(CUDA_HOME=str(tc.cuda_home), MAX_JOBS=str(jobs),
               PATH=f"{tc.nvcc.parent}{os.pathsep}{env.get('PATH', '')}")
    cmd = [sys.executable, "-m", "triforce.kernels", "--compile", str(config_path)]
    proc = subprocess.Popen(cmd, cwd=build_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    start, tail, errors = time.monotonic(), [], 0
    while True:
        try:
            line = lines.get(timeout=30)
        except queue.Empty:
            log(f"  ... still compiling ({_elapsed(start)})")
            continue
        if line is None:
            break
        tail = (tail + [line.rstrip()])[-60:]
        step = _NINJA_STEP_RE.match(line)
        if step:
            src = re.search(r"(\S+\.(?:cu|cpp|cc|cxx|c))\s+-o\s", line)
            what = Path(src.group(1)).name if src else "link"
            log(f"  [{step.group(1)}/{step.group(2)}] {what} done ({_elapsed(start)})")
        elif "error" in line.lower() and not _is_traceback(line):
            errors += 1
            log(f"  {line.rstrip()[:300]}")
    if proc.wait() != 0:
        if not errors:  # nothing streamed: show the last words of the compiler/ninja, without Python's traceback
            log("\n".join(x for x in tail if not _is_traceback(x))[-4000:])
        raise TriforceError(f"compiling the kernels failed (nvcc/ninja output above; full log: rerun with "
                            f"TRIFORCE_DEBUG=1, build dir {build_dir})")


def _is_traceback(line: str) -> bool:
    """Lines of the child's Python traceback (setuptools/torch wrapping ninja's failure): noise next to nvcc's."""
    return line.startswith(("Traceback", "  File ", "    ", "RuntimeError", "subprocess.", "The above exception"))


def _elapsed(start: float) -> str:
    s = int(time.monotonic() - start)
    return f"{s // 60}:{s % 60:02d}"


def _child_compile(config_path: str) -> None:
    """Runs in the child: setuptools build_ext with torch's BuildExtension (ninja) for one extension."""
    from setuptools import setup
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    cfg = json.loads(Path(config_path).read_text())
    ext = CUDAExtension(name=cfg["name"], sources=cfg["sources"], include_dirs=cfg["include_dirs"],
                        library_dirs=cfg["library_dirs"], libraries=cfg["libraries"],
                        define_macros=[tuple(m) for m in cfg["define_macros"]],
                        extra_compile_args={"cxx": cfg["cxx"], "nvcc": cfg["nvcc"]})
    # --force: setuptools would skip the build when no .cu is newer than the .so, missing header edits; ninja's
    # depfiles decide what really recompiles.
    setup(name="triforce-kernels-build", ext_modules=[ext], cmdclass={"build_ext": BuildExtension},
          script_args=["-q", "build_ext", "--build-temp", cfg["build_temp"], "--build-lib", cfg["build_lib"], "--force"])


# ── the wheel ──────────────────────────────────────────────────────────────────────────────────────────────────────
def _python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _platform_tag() -> str:
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def write_wheel(path: Path, files: dict[str, bytes], dist: str, version: str, tag: str) -> Path:
    """A wheel from {archive name: bytes}, with METADATA, WHEEL and RECORD; fixed timestamps, atomic rename."""
    dist_info = f"{dist.replace('-', '_')}-{version}.dist-info"
    files = dict(files)
    files[f"{dist_info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
                                      "Summary: Thor Triforce CUTLASS kernels (built by `invoke build-kernels`)\n").encode()
    files[f"{dist_info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: triforce\nRoot-Is-Purelib: false\nTag: {tag}\n").encode()
    record_name = f"{dist_info}/RECORD"
    record = "\n".join([_record_line(n, d) for n, d in files.items()] + [f"{record_name},,"]) + "\n"
    files[record_name] = record.encode()
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=1)
    tmp.replace(path)
    return path


def _package_files(spec: KernelSpec, so_path: Path, build_info: dict) -> dict[str, bytes]:
    pkg_dir = spec.root / PACKAGE
    if not (pkg_dir / "__init__.py").is_file():
        raise TriforceError(f"{pkg_dir}/__init__.py is missing: the wheel needs the {PACKAGE} Python package")
    files = {}
    for f in sorted(pkg_dir.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".so") and f.name != "build_info.json":
            files[f"{PACKAGE}/{f.relative_to(pkg_dir).as_posix()}"] = f.read_bytes()
    files[f"{PACKAGE}/{so_path.name}"] = so_path.read_bytes()
    files[f"{PACKAGE}/build_info.json"] = (json.dumps(build_info, indent=2, sort_keys=True) + "\n").encode()
    return files


def _import_check(staging: Path, arch: str) -> str:
    """Import the built package with this environment's torch (as the wheel will be imported) and return the
    statement deploy re-runs in the container."""
    statement = (f"import {PACKAGE}; assert {PACKAGE}.build_info()['arch'] == '{arch}', "
                 f"{PACKAGE}.build_info()['arch']")
    env = dict(os.environ, PYTHONPATH=str(staging))
    proc = subprocess.run([sys.executable, "-c", f"import torch; {statement}"], capture_output=True, text=True,
                          env=env, cwd=staging, timeout=300)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TriforceError(f"the built {PACKAGE} does not import with torch of {sys.executable} ({detail})")
    return statement


@dataclass
class BuildResult:
    record: WheelRecord
    wheel_path: Path
    manifest_path: Path
    gate: sass.GateReport
    seconds: float


def build_kernels(arch: str | None = None, jobs: int = 0, cutlass_dir: Path | None = None,
                  wheel_dir: Path = Path("wheels"), target: str | None = "thor", kernels_dir: Path = KERNELS_DIR,
                  build_dir: Path | None = None, log: Callable[[str], None] = print) -> WheelRecord:
    """Compile, gate and pack the kernels for one arch; returns the manifest record of the wheel written."""
    return build(arch, jobs, cutlass_dir, wheel_dir, target, kernels_dir, build_dir, log).record


def build(arch: str | None = None, jobs: int = 0, cutlass_dir: Path | None = None, wheel_dir: Path = Path("wheels"),
          target: str | None = "thor", kernels_dir: Path = KERNELS_DIR, build_dir: Path | None = None,
          log: Callable[[str], None] = print) -> BuildResult:
    """build_kernels with the SASS gate report and timings (what the task prints)."""
    start = time.monotonic()
    arch = resolve_arch(target, arch)
    family = arch_family(arch)
    if jobs < 0:
        raise TriforceError(f"--jobs {jobs}: pass a positive number, or 0 for as many as memory allows")
    spec = load_spec(kernels_dir)
    units = spec.units_for(family)
    tc = find_toolchain()
    require_nvcc_for(tc, arch)
    build_dir = Path(build_dir or REPO_ROOT / "build" / "kernels" / arch).resolve()
    smoke_compile(tc, arch, build_dir / "smoke")
    root, stamp = cutlass.ensure_patched(cutlass_dir, log=log)
    jobs = jobs or default_jobs()
    import torch  # the torch that will import the wheel: recorded, and the one the child builds against

    log(f"building {spec.name} {spec.version} for {arch} ({family}): {len(units)} units, {jobs} parallel jobs, "
        f"nvcc {tc.version} ({tc.origin}), torch {torch.__version__}, CUTLASS {stamp['cutlass_version']} at {root}")
    _run_child_build(_compile_config(spec, units, arch, root, tc, build_dir), tc, jobs, build_dir, log)
    so_path = next(iter(sorted((build_dir / "lib" / PACKAGE).glob("_C*.so"))), None)
    if so_path is None:
        raise TriforceError(f"the build produced no {PACKAGE}/_C*.so under {build_dir / 'lib'}")

    regexes = {u.name: u.gemm_kernel_regex for u in units if u.gemm_kernel_regex}
    tc_sass = get_target(target).tensor_core_sass if target and get_target(target).arch == arch else tensor_core_sass_for(arch)
    unit_sass = {u.name: u.tensor_core_sass for u in units if u.tensor_core_sass}
    report = sass.gate(so_path, arch, regexes, tuple(tc_sass), unit_sass)
    log(report.summary())

    version = f"{spec.version}+{tc.cuda_tag}.{arch.replace('_', '')}"
    py, plat = _python_tag(), _platform_tag()
    identity = {"package": spec.name, "version": version, "arch": arch, "compute_capability": KNOWN_ARCHS[arch],
                "cuda_version": tc.version, "cutlass_version": stamp["cutlass_version"], "cutlass_patch_stamp": stamp,
                "torch_version": torch.__version__, "python_tag": py, "platform_tag": plat,
                "git_commit": git_commit(paths=("cutlass_sm110", "patches")),  # '-dirty': its sources differ
                "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    build_info = dict(identity, family=family, units=[u.name for u in units],
                      sass_gate={"passed": True, "gemm_kernels": len(report.gemm), "opcodes": report.opcode_counts()})
    files = _package_files(spec, so_path, build_info)

    staging = build_dir / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    import_check = _import_check(staging, arch)

    wheel_dir = Path(wheel_dir)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel_name = f"{spec.name.replace('-', '_')}-{version}-{py}-{py}-{plat}.whl"
    wheel_path = write_wheel(wheel_dir / wheel_name, files, spec.name, version, f"{py}-{py}-{plat}")
    record = WheelRecord(wheel=wheel_name, sha256=sha256_of(wheel_path), import_check=import_check, **identity)
    manifest_path = write_manifest(wheel_dir, {wheel_name: record})
    return BuildResult(record, wheel_path, manifest_path, report, time.monotonic() - start)


def describe(result: BuildResult) -> list[str]:
    r = result.record
    return [f"wheel     {result.wheel_path} ({result.wheel_path.stat().st_size / 1e6:.1f} MB, sha256 {r.sha256[:16]})",
            f"manifest  {result.manifest_path}",
            f"built for {r.arch} (cc {r.compute_capability}) with nvcc {r.cuda_version}, torch {r.torch_version}, "
            f"CUTLASS {r.cutlass_version} ({len(r.cutlass_patch_stamp['rules'])} SM110 rules) in {result.seconds:.0f} s"]


if __name__ == "__main__":  # the compile child: python -m triforce.kernels --compile <config.json>
    if len(sys.argv) == 3 and sys.argv[1] == "--compile":
        _child_compile(sys.argv[2])
    else:
        sys.exit("usage: python -m triforce.kernels --compile <config.json> (run by build-kernels)")

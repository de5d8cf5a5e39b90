"""build-kernels and the SASS gate: real nvcc compiles of the real kernel units (one full wheel per arch, shared by
the session), the rebuild time, the gate catching a real stub, and every refused input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from triforce import kernels, sass
from triforce.errors import TriforceError
from triforce.manifest import read_manifest, verify_wheel

REPO = Path(__file__).resolve().parents[1]
PROBE_CU = REPO / "tests" / "data" / "kernels" / "csrc" / "probe_mma.cu"
# Parallel nvcc jobs for the compile tests (0: the build's default). A shared dev box sets 1.
JOBS = int(os.environ.get("TRIFORCE_TEST_JOBS", "0"))
FULL_BUILD_LIMIT_S = 600
REBUILD_LIMIT_S = 30


class _Build:
    """One real build of cutlass_sm110/ for an arch: its result, log lines and wall time."""

    def __init__(self, arch: str, root: Path):
        self.arch, self.wheel_dir, self.build_dir, self.log = arch, root / "wheels", root / "build", []
        start = time.monotonic()
        self.result = kernels.build(arch=arch, jobs=JOBS, wheel_dir=self.wheel_dir, build_dir=self.build_dir,
                                    log=self._log)
        self.seconds = time.monotonic() - start

    def _log(self, line: str) -> None:
        print(line, flush=True)  # visible with -s: progress of a long compile
        self.log.append(line)


@pytest.fixture(scope="session")
def sm110a(tmp_path_factory) -> _Build:
    return _Build("sm_110a", tmp_path_factory.mktemp("sm110a"))


@pytest.fixture(scope="session")
def sm90a(tmp_path_factory) -> _Build:
    return _Build("sm_90a", tmp_path_factory.mktemp("sm90a"))


def _invoke(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "build-kernels", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def _assert_wheel(build: _Build, family: str, opcodes: set) -> None:
    record = build.result.record
    assert record.arch == build.arch and record.cuda_version == "13.0.88" and record.cutlass_version == "4.2.0"
    assert record.wheel == (f"triforce_kernels-0.1.0+cu130.{build.arch.replace('_', '')}-"
                            f"{record.python_tag}-{record.python_tag}-{record.platform_tag}.whl")
    assert read_manifest(build.wheel_dir)[record.wheel] == record
    verify_wheel(build.wheel_dir, record)
    with zipfile.ZipFile(build.wheel_dir / record.wheel) as zf:
        names = zf.namelist()
        info = json.loads(zf.read("triforce_kernels/build_info.json"))
    assert "triforce_kernels/__init__.py" in names
    assert any(n.startswith("triforce_kernels/_C") and n.endswith(".so") for n in names)
    assert any(n.endswith(".dist-info/RECORD") for n in names)
    assert {k: info[k] for k in ("version", "arch", "cuda_version", "torch_version", "git_commit", "built_at")} == \
        {k: getattr(record, k) for k in ("version", "arch", "cuda_version", "torch_version", "git_commit", "built_at")}
    assert info["family"] == family and info["sass_gate"]["passed"]
    gate = build.result.gate
    assert gate.passed and len(gate.gemm) >= 1
    warp_mma = ("w4a16_skinny_kernel", "w4a16_streamed_kernel", "mqa_cluster_attention_kernel")  # warp-level HMMA
    for name, found in gate.gemm.items():
        assert set(found) & ({"HMMA"} if any(w in name for w in warp_mma) else opcodes), (name, found)
    for kernel in warp_mma:
        assert any(kernel in name for name in gate.gemm), f"every family ships {kernel}"
    # that kernel passes only through its unit's opcode set: judged by the target's, it is named as no tensor-core GEMM
    so = next((build.build_dir / "lib" / "triforce_kernels").glob("_C*.so"))
    report = sass.evaluate(so, sass.dump_sass(so), build.arch, {"w4a16_skinny": "w4a16_skinny_kernel"},
                           tuple(sorted(opcodes)))
    assert not report.passed and "(unit 'w4a16_skinny') has no tensor-core instruction" in report.failures[0]
    assert sass.evaluate(so, sass.dump_sass(so), build.arch, {"w4a16_skinny": "w4a16_skinny_kernel"},
                         tuple(sorted(opcodes)), unit_sass={"w4a16_skinny": ("HMMA",)}).passed
    # Only the explicit -gencode reaches nvcc: no arch flag derived by torch from TORCH_CUDA_ARCH_LIST or a GPU.
    ninja = (build.build_dir / "obj" / "build.ninja").read_text()
    num = build.arch.removeprefix("sm_")
    assert ninja.count("-gencode") == 1 and f"-gencode=arch=compute_{num},code=sm_{num}" in ninja
    # pip accepts the wheel, and what it installs imports with this torch (the manifest's import check).
    target = build.build_dir / "pip-target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(build.wheel_dir / record.wheel)], check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-c", f"import torch; {record.import_check}"], check=True, cwd=target,
                   env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, timeout=300)
    # cuBLASLt with a chosen algorithm is in every family: the extension links cublasLt and loads beside torch's copy
    subprocess.run([sys.executable, "-c", "import torch, triforce_kernels as t; assert t.has_op('lt_matmul') and "
                    "t.has_op('lt_matmul_algos')"], check=True, cwd=target, env={**os.environ, "PYTHONPATH": str(target)},
                   capture_output=True, timeout=300)


@pytest.mark.compile
def test_full_sm110a_wheel(sm110a):
    _assert_wheel(sm110a, "blackwell", {"UTCQMMA", "UTCHMMA", "UTCOMMA", "UTCMMA"})
    assert sm110a.seconds <= FULL_BUILD_LIMIT_S, f"full sm_110a build took {sm110a.seconds:.0f} s"
    assert any(line.startswith("  [") for line in sm110a.log)  # ninja's [n/N] progress was streamed


@pytest.mark.compile
def test_rebuild_with_nothing_changed_is_fast(sm110a):
    log: list = []
    start = time.monotonic()
    record = kernels.build_kernels(arch="sm_110a", jobs=JOBS, wheel_dir=sm110a.wheel_dir,
                                   build_dir=sm110a.build_dir, log=log.append)
    seconds = time.monotonic() - start
    assert seconds <= REBUILD_LIMIT_S, f"no-change rebuild took {seconds:.1f} s"
    assert not any(line.startswith("  [") and ".cu" in line for line in log)  # nothing recompiled
    assert record.wheel == sm110a.result.record.wheel
    verify_wheel(sm110a.wheel_dir, record)


@pytest.mark.compile
def test_sm90a_wheel(sm90a):
    _assert_wheel(sm90a, "hopper", {"HGMMA", "QGMMA"})


@pytest.fixture(scope="module")
def probe_objects(tmp_path_factory) -> dict:
    """The tensor-core probe kernel compiled for sm_90a (real wgmma) and for plain sm_90 (CuTe's stub)."""
    from triforce.cutlass import ensure_patched

    tc = kernels.find_toolchain()
    root, _ = ensure_patched(None, log=lambda _: None)
    out = tmp_path_factory.mktemp("probe")
    objects = {}
    for arch in ("sm_90a", "sm_90"):
        obj = out / f"probe_{arch}.o"
        num = arch.removeprefix("sm_")
        subprocess.run([str(tc.nvcc), "-std=c++17", "-O3", "-c", str(PROBE_CU), "-o", str(obj), f"-I{root}/include",
                        "-DTRIFORCE_FAMILY_HOPPER", f"-gencode=arch=compute_{num},code=sm_{num}"],
                       check=True, capture_output=True, timeout=600)
        objects[arch] = obj
    return objects


@pytest.mark.compile
def test_sass_gate_passes_a_real_wgmma_kernel(probe_objects):
    report = sass.gate(probe_objects["sm_90a"], "sm_90a", {"probe": "probe_gemm_kernel"}, ("HGMMA", "QGMMA"))
    assert report.gemm == {"_Z17probe_gemm_kernelPKmPf": ["HGMMA"]}
    assert len(report.kernels) == 2  # the non-GEMM kernel is not asked for tensor-core code


@pytest.mark.compile
def test_sass_gate_names_the_stub_kernel(probe_objects):
    # Plain sm_90 compiles CuTe's wgmma atom to its stub (printf + trap): the gate must name the kernel.
    with pytest.raises(TriforceError, match=r"GEMM kernel _Z17probe_gemm_kernelPKmPf \(unit 'probe'\) has no "
                                            r"tensor-core instruction \(HGMMA/QGMMA\)"):
        sass.gate(probe_objects["sm_90"], "sm_90", {"probe": "probe_gemm_kernel"}, ("HGMMA", "QGMMA"))
    report = sass.evaluate(probe_objects["sm_90"], sass.dump_sass(probe_objects["sm_90"]), "sm_90a",
                           {"probe": "probe_gemm_kernel"}, ("HGMMA",), probe_objects["sm_90"].read_bytes())
    assert any("stub marker 'without CUTE_ARCH_'" in f for f in report.failures)
    assert any("cubins for sm_90 found, expected only sm_90a" in f for f in report.failures)


@pytest.mark.compile
def test_sass_gate_never_passes_vacuously(probe_objects):
    with pytest.raises(TriforceError, match="gemm_kernel_regex 'no_such_gemm' matches no kernel"):
        sass.gate(probe_objects["sm_90a"], "sm_90a", {"probe": "no_such_gemm"}, ("HGMMA",))
    with pytest.raises(TriforceError, match="no GEMM kernel found"):
        sass.gate(probe_objects["sm_90a"], "sm_90a", {}, ("HGMMA",))


# ── refused input: fails before compiling, one line, non-zero exit, nothing written ──────────────────────────────
@pytest.mark.parametrize("arch, code, message", [
    ("sm_120a", 1, "error: unknown arch 'sm_120a': expected one of sm_90a, sm_100a, sm_100f, sm_110a, sm_110f"),
    ("sm_110", 3, "error: arch 'sm_110' has no 'a'/'f' suffix: nvcc would compile the tcgen05/wgmma kernels to a "
                  "stub with no tensor-core code (it traps at run time); use 'sm_110a'"),
    ("sm_100", 3, "use 'sm_100a'"),
], ids=["unknown", "sm_110-stub", "sm_100-stub"])
def test_bad_arch_is_refused(tmp_path, arch, code, message):
    proc = _invoke("--arch", arch, "--wheel-dir", str(tmp_path / "wheels"))
    assert proc.returncode == code
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "wheels").exists()


def test_old_nvcc_is_refused_for_sm110a(tmp_path):
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8, V12.8.93'\n")
    (home / "bin" / "nvcc").chmod(0o755)
    proc = _invoke("--wheel-dir", str(tmp_path / "wheels"), env={"CUDA_HOME": str(home)})
    assert proc.returncode == 3
    assert proc.stderr.startswith(f"error: nvcc 12.8.93 at {home}/bin/nvcc (CUDA_HOME) is older than 13.0, the "
                                  "first that compiles sm_110a")
    assert not (tmp_path / "wheels").exists()


def test_unknown_target_and_bad_jobs_are_refused(tmp_path):
    proc = _invoke("--target", "orin", "--wheel-dir", str(tmp_path / "w"))
    assert proc.returncode == 1 and proc.stderr.startswith("error: unknown target 'orin'")
    proc = _invoke("--jobs=-2", "--wheel-dir", str(tmp_path / "w"))
    assert proc.returncode == 1 and "--jobs -2" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_kernels_toml_without_gemm_regex_is_refused(tmp_path):
    (tmp_path / "kernels.toml").write_text('[package]\nname = "k"\nversion = "0.1.0"\n'
                                           '[[unit]]\nname = "b"\nsources = []\nfamilies = ["blackwell"]\n')
    with pytest.raises(TriforceError, match="no blackwell unit declares gemm_kernel_regex"):
        kernels.load_spec(tmp_path).units_for("blackwell")


def test_kernels_toml_declares_linked_libraries(tmp_path):
    spec = kernels.load_spec(REPO / "cutlass_sm110")
    assert {u.name: u.libraries for u in spec.units}["lt_matmul"] == ("cublasLt",)
    (tmp_path / "kernels.toml").write_text('[package]\nname = "k"\nversion = "0.1.0"\n[[unit]]\nname = "b"\n'
                                           'sources = []\nfamilies = ["hopper"]\nlinks = ["cublas"]\n')
    with pytest.raises(TriforceError, match=r"may add .*libraries \(unknown: \['links'\]\)"):
        kernels.load_spec(tmp_path)


def test_a_linked_library_is_found_with_only_its_own_headers(tmp_path):
    tc = kernels.find_toolchain()
    shim, shared = kernels.cuda_library("cublasLt", tc.cuda_home, tmp_path / "include")
    assert (shim / "cublasLt.h").resolve().name == "cublasLt.h" and shared.name.startswith("libcublasLt.so")
    names = {p.name for p in shim.iterdir()}
    assert {"cublasLt.h", "cublas_api.h"} <= names and all(n.startswith("cublas") for n in names)
    with pytest.raises(TriforceError, match="the CUDA library nosuchlib .* is neither in") as err:
        kernels.cuda_library("nosuchlib", tc.cuda_home, tmp_path / "other")
    assert "\n" not in str(err.value)


def test_devbuild_links_the_same_libraries(tmp_path):
    sys.path.insert(0, str(REPO / "cutlass_sm110"))
    import devbuild

    includes, ldflags = devbuild.library_flags("hopper", tmp_path)
    assert includes == [str(tmp_path / "include")] and (tmp_path / "include" / "cublasLt.h").is_file()
    assert any(f.startswith("-l:libcublasLt.so") for f in ldflags) and any(f.startswith("-L") for f in ldflags)

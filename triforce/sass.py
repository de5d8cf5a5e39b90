"""The SASS gate: a built extension must carry real tensor-core code for its arch in every GEMM kernel.

It dumps the binary's SASS with cuobjdump (PyPI nvidia-cuda-cuobjdump) and fails, naming the kernel, when a GEMM
kernel (matched by its unit's gemm_kernel_regex) lacks the arch's tensor-core opcodes, when a cubin is for another
arch, or when a stub is found (CuTe's "...without CUTE_ARCH_..." strings, or a kernel that only traps). Finding no
GEMM kernel at all is a failure too: the gate never passes vacuously.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import TriforceError

_FUNCTION_RE = re.compile(r"^\s*Function : (\S+)\s*$")
_ARCH_RE = re.compile(r"^\s*(?:arch = |code for )(sm_\w+)\s*$")   # a fatbin's cubin header, or a bare cubin's
_INSTR_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\s*([^;]*)")


@dataclass
class Kernel:
    name: str
    arch: str
    opcodes: list = field(default_factory=list)  # full opcodes with modifiers, e.g. UTCQMMA.2CTA, in order
    # (address, opcode, operands) of each, in order: where branches go (bench/sass_loop_mix.py reads loops)
    instructions: list = field(default_factory=list)


@dataclass
class GateReport:
    binary: Path
    arch: str
    kernels: list            # every Kernel in the binary
    gemm: dict               # kernel name -> tensor-core opcodes found (sorted, unique)
    passed: bool
    failures: list           # one line each

    def summary(self) -> str:
        if not self.passed:
            return f"SASS gate FAILED for {self.binary.name} ({self.arch}): {self.failures[0]}"
        counts = ", ".join(f"{op} x{n}" for op, n in self.opcode_counts().items())
        return (f"SASS gate passed for {self.binary.name} ({self.arch}): {len(self.gemm)} GEMM kernels of "
                f"{len(self.kernels)} all carry tensor-core code ({counts}); no stub")

    def opcode_counts(self) -> dict:
        counts: dict = {}
        for k in self.kernels:
            if k.name in self.gemm:
                for op in k.opcodes:
                    base = op.split(".")[0]
                    if base in self.gemm[k.name]:
                        counts[base] = counts.get(base, 0) + 1
        return dict(sorted(counts.items()))


def _rules() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("sass_gate.toml").read_text())


def find_cuobjdump() -> Path:
    """cuobjdump from the pinned PyPI package (nvidia/cu13/bin), else CUDA_HOME's, else PATH's."""
    candidates = []
    try:
        import nvidia
        candidates += [Path(p) / "cu13" / "bin" / "cuobjdump" for p in nvidia.__path__]
    except ImportError:
        pass
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "bin" / "cuobjdump")
    if shutil.which("cuobjdump"):
        candidates.append(Path(shutil.which("cuobjdump")))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise TriforceError("cuobjdump not found: run `pip install -e .` (it pins nvidia-cuda-cuobjdump and "
                        "nvidia-cuda-nvdisasm)")


def dump_sass(binary: Path) -> str:
    tool = find_cuobjdump()
    env = dict(os.environ)
    env["PATH"] = f"{tool.parent}{os.pathsep}{env.get('PATH', '')}"  # cuobjdump runs nvdisasm from PATH
    proc = subprocess.run([str(tool), "-sass", str(binary)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TriforceError(f"cuobjdump -sass {binary} failed ({detail}): is nvidia-cuda-nvdisasm installed "
                            "(`pip install -e .`)?")
    return proc.stdout


def parse_sass(text: str) -> list[Kernel]:
    kernels, arch, current = [], "", None
    for line in text.splitlines():
        if m := _ARCH_RE.match(line):
            arch = m.group(1)
        elif m := _FUNCTION_RE.match(line):
            current = Kernel(m.group(1), arch)
            kernels.append(current)
        elif current is not None and (m := _INSTR_RE.search(line)):
            current.opcodes.append(m.group(2))
            current.instructions.append((int(m.group(1), 16), m.group(2), m.group(3).strip()))
    return kernels


def _is_trap_only(kernel: Kernel, rules: dict) -> bool:
    bases = {op.split(".")[0] for op in kernel.opcodes}
    return rules["trap_opcode"] in kernel.opcodes and bases <= set(rules["filler_opcodes"])


def evaluate(binary: Path, sass_text: str, arch: str, gemm_regexes: dict, tensor_core_sass: tuple,
             binary_bytes: bytes = b"", unit_sass: dict | None = None) -> GateReport:
    """The gate's verdict on one binary. gemm_regexes: unit name -> regex of its GEMM kernels' names; unit_sass:
    unit name -> the tensor-core opcodes its kernels must contain instead of the target's."""
    rules = _rules()
    kernels = parse_sass(sass_text)
    failures = []  # kernel-specific findings first: the raised message names the first one
    gemm = {}
    for unit, regex in gemm_regexes.items():
        pattern = re.compile(regex)
        matched = [k for k in kernels if pattern.search(k.name)]
        if not matched:
            failures.append(f"unit '{unit}': its gemm_kernel_regex '{regex}' matches no kernel in {binary.name}")
        opcodes = tuple((unit_sass or {}).get(unit, tensor_core_sass))
        for k in matched:
            found = sorted({op.split(".")[0] for op in k.opcodes} & set(opcodes))
            gemm[k.name] = found
            if not found:
                failures.append(f"GEMM kernel {k.name} (unit '{unit}') has no tensor-core instruction "
                                f"({'/'.join(opcodes)}) for {arch}: it is a stub or not a tensor-core GEMM")
    for k in kernels:
        if _is_trap_only(k, rules):
            failures.append(f"kernel {k.name} is a stub (only {rules['trap_opcode']}): it would trap at run time")
    wrong_arch = sorted({k.arch for k in kernels if k.arch != arch})
    if wrong_arch:
        failures.append(f"cubins for {', '.join(wrong_arch)} found, expected only {arch}: the -gencode flags are wrong")
    for marker in rules["stub_strings"]:
        if marker.encode() in binary_bytes:
            failures.append(f"stub marker '{marker}' is compiled in: some kernel was built without its arch feature "
                            f"(was {arch} passed to every translation unit?)")
            break
    if not gemm:
        failures.append(f"no GEMM kernel found in {binary.name}: the gate cannot pass on zero kernels "
                        "(declare gemm_kernel_regex for the GEMM units in kernels.toml)")
    return GateReport(Path(binary), arch, kernels, gemm, not failures, failures)


def gate(binary: Path, arch: str, gemm_regexes: dict, tensor_core_sass: tuple, unit_sass: dict | None = None) -> GateReport:
    """Dump and judge a binary; raise naming the first failing kernel."""
    binary = Path(binary)
    report = evaluate(binary, dump_sass(binary), arch, gemm_regexes, tensor_core_sass, binary.read_bytes(), unit_sass)
    if not report.passed:
        more = f" (+{len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        raise TriforceError(f"{report.summary()}{more}")
    return report

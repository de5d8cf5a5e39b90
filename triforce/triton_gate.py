"""The engine's Triton kernels compiled for a target without its GPU, and gated like the kernel wheel.

Triton compiles at run time on the device, so a kernel that cannot compile for sm_110a would only fail on a Thor.
Here each kernel of the default Plan A / Plan B path is compiled for the target's arch by Triton's own compiler
with an explicit target, at the standard workload's shapes and the engine's launch shapes (KERNELS, declared
below), and the cubins judged by the wheel's own SASS gate (sass.evaluate): cubins of the target's arch only, no
trap-only stub, and tensor-core code in every kernel that multiplies tiles (the arch's opcodes, or HMMA: Triton issues
warp-level MMA for few-row tiles).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import sass
from .errors import TriforceError
from .targets import get_target

WARP_MMA = ("HMMA",)          # mma.sync: what Triton issues for tiles below the wgmma / tcgen05 minimum
FLOAT_ARGS = {"eps", "qk_scale", "dt"}

# kernel -> pointer element types, constexprs and launch options at pi05_libero's shapes (as engine.py launches
# them: the denoise chain's kernels with programmatic dependent launch, PDL); every other runtime argument is an
# int32. `dot`: whether the kernel multiplies tiles (tensor-core gate).
KERNELS = {
    "_add_norm_kernel": {
        "ptr": {"X": "fp32", "Y": "bf16", "GATE": "fp32", "SCALE": "fp32", "SHIFT": "fp32", "W": "fp32", "B": "fp32",
                "OUT": "bf16", "QSCALE": "fp32"},
        "const": {"HAS_Y": True, "HAS_GATE": False, "HAS_SCALE": True, "HAS_SHIFT": True, "LAYERNORM": False,
                  "QUANT": False, "BLOCK": 1024, "PDL": True},
        "options": {"num_warps": 4}, "dot": False},
    "_l2_prefetch_kernel": {   # the expert weights' L2 lookahead (engine.L2_LOOKAHEAD), bulk prefetches
        "ptr": {"PF": "i64"}, "const": {"THREADS": 32}, "options": {"num_warps": 1}, "dot": False},
    "_rope_qkv_kernel": {
        "ptr": {"QKV": "bf16", "POS": "i32", "COS": "fp32", "SIN": "fp32", "QOUT": "bf16", "KC": "bf16", "VC": "bf16",
                "CS": "fp32"},
        "const": {"H": 8, "D": 256, "HAS_CS": True, "TOKENS": 8}, "options": {"num_warps": 8}, "dot": False},
    "_geglu_kernel": {   # Plan B's form: E4M3 from the gate/up GEMM, channel scales, E4M3 for the down GEMM
        "ptr": {"GU": "fp8e4nv", "OUT": "fp8e4nv", "QSCALE": "fp32", "CS": "fp32"},
        "const": {"QUANT": True, "HAS_CS": True, "BLOCK": 1024}, "options": {"num_warps": 4}, "dot": False},
    "_gelu_kernel": {
        "ptr": {"X": "fp8e4nv", "OUT": "fp8e4nv", "QSCALE": "fp32", "CS": "fp32", "B": "bf16"},
        "const": {"GELU": True, "QUANT": True, "HAS_CS": True, "HAS_B": True, "BLOCK": 1024}, "options": {"num_warps": 4},
        "dot": False},
    "_euler_tail_kernel": {
        "ptr": {"X": "fp32", "Y": "bf16", "GATE": "fp32", "SCALE": "fp32", "SHIFT": "fp32", "WOUT": "fp32",
                "BOUT": "fp32", "XT": "fp32", "XT_OUT": "fp32", "WIN": "fp32", "BIN": "fp32", "XNEXT": "fp32"},
        "const": {"HAS_Y": False, "HAS_NEXT": True, "BLOCK_W": 1024, "BLOCK_A": 32, "BLOCK_N": 256, "PDL": True},
        "options": {"num_warps": 8}, "dot": False},
    "_mqa_attention_kernel": {
        "ptr": {"Q": "bf16", "K": "bf16", "V": "bf16", "BIAS": "bf16", "O": "bf16"},
        "const": {"D": 256, "BLOCK_M": 64, "BLOCK_N": 64, "DOT_F32": False},
        "options": {"num_warps": 4, "num_stages": 2}, "dot": True},
    "_mqa_partial_kernel": {
        "ptr": {"Q": "bf16", "K": "bf16", "V": "bf16", "BIAS": "bf16", "PO": "fp32", "PM": "fp32", "PL": "fp32"},
        "const": {"D": 256, "BLOCK_M": 16, "BLOCK_N": 64, "DOT_F32": False, "PDL": True}, "options": {"num_warps": 4},
        "dot": True},
    "_mqa_combine_kernel": {
        "ptr": {"PO": "fp32", "PM": "fp32", "PL": "fp32", "O": "bf16"},
        "const": {"D": 256, "SPLITS_PAD": 16, "PDL": True}, "options": {"num_warps": 4}, "dot": False},
    "_packed_attention_kernel": {
        "ptr": {"QKV": "bf16", "O": "bf16"},
        "const": {"D": 72, "D_LO": 64, "D_HI": 16, "BLOCK_M": 64, "BLOCK_N": 64, "DOT_F32": False, "EVEN": True},
        "options": {"num_warps": 4, "num_stages": 3}, "dot": True},
    "_skinny_gemm_kernel": {
        "ptr": {"X": "bf16", "W": "bf16", "GATE": "fp32", "OUT": "fp32"},
        "const": {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 128, "HAS_GATE": True, "DOT_F32": False, "PDL": True},
        "options": {"num_warps": 4, "num_stages": 3}, "dot": True},
    "_qkv_rope_kernel": {
        "ptr": {"X": "bf16", "W": "bf16", "SC": "bf16", "POS": "i32", "COS": "fp32", "SIN": "fp32", "QOUT": "bf16",
                "KC": "bf16", "VC": "bf16"},
        "const": {"H": 8, "D": 256, "INT4": False, "BLOCK_M": 16, "PAIRS": 16, "BLOCK_K": 128, "DOT_F32": False,
                  "PDL": True, "PREFETCH": True},
        "options": {"num_warps": 4, "num_stages": 4}, "dot": True},
    "_gate_up_geglu_kernel": {
        "ptr": {"X": "bf16", "W": "bf16", "SC": "bf16", "OUT": "bf16"},
        "const": {"INT4": False, "BLOCK_M": 16, "PAIRS": 16, "BLOCK_K": 128, "DOT_F32": False, "PDL": True},
        "options": {"num_warps": 4, "num_stages": 4}, "dot": True},
    "_skinny_w4a16_kernel": {
        "ptr": {"X": "bf16", "QW": "u8", "SC": "bf16", "GATE": "fp32", "OUT": "fp32"},
        "const": {"BLOCK_M": 16, "BLOCK_N": 64, "GROUP": 128, "GROUPS": 2, "HAS_GATE": True, "DOT_F32": False,
                  "PDL": True},
        "options": {"num_warps": 4, "num_stages": 2}, "dot": True},
}


@dataclass
class CompiledKernel:
    name: str
    arch: str                 # of the cubin, from its SASS
    instructions: int
    tensor_core: list         # tensor-core opcodes found (sorted, unique)
    seconds: float


def _signature(fn, spec: dict) -> dict:
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name in spec["ptr"]:
            sig[p.name] = "*" + spec["ptr"][p.name]
        else:
            sig[p.name] = "fp32" if p.name in FLOAT_ARGS else "i32"
    missing = set(spec["const"]) - {p.name for p in fn.params if p.is_constexpr}
    if missing:
        raise TriforceError(f"triton_gate: {fn.__name__} has no constexpr(s) {sorted(missing)}: update KERNELS")
    return sig


def _kernel_fn(name: str):
    from .runtime import fused

    fn = getattr(fused, name, None)
    if fn is None:
        raise TriforceError(f"triton_gate: runtime/fused.py has no kernel {name}: update KERNELS")
    return fn


def compile_kernel(name: str, arch: str) -> tuple:
    """(cubin bytes, seconds) of one declared kernel compiled for arch ('sm_110a' ...), no GPU needed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec, fn = KERNELS[name], _kernel_fn(name)
    capability = int(arch.removeprefix("sm_").rstrip("af"))
    start = time.perf_counter()
    try:
        kernel = triton.compile(ASTSource(fn, _signature(fn, spec), spec["const"]),
                                target=GPUTarget("cuda", capability, 32), options=spec["options"])
    except Exception as err:      # Triton raises its own compilation errors: name the kernel and the arch
        raise TriforceError(f"Triton kernel {name} does not compile for {arch}: {str(err).splitlines()[0]}") from err
    return kernel.asm["cubin"], time.perf_counter() - start


@contextlib.contextmanager
def _fresh_triton_cache(tmp: str):
    """Every kernel really compiles (an empty Triton cache in tmp), so the check cannot pass on a cached binary."""
    from triton import knobs

    with knobs.cache.scope():
        knobs.cache.dir = str(Path(tmp) / "triton-cache")
        yield


def describe(results: list[CompiledKernel]) -> list[list]:
    """Table rows: kernel, arch, SASS instructions, tensor-core opcodes, compile seconds."""
    return [[r.name, r.arch, r.instructions, ", ".join(r.tensor_core) or "-", r.seconds] for r in results]


def _check_grid_dependency_waits(by_name: dict, arch: str) -> None:
    """Every kernel declared with PDL waits for the kernel before it (sass_gate.toml grid_dependency_wait)."""
    wait = sass._rules()["grid_dependency_wait"]
    for name, spec in KERNELS.items():
        if spec["const"].get("PDL") and wait not in {op.split(".")[0] for op in by_name[name].opcodes}:
            raise TriforceError(f"Triton kernels for {arch}: {name} is launched with PDL but has no {wait} "
                                "(griddepcontrol.wait): it would read its inputs before the kernel before it wrote them")


def gate_target(target_name: str, log=print) -> list[CompiledKernel]:
    """Compile every declared kernel for the target and judge the cubins with the wheel's SASS gate (sass.evaluate:
    the arch of every cubin, tensor-core code in the kernels that multiply, no trap-only stub); raise naming the
    first kernel that fails."""
    target = get_target(target_name)
    arch = target.arch
    if not arch.startswith("sm_"):
        raise TriforceError(f"triton_gate: target {target_name} has no fixed arch ({arch}); name thor, blackwell or hopper")
    tensor_core = tuple(target.tensor_core_sass) + WARP_MMA
    texts, cubins, seconds = [], [], {}
    with tempfile.TemporaryDirectory() as tmp, _fresh_triton_cache(tmp):
        for name in KERNELS:
            cubin, seconds[name] = compile_kernel(name, arch)
            path = Path(tmp) / f"{name}.cubin"
            path.write_bytes(cubin)
            texts.append(sass.dump_sass(path))
            cubins.append(cubin)
            log(f"[triton-gate] {name} -> {arch} in {seconds[name]:.1f} s")
    dot_kernels = {name: f"^{name}$" for name, spec in KERNELS.items() if spec["dot"]}
    report = sass.evaluate(Path(f"Triton kernels ({arch})"), "\n".join(texts), arch, dot_kernels, tensor_core,
                           b"".join(cubins))
    if not report.passed:
        raise TriforceError(f"Triton kernels for {arch}: {report.failures[0]}")
    by_name = {k.name: k for k in report.kernels}
    missing = [name for name in KERNELS if name not in by_name]
    if missing:
        raise TriforceError(f"Triton kernels for {arch}: cuobjdump found no {missing[0]} in its cubin")
    _check_grid_dependency_waits(by_name, arch)
    return [CompiledKernel(name, by_name[name].arch, len(by_name[name].opcodes),
                           sorted({op.split(".")[0] for op in by_name[name].opcodes} & set(tensor_core)), seconds[name])
            for name in KERNELS]

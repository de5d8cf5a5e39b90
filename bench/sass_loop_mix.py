#!/usr/bin/env python3
"""The instruction mix of each kernel's main loop, read from its SASS on the CPU (no GPU): the loop (a backward
branch) with the most tensor-core instructions, its length, its MMAs and what else it issues, by opcode. With a
kernel's work per loop trip this bounds what it can reach: e.g. the few-row W4A16 streamed form runs DEPTH groups
of its RT tiles a trip, so the Gemma gate (16384 x 2048: 1024 tiles x 16 groups) is (1024 / RT) x (16 / DEPTH)
trips, spread over 4 schedulers a SM.
    python3 bench/sass_loop_mix.py [BINARY] [--kernel REGEX] [--out-dir bench/results]
BINARY: a cubin, .so or wheel's _C.so (default: the carried Hopper development build,
.device_carry/devbuild-hopper/_C.so; bench/prebuild_device.sh makes it)."""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from triforce import report as rep  # noqa: E402
from triforce.errors import TriforceError  # noqa: E402


@functools.cache
def tensor_ops() -> frozenset:
    """Every tensor-core opcode the project declares: each target's (triforce/data/targets.toml) and each kernel
    unit's own (cutlass_sm110/kernels.toml, e.g. the few-row kernels' HMMA)."""
    from triforce.kernels import load_spec
    from triforce.targets import KNOWN_ARCHS, tensor_core_sass_for

    return frozenset({op for arch in KNOWN_ARCHS for op in tensor_core_sass_for(arch)}
                     | {op for unit in load_spec().units for op in unit.tensor_core_sass})


def main_loop(instrs: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The instructions of the loop (from a backward branch's target to the branch) with the most tensor-core
    instructions; [] where the function has no loop."""
    index = {addr: i for i, (addr, _, _) in enumerate(instrs)}
    loops = []
    for i, (addr, op, rest) in enumerate(instrs):
        target = re.match(r"(0x[0-9a-f]+)", rest)
        if op.startswith("BRA") and target and int(target.group(1), 16) < addr and int(target.group(1), 16) in index:
            loops.append(instrs[index[int(target.group(1), 16)]:i + 1])
    return max(loops, key=lambda body: (tensor_count(body), len(body)), default=[])


def tensor_count(body) -> int:
    ops = tensor_ops()
    return sum(1 for _, op, _ in body if op.split(".")[0] in ops)


def mix(body) -> dict:
    """Length, tensor-core instructions and the opcode counts (without modifiers) of a loop body."""
    counts = collections.Counter(op.split(".")[0] for _, op, _ in body)
    tensor = tensor_count(body)
    return {"instructions": len(body), "tensor": tensor,
            "per_tensor": len(body) / tensor if tensor else None, "opcodes": dict(counts.most_common())}


def demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, timeout=60).stdout
        return dict(zip(names, out.splitlines()))
    except OSError:
        return {n: n for n in names}


def short_name(demangled: str) -> str:
    """`k<4, 8, 2, 2>` of `void ns::(anonymous namespace)::k<4, 8, 2, 2>(...)`: the name and template arguments."""
    m = re.search(r"(\w+(?:<[^<>]*>)?)\((?!anonymous)", demangled)
    return m.group(1) if m else demangled


def analyse(binary: Path, kernel_regex: str) -> list[dict]:
    from triforce import sass

    if not binary.is_file():
        raise TriforceError(f"{binary}: no such binary (bench/prebuild_device.sh makes the Hopper development build)")
    found = {k.name: k.instructions for k in sass.parse_sass(sass.dump_sass(binary)) if re.search(kernel_regex, k.name)}
    if not found:
        raise TriforceError(f"{binary}: no kernel matches {kernel_regex!r}")
    pretty = demangle(sorted(found))
    return [{"kernel": pretty[name], **mix(main_loop(found[name]))} for name in sorted(found)]


def main():
    ap = rep.bench_parser(__doc__)
    ap.add_argument("binary", nargs="?", default=str(REPO / ".device_carry/devbuild-hopper/_C.so"),
                    help="cubin, .so or _C.so to read")
    ap.add_argument("--kernel", default="w4a16_streamed_kernel", help="regex over the kernels' mangled names")
    a = ap.parse_args()
    try:
        rows = analyse(Path(a.binary), a.kernel)
    except TriforceError as err:
        raise SystemExit(f"sass_loop_mix: {err}") from None
    rep.print_table(f"main loop of each kernel matching {a.kernel!r} in {a.binary}",
                    ["kernel", "instructions", "tensor-core", "per tensor-core", "most issued"],
                    [[short_name(r["kernel"]), r["instructions"], r["tensor"],
                      f"{r['per_tensor']:.2f}" if r["per_tensor"] else "-",
                      ", ".join(f"{k} {v}" for k, v in list(r["opcodes"].items())[:8])] for r in rows])
    binary = Path(a.binary)
    rep.record_run(a.out_dir, "sass_loop_mix", {
        "binary": str(binary), "binary_sha256": hashlib.sha256(binary.read_bytes()).hexdigest(),
        "devbuild_stamp": json.loads(stamp.read_text()) if (stamp := binary.parent / "stamp.json").is_file() else None,
        "kernel_regex": a.kernel, "rows": rows,
        "method": "static: cuobjdump -sass, the loop (backward branch) with the most tensor-core instructions"})


if __name__ == "__main__":
    main()

"""Thor Triforce CUTLASS kernels: Python wrappers over the extension `triforce_kernels._C`.

Every op checks shapes, dtypes, contiguity, alignment, device and arch before it reaches CUDA, and refuses with a
one-line error naming the op, the arch this wheel was built for and the GPU's compute capability. Ops allocate
nothing: the caller passes outputs and workspace (CUDA-graph safe); they run on torch's current stream.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch

GROUP_SIZE = 128  # int4 scale group along K
W4A16_N_MULTIPLE = 16  # weight rows: whole 16-row shuffle atoms (Hopper), same rule everywhere
NVFP4_BLOCK = 16  # NVFP4 scale block along K

# The compute capabilities each family's binaries run on (sm_90a: 9.0; sm_100a: 10.x; sm_110a: 11.0).
_FAMILY_CAPABILITIES = {"hopper": {(9, 0)}, "blackwell": {(10, 0), (10, 3), (11, 0)}}
_ARCH_CAPABILITY = {"sm_90a": (9, 0), "sm_100a": (10, 0), "sm_100f": (10, 0), "sm_110a": (11, 0), "sm_110f": (11, 0)}


class KernelError(RuntimeError):
    """A kernel op was called with input it cannot take; the message says what to change."""


class UnsupportedError(KernelError):
    """The op does not exist in this wheel or cannot run on this GPU (never silently replaced)."""


def _ext():
    try:
        from . import _C  # the compiled extension of the wheel (or of cutlass_sm110/devbuild.py)
    except ImportError as err:
        raise UnsupportedError(f"triforce_kernels: the compiled extension _C does not load ({err}); install the "
                               f"wheel built for this GPU (invoke build-kernels / deploy)") from None
    return _C


@lru_cache(maxsize=1)
def build_info() -> dict:
    """What the build wrote into the package (arch, family, CUTLASS and CUDA versions, git commit)."""
    try:
        return json.loads(resources.files(__name__).joinpath("build_info.json").read_text())
    except FileNotFoundError:
        return {"family": family(), "arch": None, "note": "no build_info.json: a development build"}


def family() -> str:
    """'hopper' or 'blackwell': the kernel family compiled into this wheel."""
    return _ext().family


def has_op(name: str) -> bool:
    return hasattr(_ext(), name)


def _built_for() -> str:
    info = build_info()
    return info.get("arch") or info.get("family") or family()


@lru_cache(maxsize=None)
def _device_capability_ok(index: int) -> tuple[bool, tuple[int, int]]:
    """Whether this wheel's binaries run on GPU `index` (checked once per device: it is on every call's path)."""
    cc = torch.cuda.get_device_capability(index)
    arch = build_info().get("arch")
    return (cc == _ARCH_CAPABILITY[arch] if arch in _ARCH_CAPABILITY else cc in _FAMILY_CAPABILITIES[family()]), cc


def _check_device(op: str, t: torch.Tensor) -> None:
    if not t.is_cuda:
        raise KernelError(f"{op}: tensors must be on a CUDA device, got {t.device}; move them with .cuda()")
    ok, cc = _device_capability_ok(t.device.index if t.device.index is not None else torch.cuda.current_device())
    if not ok:
        raise UnsupportedError(
            f"{op}: this wheel was built for {_built_for()} but the GPU is compute capability {cc[0]}.{cc[1]}; "
            f"install the wheel built for this GPU")


def _require_op(op: str) -> None:
    if not has_op(op):
        raise UnsupportedError(
            f"{op}: not in this wheel (built for {_built_for()}); it needs a Blackwell (sm_100a/sm_110a) build")


def _check(op: str, name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise KernelError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise KernelError(f"{op}: {name} must be {dtype}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise KernelError(f"{op}: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if not t.is_contiguous():
        raise KernelError(f"{op}: {name} must be contiguous; call .contiguous() once at load time")
    if t.data_ptr() % 16:
        raise KernelError(f"{op}: {name} must be 16-byte aligned (a view at an odd offset?)")


def _check_same_device(op: str, *tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise KernelError(f"{op}: all tensors must be on one device, got {sorted(map(str, devices))}")
    _check_device(op, tensors[0])


def _check_gemm_dims(op: str, m: int, n: int, k: int, n_multiple: int = 8) -> None:
    if m <= 0 or n <= 0 or k <= 0:
        raise KernelError(f"{op}: M, N, K must be positive, got M={m} N={n} K={k}")
    if n % n_multiple:
        raise KernelError(f"{op}: N={n} must be a multiple of {n_multiple} (16-byte output rows"
                          f"{'; 16-row int4 shuffle atoms' if n_multiple == W4A16_N_MULTIPLE else ''})")
    if k % GROUP_SIZE:
        raise KernelError(f"{op}: K={k} must be a multiple of {GROUP_SIZE}")


def _check_workspace(op: str, workspace: torch.Tensor, need: int) -> None:
    _check(op, "workspace", workspace, torch.uint8)
    if workspace.numel() < need:
        raise KernelError(f"{op}: workspace has {workspace.numel()} bytes, needs {need}; size it with the op's "
                          f"*_workspace_size(M, N, K)")


# ── W4A16 ───────────────────────────────────────────────────────────────────────────────────────────────────────
# Work decompositions of the Hopper kernel (stream-K tile scheduler): name -> (mode, nondeterministic). Blackwell has
# one. "split_k:S" / "split_k_nd:S" add a split count. "_nd": partial sums reduced in arrival order (not bitwise
# reproducible run to run).
_W4A16_MODES = {"heuristic": (0, False), "data_parallel": (1, False), "split_k": (2, False), "split_k_nd": (2, True),
                "stream_k": (3, False), "stream_k_nd": (3, True)}


# Token tiles of the Hopper units (bindings.cpp runs the smallest that covers M) and their weight-row tile.
_W4A16_TOKEN_TILES = (16, 64, 128)
_W4A16_WEIGHT_TILE = 128


def w4a16_auto_schedule(m: int, n: int, k: int) -> str:
    """The schedule 'auto' picks, from the H100 measurements in bench/results/kernel_bench_*.json:
    output tiles that (nearly) fill the SMs run data-parallel (CUTLASS's heuristic); fewer tiles split K with
    stream-K, reduced in arrival order at decode-like M (17 vs 22 us at M=10, N=2048, K=16384) and in order above."""
    if family() != "hopper":
        return "heuristic"
    token_tile = next((t for t in _W4A16_TOKEN_TILES if m <= t), _W4A16_TOKEN_TILES[-1])
    tiles = -(-n // _W4A16_WEIGHT_TILE) * -(-m // token_tile)
    if tiles >= 0.9 * torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count:
        return "heuristic"
    return "stream_k_nd" if m <= 64 else "stream_k"


def _w4a16_schedule(op: str, schedule: str, m: int, n: int, k: int) -> tuple[int, int, bool]:
    name = w4a16_auto_schedule(m, n, k) if schedule == "auto" else schedule
    base, _, splits = name.partition(":")
    if base not in _W4A16_MODES or bool(splits) != base.startswith("split_k") or (splits and not splits.isdigit()):
        raise KernelError(f"{op}: unknown schedule '{schedule}'; use auto, {', '.join(_W4A16_MODES)} "
                          f"(split_k needs ':S', e.g. split_k:4)")
    mode, nondeterministic = _W4A16_MODES[base]
    if family() != "hopper" and name != "heuristic":
        raise UnsupportedError(f"{op}: schedule '{schedule}' exists only in the Hopper kernel; this wheel was built "
                               f"for {_built_for()} (use schedule='auto')")
    return mode, int(splits or 1), nondeterministic


def w4a16_prepack(qweight: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical int4 uint8 [N, K//2] + bf16 scales [N, K//128] -> (packed_weight, packed_scales) for this family.

    Runs on the GPU once at load time (it allocates its outputs and temporaries)."""
    op = "w4a16_prepack"
    if qweight.dim() != 2:
        raise KernelError(f"{op}: qweight must be 2-D uint8 [N, K//2], got shape {list(qweight.shape)}")
    n, k = qweight.shape[0], qweight.shape[1] * 2
    _check(op, "qweight", qweight, torch.uint8)
    _check(op, "scales", scales, torch.bfloat16, (n, k // GROUP_SIZE))
    _check_gemm_dims(op, 1, n, k, W4A16_N_MULTIPLE)
    _check_same_device(op, qweight, scales)
    return _ext().w4a16_prepack(qweight, scales)


def w4a16_workspace_size(m: int, n: int, k: int, schedule: str = "auto") -> int:
    """Bytes of workspace w4a16_gemm needs for out[M, N] = x[M, K] @ W^T with this schedule (allocate once)."""
    op = "w4a16_workspace_size"
    _check_gemm_dims(op, m, n, k, W4A16_N_MULTIPLE)
    sched = _w4a16_schedule(op, schedule, m, n, k)
    return int(_ext().w4a16_workspace_size(m, n, k, *sched))


def w4a16_gemm(x: torch.Tensor, packed_weight: torch.Tensor, packed_scales: torch.Tensor, out: torch.Tensor,
               workspace: torch.Tensor, schedule: str = "auto") -> None:
    """out[M, N] = x[M, K] @ dequant(W)^T, bf16 activations and output, int4 weights with bf16 group-128 scales.

    `schedule` picks how the work is spread over the SMs (Hopper only; see _W4A16_MODES); the workspace must have
    been sized with the same schedule."""
    op = "w4a16_gemm"
    if x.dim() != 2 or out.dim() != 2:
        raise KernelError(f"{op}: x and out must be 2-D, got {list(x.shape)} and {list(out.shape)}")
    m, k = x.shape
    n = out.shape[1]
    _check_gemm_dims(op, m, n, k, W4A16_N_MULTIPLE)
    _check(op, "x", x, torch.bfloat16)
    _check(op, "out", out, torch.bfloat16, (m, n))
    _check(op, "packed_weight", packed_weight, torch.uint8, (n, k // 2))
    _check(op, "packed_scales", packed_scales, torch.bfloat16, (k // GROUP_SIZE, n))
    _check_same_device(op, x, packed_weight, packed_scales, out, workspace)
    sched = _w4a16_schedule(op, schedule, m, n, k)
    _check_workspace(op, workspace, int(_ext().w4a16_workspace_size(m, n, k, *sched)))
    _ext().w4a16_gemm(x, packed_weight, packed_scales, out, workspace, *sched)


W4A16_SKINNY_MAX_ROWS = 64
W4A16_STREAMED_MAX_ROWS = W4A16_SKINNY_MAX_ROWS   # w4a16_skinny(depth > 0): up to eight token tiles of 8
# the register-streamed form's compiled (depth, warps a CTA, 16-row tiles a warp) shapes (session 30: depth 4, 4
# warps of one tile and 16 warps lost at every point, w4a16_sweep-nvidia-h100-*-s30-tiles-a-cta.json)
W4A16_STREAMED_SHAPES = ((2, 8, 1), (2, 4, 2), (2, 8, 2))
W4A16_STREAMED_DEPTHS = (0,) + tuple(sorted({s[0] for s in W4A16_STREAMED_SHAPES}))     # 0: the pipelined form


def _check_rows(op: str, name: str, t: torch.Tensor, dim: int | None = None) -> None:
    """A bf16 [rows, D] operand with unit column stride and 16-byte aligned rows (row-strided views allowed)."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.bfloat16 or t.dim() != 2:
        raise KernelError(f"{op}: {name} must be a bf16 2-D tensor, got "
                          f"{getattr(t, 'dtype', type(t).__name__)} {list(getattr(t, 'shape', []))}")
    if t.stride(1) != 1 or t.stride(0) % 8 or t.data_ptr() % 16:
        raise KernelError(f"{op}: {name} needs unit column stride and 16-byte aligned rows")
    if dim is not None and t.shape[1] != dim:
        raise KernelError(f"{op}: {name} has head dim {t.shape[1]}, q has {dim}")


def _check_skinny_operands(op: str, x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n: int) -> None:
    """x (a row-strided bf16 view allowed) and the fragment-layout weights and scales of N output rows."""
    m, k = x.shape
    _check_gemm_dims(op, m, n, k, W4A16_N_MULTIPLE)
    _check_rows(op, "x", x)
    _check(op, "weight", weight, torch.uint8, (n // 16, k // 64, 512))
    _check(op, "scales", scales, torch.bfloat16, (n // 16, k // GROUP_SIZE, 16))


def w4a16_skinny(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, out: torch.Tensor,
                 gate: torch.Tensor | None = None, splits: int = 0, tiles_per_warp: int = 0,
                 dependent: bool = False, depth: int = 0, cta_warps: int = 0) -> None:
    """out[M, N] (fp32) += [gate ⊙] x[M, K] @ dequant(W)^T for M <= 64: the few-row weight-streaming kernel of every
    family, on the fragment layout of triforce.quant.formats (pack_int4_fragments [N/16, K/64, 512] uint8,
    pack_scales_fragments [N/16, K/128, 16] bf16). `out` is added to (zero it, or pass the residual); x may be a
    row-strided view. splits: CTAs along K (0: fill the GPU once); tiles_per_warp: 16-row tiles per warp (0: by M);
    dependent: a programmatic dependent launch (waits on the GPU for the kernel before it). depth > 0: the
    register-streamed form (M <= W4A16_STREAMED_MAX_ROWS) with `depth` groups of each warp's weights in flight in
    registers instead of the shared-memory pipeline, `cta_warps` warps a CTA (0: 8) of `tiles_per_warp` 16-row tiles
    each (0: 1), one of W4A16_STREAMED_SHAPES; splits then defaults to at most 8 groups a CTA (fewer where their x
    slice would pass 96 KB of shared memory) and two CTAs a SM."""
    op = "w4a16_skinny"
    _require_op(op)
    if x.dim() != 2 or out.dim() != 2:
        raise KernelError(f"{op}: x and out must be 2-D, got {list(x.shape)} and {list(out.shape)}")
    m, k = x.shape
    n = out.shape[1]
    if not 1 <= m <= W4A16_SKINNY_MAX_ROWS:
        raise KernelError(f"{op}: M={m} rows; this kernel takes 1..{W4A16_SKINNY_MAX_ROWS} (w4a16_gemm takes more)")
    _check_skinny_operands(op, x, weight, scales, n)
    if out.dtype != torch.float32 or tuple(out.shape) != (m, n) or out.stride(1) != 1:
        raise KernelError(f"{op}: out must be fp32 [{m}, {n}] with unit column stride, got {out.dtype} "
                          f"{list(out.shape)}")
    if gate is not None:
        _check(op, "gate", gate, torch.float32, (n,))
    if splits < 0 or tiles_per_warp not in (0, 1, 2):
        raise KernelError(f"{op}: splits must be >= 0 and tiles_per_warp 0, 1 or 2; got {splits}, {tiles_per_warp}")
    if cta_warps and not depth:
        raise KernelError(f"{op}: cta_warps={cta_warps} sets the register-streamed form's CTA (depth > 0); the "
                          f"pipelined form (depth 0) has 8 warps a CTA")
    if depth and (depth, cta_warps or 8, tiles_per_warp or 1) not in W4A16_STREAMED_SHAPES:
        raise KernelError(f"{op}: the register-streamed form has no (depth, cta_warps, tiles_per_warp) = "
                          f"({depth}, {cta_warps or 8}, {tiles_per_warp or 1}); compiled: {W4A16_STREAMED_SHAPES}")
    _check_same_device(op, x, weight, scales, out, *([gate] if gate is not None else []))
    _ext().w4a16_skinny(x, weight, scales, out, gate, splits, tiles_per_warp, dependent, depth, cta_warps)


W4A16_SKINNY_GEGLU_STAGES = (0, 4, 8)   # 0: the default (4)


def w4a16_skinny_geglu(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, act: torch.Tensor,
                       dependent: bool = False, stages: int = 0) -> None:
    """act[M, N/2] (bf16) = gelu_tanh(x @ gate^T) * (x @ up^T) for M <= 64: w4a16_skinny on gate/up weights whose
    rows were interleaved in 8-row blocks (formats.interleave_gate_up, then pack_int4_fragments /
    pack_scales_fragments). Each CTA covers all of K; nothing is accumulated, act is written. stages: the cp.async
    pipeline depth (W4A16_SKINNY_GEGLU_STAGES)."""
    op = "w4a16_skinny_geglu"
    _require_op(op)
    if stages not in W4A16_SKINNY_GEGLU_STAGES:
        raise KernelError(f"{op}: stages must be one of {W4A16_SKINNY_GEGLU_STAGES} (0: the default), got {stages}")
    if x.dim() != 2 or act.dim() != 2:
        raise KernelError(f"{op}: x and act must be 2-D, got {list(x.shape)} and {list(act.shape)}")
    m, k = x.shape
    n = 2 * act.shape[1]
    if not 1 <= m <= W4A16_SKINNY_MAX_ROWS or act.shape[0] != m:
        raise KernelError(f"{op}: x and act must have the same 1..{W4A16_SKINNY_MAX_ROWS} rows, got {m} and "
                          f"{act.shape[0]}")
    _check_skinny_operands(op, x, weight, scales, n)
    if act.dtype != torch.bfloat16 or act.stride(1) != 1:
        raise KernelError(f"{op}: act must be bf16 with unit column stride, got {act.dtype}")
    _check_same_device(op, x, weight, scales, act)
    _ext().w4a16_skinny_geglu(x, weight, scales, act, dependent, stages)


def set_chain_carveout(percent: int) -> None:
    """The preferred shared-memory carveout (percent of the SM's unified L1 / shared memory, or -1 for the driver's
    choice) that the wheel's later dependent launches ask for (the few-row W4A16 kernels and mqa_cluster_attention:
    one split for the denoise chain); a launch captured into a graph keeps it."""
    op = "set_chain_carveout"
    _require_op(op)
    if not (percent == -1 or 0 <= percent <= 100):
        raise KernelError(f"{op}: a percent 0..100 or -1 (the driver's choice), got {percent}")
    _ext().set_chain_carveout(int(percent))


# ── few-row attention ───────────────────────────────────────────────────────────────────────────────────────────
MQA_CLUSTER_HEAD_DIMS = (64, 128, 256)
MQA_CLUSTER_MAX_SPLITS = 16     # key blocks (CTAs of one cluster) of a 16-row group; above 8 a non-portable cluster
MQA_CLUSTER_MAX_KEY_BLOCK = 128


def mqa_cluster_max_keys(max_splits: int = MQA_CLUSTER_MAX_SPLITS) -> int:
    """Keys max_splits blocks take (0: as many as the largest cluster; a GPU scheduling fewer refuses at launch)."""
    return (max_splits or MQA_CLUSTER_MAX_SPLITS) * MQA_CLUSTER_MAX_KEY_BLOCK


def mqa_cluster_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                          static_keys: int = 0, max_splits: int = 0,
                          dependent: bool = False) -> None:
    """out[R, D] = softmax(q k^T / sqrt(D) + bias) v over one kv head (every query head a row), bf16, for few rows
    (the denoise step), in one launch: the keys are split into at most `max_splits` blocks of <= 128 (0: as many as
    the largest cluster this GPU schedules, at most 16), the CTAs of one thread-block cluster, which combine their
    partial softmaxes through distributed shared memory. bias [T] bf16 is
    additive (0 or -inf). static_keys: keys [0, static_keys) are not written by the kernels launched before this one
    in its dependent chain, so a dependent launch reads them before waiting on them."""
    op = "mqa_cluster_attention"
    if not has_op(op):
        raise UnsupportedError(f"{op}: not in this wheel (built for {_built_for()}); rebuild it with "
                               f"`invoke build-kernels`")
    _check_rows(op, "q", q)
    dim = q.shape[1]
    if dim not in MQA_CLUSTER_HEAD_DIMS:
        raise KernelError(f"{op}: head dim {dim}; this kernel takes {MQA_CLUSTER_HEAD_DIMS}")
    for name, t in (("k", k), ("v", v), ("out", out)):
        _check_rows(op, name, t, dim)
    keys = k.shape[0]
    if v.shape[0] != keys or tuple(out.shape) != tuple(q.shape):
        raise KernelError(f"{op}: v must have k's {keys} rows and out q's shape {list(q.shape)}; got v "
                          f"{list(v.shape)}, out {list(out.shape)}")
    _check(op, "bias", bias, torch.bfloat16, (keys,))
    if not 0 <= max_splits <= MQA_CLUSTER_MAX_SPLITS:
        raise KernelError(f"{op}: max_splits must be 0 (the largest cluster) .. {MQA_CLUSTER_MAX_SPLITS}, got "
                          f"{max_splits}")
    if not 1 <= keys <= mqa_cluster_max_keys(max_splits):
        raise KernelError(f"{op}: {keys} keys; {max_splits or MQA_CLUSTER_MAX_SPLITS} blocks of at most "
                          f"{MQA_CLUSTER_MAX_KEY_BLOCK} take 1..{mqa_cluster_max_keys(max_splits)}")
    if not 0 <= static_keys <= keys:
        raise KernelError(f"{op}: static_keys must be 0..{keys}, got {static_keys}")
    _check_same_device(op, q, k, v, bias, out)
    _ext().mqa_cluster_attention(q, k, v, bias, out, int(static_keys), int(max_splits), bool(dependent))


# ── cuBLASLt with a chosen algorithm ─────────────────────────────────────────────────────────────────────────────
LT_ALGO_FIELDS = ("workspace", "algo", "tile", "split_k", "stages", "cluster")   # lt_matmul_algos' info columns


def lt_rows_fit(k: int, n: int, in_bytes: int, out_bytes: int) -> bool:
    """Whether cuBLASLt can take x [M, K] and out [M, N] of these element sizes: rows of 16-byte multiples."""
    return (k * in_bytes) % 16 == 0 and (n * out_bytes) % 16 == 0


def _check_lt_operands(op: str, x, w, out, scale_x, scale_w, bias, fast_accum: bool) -> None:
    """x [M, K] and w [N, K] both bf16 or both E4M3 (then per-tensor fp32 scales), out [M, N] bf16 or (E4M3 inputs
    only) E4M3, optional bf16 bias [N]; 16-byte rows."""
    if not has_op(op):
        raise UnsupportedError(f"{op}: not in this wheel (built for {_built_for()}, before cuBLASLt algorithm "
                               f"choice was added); rebuild it with `invoke build-kernels`")
    if x.dim() != 2 or w.dim() != 2 or out.dim() != 2:
        raise KernelError(f"{op}: x, w and out must be 2-D, got {list(x.shape)}, {list(w.shape)}, {list(out.shape)}")
    (m, k), n = x.shape, w.shape[0]
    e4m3 = x.dtype == torch.float8_e4m3fn
    dtype = torch.float8_e4m3fn if e4m3 else torch.bfloat16
    _check(op, "x", x, dtype)
    _check(op, "w", w, dtype, (n, k))
    if out.dtype == torch.float8_e4m3fn and not e4m3:
        raise KernelError(f"{op}: an E4M3 output needs E4M3 inputs")
    _check(op, "out", out, out.dtype if out.dtype == torch.float8_e4m3fn else torch.bfloat16, (m, n))
    if not lt_rows_fit(k, n, x.element_size(), out.element_size()):
        raise KernelError(f"{op}: rows of x ({k} x {x.element_size()} B) and out ({n} x {out.element_size()} B) must "
                          f"be multiples of 16 bytes")
    if e4m3 != (scale_x is not None and scale_w is not None):
        raise KernelError(f"{op}: scale_x and scale_w are given exactly when the inputs are E4M3")
    if fast_accum and not e4m3:
        raise KernelError(f"{op}: fast_accum is an FP8 option; the inputs are bf16")
    extra = [t for t in (scale_x, scale_w) if t is not None]
    for name, t in (("scale_x", scale_x), ("scale_w", scale_w)):
        if t is not None:
            _check(op, name, t, torch.float32)
            if t.numel() != 1:
                raise KernelError(f"{op}: {name} must be a scalar tensor, got shape {list(t.shape)}")
    if bias is not None:
        _check(op, "bias", bias, torch.bfloat16, (n,))
        extra.append(bias)
    _check_same_device(op, x, w, out, *extra)


def lt_matmul_algos(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, scale_x: torch.Tensor | None = None,
                    scale_w: torch.Tensor | None = None, bias: torch.Tensor | None = None, gelu: bool = False,
                    fast_accum: bool = False, max_algos: int = 32, max_workspace: int = 32 << 20):
    """cuBLASLt's heuristic candidates for out = epilogue(scale_x * scale_w * x @ w^T + bias), best guess first:
    (algos uint8 [n, 64] on the CPU, each one lt_matmul's `algo`; info int64 [n, 6], columns LT_ALGO_FIELDS). n may
    be 0 (no algorithm for this problem). Nothing runs on the GPU."""
    op = "lt_matmul_algos"
    _check_lt_operands(op, x, w, out, scale_x, scale_w, bias, fast_accum)
    if not 1 <= max_algos <= 256 or max_workspace < 0:
        raise KernelError(f"{op}: max_algos must be 1..256 and max_workspace >= 0, got {max_algos}, {max_workspace}")
    return _ext().lt_matmul_algos(x, w, out, scale_x, scale_w, bias, gelu, fast_accum, max_algos, max_workspace)


def lt_matmul(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, algo: torch.Tensor, workspace: torch.Tensor,
              scale_x: torch.Tensor | None = None, scale_w: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              gelu: bool = False, fast_accum: bool = False) -> None:
    """out[M, N] = epilogue(scale_x * scale_w * x[M, K] @ w[N, K]^T + bias) by cuBLASLt with `algo` (a row of
    lt_matmul_algos for the same problem and flags; its workspace column says how many bytes `workspace` needs).
    gelu: tanh GELU after the bias. E4M3 outputs saturate. CUDA-graph safe."""
    op = "lt_matmul"
    _check_lt_operands(op, x, w, out, scale_x, scale_w, bias, fast_accum)
    if algo.device.type != "cpu" or algo.dtype != torch.uint8 or algo.numel() != 64:
        raise KernelError(f"{op}: algo must be a CPU uint8 tensor of 64 bytes (a row of lt_matmul_algos), got "
                          f"{algo.dtype} {list(algo.shape)} on {algo.device}")
    _check(op, "workspace", workspace, torch.uint8)
    _check_same_device(op, x, workspace)
    _ext().lt_matmul(x, w, out, scale_x, scale_w, bias, gelu, fast_accum, algo.contiguous(), workspace)


# ── NVFP4 (Blackwell) ───────────────────────────────────────────────────────────────────────────────────────────
def nvfp4_sf_bytes(rows: int, k: int) -> int:
    """Bytes of a swizzled NVFP4 scale-factor tensor for a [rows, K] operand (rows padded to 128, K/16 to 4)."""
    if rows <= 0 or k <= 0 or k % NVFP4_BLOCK:
        raise KernelError(f"nvfp4_sf_bytes: needs rows > 0 and K a positive multiple of 16, got {rows}, {k}")
    return -(-rows // 128) * 128 * (-(-(k // NVFP4_BLOCK) // 4) * 4)


def nvfp4_workspace_size(m: int, n: int, k: int) -> int:
    """Bytes of workspace nvfp4_gemm needs (Blackwell wheels only)."""
    _require_op("nvfp4_workspace_size")
    _check_gemm_dims("nvfp4_workspace_size", m, n, k)
    return int(_ext().nvfp4_workspace_size(m, n, k))


def nvfp4_gemm(a: torch.Tensor, a_sf: torch.Tensor, b: torch.Tensor, b_sf: torch.Tensor, alpha: torch.Tensor,
               out: torch.Tensor, workspace: torch.Tensor) -> None:
    """out[M, N] = alpha * dequant(a)[M, K] @ dequant(b)[N, K]^T; NVFP4 operands, swizzled E4M3 block scales."""
    op = "nvfp4_gemm"
    _require_op(op)
    if a.dim() != 2 or b.dim() != 2:
        raise KernelError(f"{op}: a and b must be 2-D uint8 [rows, K//2], got {list(a.shape)} and {list(b.shape)}")
    m, k = a.shape[0], a.shape[1] * 2
    n = b.shape[0]
    _check_gemm_dims(op, m, n, k)
    _check(op, "a", a, torch.uint8)
    _check(op, "b", b, torch.uint8, (n, k // 2))
    for name, sf, rows in (("a_sf", a_sf, m), ("b_sf", b_sf, n)):
        _check(op, name, sf, torch.uint8)
        if sf.numel() != nvfp4_sf_bytes(rows, k):
            raise KernelError(f"{op}: {name} has {sf.numel()} bytes, the swizzled scales of [{rows}, {k}] have "
                              f"{nvfp4_sf_bytes(rows, k)} (nvfp4_sf_bytes)")
    _check(op, "alpha", alpha, torch.float32, (1,))
    _check(op, "out", out, torch.bfloat16, (m, n))
    _check_same_device(op, a, a_sf, b, b_sf, alpha, out, workspace)
    _check_workspace(op, workspace, nvfp4_workspace_size(m, n, k))
    _ext().nvfp4_gemm(a, a_sf, b, b_sf, alpha, out, workspace)


# ── Fused activation quantization (arch-generic CUDA, every family) ─────────────────────────────────────────────
# Formats and rounding: triforce/quant/formats.py (the CPU reference). fp8: e4m3(y * inv_scale), saturated to +-448.
# NVFP4: codes [M, D//2] (even column in the low nibble) and E4M3 block scales in CUTLASS's swizzled layout, every
# byte of out_sf written (padding 0); global_scale g = 448 * 6 / amax(y) from calibration; the GEMM's alpha is
# 1 / (g_a * g_b).
_FP8_ALIGN = 8  # 8 bf16 per 16-byte load


def _check_act_2d(op: str, name: str, t: torch.Tensor, multiple: int, what: str = "the row length") -> tuple[int, int]:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise KernelError(f"{op}: {name} must be a 2-D bf16 tensor, got {getattr(t, 'shape', type(t).__name__)}")
    rows, cols = t.shape
    _check(op, name, t, torch.bfloat16)
    if rows <= 0 or cols <= 0 or cols % multiple:
        raise KernelError(f"{op}: {what} must be a positive multiple of {multiple}, got {name} of shape {list(t.shape)}")
    return rows, cols


def _check_norm_weight(op: str, weight: torch.Tensor, dim: int) -> None:
    dtype = getattr(weight, "dtype", type(weight).__name__)
    if dtype not in (torch.float32, torch.bfloat16):
        raise KernelError(f"{op}: weight must be a float32 or bfloat16 tensor [{dim}], got {dtype}")
    _check(op, "weight", weight, dtype, (dim,))


def _check_nvfp4_out(op: str, out: torch.Tensor, out_sf: torch.Tensor, rows: int, cols: int) -> None:
    _check(op, "out", out, torch.uint8, (rows, cols // 2))
    _check(op, "out_sf", out_sf, torch.uint8, (nvfp4_sf_bytes(rows, cols),))


def _check_geglu(op: str, gate_up: torch.Tensor, multiple: int) -> tuple[int, int]:
    rows, cols = _check_act_2d(op, "gate_up", gate_up, 2 * multiple, f"2I (I the MLP width, a multiple of {multiple})")
    return rows, cols // 2


def rmsnorm_quant_fp8(x: torch.Tensor, weight: torch.Tensor, inv_scale: torch.Tensor, out: torch.Tensor,
                      eps: float = 1e-6) -> None:
    """out = e4m3(rmsnorm(x) * inv_scale): Gemma RMSNorm x * rsqrt(mean(x^2) + eps) * (1 + weight) in fp32.
    x bf16 [M, D] (D % 8 == 0), weight fp32/bf16 [D], inv_scale fp32 [1], out float8_e4m3fn [M, D]."""
    op = "rmsnorm_quant_fp8"
    m, d = _check_act_2d(op, "x", x, _FP8_ALIGN)
    _check_norm_weight(op, weight, d)
    _check(op, "inv_scale", inv_scale, torch.float32, (1,))
    _check(op, "out", out, torch.float8_e4m3fn, (m, d))
    _check_same_device(op, x, weight, inv_scale, out)
    _ext().rmsnorm_quant_fp8(x, weight, inv_scale, out, float(eps))


def rmsnorm_quant_nvfp4(x: torch.Tensor, weight: torch.Tensor, global_scale: torch.Tensor, out: torch.Tensor,
                        out_sf: torch.Tensor, eps: float = 1e-6) -> None:
    """NVFP4 of the Gemma RMSNorm of x. x bf16 [M, D] (D % 16 == 0), weight fp32/bf16 [D], global_scale fp32 [1],
    out uint8 [M, D//2], out_sf uint8 [nvfp4_sf_bytes(M, D)] (swizzled)."""
    op = "rmsnorm_quant_nvfp4"
    m, d = _check_act_2d(op, "x", x, NVFP4_BLOCK)
    _check_norm_weight(op, weight, d)
    _check(op, "global_scale", global_scale, torch.float32, (1,))
    _check_nvfp4_out(op, out, out_sf, m, d)
    _check_same_device(op, x, weight, global_scale, out, out_sf)
    _ext().rmsnorm_quant_nvfp4(x, weight, global_scale, out, out_sf, float(eps))


def geglu_quant_fp8(gate_up: torch.Tensor, inv_scale: torch.Tensor, out: torch.Tensor) -> None:
    """out = e4m3(gelu_tanh(gate) * up * inv_scale). gate_up bf16 [M, 2I] (gate first, I % 8 == 0),
    inv_scale fp32 [1], out float8_e4m3fn [M, I]."""
    op = "geglu_quant_fp8"
    m, inner = _check_geglu(op, gate_up, _FP8_ALIGN)
    _check(op, "inv_scale", inv_scale, torch.float32, (1,))
    _check(op, "out", out, torch.float8_e4m3fn, (m, inner))
    _check_same_device(op, gate_up, inv_scale, out)
    _ext().geglu_quant_fp8(gate_up, inv_scale, out)


def geglu_quant_nvfp4(gate_up: torch.Tensor, global_scale: torch.Tensor, out: torch.Tensor,
                      out_sf: torch.Tensor) -> None:
    """NVFP4 of gelu_tanh(gate) * up. gate_up bf16 [M, 2I] (gate first, I % 16 == 0), global_scale fp32 [1],
    out uint8 [M, I//2], out_sf uint8 [nvfp4_sf_bytes(M, I)] (swizzled)."""
    op = "geglu_quant_nvfp4"
    m, inner = _check_geglu(op, gate_up, NVFP4_BLOCK)
    _check(op, "global_scale", global_scale, torch.float32, (1,))
    _check_nvfp4_out(op, out, out_sf, m, inner)
    _check_same_device(op, gate_up, global_scale, out, out_sf)
    _ext().geglu_quant_nvfp4(gate_up, global_scale, out, out_sf)


def quant_nvfp4(x: torch.Tensor, global_scale: torch.Tensor, out: torch.Tensor, out_sf: torch.Tensor) -> None:
    """NVFP4 of x. x bf16 [M, K] (K % 16 == 0), global_scale fp32 [1], out uint8 [M, K//2],
    out_sf uint8 [nvfp4_sf_bytes(M, K)] (swizzled)."""
    op = "quant_nvfp4"
    m, k = _check_act_2d(op, "x", x, NVFP4_BLOCK)
    _check(op, "global_scale", global_scale, torch.float32, (1,))
    _check_nvfp4_out(op, out, out_sf, m, k)
    _check_same_device(op, x, global_scale, out, out_sf)
    _ext().quant_nvfp4(x, global_scale, out, out_sf)

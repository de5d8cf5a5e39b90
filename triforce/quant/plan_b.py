"""Plan B at run time: quantized GEMM layers (FP8 W8A8, INT4 W4A16, NVFP4) inside the Plan A graph, built from a
quantized checkpoint or by quantizing a bf16 one on load. A backend this GPU cannot run is an error, never a
fallback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..errors import TriforceError, UnsupportedError
from ..runtime import fused, gemm_tuning
from ..runtime.checkpoint import load_state
from ..runtime.config import ModelConfig
from . import formats as fm
from .quantize import FORMAT, expected_quantized

BF16, FP8 = torch.bfloat16, torch.float8_e4m3fn


# ── what this GPU can run ─────────────────────────────────────────────────────────────────────────────────────────
def _gpu() -> tuple[str, tuple[int, int]]:
    if not torch.cuda.is_available():
        raise UnsupportedError("Plan B needs a CUDA GPU and none is visible here")
    return torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)


def _kernels(backend: str):
    try:
        import triforce_kernels
    except ImportError as err:
        raise UnsupportedError(f"the {backend} backend needs the triforce_kernels wheel ({err}): `invoke build-kernels` then install it") from None
    return triforce_kernels


def check_backend(precision: str) -> None:
    """Raise, naming the backend and the GPU, if this GPU (or the installed kernel wheel) cannot run `precision`."""
    name, (major, minor) = _gpu()
    gpu = f"{name} (compute capability {major}.{minor})"
    if precision == "fp8" and (major, minor) < (8, 9):
        raise UnsupportedError(f"FP8 W8A8 needs FP8 tensor cores (compute capability >= 8.9); this GPU is {gpu}")
    if precision == "nvfp4" and major not in (10, 11):
        raise UnsupportedError(f"NVFP4 needs Blackwell's block-scaled tensor cores (sm_100a / sm_110a); this GPU is {gpu}")
    if precision in ("w4a16", "nvfp4"):
        tk = _kernels(precision)
        op = "w4a16_gemm" if precision == "w4a16" else "nvfp4_gemm"
        built = tk.build_info().get("compute_capability") if hasattr(tk, "build_info") else None
        if not tk.has_op(op) or (built and built != f"{major}.{minor}"):
            raise UnsupportedError(f"the installed triforce_kernels wheel ({tk.build_info().get('arch')}) has no {op} "
                                   f"for {gpu}: rebuild with `invoke build-kernels --arch` for this GPU")


# the kernels W4A16Linear.add_into / geglu_into can run (the denoise step's o, down and gate/up, M <= 64); the engine
# picks mma where the wheel has it (engine._default_w4a16_few_row; bench/engine_variants.py compares them)
FEW_ROW_W4A16_KERNELS = {
    "triton": "fused.skinny_w4a16: Triton, canonical int4, int4 groups dequantized into tl.dot",
    "mma": "the wheel's w4a16_skinny: warp-level MMA on prepacked fragments, cp.async weight stream",
}


# ── layers ────────────────────────────────────────────────────────────────────────────────────────────────────────
class Fp8Linear:
    """W8A8: E4M3 weights with per-output-channel scales, a static per-tensor activation scale (calibrated); the
    producer kernel writes E4M3 directly (input_quant_scale), cuBLASLt multiplies (torch._scaled_mm, row-wise)."""

    input_dtype = FP8
    tuner = None            # a gemm_tuning.GemmTuner (the engine sets it): cuBLASLt's fastest candidate, deferred form
    fast_accum = False      # cuBLASLt's FP8 fast accumulation (engine.set_fp8_fast_accum)

    def __init__(self, t: dict, defer_channel_scale: bool = False):
        self.weight = t["weight"].cuda()                       # [N, K] e4m3
        self.weight_scale = t["weight_scale"].cuda().float().view(1, -1)
        # Deferred: cuBLASLt runs its per-tensor-scaled FP8 kernel and the consumer kernel (RoPE, GeGLU, attention,
        # residual add) multiplies the per-output-channel weight scales and adds the bias (the row-wise scaled kernel
        # measured 0.87-1.2x bf16, per-tensor 1.26-1.72x: bench/results/fp8_gemm-*-s12.json).
        self.deferred = defer_channel_scale
        self._one = torch.ones((), device="cuda")
        self.input_scale = t["input_scale"].cuda().float().view(1)
        self.input_quant_scale = (1.0 / self.input_scale).contiguous()
        self.bias = t["bias"].cuda() if "bias" in t else None
        self.output_bias = self.bias if defer_channel_scale else None
        # a layer that stores an output_scale (quantize.E4M3_OUTPUTS) writes E4M3 for the kernel after it
        self.output_scale = t["output_scale"].cuda().float().view(()) if "output_scale" in t else None
        self.write_e4m3(self.output_scale is not None)
        self._scale_a: dict = {}
        self.nbytes = self.weight.numel() + self.weight_scale.numel() * 4

    @property
    def chain_tensors(self) -> tuple:
        """What this layer's GEMM reads of its own in the denoise chain (what an L2 lookahead asks for)."""
        return (self.weight, self.weight_scale)

    def write_e4m3(self, on: bool) -> None:
        """Whether the GEMM writes its output in E4M3 under its calibrated output_scale (the GEMM's result divided by
        it; the consumer's channel scales carry it back) or in bf16."""
        if on and (self.output_scale is None or not self.deferred):
            raise TriforceError("this FP8 layer has no calibrated output_scale with deferred channel scales: it "
                                "cannot write E4M3")
        self.output_dtype = FP8 if on else BF16
        out = self.output_scale if on else 1.0
        # 1 / output_scale rides in scale_a (the GEMM computes scale_a * scale_b * (x w^T) and saturates into E4M3):
        # torch 2.11's _scaled_mm ignores scale_result (bench/results/scaled_mm_output_scale-*-s15.json)
        self._scale_a_deferred = (self.input_scale.view(()) / out).contiguous()
        self.output_channel_scale = (self.weight_scale.view(-1) * out).contiguous() if self.deferred else None

    def __call__(self, x):
        if x.dtype != FP8:                                      # an unfused producer (cuBLAS/FlashAttention output)
            x = fused.quantize_fp8(x.contiguous(), torch.empty(x.shape, dtype=FP8, device=x.device), self.input_quant_scale)
        if self.deferred:
            op = lambda w: torch._scaled_mm(x, w.t(), scale_a=self._scale_a_deferred, scale_b=self._one,  # noqa: E731
                                            out_dtype=self.output_dtype, use_fast_accum=self.fast_accum)
            return gemm_tuning.run(self.tuner, x, self.weight, self.output_dtype, op, scale_x=self._scale_a_deferred,
                                   scale_w=self._one, fast_accum=self.fast_accum)
        rows = x.shape[0]
        if rows not in self._scale_a:
            self._scale_a[rows] = self.input_scale.expand(rows, 1).contiguous()
        return torch._scaled_mm(x, self.weight.t(), scale_a=self._scale_a[rows], scale_b=self.weight_scale,
                                bias=self.bias, out_dtype=BF16, use_fast_accum=self.fast_accum)


class W4A16Linear:
    """INT4 weights (group 128, AWQ-smoothed) with bf16 activations: the kernel wheel's CUTLASS GEMM on prepacked
    weights, or for few rows (the denoise step) where it measured faster (bench/results/w4a16_paths-*.json: expert
    qkv, o, down) the weight-streaming Triton kernel on the canonical int4."""

    input_dtype = BF16

    def __init__(self, t: dict, few_row_kernel: bool = True, gate_up: bool = False):
        # Few rows: qkv accumulates into the step's zeroed arena; o and down add straight into the residual; gate/up
        # (rows gate then up) may run with its GeGLU on the wheel's few-row kernel (geglu_into).
        self.takes_arena = self.adds_into_residual = few_row_kernel
        self.gate_up = gate_up
        self.tk = _kernels("w4a16")
        self.qweight, self.scales = t["qweight"].cuda().contiguous(), t["scales"].cuda().contiguous()
        self.n, self.k = self.qweight.shape[0], self.qweight.shape[1] * 2
        self.out_features = self.n
        self.input_channel_scale = t["channel_scale"].cuda().float() if "channel_scale" in t else None
        self._packed = None
        self._workspace: dict = {}
        self.nbytes = self.qweight.numel() + self.scales.numel() * 2
        self.few_row, self._fragments = "triton", None   # the engine sets it (engine._default_w4a16_few_row)
        self.few_row_splits = 0                            # the mma kernel's CTAs along K (0: its own choice)
        self.few_row_depth = 0                             # > 0: the mma kernel's register-streamed form

    def use_few_row_kernel(self, kernel: str) -> None:
        """Which kernel runs add_into / geglu_into (FEW_ROW_W4A16_KERNELS); "mma" prepacks the weights on first use
        (before any capture; gate/up interleaved for its GeGLU) and needs a wheel with w4a16_skinny."""
        if kernel not in FEW_ROW_W4A16_KERNELS:
            raise TriforceError(f"unknown few-row W4A16 kernel '{kernel}': {', '.join(FEW_ROW_W4A16_KERNELS)}")
        if kernel == "mma" and self._fragments is None:
            if not self.tk.has_op("w4a16_skinny"):
                raise UnsupportedError("the few-row W4A16 kernel 'mma' needs a triforce_kernels wheel with "
                                       "w4a16_skinny: rebuild with `invoke build-kernels`")
            q, s = (fm.interleave_gate_up(self.qweight), fm.interleave_gate_up(self.scales)) if self.gate_up \
                else (self.qweight, self.scales)
            self._fragments = (fm.pack_int4_fragments(q), fm.pack_scales_fragments(s))
        self.few_row = kernel

    def geglu_into(self, x, act, stages: int = 0):
        """act (bf16 [M, N/2]) = gelu_tanh(x gate^T) ⊙ (x up^T), few rows, on the wheel's kernel (gate/up layers;
        stages: its pipeline depth, 0 the wheel's default)."""
        self.tk.w4a16_skinny_geglu(x, *self._fragments, act, dependent=fused.launching_dependent(), stages=stages)

    def __call__(self, x, arena=None):
        rows = x.shape[0]
        if self.takes_arena and rows <= fused.SKINNY_MAX_ROWS:
            out = arena.take(rows, self.n) if arena is not None else None
            return fused.skinny_w4a16(x, self.qweight, self.scales, out=out)
        if self._packed is None:              # first many-row call (a warm-up, before any capture)
            self._packed = self.tk.w4a16_prepack(self.qweight, self.scales)
        x = x.to(BF16).contiguous()
        if rows not in self._workspace:
            self._workspace[rows] = torch.empty(max(1, self.tk.w4a16_workspace_size(rows, self.n, self.k)), dtype=torch.uint8, device="cuda")
        out = torch.empty(rows, self.n, dtype=BF16, device="cuda")
        self.tk.w4a16_gemm(x, *self._packed, out, self._workspace[rows])
        return out

    @property
    def few_row_weights(self) -> dict:
        """The weight arguments of the fused-epilogue kernels (fused.qkv_rope, gate_up_geglu): int4 + scales."""
        return {"w": self.qweight, "scales": self.scales}

    @property
    def chain_tensors(self) -> tuple:
        """What this layer's few-row kernel in the denoise chain reads (what an L2 lookahead asks for)."""
        return self._fragments if self.few_row == "mma" else (self.qweight, self.scales)

    def add_into(self, residual, x, gate):
        """residual (fp32 [M, N]) += gate ⊙ (x dequant(W)^T), few rows (the denoise step's o and down)."""
        if self.few_row == "mma":
            self.tk.w4a16_skinny(x, *self._fragments, residual, gate, splits=self.few_row_splits,
                                 dependent=fused.launching_dependent(), depth=self.few_row_depth)
        else:
            fused.skinny_w4a16(x, self.qweight, self.scales, out=residual, gate=gate)


class NvFp4Linear:
    """NVFP4 W4A4 (Blackwell only): E2M1 weights with swizzled E4M3 block scales and a global scale; activations
    quantized by the wheel's fused kernel with their calibrated global scale."""

    input_dtype = BF16

    def __init__(self, t: dict):
        tk = _kernels("nvfp4")
        self.tk = tk
        self.weight, self.weight_sf = t["qweight"].cuda(), t["weight_sf"].cuda()
        self.n, self.k = self.weight.shape[0], self.weight.shape[1] * 2
        self.input_global = t["input_global"].cuda().float()
        self.alpha = (1.0 / (self.input_global * t["weight_global"].cuda().float())).contiguous()
        self.bias = t["bias"].cuda() if "bias" in t else None
        self.input_channel_scale = t["channel_scale"].cuda().float() if "channel_scale" in t else None
        self._buffers: dict = {}
        self.nbytes = self.weight.numel() + self.weight_sf.numel()

    @property
    def chain_tensors(self) -> tuple:
        """What this layer's GEMM reads of its own in the denoise chain (what an L2 lookahead asks for)."""
        return (self.weight, self.weight_sf)

    def __call__(self, x):
        rows = x.shape[0]
        if rows not in self._buffers:
            self._buffers[rows] = (torch.empty(rows, self.k // 2, dtype=torch.uint8, device="cuda"),
                                   torch.empty(self.tk.nvfp4_sf_bytes(rows, self.k), dtype=torch.uint8, device="cuda"),
                                   torch.empty(max(1, self.tk.nvfp4_workspace_size(rows, self.n, self.k)), dtype=torch.uint8, device="cuda"))
        a, a_sf, ws = self._buffers[rows]
        self.tk.quant_nvfp4(x.to(BF16).contiguous(), self.input_global, a, a_sf)
        out = torch.empty(rows, self.n, dtype=BF16, device="cuda")
        self.tk.nvfp4_gemm(a, a_sf, self.weight, self.weight_sf, self.alpha, out, ws)
        return out + self.bias if self.bias is not None else out


def defers_epilogue(layer_id: str) -> bool:
    """FP8 layers whose consumer kernel applies the per-channel weight scales (and bias): every prefix layer, and
    SigLIP's o / fc1 / fc2 (residual add, GELU). SigLIP's QKV keeps the row-wise scaled GEMM with its bias: scaling
    K / V inside the attention's key loop cost more than the row-wise kernel (engine_variants-planb-*-s12-*)."""
    return layer_id.startswith("prefix.") or (layer_id.startswith("vision.") and not layer_id.endswith(".qkv"))


class QuantizedModel:
    """Every engine GEMM layer by id, as the recipe says. The engine asks has(id) / layer(id) while building."""

    def __init__(self, plan: dict, tensors: dict, meta: dict):
        for precision in sorted(set(plan.values())):
            if precision != "bf16":
                check_backend(precision)
        self.plan, self.meta = plan, meta
        self.tensors = tensors

    def has(self, layer_id: str) -> bool:
        return layer_id in self.plan

    def layer(self, layer_id: str):
        prefix = f"gemm.{layer_id}."
        t = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        precision = self.plan[layer_id]
        if precision == "w4a16":   # few rows: the Triton kernel except where CUTLASS measured faster (gate_up)
            gate_up = layer_id.endswith(".gate_up")
            return W4A16Linear(t, few_row_kernel=not gate_up, gate_up=gate_up)
        if precision == "fp8":     # the consumer kernels apply the per-channel weight scales (and SigLIP's biases)
            return Fp8Linear(t, defer_channel_scale=defers_epilogue(layer_id))
        if precision == "bf16":    # the Plan A engine's layer: the expert's o and down add into the residual
            from ..runtime.engine import Linear, few_row_layer

            return Linear(t["weight"], t.get("bias"), few_row_kernel=few_row_layer(layer_id))
        return NvFp4Linear(t)


# ── entry points ──────────────────────────────────────────────────────────────────────────────────────────────────
def is_quantized_checkpoint(path: Path) -> bool:
    return (Path(path).parent / "recipe.json").is_file()


def quantized_path(path) -> Path:
    path = Path(path)
    return path / "model.safetensors" if path.is_dir() else path


def load_quantized(cfg: ModelConfig, path: Path, recipe: str | None = None) -> tuple[QuantizedModel, dict]:
    """A checkpoint written by `invoke quantize`, ready for the engine: (layers, non-GEMM state on the GPU)."""
    plan, tensors, meta = read_quantized(cfg, path, recipe)
    return QuantizedModel(plan, tensors, meta), {k: v.cuda() for k, v in tensors.items() if not k.startswith("gemm.")}


def read_quantized(cfg: ModelConfig, path: Path, recipe: str | None = None) -> tuple[dict, dict, dict]:
    """(plan, tensors, recipe metadata) of a quantized checkpoint: strict, and its recipe must be for this config."""
    from safetensors import SafetensorError, safe_open

    meta = json.loads((Path(path).parent / "recipe.json").read_text())
    if meta.get("format") != FORMAT:
        raise TriforceError(f"{path.parent}/recipe.json is not a {FORMAT} recipe (format={meta.get('format')})")
    if meta.get("config") != cfg.name:
        raise TriforceError(f"quantized checkpoint {path.parent} was made for config '{meta.get('config')}', not '{cfg.name}'")
    if recipe is not None and recipe != meta.get("recipe"):
        raise TriforceError(f"quantized checkpoint {path.parent} holds recipe '{meta.get('recipe')}'; requested '{recipe}' "
                            f"(re-run `invoke quantize` with it)")
    from .recipes import layer_ids

    plan = meta["layers"]
    if set(plan) != set(layer_ids(cfg)):
        raise TriforceError(f"quantized checkpoint {path.parent}: its recipe does not list exactly the GEMM layers of {cfg.name}")
    expected = expected_quantized(cfg, plan, meta)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = set(f.keys())
            missing, unexpected = sorted(expected - names), sorted(names - expected)
            if missing or unexpected:
                raise TriforceError(f"quantized checkpoint {path}: {len(missing)} missing ({', '.join(missing[:4])}), "
                                    f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}) tensors")
            tensors = {k: f.get_tensor(k) for k in names}
    except SafetensorError as err:
        raise TriforceError(f"quantized checkpoint {path} is not a readable safetensors file ({err})") from None
    return plan, tensors, meta


def quantize_in_memory(cfg: ModelConfig, path: Path, recipe: str, calibration: int, device: str, log=print):
    """(tensors, plan, meta): calibrate the reference on `calibration` observations, then quantize per recipe."""
    from ..runtime.model import ReferencePi05
    from .calibrate import calibrate
    from .quantize import quantize_state
    from .recipes import resolve_recipe

    auto = None
    if recipe == "auto":
        auto = _auto_recommendation(cfg)
    plan, fast_accum = resolve_recipe(recipe, cfg, auto)
    state = load_state(path, cfg)
    start = time.perf_counter()
    model = ReferencePi05(cfg, state, device)
    stats = calibrate(model, cfg, calibration)
    del model
    tensors = quantize_state(cfg, state, plan, stats, device)
    log(f"[quantize] {recipe}: calibrated on {calibration} observations and quantized in {time.perf_counter() - start:.1f} s")
    return tensors, plan, {"recipe": recipe, "calibration_observations": calibration, "source": str(path),
                           "fp8_fast_accum": fast_accum}


def _auto_recommendation(cfg):
    from ..checks.phase0 import gpu_precisions, measure_ceilings
    from ..roofline import analyse

    _, (major, minor) = _gpu()
    ceilings = measure_ceilings(runs=5)
    return analyse(cfg, ceilings["tflops"], ceilings["copy_gbs"], gpu_precisions(f"{major}.{minor}"))["recommendation"]


def check_recipe_backends(cfg: ModelConfig, recipe: str) -> None:
    from .recipes import resolve_recipe

    plan, _ = resolve_recipe(recipe, cfg, _auto_recommendation(cfg) if recipe == "auto" else None)
    for precision in sorted(set(plan.values()) - {"bf16"}):
        check_backend(precision)


def prepare_plan_b(cfg: ModelConfig, path: Path, recipe: str | None, calibration: int = 16):
    """(QuantizedModel, non-GEMM state on the GPU) for Policy.load(plan='b')."""
    if is_quantized_checkpoint(path):
        return load_quantized(cfg, path, recipe)
    if recipe is None:
        raise TriforceError("plan b on a bf16 checkpoint needs --recipe (e.g. h100, thor, fp8, auto) or a checkpoint from `invoke quantize`")
    check_recipe_backends(cfg, recipe)          # refuse before spending a minute on calibration
    tensors, plan, meta = quantize_in_memory(cfg, path, recipe, calibration, "cuda")
    return QuantizedModel(plan, tensors, meta), {k: v.cuda() for k, v in tensors.items() if not k.startswith("gemm.")}


def stage_bytes(tensors: dict, plan: dict, bf16: bool = False) -> dict:
    """GEMM weight bytes per stage: as stored (quantized), or what the bf16 engine holds for the same layers."""
    out: dict = {}
    for lid in plan:
        stage = lid.split(".")[0]
        prefix = f"gemm.{lid}."
        mine = {k: v for k, v in tensors.items() if k.startswith(prefix)}
        if bf16:
            n = mine[prefix + ("weight" if plan[lid] in ("bf16", "fp8") else "qweight")].shape
            k = n[1] * (1 if plan[lid] in ("bf16", "fp8") else 2)
            size = n[0] * k * 2
        else:
            size = sum(v.numel() * v.element_size() for k, v in mine.items() if not k.endswith((".bias", ".channel_scale", ".output_scale")))
        out[stage] = out.get(stage, 0) + size
    return out


def quantize_checkpoint(checkpoint: str, config: str, recipe: str, out_dir: str, calibration: int = 16,
                        device: str | None = None, log=print) -> dict:
    """`invoke quantize`: a quantized checkpoint dir (model.safetensors + recipe.json) and the bytes per stage."""
    from ..runtime.checkpoint import resolve_checkpoint
    from ..runtime.config import load_config
    from .quantize import write_quantized

    cfg = load_config(config)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TriforceError(f"--out {out_dir} exists and is not an empty directory: choose a new one")
    if calibration < 1:
        raise TriforceError("calibration needs at least one observation (--calibration >= 1)")
    path, synthetic = resolve_checkpoint(checkpoint, cfg)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tensors, plan, meta = quantize_in_memory(cfg, path, recipe, calibration, device, log)
    before, after = stage_bytes(tensors, plan, bf16=True), stage_bytes(tensors, plan)
    meta.update(synthetic_weights=synthetic, weight_bytes_bf16=before, weight_bytes_quantized=after)
    write_quantized(out, cfg, tensors, plan, meta)
    return {"out": str(out), "recipe": recipe, "config": config, "synthetic_weights": synthetic,
            "precisions": {p: sum(1 for v in plan.values() if v == p) for p in sorted(set(plan.values()))},
            "weight_bytes": {s: {"bf16": before[s], "quantized": after[s], "ratio": after[s] / before[s]} for s in before}}

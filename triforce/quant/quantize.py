"""Offline quantization: the engine's GEMM layers (fused, folded) quantized per recipe, with AWQ-style smoothing for
INT4 and NVFP4, into a checkpoint (safetensors + recipe.json) that loads without re-quantizing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .. import __version__
from ..errors import TriforceError
from ..runtime.checkpoint import EXPERT, LANG, VISION, expected_tensors
from ..runtime.config import ModelConfig
from ..runtime.engine import fused_gemma_weight
from . import formats as fm
from .recipes import layer_ids

FORMAT = "triforce-quantized-v1"
AWQ_ALPHAS = [i / 10 for i in range(11)]
SMOOTHED = ("w4a16", "nvfp4")   # precisions whose weights get AWQ-style smoothing
# FP8 layers whose output the engine writes in E4M3 for the elementwise kernel after them (the prefix's gate/up for
# its GeGLU, SigLIP's fc1 for its GELU): half the bytes that kernel reads. They store a per-tensor output_scale from
# the calibrated output range times this headroom (E4M3 is floating point: the headroom costs no relative precision,
# only the smallest values' subnormal range; cuBLASLt saturates what still overflows).
E4M3_OUTPUTS = {"prefix": ("gate_up",), "vision": ("fc1",)}
E4M3_OUTPUT_HEADROOM = 4.0


def writes_e4m3_output(layer_id: str, precision: str) -> bool:
    stage, _, name = layer_id.split(".")
    return precision == "fp8" and name in E4M3_OUTPUTS.get(stage, ())


# ── the engine-form weights ───────────────────────────────────────────────────────────────────────────────────────
def _source(layer_id: str) -> tuple[str, list[str], list[str]]:
    """(openpi prefix, weight names, bias names) of the original tensors one engine GEMM is made of."""
    stage, i, name = layer_id.split(".")
    if stage == "vision":
        n = f"{VISION}.encoder.layers.{i}"
        parts = {"qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "o": ["self_attn.out_proj"],
                 "fc1": ["mlp.fc1"], "fc2": ["mlp.fc2"]}[name]
        return n, [f"{p}.weight" for p in parts], [f"{p}.bias" for p in parts]
    n = f"{LANG}.layers.{i}" if stage == "prefix" else f"{EXPERT}.model.layers.{i}"
    parts = {"qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "o": ["self_attn.o_proj"],
             "gate_up": ["mlp.gate_proj", "mlp.up_proj"], "down": ["mlp.down_proj"]}[name]
    return n, [f"{p}.weight" for p in parts], []


def gemm_source_names(cfg: ModelConfig) -> set:
    """Original tensor names that only GEMM layers read (absent from a quantized checkpoint)."""
    names = set()
    for lid in layer_ids(cfg):
        n, ws, bs = _source(lid)
        names.update(f"{n}.{x}" for x in ws + bs)
    return names


def engine_weight(state: dict, layer_id: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 (weight [N, K], bias or None) exactly as the bf16 engine builds the layer."""
    stage, _, name = layer_id.split(".")
    n, ws, bs = _source(layer_id)
    if stage != "vision" and name in ("qkv", "gate_up"):
        return fused_gemma_weight(state, n, name, fold=stage == "prefix"), None
    weight = torch.cat([state[f"{n}.{w}"].float() for w in ws])
    bias = torch.cat([state[f"{n}.{b}"].float() for b in bs]) if bs else None
    return weight, bias


# ── AWQ-style smoothing ───────────────────────────────────────────────────────────────────────────────────────────
def quant_dequant(w: torch.Tensor, precision: str) -> torch.Tensor:
    if precision == "w4a16":
        return fm.dequantize_int4_g128(*fm.quantize_int4_g128(w)).to(w.device)
    g = fm.nvfp4_global_scale(float(w.abs().max())).to(w.device)
    packed, sf = fm.quantize_nvfp4(w, g)
    return fm.dequantize_nvfp4(packed, sf, g).to(w.device)


def awq_scale(w: torch.Tensor, x: torch.Tensor, mean_abs: torch.Tensor, precision: str, heads: int = 1) -> torch.Tensor:
    """Per-input-channel s (the layer computes (x / s) @ (W s)^T) minimizing the output error on calibration rows x,
    searched over s = mean|x|^alpha. heads > 1: one s per head dim, shared by the heads (it is folded into V)."""
    stat = mean_abs.float().to(w.device).clamp(min=1e-5)
    if heads > 1:
        stat = stat.view(heads, -1).mean(0)
    x = x.float().to(w.device)
    ref = x @ w.T
    best, best_err = torch.ones_like(stat), math.inf
    for alpha in AWQ_ALPHAS:
        s = stat.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        full = s.repeat(heads) if heads > 1 else s
        err = float(((x / full) @ quant_dequant(w * full, precision).T - ref).pow(2).mean())
        if err < best_err:
            best, best_err = s, err
    return best


def smooth_layer_group(weights: dict, plan: dict, stats, stage: str, i: int, heads: int, head_dim: int) -> dict:
    """AWQ for one Gemma layer: o's s goes into V's rows and down's into up's rows (exact in real arithmetic); qkv's
    and gate_up's 1/s are applied by the norm that feeds them (stored as channel_scale)."""
    channel = {}
    lid = lambda n: f"{stage}.{i}.{n}"  # noqa: E731
    if plan[lid("o")] in SMOOTHED:
        s = awq_scale(weights[lid("o")][0], stats.samples[lid("o")], stats.mean_abs(lid("o")), plan[lid("o")], heads)
        qkv = weights[lid("qkv")][0]
        v_rows = slice(qkv.shape[0] - head_dim, qkv.shape[0])
        qkv[v_rows] /= s[:, None]
        weights[lid("o")][0].mul_(s.repeat(heads)[None, :])
        stats.smooth(lid("o"), s.repeat(heads))
    if plan[lid("down")] in SMOOTHED:
        s = awq_scale(weights[lid("down")][0], stats.samples[lid("down")], stats.mean_abs(lid("down")), plan[lid("down")])
        gu = weights[lid("gate_up")][0]
        gu[gu.shape[0] // 2:] /= s[:, None]
        stats.smooth_output(lid("gate_up"), torch.cat([torch.ones_like(s), s]))
        weights[lid("down")][0].mul_(s[None, :])
        stats.smooth(lid("down"), s)
    for name in ("qkv", "gate_up"):
        _smooth_through_norm(weights, plan, stats, lid(name), channel)
    return channel


def _smooth_through_norm(weights: dict, plan: dict, stats, layer_id: str, channel: dict) -> None:
    """A layer fed by a norm: W <- W s, and the norm divides by s (channel_scale = 1/s)."""
    if plan[layer_id] in SMOOTHED:
        s = awq_scale(weights[layer_id][0], stats.samples[layer_id], stats.mean_abs(layer_id), plan[layer_id])
        weights[layer_id][0].mul_(s[None, :])
        stats.smooth(layer_id, s)
        channel[layer_id] = (1.0 / s).float()


def smooth_vision_layer(weights: dict, plan: dict, stats, i: int) -> dict:
    """SigLIP: o's s folds into V's rows (and bias); qkv/fc1 get 1/s through the LayerNorm (channel_scale)."""
    channel, lid = {}, (lambda n: f"vision.{i}.{n}")
    if plan[lid("o")] in SMOOTHED:
        s = awq_scale(weights[lid("o")][0], stats.samples[lid("o")], stats.mean_abs(lid("o")), plan[lid("o")])
        w, b = weights[lid("qkv")]
        width = w.shape[0] // 3
        w[2 * width:] /= s[:, None]
        b[2 * width:] /= s
        weights[lid("o")][0].mul_(s[None, :])
        stats.smooth(lid("o"), s)
    for name in ("qkv", "fc1"):
        _smooth_through_norm(weights, plan, stats, lid(name), channel)
    return channel


# ── per-precision tensors ─────────────────────────────────────────────────────────────────────────────────────────
def quantize_layer(lid: str, precision: str, weight, bias, amax: float | None, channel_scale,
                   out_chan_amax=None) -> dict:
    """The stored tensors of one layer, named gemm.<layer id>.<tensor> (out_chan_amax: the calibrated per-channel
    output abs-max of a layer that writes E4M3, writes_e4m3_output)."""
    out = {}
    if precision == "bf16":
        out["weight"] = weight.to(torch.bfloat16)
    elif precision == "fp8":
        q, scale = fm.quantize_fp8_weight(weight)
        out.update(weight=q, weight_scale=scale, input_scale=fm.fp8_activation_scale(_checked_amax(lid, amax)))
        if writes_e4m3_output(lid, precision):
            if out_chan_amax is None:
                raise TriforceError(f"no calibrated output range for {lid} (it writes E4M3)")
            out["output_scale"] = fm.fp8_output_scale(out_chan_amax, scale.cpu(), E4M3_OUTPUT_HEADROOM)
    elif precision == "w4a16":
        packed, scales = fm.quantize_int4_g128(weight)
        out.update(qweight=packed, scales=scales)
    elif precision == "nvfp4":
        g = fm.nvfp4_global_scale(float(weight.abs().max()))
        packed, sf = fm.quantize_nvfp4(weight, g)
        out.update(qweight=packed, weight_sf=fm.swizzle_block_scales(sf.cpu()), weight_global=g,
                   input_global=fm.nvfp4_global_scale(_checked_amax(lid, amax)))
    if bias is not None:
        out["bias"] = bias.to(torch.bfloat16)
    if channel_scale is not None:
        out["channel_scale"] = channel_scale
    return {f"gemm.{lid}.{k}": v.detach().cpu().contiguous() for k, v in out.items()}


def _checked_amax(lid, amax):
    if amax is None or not math.isfinite(amax) or amax <= 0:
        raise TriforceError(f"no usable calibrated activation range for {lid} (amax={amax})")
    return amax


def quantize_state(cfg: ModelConfig, state: dict, plan: dict, stats, device: str) -> dict:
    """All engine GEMM layers per the plan, plus every non-GEMM original tensor: the quantized checkpoint's content."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TriforceError(f"weights contain inf/NaN: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    out = {k: v for k, v in state.items() if k not in gemm_source_names(cfg)}
    for stage, depth in (("vision", cfg.vision.depth), ("prefix", cfg.prefix.depth), ("expert", cfg.expert.depth)):
        for i in range(depth):
            names = ("qkv", "o", "fc1", "fc2") if stage == "vision" else ("qkv", "o", "gate_up", "down")
            weights = {}
            for n in names:
                w, b = engine_weight(state, f"{stage}.{i}.{n}")
                weights[f"{stage}.{i}.{n}"] = [w.to(device), None if b is None else b.to(device)]
            tower = cfg.prefix if stage == "prefix" else cfg.expert
            channel = (smooth_vision_layer(weights, plan, stats, i) if stage == "vision" else
                       smooth_layer_group(weights, plan, stats, stage, i, tower.num_heads, tower.dim_head))
            for lid, (w, b) in weights.items():
                out.update(quantize_layer(lid, plan[lid], w, b, stats.input_amax(lid), channel.get(lid),
                                          stats.output_chan_amax(lid)))
    return out


def expected_quantized(cfg: ModelConfig, plan: dict, meta: dict) -> set:
    """Every tensor name a quantized checkpoint of this plan must hold (the strict loader's list)."""
    names = set(expected_tensors(cfg)) - gemm_source_names(cfg)
    per = {"bf16": ["weight"], "fp8": ["weight", "weight_scale", "input_scale"], "w4a16": ["qweight", "scales"],
           "nvfp4": ["qweight", "weight_sf", "weight_global", "input_global"]}
    for lid, precision in plan.items():
        names.update(f"gemm.{lid}.{t}" for t in per[precision])
        if lid.startswith("vision."):
            names.add(f"gemm.{lid}.bias")
        if lid in meta.get("channel_scaled", []):
            names.add(f"gemm.{lid}.channel_scale")
        if lid in meta.get("output_scaled", []):   # absent from checkpoints written before E4M3 outputs
            names.add(f"gemm.{lid}.output_scale")
    return names


def _layers_with(tensors: dict, name: str) -> list:
    return sorted(k.split(".", 1)[1].rsplit(".", 1)[0] for k in tensors if k.endswith(f".{name}"))


def write_quantized(out_dir: Path, cfg: ModelConfig, tensors: dict, plan: dict, meta: dict) -> Path:
    """model.safetensors + recipe.json, written into a temporary dir and renamed: nothing half written."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TriforceError(f"output dir {out_dir} exists and is not empty: choose a new --out")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"triforce": FORMAT, "config": cfg.name})
    recipe = {"format": FORMAT, "triforce": __version__, "config": cfg.name, "layers": plan,
              "channel_scaled": _layers_with(tensors, "channel_scale"), "output_scaled": _layers_with(tensors, "output_scale"),
              **meta}
    (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)
    return out_dir

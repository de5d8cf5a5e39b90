"""Plan A: the bf16 Pi0.5 engine, the whole inference (vision -> prefix -> every denoise step) in one CUDA graph.

What makes it fast, each exact up to bf16 rounding:
- masked image slots are dropped, and the prompt is cut to its length bucket (nothing attends to padding);
- the prefix's last layer stops after its K/V (nothing reads its output);
- the (1 + w) RMSNorm weights are folded into the next projection; QKV and gate/up are fused GEMMs;
- the time condition and every adaRMS scale/shift/gate are precomputed for the fixed flow steps;
- residual add + norm, RoPE + KV-cache write and GeGLU are single fused kernels (runtime/fused.py); the expert's
  o and down GEMMs add straight into the fp32 residual; the end of each Euler step is one kernel; SigLIP's GELU
  runs in cuBLASLt's GEMM epilogue, and its attention is one Triton kernel reading the QKV output and writing rows
  (fused.packed_attention: no permute copies);
- one kv head: the 8 query heads are laid out as 8·S rows of one head, so attention is one plain MQA call;
- the expert's QKV projection applies RoPE and writes the K/V cache, and its gate/up applies GeGLU, as the epilogues
  of few-row full-K kernels (expert path "fused_epilogue": 8 launches a layer; "per_op" keeps them separate);
- opt-in (`set_expert_path("persistent")`): each bf16 expert layer as one persistent launch instead of 8
  (runtime/expert_layer.py; correct, but measured slower on the H100: bench/results/expert_persistent-*.json);
- denoise step 0 runs on a second stream beside the prefix (`overlap_step0`): its layer i needs only the prefix's
  layer-i K/V, and its small launches fill the SMs the prefix GEMMs leave idle (one graph, event dependencies);
- the later denoise steps' kernels launch with programmatic dependent launch (`denoise_launch`, sm_90+): each is
  launched while the one before it runs and waits for it on the GPU, so the chain pays no launch gaps;
- static buffers and one captured graph per (valid views, prompt bucket); a new key re-captures and says so, after
  a dry forward has compiled every Triton kernel of the shape in parallel (runtime/jit_warmup.py); Policy.load runs
  that dry forward on placeholder weights first, so the compiles overlap reading the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TriforceError, UnsupportedError
from . import expert_layer, fused, gemm_tuning, jit_warmup
from .checkpoint import EXPERT, LANG, PG, TOKEN_EMBEDDING, VISION, placeholder_state
from .config import ModelConfig
from .model import time_embedding

BF16 = torch.bfloat16
FP8 = torch.float8_e4m3fn
# how the denoise step runs each expert layer (set_expert_path); the default is the first of EXPERT_DEFAULT_ORDER that
# the layers allow
EXPERT_PATHS = {
    "fused_epilogue": "8 launches: QKV with RoPE and the K/V cache write, gate/up with GeGLU, each one few-row kernel "
                      "(bf16 or W4A16 weights)",
    "per_op": "10 launches: cuBLAS QKV and gate/up, RoPE and GeGLU their own launches",
    "persistent": "1 persistent launch (runtime/expert_layer.py; measured slower, opt-in)",
}
EXPERT_DEFAULT_ORDER = ("fused_epilogue", "per_op")   # the fastest the layers allow (bench/results/*-s5.json)
# what load_weights replaces (_build_weights, _precompute_time_tables, set_expert_path)
WEIGHT_ATTRS = ("patch", "pos_emb", "vision_layers", "post_ln", "projector", "embedding", "prefix_layers",
                "expert_layers", "action_in", "action_out", "ada", "ada_final", "ada_through")
# (prefix stream, denoise stream) priorities while step 0 runs beside the prefix; lower runs first
OVERLAP_PRIORITIES = {"equal": (0, 0), "prefix": (-1, 0), "step0": (0, -1)}
# how the denoise chain's Triton kernels launch (set_denoise_launch; fused.dependent_launches). The default is
# "dependent" where the GPU has programmatic dependent launch: Plan A 11.11 vs 11.51 ms, Plan B h100_fast 8.96 vs
# 9.81 ms (bench/results/engine_variants-*-s6*.json)
DENOISE_LAUNCHES = {
    "plain": "each kernel launches when the one before it has finished",
    "dependent": "programmatic dependent launch (sm_90+): each kernel is launched while the one before it runs and "
                 "waits for it on the GPU; step 0, beside the prefix, launches plain",
}
PDL_CAPABILITY = (9, 0)
# One L1 / shared-memory split (percent shared) for the dependent launches of the denoise chain (set_carveout): with
# the driver choosing per kernel, consecutive kernels may ask an SM for different splits and cannot share it, which
# the early launches need. Plan A 10.77 vs 11.11-11.13 ms (denoise 4.98 vs 5.36), Plan B h100_fast 8.84 vs
# 8.85-8.87 ms; 50% shared 11.05 / 8.87 (bench/results/engine_variants-*-s10-carveout-chain.json)
CHAIN_CARVEOUT = 100
# the kernel of the denoise step's attention (set_decode_attention); the default is "cluster" where the kernel wheel
# has it and the head dim fits (_default_decode_attention): Plan A 10.64 vs 10.77 ms, Plan B h100_fast 8.69 vs 8.83 ms
# (engine_variants-*-s11-final.json); but "triton" for step 0 while it runs beside the prefix (its clusters, launched
# beside the prefix's GEMMs, cost the prefix ~0.1 ms: 8.79 vs 8.69 ms)
DECODE_ATTENTION_KERNELS = {
    "triton": "fused.mqa_attention_split: key-block partials, then a combine (2 launches)",
    "cluster": "the wheel's mqa_cluster_attention: the key blocks are one cluster's CTAs, combined through distributed "
               "shared memory (1 launch; the prefix's keys read before waiting on the kernel before)",
}
# the pipeline depth of Plan B's few-row W4A16 gate/up + GeGLU kernel in denoise steps 1-9 (set_w4a16_geglu_stages):
# 8 puts the expert's 8 groups of K nearly all in flight, their weights requested before griddepcontrol.wait
# (denoise 4.01 vs 4.06 ms; in step 0 too it slowed the prefix beside it: engine_variants-planb-*-s12-geglu-stages)
W4A16_GEGLU_STAGES = 8
# The fused QKV + RoPE kernel (Triton; the chain's one weight-streaming kernel that cannot load weights before its
# wait) asks L2 for its weights before its chain wait where they are int4 (set_qkv_prefetch; default per weight
# kind): Plan B h100_fast 8.43 vs 8.51 ms (denoise 3.96 vs 4.03), Plan A's bf16 weights 10.72 vs 10.67 ms
# (engine_variants-*-s13-qkv-prefetch.json). With every expert layer reading layer 0's weights from L2, Plan B took
# 8.40 vs 8.50 ms, most of it the QKV weights' (l2_resident_expert-*-s13.json).
QKV_PREFETCH = {"int4": True, "bf16": False}
# tokens a program of the prefix's RoPE + K/V cache write kernel (set_prefix_rope_tokens; fused.ROPE_TOKENS): one
# token a program ran 528 x 10 programs of one head row each (about 5 us a layer); 8: Plan B 8.359 vs 8.423 ms, prefix
# 2.926 vs 2.969 (4: 8.388), and 8.328 vs 8.352 in a second run (4: 8.323); the same actions up to fp32 rounding
# (engine_variants-planb-*-s15-e4m3-v1.json, *-s15-e4m3.json)
PREFIX_ROPE_TOKENS = 8
# The stages whose large GEMMs (512 image rows, 528 tokens) run cuBLASLt's candidate that timed fastest at load
# (runtime/gemm_tuning.py), where the kernel wheel has lt_matmul (Plan A 10.18 vs 10.47 ms, Plan B 8.22 vs 8.29).
# Which stages' FP8 GEMMs accumulate fast is the recipe's (recipes.toml fp8_fast_accum; h100_fast: Plan B 7.90 vs
# 8.22 ms, actions cosine 0.99998, engine_variants-*-s16.json).
GEMM_TUNING_STAGES = ("vision", "prefix")
# Which weights are asked into L2 (fused.l2_prefetch, on a stream beside the denoise chain) once each of an expert
# layer's two norms (norm1 before QKV, norm2 before gate/up) has run, for the GEMMs after it (set_l2_lookahead):
# (layers ahead, GEMM). The chain's kernels are latency-bound and read their weights after their wait, so the DRAM
# idles while the attention and the norms run: with every layer on layer 0's weights (L2-resident), Plan A's denoise
# took 4.08 ms, 4.25 with gate/up + down alone, vs 4.73 (l2_resident_expert-plana-*-s19.json). The default, from
# 8 one-warp programs a launch: Plan A 9.667 vs 10.188 ms (denoise 4.20 vs 4.72), Plan B h100_fast 7.830 vs 7.907,
# same run on the H100; from 32 programs 10.55 / 7.88, 16 programs 9.95 with a second capture of the same setting at
# 12.2 (the prefetch launches contend with the chain's), 2-4 programs fall behind (12.7-14.7 ms: the stream's
# launches queue and the graph's end waits for them) (engine_variants-plan*-*-s19-lookahead-programs.json).
L2_LOOKAHEAD = {
    "off": {},
    "mlp": {"norm1": ((0, "gate_up"), (0, "down"))},
    "mlp+next_attention": {"norm1": ((0, "gate_up"), (0, "down")), "norm2": ((1, "qkv"), (1, "o"))},
    "o+mlp+next_attention": {"norm1": ((0, "o"), (0, "gate_up"), (0, "down")), "norm2": ((1, "qkv"),)},
}
L2_LOOKAHEAD_DEFAULT = ("mlp+next_attention", 8)   # (schedule, one-warp programs a prefetch launch)


def kernel_wheel():
    """The triforce_kernels module, or None where it is not installed (Plan A runs without it)."""
    try:
        import triforce_kernels
    except ImportError:
        return None
    return triforce_kernels


def _bf16(t):
    return t.to("cuda", BF16).contiguous()


def _f32(t):
    return t.to("cuda", torch.float32).contiguous()


def additive_mask(valid):
    """Key mask as an additive bf16 bias [T]: 0 where a key may be attended, -inf elsewhere."""
    return torch.zeros(valid.shape, dtype=BF16, device=valid.device).masked_fill_(~valid, float("-inf"))


FUSED_PARTS = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "input_layernorm"),
               "gate_up": ("mlp.gate_proj", "mlp.up_proj", None, "post_attention_layernorm")}


def fused_gemma_weight(s, n: str, which: str, fold: bool):
    """fp32 fused QKV [q; k; v] or gate/up [gate; up] of one Gemma layer. With fold, the (1 + w) RMSNorm weight is
    folded into the input columns (the prefix; the expert's adaRMS modulation varies per step)."""
    *parts, norm = FUSED_PARTS[which]
    w = torch.cat([s[f"{n}.{p}.weight"].float() for p in parts if p])
    return w * (1 + s[f"{n}.{norm}.weight"].float())[None, :] if fold else w


def in_dtype(layer):
    """The activation dtype a GEMM layer reads (FP8 layers read E4M3 that the producer kernel quantized)."""
    return getattr(layer, "input_dtype", BF16)


def quant_scale(layer):
    return getattr(layer, "input_quant_scale", None)


def out_scale(layer):
    """Per-output-channel scales an FP8 layer left for its consumer kernel to apply (None: already applied)."""
    return getattr(layer, "output_channel_scale", None)


def out_bias(layer):
    """The bias an FP8 layer left for its consumer kernel to add after out_scale (None: applied or none)."""
    return getattr(layer, "output_bias", None)


def channel_scale(layer):
    """Per-input-channel 1/s of an AWQ-smoothed layer, applied by the norm that feeds it (None: no smoothing)."""
    return getattr(layer, "input_channel_scale", None)


W4A16_FEW_ROW_LAYERS = ("o", "down", "gate_up")   # the expert layers a few-row W4A16 kernel can run
W4A16_ADD_INTO_LAYERS = ("o", "down")              # of those, the ones added into the residual (split along K)
# CTAs along K of the wheel's few-row kernel for those (set_w4a16_few_row_splits; absent: the kernel's own count,
# which fills the resident CTA slots once: 32 for the expert down at 10 rows, 256 CTAs). The down at 24 (192 CTAs):
# Plan B h100_fast 7.772 vs 7.824 / 7.811 ms (denoise 3.843 vs 3.888), 16: 7.770, 8: 7.898; the o at 8 gained
# nothing (engine_variants-planb-*-s23-splits.json, H100; alone at M = 10 chained 2.82 vs 3.18 us,
# w4a16_sweep-*-s23-splits.json)
W4A16_FEW_ROW_SPLITS = {"down": 24}
# the 'mma' kernel's per-layer settings of o / down (engine attribute w4a16_few_row_<name>, layer few_row_<name>):
# what the refusal calls them, and what the log says when a switch to another kernel drops them
MMA_ADD_INTO_SETTINGS = {"splits": ("splits along K are", "they split"),
                         "depth": ("the register-streamed form is", "they set the register-streamed form of")}


def few_row_layer(layer_id: str) -> bool:
    """The layers that run at the action horizon's few rows and add into the residual: the expert's o and down."""
    return layer_id.startswith("expert.") and layer_id.endswith((".o", ".down"))


class Linear:
    """y = x W^T (+ b) with bf16 weights (cuBLAS). Few-row layers (the denoise step's o and down) also add their
    output straight into the fp32 residual with `add_into` (the weight-streaming skinny kernel: faster than cuBLAS
    at 10 rows, bench/results/w4a16_paths-*.json, and no separate residual add). Plan B's quantized layers have the
    same interface."""

    tuner = None      # a gemm_tuning.GemmTuner: the engine sets it on the layers of its tuned stages

    def __init__(self, weight, bias=None, few_row_kernel: bool = False):
        self.weight = _bf16(weight)
        self.bias = None if bias is None else _bf16(bias)
        self.adds_into_residual = few_row_kernel and bias is None

    def __call__(self, x):
        if self.bias is None:
            op = lambda w: x @ w.t()  # noqa: E731
        else:
            op = lambda w: torch.addmm(self.bias, x, w.t())  # noqa: E731
        return gemm_tuning.run(self.tuner, x, self.weight, BF16, op, bias=self.bias)

    def gelu(self, x):
        """gelu_tanh(x W^T + b) with the GELU in cuBLASLt's epilogue (SigLIP's fc1: one launch, no fp32 round trip)."""
        op = lambda w: torch._addmm_activation(self.bias, x, w.t(), use_gelu=True)  # noqa: E731
        return gemm_tuning.run(self.tuner, x, self.weight, BF16, op, bias=self.bias, gelu=True)

    @property
    def few_row_weights(self) -> dict | None:
        """The weight arguments of the fused-epilogue kernels (fused.qkv_rope, gate_up_geglu); None with a bias."""
        return {"w": self.weight} if self.bias is None else None

    @property
    def chain_tensors(self) -> tuple:
        """What this layer's few-row kernel in the denoise chain reads (what an L2 lookahead asks for)."""
        return (self.weight,)

    def add_into(self, residual, x, gate):
        """residual (fp32 [M, N]) += gate ⊙ (x W^T), for M <= fused.SKINNY_MAX_ROWS."""
        fused.skinny_linear(x, self.weight, out=residual, gate=gate)

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


MLP_WIDTH_MULTIPLE = 128   # SigLIP's 4304 -> 4352: cuBLAS runs fc2 at K 4352 1.12x faster (vision_ops-*-s5.json)


def pad_mlp_width(fc1, fc2, multiple: int = MLP_WIDTH_MULTIPLE) -> None:
    """Zero rows of fc1 (weight and bias) and zero columns of fc2 up to a width that is a multiple of `multiple`:
    exact, as GELU(0) = 0 meets zero weights. bf16 layers only (a quantized pair keeps its packed shapes)."""
    if type(fc1) is not Linear or type(fc2) is not Linear or fc1.bias is None:
        return
    extra = -fc1.out_features % multiple
    if extra:
        fc1.weight, fc1.bias = F.pad(fc1.weight, (0, 0, 0, extra)), F.pad(fc1.bias, (0, extra))
        fc2.weight = F.pad(fc2.weight, (0, extra)).contiguous()


class EngineStreams:
    """The engine's streams, one per (role, priority), created once and each a different CUDA stream from the others.
    torch hands out streams round-robin from a pool of 32 per priority, so a stream drawn anew for every forward is,
    once in so many draws, one the engine already uses: the denoise stream drawn as the L2 lookahead's stream put its
    prefetches into the denoise chain, in the sixth graph captured in a process, every time (denoise 8.18-8.19 vs
    4.21-4.22 ms; capture_spread-plana-*-s21*.json). With these streams every one of 8 captures took 4.213-4.219 ms
    (capture_spread-plana-*-s22.json)."""

    ROLES = ("capture", "warm-up", "prefix", "denoise", "prefetch")

    def __init__(self, make=None):
        self._make = make or (lambda priority: torch.cuda.Stream(priority=priority))
        self._streams: dict = {}

    def get(self, role: str, priority: int = 0):
        if role not in self.ROLES:   # a misspelt role would quietly draw one more stream from the pool
            raise TriforceError(f"unknown engine stream role {role!r}; the roles are {', '.join(self.ROLES)}")
        key = (role, priority)
        if key not in self._streams:
            taken = {s.cuda_stream for s in self._streams.values()}
            for _ in range(64):                       # two pools' worth: a free stream comes round
                stream = self._make(priority)
                if stream.cuda_stream not in taken:
                    break
            else:
                raise TriforceError(f"no CUDA stream of priority {priority} free for the engine's {role} stream "
                                    f"(it has {len(taken)})")
            self._streams[key] = stream
        return self._streams[key]


@dataclass
class GraphSlot:
    """Static input buffers, the captured graph and its output, for one (views, bucket) key."""

    images: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor
    noise: torch.Tensor
    graph: torch.cuda.CUDAGraph
    actions: torch.Tensor
    capture_seconds: float
    lookahead: dict           # the L2Lookahead tables the graph reads (kept alive with it)


class Pi05Engine:
    def __init__(self, cfg: ModelConfig, state: dict, quant=None, log=print, precompile_workers: int | None = None):
        self.cfg = cfg
        self.log = log
        self.slots: dict = {}
        # threads that compile Triton kernels before a first run; 0: they compile one by one in the warm-up
        self.precompile_workers = jit_warmup.default_workers() if precompile_workers is None else precompile_workers
        self.quant = quant               # Plan B: quantized layers by id (quant/plan_b.py), used while building
        self.overlap_step0, self.overlap_priority = True, "prefix"   # set_overlap_step0 (prefix first measured best)
        e = cfg.expert
        max_pos = len(cfg.image_slots) * cfg.tokens_per_image + cfg.max_token_len + cfg.action_horizon
        self.cos, self.sin = fused.rope_tables(max_pos, e.dim_head, cfg.rope_base, "cuda")
        self.expert_path = None
        self.carveout, self._carveout_pushed = CHAIN_CARVEOUT, False   # set_carveout
        self.w4a16_geglu_stages = W4A16_GEGLU_STAGES                        # set_w4a16_geglu_stages
        self.w4a16_few_row_splits: dict = {}                                # set_w4a16_few_row_splits
        self.w4a16_few_row_depth: dict = {}                                 # set_w4a16_few_row_depth
        self.qkv_prefetch = False                                           # set_qkv_prefetch (QKV_PREFETCH)
        self.tail_blocks = fused.TAIL_BLOCKS                                # set_tail_blocks
        self.l2_lookahead = L2_LOOKAHEAD_DEFAULT                            # set_l2_lookahead
        self._lookahead: dict = {}                                          # the capture's L2Lookahead tables
        self._prefetch_forked = False                                       # in this forward (_denoise joins it)
        self.streams = EngineStreams()                                      # one stream per role (EngineStreams.ROLES)
        self.prefix_rope_tokens = PREFIX_ROPE_TOKENS                        # set_prefix_rope_tokens
        self.gemm_tuner = self._new_gemm_tuner()
        self.gemm_tuning = self.fp8_fast_accum = None                       # set_gemm_tuning, set_fp8_fast_accum
        self.denoise_launch = "dependent" if torch.cuda.get_device_capability() >= PDL_CAPABILITY else "plain"
        self.load_weights(lambda: state)

    @classmethod
    def compiling_while_loading(cls, cfg: ModelConfig, read_state, **options) -> "Pi05Engine":
        """The engine, its Triton kernels compiling on a thread pool while read_state() reads the checkpoint: built
        first on placeholder weights of the checkpoint's shapes, whose dry forward submits the compiles, then
        loaded with the real weights (a fresh cold start: bench/results/cold_start-*-s5.json)."""
        eng = cls(cfg, placeholder_state(cfg), **options)
        compiles = eng.start_compiles() if eng.precompile_workers else None
        try:
            eng.load_weights(read_state)
        except BaseException:             # the checkpoint's error is the one to report, not a compile's
            if compiles is not None:
                compiles.cancel()
            raise
        if compiles is not None:
            compiles.wait()
            eng._report_unprepared(compiles)
        return eng

    def _report_unprepared(self, compiles) -> None:
        if compiles.unprepared:
            name, why = next(iter(compiles.unprepared.items()))
            self.log(f"[engine] {len(compiles.unprepared)} Triton kernel(s) compiled but left to load at their first "
                     f"launch (e.g. {name}: {why})")

    def load_weights(self, read_state) -> None:
        """(Re)build every weight and table from read_state() (a checkpoint state dict). The old ones are dropped
        first, so two sets never sit in GPU memory together; captured graphs are dropped too."""
        self.slots.clear()
        for name in WEIGHT_ATTRS:
            setattr(self, name, None)
        torch.cuda.synchronize()          # queued work (a dry forward) may still read the old weights
        state = read_state()
        self._build_weights(state)
        self._precompute_time_tables(state)
        self.set_expert_path(self.expert_path or next(p for p in EXPERT_DEFAULT_ORDER if self.expert_path_refusal(p) is None))
        self._default_w4a16_few_row()
        self._default_decode_attention()
        self.qkv_prefetch = QKV_PREFETCH[self.qkv_weight_kind()]
        self.e4m3_outputs = tuple(self.e4m3_output_layers())
        if self.gemm_tuning is None:        # the defaults, unless a setter chose before (kept across reloads)
            self.gemm_tuning = GEMM_TUNING_STAGES if self.gemm_tuner else ()
        if self.fp8_fast_accum is None:
            self.fp8_fast_accum = self.default_fp8_fast_accum()
        self.set_gemm_tuning(self.gemm_tuning)
        self.set_fp8_fast_accum(self.fp8_fast_accum)
        if self.quant is not None:          # a checkpoint without output scales writes bf16 there: say so
            self.log(f"[engine] E4M3 GEMM outputs: {', '.join(self.e4m3_outputs) or 'none (no FP8 layer has a calibrated output_scale)'}")
            declared = self.quant.meta.get("fp8_fast_accum")    # a setter's choice, kept across reloads, may differ
            declared = ("none: quantized before recipes declared it" if declared is None
                        else ", ".join(declared) or "none")
            self.log(f"[engine] FP8 fast accumulation: {', '.join(self.fp8_fast_accum) or 'none'} (the recipe "
                     f"declares {declared})")

    def launch_settings(self) -> dict:
        """How this engine runs its layers and chain now (the setters' state), as the validation reports record it."""
        return {"expert_path": self.expert_path, "overlap_step0": self.overlap_step0,
                "denoise_launch": self.denoise_launch, "chain_carveout": self.carveout,
                "decode_attention": self.decode_attention, "step0_attention": self.step0_attention,
                "w4a16_geglu_stages": self.w4a16_geglu_stages, "w4a16_few_row_splits": self.w4a16_few_row_splits,
                "w4a16_few_row_depth": self.w4a16_few_row_depth, "qkv_prefetch": self.qkv_prefetch,
                "tail_blocks": self.tail_blocks,
                "e4m3_outputs": self.e4m3_outputs, "prefix_rope_tokens": self.prefix_rope_tokens,
                "gemm_tuning": self.gemm_tuning, "fp8_fast_accum": self.fp8_fast_accum,
                "l2_lookahead": list(self.l2_lookahead)}

    def qkv_weight_kind(self) -> str:
        """The expert QKV's weights: "int4" (Plan B's W4A16) or "bf16" (the key of QKV_PREFETCH)."""
        return "int4" if "scales" in (self.expert_layers[0]["qkv"].few_row_weights or {}) else "bf16"

    def _default_w4a16_few_row(self) -> None:
        """Plan B's W4A16 expert o/down and gate/up (+ GeGLU) on the wheel's warp-MMA kernel where the wheel has it:
        8.86-8.87 vs 8.97-8.99 ms on the Triton kernels, two H100 runs (engine_variants-planb-*-s9-*.json)."""
        names = self.w4a16_layer_names()
        if not names:
            return
        kernel = "mma" if self._w4a16_layers(names)[0].tk.has_op("w4a16_skinny") else "triton"
        self.set_w4a16_few_row(kernel, names)
        splits = {n: v for n, v in W4A16_FEW_ROW_SPLITS.items() if n in names}
        if kernel == "mma":
            self.set_w4a16_few_row_splits(splits)
        splits = splits or "the kernel's own"
        self.log(f"[engine] W4A16 expert {'/'.join(names)} few-row kernel: {kernel}"
                 + (f", splits along K {splits}" if kernel == "mma"
                    else " (this triforce_kernels wheel has no w4a16_skinny)"))

    def _cluster_attention_refusal(self) -> str | None:
        """Why the denoise attention cannot be 'cluster' here, or None."""
        tk, dim = kernel_wheel(), self.cfg.expert.dim_head
        if tk is None:
            return "no triforce_kernels wheel is installed (`invoke build-kernels`, then install it)"
        try:
            has = tk.has_op("mqa_cluster_attention")
        except tk.UnsupportedError as err:          # the wheel's extension does not load here
            return str(err)
        if not has:
            return "this triforce_kernels wheel has no mqa_cluster_attention (rebuild it with `invoke build-kernels`)"
        if dim not in tk.MQA_CLUSTER_HEAD_DIMS:
            return f"it takes head dims {tk.MQA_CLUSTER_HEAD_DIMS}; {self.cfg.name} has {dim}"
        return None

    def _default_decode_attention(self) -> None:
        """'cluster' where it can run: one launch instead of two per layer (bench/results/engine_variants-*-s11*)."""
        why = self._cluster_attention_refusal()
        self.set_decode_attention("triton" if why else "cluster")
        self.log(f"[engine] denoise attention: {self.decode_attention}" + (f" (cluster: {why})" if why else
                 ", step 0 beside the prefix: triton"))

    def set_decode_attention(self, kernel: str, beside_prefix: str = "triton") -> None:
        """The denoise step's attention kernel (DECODE_ATTENTION_KERNELS), and step 0's while it runs beside the prefix
        (set_overlap_step0); "cluster" needs a triforce_kernels wheel with mqa_cluster_attention and a head dim it
        takes. Captured graphs are dropped and re-capture."""
        for name in (kernel, beside_prefix):
            if name not in DECODE_ATTENTION_KERNELS:
                raise TriforceError(f"unknown denoise attention '{name}': {', '.join(DECODE_ATTENTION_KERNELS)}")
        why = self._cluster_attention_refusal() if "cluster" in (kernel, beside_prefix) else None
        if why:
            raise UnsupportedError(f"denoise attention 'cluster' cannot run: {why}")
        self.decode_attention, self.step0_attention = kernel, beside_prefix
        self.slots.clear()

    def _attention_kernel(self, step: int) -> str:
        return self.step0_attention if step == 0 and self.overlap_step0 else self.decode_attention

    # ── weights ───────────────────────────────────────────────────────────────────────────────────────────────
    def _linear(self, layer_id: str, build):
        """A GEMM layer: the quantized one Plan B prepared for this id, else the bf16 one `build()` makes."""
        if self.quant is not None and self.quant.has(layer_id):
            return self.quant.layer(layer_id)
        return build()

    def _build_weights(self, s):
        cfg, v = self.cfg, self.cfg.vision
        pw = s[f"{VISION}.embeddings.patch_embedding.weight"]
        self.patch = Linear(pw.reshape(v.width, -1), s[f"{VISION}.embeddings.patch_embedding.bias"])
        self.pos_emb = _f32(s[f"{VISION}.embeddings.position_embedding.weight"])
        self.vision_layers = []
        for i in range(v.depth):
            n = f"{VISION}.encoder.layers.{i}"
            g = lambda k, n=n: s[f"{n}.{k}"]  # noqa: E731
            lin = lambda name, build, i=i: self._linear(f"vision.{i}.{name}", build)  # noqa: E731
            self.vision_layers.append({
                "ln1": (_f32(g("layer_norm1.weight")), _f32(g("layer_norm1.bias"))),
                "ln2": (_f32(g("layer_norm2.weight")), _f32(g("layer_norm2.bias"))),
                "qkv": lin("qkv", lambda: Linear(torch.cat([g(f"self_attn.{p}_proj.weight") for p in "qkv"]),
                                                 torch.cat([g(f"self_attn.{p}_proj.bias") for p in "qkv"]))),
                "o": lin("o", lambda: Linear(g("self_attn.out_proj.weight"), g("self_attn.out_proj.bias"))),
                "fc1": lin("fc1", lambda: Linear(g("mlp.fc1.weight"), g("mlp.fc1.bias"))),
                "fc2": lin("fc2", lambda: Linear(g("mlp.fc2.weight"), g("mlp.fc2.bias"))),
            })
        for layer in self.vision_layers:
            pad_mlp_width(layer["fc1"], layer["fc2"])
        for layer in self.vision_layers:   # AWQ-smoothed layers read x / s: the LayerNorm that feeds them divides
            for ln, consumer in (("ln1", "qkv"), ("ln2", "fc1")):
                inv_s = channel_scale(layer[consumer])
                if inv_s is not None:
                    layer[ln] = (layer[ln][0] * inv_s, layer[ln][1] * inv_s)
        self.post_ln = (_f32(s[f"{VISION}.post_layernorm.weight"]), _f32(s[f"{VISION}.post_layernorm.bias"]))
        self.projector = Linear(s[f"{PG}.model.multi_modal_projector.linear.weight"], s[f"{PG}.model.multi_modal_projector.linear.bias"])
        self.embedding = _bf16(s[TOKEN_EMBEDDING])
        self.prefix_layers = [self._gemma_layer(s, "prefix", i, f"{LANG}.layers.{i}") for i in range(cfg.prefix.depth)]
        self.expert_layers = [self._gemma_layer(s, "expert", i, f"{EXPERT}.model.layers.{i}") for i in range(cfg.expert.depth)]
        self.action_in = (_f32(s["action_in_proj.weight"]), _f32(s["action_in_proj.bias"]))
        self.action_out = (_f32(s["action_out_proj.weight"]), _f32(s["action_out_proj.bias"]))

    def _gemma_layer(self, s, stage: str, i: int, n: str):
        """Fused QKV and gate/up (fused_gemma_weight); bf16 unless Plan B quantized the layer."""
        lin = lambda name, build: self._linear(f"{stage}.{i}.{name}", build)  # noqa: E731
        fused_w = lambda which: fused_gemma_weight(s, n, which, fold=stage == "prefix")  # noqa: E731
        return {"qkv": lin("qkv", lambda: Linear(fused_w("qkv"))),
                "o": lin("o", lambda: Linear(s[f"{n}.self_attn.o_proj.weight"],
                                             few_row_kernel=few_row_layer(f"{stage}.{i}.o"))),
                "gate_up": lin("gate_up", lambda: Linear(fused_w("gate_up"))),
                "down": lin("down", lambda: Linear(s[f"{n}.mlp.down_proj.weight"],
                                                   few_row_kernel=few_row_layer(f"{stage}.{i}.down")))}

    def _precompute_time_tables(self, s):
        """The 10 flow times are fixed: the time MLP and every adaRMS modulation are tables, computed once in fp32."""
        cfg, e = self.cfg, self.cfg.expert
        w = lambda k: _f32(s[k])  # noqa: E731
        ts = torch.tensor([1.0 - k / cfg.num_steps for k in range(cfg.num_steps)], device="cuda")
        emb = time_embedding(ts, e.width, cfg.time_min_period, cfg.time_max_period)
        cond = F.silu(F.linear(F.silu(F.linear(emb, w("time_mlp_in.weight"), w("time_mlp_in.bias"))),
                               w("time_mlp_out.weight"), w("time_mlp_out.bias")))      # [steps, width]

        def mod(name, consumer=None):
            scale, shift, gate = F.linear(cond, w(f"{name}.dense.weight"), w(f"{name}.dense.bias")).chunk(3, dim=-1)
            inv_s = channel_scale(consumer) if consumer is not None else None
            scale1p, shift = (1 + scale, shift) if inv_s is None else ((1 + scale) * inv_s, shift * inv_s)
            return scale1p.contiguous(), shift.contiguous(), gate.contiguous()   # each [steps, width]

        self.ada = [[mod(f"{EXPERT}.model.layers.{i}.{norm}", self.expert_layers[i][consumer])
                     for norm, consumer in (("input_layernorm", "qkv"), ("post_attention_layernorm", "gate_up"))]
                    for i in range(e.depth)]
        self.ada_final = mod(f"{EXPERT}.model.norm")

    def expert_path_refusal(self, path: str) -> str | None:
        """Why the expert layers cannot run on `path` (None: they can). fused_epilogue reads bf16 or W4A16 QKV and
        gate/up weights, persistent bf16 weights in all four layers; both one block of <= 16 action rows."""
        if path == "per_op":
            return None
        if self.cfg.action_horizon > expert_layer.MAX_ROWS:
            return f"action horizon {self.cfg.action_horizon} > {expert_layer.MAX_ROWS} rows"
        if path == "fused_epilogue":    # bf16 or W4A16 QKV and gate/up (the kernels' two weight forms)
            unfit = {name for layer in self.expert_layers for name in ("qkv", "gate_up")
                     if getattr(layer[name], "few_row_weights", None) is None}
        else:                           # persistent: bf16 weights in all four
            unfit = {name for layer in self.expert_layers for name, lin in layer.items()
                     if type(lin) is not Linear or lin.bias is not None}
        if unfit:
            return f"quantized expert layers ({', '.join(sorted(unfit))})"
        if path == "fused_epilogue" and any(quant_scale(layer["down"]) is not None for layer in self.expert_layers):
            return "FP8 down layers read a quantized GeGLU output (the fused gate/up writes bf16)"
        return None

    def set_expert_path(self, path: str) -> None:
        """One of EXPERT_PATHS (bench/expert_kernels.py times their launches, bench/engine_variants.py the engine on
        each). Captured graphs are dropped and re-capture."""
        if path not in EXPERT_PATHS:
            raise TriforceError(f"unknown expert path '{path}': {', '.join(EXPERT_PATHS)}")
        why = self.expert_path_refusal(path)
        if why:
            raise TriforceError(f"the {path} expert path cannot run here: {why}")
        if path == "persistent" and self.ada_through is None:   # each adaRMS shift carried through its GEMM, per step
            self.ada_through = [(expert_layer.shift_through(layer["qkv"].weight, b1),
                                 expert_layer.shift_through(layer["gate_up"].weight, b2))
                                for layer, ((_, b1, _), (_, b2, _)) in zip(self.expert_layers, self.ada)]
        self.expert_path = path
        self.slots.clear()

    def set_overlap_step0(self, on: bool, priority: str = "prefix") -> None:
        """Whether denoise step 0 runs beside the prefix on a second stream (True) or after it; with it, which of
        the two streams the GPU schedules first (OVERLAP_PRIORITIES). Captured graphs are dropped and re-capture."""
        if priority not in OVERLAP_PRIORITIES:
            raise TriforceError(f"unknown overlap priority '{priority}': {', '.join(OVERLAP_PRIORITIES)}")
        self.overlap_step0, self.overlap_priority = bool(on), priority
        self.slots.clear()

    def set_denoise_launch(self, mode: str) -> None:
        """One of DENOISE_LAUNCHES; "dependent" needs programmatic dependent launch (PDL_CAPABILITY or newer) and is
        refused elsewhere, naming the GPU. Captured graphs are dropped and re-capture."""
        if mode not in DENOISE_LAUNCHES:
            raise TriforceError(f"unknown denoise launch '{mode}': {', '.join(DENOISE_LAUNCHES)}")
        capability = torch.cuda.get_device_capability()
        if mode == "dependent" and capability < PDL_CAPABILITY:
            raise TriforceError(f"denoise launch 'dependent' needs programmatic dependent launch (compute capability "
                                f">= {'.'.join(map(str, PDL_CAPABILITY))}); {torch.cuda.get_device_name()} is "
                                f"{'.'.join(map(str, capability))}")
        self.denoise_launch = mode
        self.slots.clear()

    def set_carveout(self, percent: int) -> None:
        """One preferred L1 / shared-memory split (percent shared; fused.CARVEOUT_DEFAULT: the driver's choice per
        kernel) for the kernels of the denoise chain's dependent launches (Triton's and the wheel's few-row
        kernels), applied at the next capture. Captured graphs are dropped and re-capture."""
        try:
            fused.check_carveout(percent)
        except ValueError as err:
            raise TriforceError(str(err)) from None
        self.carveout = int(percent)
        self.slots.clear()

    def _apply_carveout(self) -> None:
        """Before a capture (every kernel compiled): the carveout into the chain's kernels (the driver's choice, never
        changed, needs nothing)."""
        self._carveout_pushed = self._carveout_pushed or self.carveout != fused.CARVEOUT_DEFAULT
        if not self._carveout_pushed:
            return
        fused.set_chain_carveout(self.carveout)
        mma = [lin for lin in self._w4a16_layers(W4A16_FEW_ROW_LAYERS) if lin.few_row == "mma"]
        if not mma and "cluster" not in (self.decode_attention, self.step0_attention):
            return                        # no kernel of the wheel in the chain
        tk = kernel_wheel()
        if not tk.has_op("set_chain_carveout"):
            raise UnsupportedError(f"carveout {self.carveout}: this triforce_kernels wheel has no "
                                   f"set_chain_carveout for its chain kernels; rebuild it with `invoke "
                                   f"build-kernels`, or set_carveout({fused.CARVEOUT_DEFAULT})")
        tk.set_chain_carveout(self.carveout)

    def _w4a16_layers(self, names) -> list:
        """Plan B's W4A16 expert layers among `names` (qkv, o, gate_up, down) of every layer."""
        return [layer[n] for layer in self.expert_layers for n in names if hasattr(layer[n], "use_few_row_kernel")]

    def w4a16_layer_names(self) -> tuple:
        """Which of W4A16_FEW_ROW_LAYERS (o, down, gate_up) run W4A16 here: none on Plan A or a recipe keeping the
        expert in another precision; the W4A16 setters refuse the others."""
        return tuple(n for n in W4A16_FEW_ROW_LAYERS if self._w4a16_layers((n,)))

    def _refuse_absent_w4a16(self, what: str, names) -> None:
        """A W4A16 setting named for layers that are not W4A16 here would be kept and read by nothing: refused."""
        absent = [n for n in names if not self._w4a16_layers((n,))]
        if absent:
            raise TriforceError(f"{what}: this engine has no W4A16 expert {', '.join(absent)} layers (Plan A, or a "
                                f"recipe keeping them in another precision); its W4A16 layers: "
                                f"{', '.join(self.w4a16_layer_names()) or 'none'}")

    def set_w4a16_few_row(self, kernel: str, layers=W4A16_FEW_ROW_LAYERS) -> None:
        """The kernel (plan_b.FEW_ROW_W4A16_KERNELS) of the W4A16 expert layers named in `layers` (o, down: added into
        the residual; gate_up: with its GeGLU); refused for layers not W4A16 here. Captured graphs re-capture."""
        self._refuse_absent_w4a16(f"W4A16 few-row kernel '{kernel}' for {tuple(layers)}", layers)
        for layer in self._w4a16_layers(layers):
            layer.use_few_row_kernel(kernel)
        for name, (_, verb) in MMA_ADD_INTO_SETTINGS.items() if kernel != "mma" else ():
            held = getattr(self, f"w4a16_few_row_{name}")
            dropped = {n: v for n, v in held.items() if n in layers}
            if dropped:   # the mma kernel's settings: drop them openly rather than keep a setting nothing reads
                self._set_mma_add_into(name, {n: v for n, v in held.items() if n not in dropped})
                self.log(f"[engine] W4A16 few-row {name} {dropped} dropped: {verb} the 'mma' kernel, these layers "
                         f"now run '{kernel}'")
        self.slots.clear()

    def set_w4a16_few_row_splits(self, splits: dict) -> None:
        """CTAs along K of the wheel's few-row kernel for the W4A16 expert layers named (o, down: {name: splits}; 0
        or absent: the kernel's own choice, which fills the resident CTA slots once). Graphs re-capture. Refused for
        layers on another few-row kernel (the Triton kernel has no such split)."""
        if set(splits) - set(W4A16_ADD_INTO_LAYERS) or any(not isinstance(v, int) or v < 0 for v in splits.values()):
            raise TriforceError(f"W4A16 few-row splits {splits}: non-negative ints for {W4A16_ADD_INTO_LAYERS} expected")
        self._set_mma_add_into("splits", splits)

    def set_w4a16_few_row_depth(self, depths: dict) -> None:
        """The register-streamed form of the wheel's few-row kernel for the W4A16 expert layers named (o, down:
        {name: groups in flight a warp, the wheel's W4A16_STREAMED_DEPTHS}; 0 or absent: the pipelined form). Graphs
        re-capture. Refused for layers on another few-row kernel, and for an action horizon above the form's rows."""
        layers = self._w4a16_layers(W4A16_ADD_INTO_LAYERS)
        allowed = layers[0].tk.W4A16_STREAMED_DEPTHS if layers else tuple(depths.values())
        if set(depths) - set(W4A16_ADD_INTO_LAYERS) or any(v not in allowed for v in depths.values()):
            raise TriforceError(f"W4A16 few-row depth {depths}: one of {allowed} for {W4A16_ADD_INTO_LAYERS} expected")
        if layers and any(depths.values()) and self.cfg.action_horizon > layers[0].tk.W4A16_STREAMED_MAX_ROWS:
            raise TriforceError(f"W4A16 few-row depth {depths}: the register-streamed form takes at most "
                                f"{layers[0].tk.W4A16_STREAMED_MAX_ROWS} rows, {self.cfg.name}'s action horizon is "
                                f"{self.cfg.action_horizon}")
        self._set_mma_add_into("depth", depths)

    def _set_mma_add_into(self, name: str, values: dict) -> None:
        """One of the 'mma' kernel's per-layer settings (MMA_ADD_INTO_SETTINGS) on o / down (absent: 0, the kernel's
        default), refused for layers not W4A16 here or running another kernel; graphs re-capture."""
        self._refuse_absent_w4a16(f"W4A16 few-row {name} {values}", values)
        other = sorted({layer.few_row for n, v in values.items() if v for layer in self._w4a16_layers((n,))} - {"mma"})
        if other:
            raise TriforceError(f"W4A16 few-row {name} {values}: those layers run the {', '.join(other)} few-row "
                                f"kernel; {MMA_ADD_INTO_SETTINGS[name][0]} the wheel's 'mma' kernel's "
                                f"(set_w4a16_few_row('mma') first)")
        for layer_name in W4A16_ADD_INTO_LAYERS:
            for layer in self._w4a16_layers((layer_name,)):
                setattr(layer, f"few_row_{name}", values.get(layer_name, 0))
        setattr(self, f"w4a16_few_row_{name}", dict(values))
        self.slots.clear()

    def set_w4a16_geglu_stages(self, stages: int) -> None:
        """The cp.async pipeline depth of the wheel's few-row gate/up + GeGLU kernel in denoise steps 1-9 (0: its
        default, 4; W4A16_GEGLU_STAGES); step 0 beside the prefix keeps the default. Captured graphs re-capture."""
        self._refuse_absent_w4a16(f"W4A16 GeGLU stages {stages}", ("gate_up",))
        allowed = self._w4a16_layers(("gate_up",))[0].tk.W4A16_SKINNY_GEGLU_STAGES
        if stages not in allowed:
            raise TriforceError(f"W4A16 GeGLU stages {stages}: one of {allowed} expected")
        self.w4a16_geglu_stages = stages
        self.slots.clear()

    def set_tail_blocks(self, blocks: int) -> None:
        """Programs a row of the denoise step's euler_tail (fused.TAIL_BLOCKS; each takes a block of the next
        residual's width and repeats the row's norm and action_out). Captured graphs are dropped and re-capture."""
        if blocks < 1 or self.cfg.expert.width % blocks:
            raise TriforceError(f"euler tail blocks {blocks}: a divisor of the expert width {self.cfg.expert.width} "
                                f"expected")
        self.tail_blocks = blocks
        self.slots.clear()

    def set_qkv_prefetch(self, on: bool) -> None:
        """Whether the fused QKV + RoPE kernel prefetches its weights into L2 before its chain wait (dependent
        launches only; the default is QKV_PREFETCH of the weights' kind). Captured graphs are dropped and
        re-capture."""
        self.qkv_prefetch = bool(on)
        self.slots.clear()

    def set_l2_lookahead(self, schedule: str, programs: int = L2_LOOKAHEAD_DEFAULT[1]) -> None:
        """Which expert weights are asked into L2 ahead of the GEMMs that read them (L2_LOOKAHEAD) and by how many
        one-warp programs a launch; under dependent launches only (step 0 beside the prefix launches plain and asks
        for nothing). Captured graphs are dropped and re-capture."""
        if schedule not in L2_LOOKAHEAD or not 1 <= programs <= 1024:
            raise TriforceError(f"L2 lookahead '{schedule}' from {programs} programs: schedules "
                                f"{', '.join(L2_LOOKAHEAD)}; 1-1024 programs")
        self.l2_lookahead = (schedule, programs)
        self.slots.clear()

    def _lookahead_tables(self) -> dict:
        """(layer, norm, last step) -> the L2Lookahead launched after that norm (None: nothing to ask for), from the
        tensors each expert GEMM's chain kernel reads now; built before a capture, kept with its graph. In the last
        step, the last layer's norm2 asks for nothing (no next layer)."""
        schedule, programs = self.l2_lookahead
        if not L2_LOOKAHEAD[schedule]:
            return {}
        why = ("the expert path is " + self.expert_path if self.expert_path != "fused_epilogue"
               else "the denoise chain launches plain" if self.denoise_launch != "dependent" else None)
        if why:
            self.log(f"[engine] L2 lookahead {schedule} not used: {why} (it runs beside the fused_epilogue "
                     f"path's dependent launches)")
            return {}
        depth = len(self.expert_layers)
        tables = {}
        for i in range(depth):
            for norm, wanted in L2_LOOKAHEAD[schedule].items():
                for last in (False, True):
                    kept = [(ahead, gemm) for ahead, gemm in wanted if not (last and i + ahead >= depth)]
                    if last and len(kept) == len(wanted):         # the same as every other step's: one table
                        tables[i, norm, last] = tables[i, norm, False]
                        continue
                    tensors = [t for ahead, gemm in kept
                               for t in self.expert_layers[(i + ahead) % depth][gemm].chain_tensors]
                    tables[i, norm, last] = fused.L2Lookahead(tensors, programs) if tensors else None
        return tables

    def set_prefix_rope_tokens(self, tokens: int) -> None:
        """How many tokens a program of the prefix's RoPE + K/V cache write takes (fused.ROPE_TOKENS). Captured
        graphs are dropped and re-capture."""
        if tokens not in fused.ROPE_TOKENS:
            raise TriforceError(f"prefix RoPE tokens a program {tokens}: one of {fused.ROPE_TOKENS} expected")
        self.prefix_rope_tokens = tokens
        self.slots.clear()

    def e4m3_output_layers(self) -> dict:
        """stage -> Plan B's FP8 layers whose checkpoint holds a calibrated output scale (which layers get one is
        quant.quantize.E4M3_OUTPUTS: SigLIP's fc1, the prefix's gate/up), which can write E4M3 for the GELU / GeGLU
        kernel after them."""
        layers = {stage: [lin for layer in getattr(self, f"{stage}_layers") for lin in layer.values()
                          if getattr(lin, "output_scale", None) is not None] for stage in ("vision", "prefix", "expert")}
        return {stage: lins for stage, lins in layers.items() if lins}

    def set_e4m3_outputs(self, stages) -> None:
        """The stages whose output-scaled FP8 layers write E4M3 (default: every stage whose layers have the scales);
        the others write bf16. A stage without such layers is refused. Captured graphs are dropped and re-capture."""
        layers = self.e4m3_output_layers()
        unfit = sorted(set(stages) - set(layers))
        if unfit:
            raise TriforceError(f"E4M3 GEMM outputs in {', '.join(unfit)}: no FP8 layer there has a calibrated "
                                f"output_scale (SigLIP fc1 / prefix gate/up of a Plan B checkpoint quantized by this "
                                f"version)")
        for stage, lins in layers.items():
            for lin in lins:
                lin.write_e4m3(stage in stages)
        self.e4m3_outputs = tuple(stage for stage in layers if stage in stages)
        self.slots.clear()

    def _new_gemm_tuner(self):
        """The GEMM tuner where the kernel wheel has lt_matmul; else None, said in the log (Plan A runs without the
        wheel: torch's GEMMs, the heuristic's first answer)."""
        tk = kernel_wheel()
        try:
            why = None if tk is not None and tk.has_op("lt_matmul") else "no kernel wheel with lt_matmul"
        except (ImportError, RuntimeError) as err:          # a wheel whose extension does not load here
            why = f"the kernel wheel does not load ({err})"
        if why or not torch.cuda.is_available():
            self.log(f"[engine] GEMM tuning off: {why or 'no GPU'}; torch's GEMMs run")
            return None
        return gemm_tuning.GemmTuner(tk, log=self.log)

    def _stage_gemms(self, stage: str, fp8_only: bool = False) -> list:
        """The tunable GEMM layers of a stage (vision: SigLIP, its patch embedding and projector; prefix: Gemma 2B):
        bf16 Linear and Plan B's FP8 layers (those with a `tuner` slot), or only the FP8 ones."""
        layers = {"vision": [*(lin for layer in self.vision_layers for k, lin in layer.items() if not k.startswith("ln")),
                             self.patch, self.projector],
                  "prefix": [lin for layer in self.prefix_layers for lin in layer.values()]}.get(stage, [])
        return [lin for lin in layers if hasattr(lin, "tuner") and (not fp8_only or in_dtype(lin) == FP8)]

    def set_gemm_tuning(self, stages) -> None:
        """The stages (vision, prefix) whose GEMMs run the cuBLASLt algorithm the tuner timed fastest for their shape
        (runtime/gemm_tuning.py); () runs torch's GEMMs everywhere. Needs the kernel wheel's lt_matmul."""
        stages = tuple(stages)
        unknown = sorted(set(stages) - {"vision", "prefix"})
        if unknown:
            raise TriforceError(f"GEMM tuning in {', '.join(unknown)}: only vision and prefix have tuned GEMMs")
        if stages and self.gemm_tuner is None:
            raise UnsupportedError("GEMM tuning needs the kernel wheel's lt_matmul (cuBLASLt with a chosen algorithm) "
                                   "on a GPU: rebuild the wheel with `invoke build-kernels`")
        for stage in ("vision", "prefix"):
            for lin in self._stage_gemms(stage):
                lin.tuner = self.gemm_tuner if stage in stages else None
        self.gemm_tuning = stages
        self.slots.clear()

    def default_fp8_fast_accum(self) -> tuple:
        """The stages whose FP8 GEMMs the checkpoint's recipe accumulates fast (recipes.toml fp8_fast_accum, carried
        in a quantized checkpoint's recipe.json): none in Plan A, and none for a checkpoint quantized before recipes
        declared it."""
        return tuple(self.quant.meta.get("fp8_fast_accum", ())) if self.quant is not None else ()

    def set_fp8_fast_accum(self, stages) -> None:
        """The stages whose FP8 GEMMs accumulate without Hopper's periodic promotion to fp32 (cuBLASLt's fast
        accumulation: faster, less exact over long K). A stage without FP8 layers is refused."""
        stages = tuple(stages)
        unfit = sorted(st for st in stages if not self._stage_gemms(st, fp8_only=True))
        if unfit:
            raise TriforceError(f"FP8 fast accumulation in {', '.join(unfit)}: no FP8 GEMM there (a Plan B recipe "
                                f"with fp8 for that stage)")
        for stage in ("vision", "prefix"):
            for lin in self._stage_gemms(stage, fp8_only=True):
                lin.fast_accum = stage in stages
        self.fp8_fast_accum = stages
        self.slots.clear()

    def gemm_tuning_table(self) -> list:
        """The tuner's choice for every GEMM shape tuned so far (what the reports record)."""
        return self.gemm_tuner.table() if self.gemm_tuner else []

    def _geglu_stages(self, step: int) -> int:
        """8 stages hold more shared memory: beside the prefix (step 0) they slowed its GEMMs (3.10 vs 3.03 ms)."""
        return 0 if step == 0 and self.overlap_step0 else self.w4a16_geglu_stages

    def _launches(self, step: int):
        """The context step `step`'s launches are made in. Step 0 beside the prefix launches plain: its programs,
        launched early, would wait on SMs the prefix's GEMMs need (Plan B prefix 3.13 vs 3.03 ms,
        engine_variants-planb-*-s6-h100_fast.json)."""
        if self.denoise_launch == "plain" or (step == 0 and self.overlap_step0):
            return contextlib.nullcontext()
        return fused.dependent_launches()

    # ── stages ────────────────────────────────────────────────────────────────────────────────────────────────
    def _vision(self, images):
        """images fp32 [V, H, W, 3] -> image tokens bf16 [V·T, prefix width]."""
        cfg, v = self.cfg, self.cfg.vision
        n_views, p, g = images.shape[0], cfg.patch_size, cfg.image_size // cfg.patch_size
        patches = images.to(BF16).view(n_views, g, p, g, p, 3).permute(0, 1, 3, 5, 2, 4).reshape(n_views * g * g, 3 * p * p)
        x = (self.patch(patches).float().view(n_views, g * g, v.width) + self.pos_emb).view(n_views * g * g, v.width)
        rows = n_views * g * g
        pending = pending_scale = pending_bias = None
        for layer in self.vision_layers:
            qkv_l, o_l, fc1, fc2 = layer["qkv"], layer["o"], layer["fc1"], layer["fc2"]
            h = torch.empty(rows, v.width, dtype=in_dtype(qkv_l), device="cuda")
            fused.add_norm(x, h, y=pending, gate=pending_scale, y_bias=pending_bias, weight=layer["ln1"][0],
                           bias=layer["ln1"][1], eps=cfg.norm_eps, layernorm=True, quant_scale=quant_scale(qkv_l))
            att = fused.packed_attention(qkv_l(h), torch.empty(rows, v.width, dtype=in_dtype(o_l), device="cuda"),
                                         g * g, v.num_heads, v.dim_head, quant_scale=quant_scale(o_l))
            h = torch.empty(rows, v.width, dtype=in_dtype(fc1), device="cuda")
            fused.add_norm(x, h, y=o_l(att), gate=out_scale(o_l), y_bias=out_bias(o_l), weight=layer["ln2"][0],
                           bias=layer["ln2"][1], eps=cfg.norm_eps, layernorm=True, quant_scale=quant_scale(fc1))
            if isinstance(fc1, Linear) and fc1.bias is not None and in_dtype(fc2) == BF16:
                pending = fc2(fc1.gelu(h))
            else:   # a quantized fc1, or an FP8 fc2 that reads E4M3: the GELU kernel (with fc1's deferred epilogue)
                mid = fc1(h)
                act = mid if in_dtype(fc2) == mid.dtype else torch.empty(mid.shape, dtype=in_dtype(fc2), device="cuda")
                pending = fc2(fused.gelu(mid, act, quant_scale=quant_scale(fc2), channel_scale=out_scale(fc1),
                                         bias=out_bias(fc1)))
            pending_scale, pending_bias = out_scale(fc2), out_bias(fc2)
        h = torch.empty(rows, v.width, dtype=BF16, device="cuda")
        fused.add_norm(x, h, y=pending, gate=pending_scale, y_bias=pending_bias, weight=self.post_ln[0],
                       bias=self.post_ln[1], eps=cfg.norm_eps, layernorm=True)
        return self.projector(h)

    @staticmethod
    def _prefix_valid(n_img: int, token_mask):
        """Which prefix slots hold a token: every image token, then the prompt's mask."""
        return torch.cat([torch.ones(n_img, dtype=torch.bool, device="cuda"), token_mask])

    def _prefix(self, img_tokens, tokens, valid, kv, kv_ready=None):
        """Gemma 2B over [image tokens | prompt bucket]; fills the per-layer K/V cache, calling kv_ready(i) (if
        given) once layer i's K/V are written."""
        cfg, p = self.cfg, self.cfg.prefix
        n_img = img_tokens.shape[0]
        seq = n_img + tokens.shape[0]
        x = torch.empty(seq, p.width, dtype=torch.float32, device="cuda")
        x[:n_img] = img_tokens
        x[n_img:] = self.embedding[tokens].float() * math.sqrt(p.width)
        pos = (torch.cumsum(valid.int(), 0) - 1).int()
        mask = additive_mask(valid)
        q = torch.empty(seq * p.num_heads, p.dim_head, dtype=BF16, device="cuda")
        pending = pending_scale = None
        for i, layer in enumerate(self.prefix_layers):
            k_cache, v_cache = kv[i]
            qkv_l, gu_l, down_l = layer["qkv"], layer["gate_up"], layer["down"]
            h = torch.empty(seq, p.width, dtype=in_dtype(qkv_l), device="cuda")
            fused.add_norm(x, h, y=pending, gate=pending_scale, scale=channel_scale(qkv_l), eps=cfg.norm_eps,
                           quant_scale=quant_scale(qkv_l))
            fused.rope_qkv(qkv_l(h), pos, self.cos, self.sin, q, k_cache, v_cache, 0, p.num_heads, p.dim_head,
                           channel_scale=out_scale(qkv_l), tokens=self.prefix_rope_tokens)
            if kv_ready is not None:
                kv_ready(i)
            if i == len(self.prefix_layers) - 1:
                break                       # the expert reads only this layer's K/V
            att = self._attend(q, k_cache[:seq], v_cache[:seq], mask, quant_scale=quant_scale(layer["o"])).view(seq, -1)
            h = torch.empty(seq, p.width, dtype=in_dtype(gu_l), device="cuda")
            fused.add_norm(x, h, y=layer["o"](att), gate=out_scale(layer["o"]), scale=channel_scale(gu_l), eps=cfg.norm_eps,
                           quant_scale=quant_scale(gu_l))
            act = torch.empty(seq, p.mlp_dim, dtype=in_dtype(down_l), device="cuda")
            pending = down_l(fused.geglu(gu_l(h), act, quant_scale=quant_scale(down_l), channel_scale=out_scale(gu_l)))
            pending_scale = out_scale(down_l)

    def _denoise_step_persistent(self, step, x, x_t, pos, mask, kv, seq, before_layer, scratch):
        """_denoise_step with each expert layer in one launch (runtime/expert_layer.py), then one euler_tail."""
        cfg, e = self.cfg, self.cfg.expert
        for i, layer in enumerate(self.expert_layers):
            if before_layer is not None:
                before_layer(i)
            (s1, _, g1), (s2, _, g2) = self.ada[i]
            c1, c2 = self.ada_through[i]
            expert_layer.expert_layer(x, (s1[step], c1[step], g1[step]), (s2[step], c2[step], g2[step]),
                                      layer["qkv"].weight, layer["o"].weight, layer["gate_up"].weight,
                                      layer["down"].weight, *kv[i], mask, pos, self.cos, self.sin, seq, scratch,
                                      cfg.norm_eps, e.num_heads, e.dim_head)
        return self._euler_end(step, x, x_t)

    def _denoise_step(self, step, x, x_t, pos, mask, kv, seq, before_layer):
        """One Euler step of the action expert on its fp32 residual x (x_t's action_in projection): x_t (fp32 [H, A])
        + dt · v(x_t, t_step); returns (the next step's residual or None after the last step, the new x_t).
        before_layer(i), if given, runs before layer i's launches (step 0 waits there for the prefix's layer-i K/V).
        Per layer: norm, QKV + RoPE + cache write, split-KV attention (partials, combine), o into the residual, norm,
        gate/up + GeGLU, down into the residual: 8 launches on the fused_epilogue path, 10 on per_op (QKV, RoPE,
        gate/up, GeGLU separate; bench/results/expert_layer-*.json times each); then one euler_tail.
        (Norms and the attention combine done by the last program of the launch before them measured slower than
        these launches: expert_layer-*-s4-tails.json.)"""
        cfg, e = self.cfg, self.cfg.expert
        horizon = x_t.shape[0]
        q = torch.empty(horizon * e.num_heads, e.dim_head, dtype=BF16, device="cuda")
        arena = fused.ZeroArena(horizon * sum(lin.out_features for layer in self.expert_layers for lin in layer.values()
                                              if getattr(lin, "takes_arena", False)), "cuda")
        pending, pending_gate = None, None
        fused_epilogue = self.expert_path == "fused_epilogue"
        last = step == cfg.num_steps - 1
        for i, layer in enumerate(self.expert_layers):
            if before_layer is not None:
                before_layer(i)
            (s1, b1, g1), (s2, b2, g2) = self.ada[i]
            k_cache, v_cache = kv[i]
            qkv_l, o_l, gu_l, down_l = layer["qkv"], layer["o"], layer["gate_up"], layer["down"]
            h = torch.empty(horizon, e.width, dtype=in_dtype(qkv_l), device="cuda")
            fused.add_norm(x, h, y=pending, gate=pending_gate, scale=s1[step], shift=b1[step], eps=cfg.norm_eps,
                           quant_scale=quant_scale(qkv_l))
            self._prefetch_beside((i, "norm1", last))
            if fused_epilogue:
                fused.qkv_rope(h, pos=pos, cos=self.cos, sin=self.sin, q_out=q, k_cache=k_cache, v_cache=v_cache,
                               kv_offset=seq, heads=e.num_heads, head_dim=e.dim_head, prefetch=self.qkv_prefetch,
                               **qkv_l.few_row_weights)
            else:
                fused.rope_qkv(self._call(qkv_l, h, arena), pos, self.cos, self.sin, q, k_cache, v_cache, seq,
                               e.num_heads, e.dim_head)
            att = self._attend(q, k_cache, v_cache, mask, static_keys=seq, kernel=self._attention_kernel(step))
            att = att.view(horizon, -1)
            pending, pending_gate = self._residual(o_l, x, att, g1[step], arena)
            h = torch.empty(horizon, e.width, dtype=in_dtype(gu_l), device="cuda")
            fused.add_norm(x, h, y=pending, gate=pending_gate, scale=s2[step], shift=b2[step], eps=cfg.norm_eps,
                           quant_scale=quant_scale(gu_l))
            self._prefetch_beside((i, "norm2", last))
            act = torch.empty(horizon, e.mlp_dim, dtype=in_dtype(down_l), device="cuda")
            if getattr(gu_l, "few_row", None) == "mma":
                gu_l.geglu_into(h, act, stages=self._geglu_stages(step))
            elif fused_epilogue:
                fused.gate_up_geglu(h, out=act, **gu_l.few_row_weights)
            else:
                fused.geglu(self._call(gu_l, h, arena), act, quant_scale=quant_scale(down_l))
            pending, pending_gate = self._residual(down_l, x, act, g2[step], arena)
        return self._euler_end(step, x, x_t, pending, pending_gate)

    def _prefetch_beside(self, point) -> None:
        """Fork the L2 lookahead of `point` (layer, norm, last step) onto the prefetch stream after the kernel just
        launched: the chain never waits for it (_denoise joins the stream at its end). Under dependent launches
        only: step 0, launched plain beside the prefix, would take DRAM bandwidth from the prefix's GEMMs."""
        lookahead = self._lookahead.get(point)
        if lookahead is None or not fused.launching_dependent():
            return
        prefetch = self.streams.get("prefetch")
        prefetch.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(prefetch):
            fused.l2_prefetch(lookahead)
        self._prefetch_forked = True

    def _euler_end(self, step, x, x_t, pending=None, pending_gate=None):
        """The end of a denoise step (one euler_tail launch): final norm of x [+ gate ⊙ pending], action_out, the
        Euler update of x_t into a new buffer, and the next step's residual. Returns (next residual or None after
        the last step, the updated x_t)."""
        cfg = self.cfg
        sf, bf, _ = self.ada_final
        last = step == cfg.num_steps - 1
        x_next = None if last else torch.empty_like(x)
        x_t_next = torch.empty_like(x_t)
        fused.euler_tail(x, sf[step], bf[step], *self.action_out, x_t, x_t_next, -1.0 / cfg.num_steps,
                         *((None, None) if last else self.action_in), x_next, y=pending, gate=pending_gate,
                         eps=cfg.norm_eps, blocks=self.tail_blocks)
        return x_next, x_t_next

    @staticmethod
    def _residual(layer, x, inp, gate, arena):
        """A gated residual branch: added into x now by a few-row kernel, or left pending (y, gate) for the next
        add_norm to add."""
        if getattr(layer, "adds_into_residual", False) and x.shape[0] <= fused.SKINNY_MAX_ROWS:
            layer.add_into(x, inp, gate)
            return None, None
        return Pi05Engine._call(layer, inp, arena), gate

    @staticmethod
    def _call(layer, x, arena):
        """Few-row quantized layers take the step's zeroed accumulators; the others manage their own outputs."""
        return layer(x, arena) if getattr(layer, "takes_arena", False) else layer(x)

    @staticmethod
    def _attend(q, k, v, bias, static_keys=0, kernel="triton", quant_scale=None):
        """One kv head: all query heads are rows of one head. q [R, D], k/v [T, D], additive key bias [T].
        static_keys (the denoise step): keys [0, static_keys) are the prefix's, not written inside the chain;
        kernel: the few-row kernel (DECODE_ATTENTION_KERNELS). Many rows (the prefix): quant_scale for an E4M3 output
        read by an FP8 o projection.
        (cuDNN/FlashAttention ran this shape on 2 CTAs at 37 us a call; the split over keys fills the GPU.)"""
        if q.shape[0] > 256:
            out = torch.empty(q.shape, dtype=BF16 if quant_scale is None else FP8, device=q.device)
            return fused.mqa_attention(q, k, v, bias, out, quant_scale=quant_scale)
        if quant_scale is not None:
            raise TriforceError("the few-row attention kernels write bf16 (no quant_scale)")
        out = torch.empty_like(q)
        if kernel == "cluster":             # it refuses, naming them, keys beyond its blocks
            kernel_wheel().mqa_cluster_attention(q, k, v, bias, out, static_keys=static_keys,
                                                 dependent=fused.launching_dependent())
            return out
        return fused.mqa_attention_split(q, k, v, bias, out)

    def _forward(self, slot_bufs, events=None):
        """The whole inference on static buffers; `events` (optional) are recorded between stages for timing (with
        overlap_step0, step 0's event marks its end on the denoise stream, so its time counts what is left of it
        after the prefix)."""
        cfg, e = self.cfg, self.cfg.expert
        images, tokens, token_mask, noise = slot_bufs
        seq = images.shape[0] * cfg.tokens_per_image + tokens.shape[0]
        kv = [(torch.empty(seq + cfg.action_horizon, e.dim_head, dtype=BF16, device="cuda"),
               torch.empty(seq + cfg.action_horizon, e.dim_head, dtype=BF16, device="cuda")) for _ in range(e.depth)]
        mark = (lambda i: events[i].record()) if events else (lambda i: None)
        mark(0)
        img = self._vision(images)
        mark(1)
        valid = self._prefix_valid(img.shape[0], token_mask)
        main = torch.cuda.current_stream()
        if not self.overlap_step0:
            self._prefix(img, tokens, valid, kv)
            mark(2)
            return self._denoise(valid, noise, kv, seq, mark)
        # the prefix and the denoise loop on two streams forked after vision (their priorities are captured into
        # the graph's kernel nodes, which torch instantiates with UseNodePriority); step 0 waits per layer
        prefix_priority, denoise_priority = OVERLAP_PRIORITIES[self.overlap_priority]
        prefix_s, denoise_s = self.streams.get("prefix", prefix_priority), self.streams.get("denoise", denoise_priority)
        prefix_s.wait_stream(main)
        denoise_s.wait_stream(main)
        kv_events = [torch.cuda.Event() for _ in range(e.depth)]
        with torch.cuda.stream(prefix_s):
            self._prefix(img, tokens, valid, kv, lambda i: kv_events[i].record(prefix_s))
            mark(2)
        with torch.cuda.stream(denoise_s):
            x_t = self._denoise(valid, noise, kv, seq, mark, step0_wait=lambda i: denoise_s.wait_event(kv_events[i]))
        main.wait_stream(prefix_s)                # joins the graph's branches
        main.wait_stream(denoise_s)
        return x_t

    def _denoise(self, valid, noise, kv, seq, mark, step0_wait=None):
        """The flow-matching loop: noise -> actions. step0_wait(i), if given, runs before step 0's layer i."""
        cfg, e = self.cfg, self.cfg.expert
        # Actions sit after the valid prefix tokens; they see the valid prefix and each other.
        horizon = cfg.action_horizon
        pos = (valid.int().sum() + torch.arange(horizon, device="cuda", dtype=torch.int32)).int()
        mask = additive_mask(torch.cat([valid, torch.ones(horizon, dtype=torch.bool, device="cuda")]))
        x_t = noise                             # each step's tail writes the next x_t into a new buffer
        x = F.linear(x_t, *self.action_in)
        self._prefetch_forked = False
        if self.expert_path == "persistent":
            scratch = expert_layer.ExpertScratch.allocate(horizon, e.width, seq + horizon, e.num_heads, e.dim_head, e.mlp_dim,
                                                          cfg.num_steps * e.depth, "cuda")
        for step in range(cfg.num_steps):
            wait = step0_wait if step == 0 else None
            with self._launches(step):
                if self.expert_path == "persistent":
                    x, x_t = self._denoise_step_persistent(step, x, x_t, pos, mask, kv, seq, wait, scratch)
                else:
                    x, x_t = self._denoise_step(step, x, x_t, pos, mask, kv, seq, wait)
            mark(3 + step)
        if self._prefetch_forked:              # the prefetch stream's launches join before the graph ends
            torch.cuda.current_stream().wait_stream(self.streams.get("prefetch"))
        return x_t

    # ── graphs ────────────────────────────────────────────────────────────────────────────────────────────────
    def _key(self, obs):
        views = tuple(int(i) for i in np.flatnonzero(obs.image_masks))
        return views, self.cfg.token_bucket(obs.num_tokens)

    def _new_buffers(self, key):
        cfg = self.cfg
        views, bucket = key
        token_mask = torch.zeros(bucket, dtype=torch.bool, device="cuda")
        token_mask[:1] = True                    # a valid token, so warm-up runs on a well-formed mask
        return (torch.zeros(len(views), cfg.image_size, cfg.image_size, 3, device="cuda"),
                torch.zeros(bucket, dtype=torch.long, device="cuda"), token_mask,
                torch.zeros(cfg.action_horizon, cfg.action_dim, device="cuda"))

    def start_compiles(self, key=None, bufs=None) -> jit_warmup.Compiles:
        """Submit the compile of every Triton kernel a forward at `key` launches (default: every image slot, the
        smallest prompt bucket; other keys launch the same specializations) to a pool of precompile_workers
        threads, by a dry forward in which no Triton kernel runs; returns at once (wait() on the result)."""
        key = key or (tuple(range(len(self.cfg.image_slots))), self.cfg.token_buckets[0])
        bufs = bufs if bufs is not None else self._new_buffers(key)
        compiles = jit_warmup.Compiles(self.precompile_workers)
        with jit_warmup.submitting(compiles), torch.no_grad():
            self._forward(bufs)
        return compiles

    def capture(self, key, events=None) -> GraphSlot:
        """Warm up on a side stream, then capture the whole inference into one CUDA graph."""
        start = time.perf_counter()
        bufs = self._new_buffers(key)
        self._lookahead = lookahead = self._lookahead_tables()
        if self.precompile_workers:              # every Triton kernel of this shape compiled in parallel first
            compiles = self.start_compiles(key, bufs)
            compiles.wait()
            self._report_unprepared(compiles)
        side = self.streams.get("warm-up")
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                self._forward(bufs)
        torch.cuda.current_stream().wait_stream(side)
        self._apply_carveout()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.streams.get("capture")), torch.no_grad():
            actions = self._forward(bufs, events)
        torch.cuda.synchronize()
        return GraphSlot(*bufs, graph, actions, time.perf_counter() - start, lookahead)

    def slot_for(self, obs) -> GraphSlot:
        key = self._key(obs)
        if key not in self.slots:
            views, bucket = key
            slot_names = [self.cfg.image_slots[i] for i in views]
            self.log(f"[engine] capturing a CUDA graph for views {slot_names}, prompt bucket {bucket} (first use of this shape)")
            self.slots[key] = self.capture(key)
            self.log(f"[engine] captured in {self.slots[key].capture_seconds:.2f} s")
        return self.slots[key]

    def load_inputs(self, slot: GraphSlot, obs, noise):
        views = np.flatnonzero(obs.image_masks)
        bucket = slot.tokens.shape[0]
        slot.images.copy_(torch.from_numpy(obs.images[views]), non_blocking=False)
        slot.tokens.copy_(torch.from_numpy(obs.tokens[:bucket]))
        slot.token_mask.copy_(torch.from_numpy(obs.token_mask[:bucket]))
        slot.noise.copy_(torch.from_numpy(noise))

    def ready_replay(self, obs, noise):
        """The graph for `obs`, loaded with it and `noise`: its replay, for timing with device events."""
        slot = self.slot_for(obs)
        self.load_inputs(slot, obs, noise)
        return slot.graph.replay

    def infer(self, obs, noise) -> np.ndarray:
        if obs.num_tokens > self.cfg.max_token_len:
            raise TriforceError(f"prompt of {obs.num_tokens} tokens exceeds max_token_len={self.cfg.max_token_len}")
        slot = self.slot_for(obs)
        self.load_inputs(slot, obs, noise)
        slot.graph.replay()
        return slot.actions.cpu().numpy()

    def stage_times_ms(self, obs, noise, replays: int = 50) -> dict:
        """Median per-stage times from an instrumented copy of the graph (timing events captured between stages)."""
        n_events = 3 + self.cfg.num_steps
        events = [torch.cuda.Event(enable_timing=True, external=True) for _ in range(n_events)]
        slot = self.capture(self._key(obs), events)
        self.load_inputs(slot, obs, noise)
        samples = []
        for _ in range(replays):
            slot.graph.replay()
            torch.cuda.synchronize()
            samples.append([events[i].elapsed_time(events[i + 1]) for i in range(n_events - 1)])
        med = np.median(np.array(samples), axis=0)
        steps = med[2:]
        return {"vision": float(med[0]), "prefix": float(med[1]), "denoise_steps": [float(s) for s in steps],
                "denoise_total": float(steps.sum()), "total": float(med.sum())}

    def weight_bytes(self) -> dict:
        """Bytes of the GEMM weights per stage (what quantization shrinks)."""
        def total(layers):
            return sum(lin.nbytes for layer in layers for lin in layer.values() if hasattr(lin, "nbytes"))
        return {"vision": total(self.vision_layers) + self.patch.nbytes + self.projector.nbytes,
                "prefix": total(self.prefix_layers), "expert": total(self.expert_layers)}

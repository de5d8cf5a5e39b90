#!/usr/bin/env python3
"""Engine settings compared in one run on one loaded model (standard workload): graph replay median (device events,
after warm-up), the stage split, agreement with the first variant and the ratio to it. The variants (data below):
- expert_path: how each expert layer runs (engine.EXPERT_PATHS: fused_epilogue, per_op).
- overlap_step0: denoise step 0 on a second stream beside the prefix (its layer i waits only for the prefix's layer-i
  K/V), or after the prefix; with it, which stream the GPU schedules first (engine.OVERLAP_PRIORITIES).
- denoise_launch: how the denoise chain's kernels launch (engine.DENOISE_LAUNCHES: plain, programmatic dependent
  launch).
- carveout: one preferred L1 / shared-memory split for the kernels of the denoise chain's dependent launches (-1: the
  driver's choice per kernel; session 10 saw the few-row kernels slow the chain when they allowed more shared
  memory, then the same split for every Triton kernel took Plan A's denoise from 5.36 to 5.00 ms but slowed the
  prefix: engine_variants-*-s10-carveout-all.json).
- w4a16_geglu_stages: the pipeline depth of Plan B's few-row gate/up + GeGLU kernel in steps 1-9 (engine.
  W4A16_GEGLU_STAGES; 0: the wheel's default, 4). Session 12, in every step: 8.581 vs 8.582 ms, denoise 4.01 vs 4.06
  but the prefix beside step 0 3.10 vs 3.03 (`*-s12-geglu-stages.json`).
- qkv_prefetch: whether the fused QKV + RoPE kernel asks L2 for its weights before its chain wait: the engine's
  default for its weights (engine.QKV_PREFETCH: int4 on, bf16 off; session 13: Plan B 8.43 vs 8.51 ms, Plan A
  10.72 vs 10.67, *-s13-qkv-prefetch.json) or the opposite.
- e4m3_outputs: the stages whose FP8 GEMM before an elementwise kernel writes E4M3 under a calibrated output scale
  (quant.quantize.E4M3_OUTPUTS: SigLIP's fc1 before its GELU, the prefix's gate/up before its GeGLU) instead of
  bf16; "engine" is every stage whose checkpoint has the scales.
- prefix_rope_tokens: how many tokens a program of the prefix's RoPE + K/V cache write takes (fused.ROPE_TOKENS).
- gemm_tuning: the stages whose GEMMs run the cuBLASLt candidate the engine's tuner timed fastest for their shape
  (runtime/gemm_tuning.py; "engine": engine.GEMM_TUNING_STAGES) instead of torch's op (the heuristic's first answer).
- fp8_fast_accum: the stages whose FP8 GEMMs use cuBLASLt's fast accumulation (no periodic promotion to fp32);
  "engine": the recipe's (engine.default_fp8_fast_accum(), recipes.toml fp8_fast_accum).
- l2_lookahead: which expert weights a prefetch launch beside the chain asks into L2 once each of a layer's norms has
  run, for the GEMMs after it (engine.L2_LOOKAHEAD), by bulk prefetches through the TMA unit from how many one-warp
  programs. Issued from the norms themselves before their wait, the same prefetches slowed Plan A's denoise to
  5.58-6.30 vs 4.73 ms (the norms last until their bytes arrive): engine_variants-plana-*-s19-norm-lookahead.json;
  session 19's evict-last policy and one prefetch a 128-byte line lost to plain bulk prefetches and were removed.
- w4a16_few_row_splits: CTAs along K of the few-row kernel for Plan B's W4A16 expert o / down (engine.
  W4A16_FEW_ROW_SPLITS: the down at 24 since session 23; {} the kernel's own count, which fills the resident CTA
  slots once).
- tail_blocks: programs a row of the denoise step's euler_tail (fused.TAIL_BLOCKS); each repeats the row's norm and
  action_out and writes a block of the next residual.
- w4a16_few_row / w4a16_geglu: the kernel of Plan B's W4A16 expert o/down and of its gate/up with GeGLU
  (plan_b.FEW_ROW_W4A16_KERNELS: Triton, or the wheel's warp-MMA kernel on prepacked fragments).
Session 4 also compared here, in records kept under bench/results/: SigLIP attention by cuDNN SDPA against the packed
Triton kernel, which won (engine_variants-plana-*-s4.json); split-K residual GEMMs, which lost (*-s4-residual.json);
stream priorities (*-s4-priority.json: prefix first 12.35, equal 12.39, step 0 first 12.47 ms); and the adaRMS norm
read by skinny expert GEMMs, which lost (*-s4-fold.json). Session 5: the expert paths (*-s5.json; the adaRMS norm read
inside the fused-epilogue kernels lost, *-s5-fused-norm.json). Session 6: the denoise launch modes (*-s6*.json; also a
mode prefetching each kernel's weights into L2, which lost, and dependent launch for step 0 beside the prefix, which
slowed Plan B's prefix: 3.13 vs 3.03 ms). Session 7: the expert's o reading the split-KV attention partials and
combining them as it loads its input (no combine launch, 7 launches a layer): Plan A 12.31 vs 11.21 ms, lost and
removed (*-s7-fused-combine.json). Session 9: the few-row W4A16 kernels (*-s9-few-row.json, *-s9-cutlass-vision.json:
mma for o/down and gate/up 8.86-8.87 vs Triton 8.97-8.99 ms, now the default; a version spreading equal ranges
of (row block, group) units over the CTAs, with an 8-stage option, took it to 9.40 vs Triton 9.03 ms and was
reverted, *-s9-balanced-units.json) and SigLIP's GEMMs on a CUTLASS
stream-K GEMM with a bias/GELU epilogue (vision 2.38-2.46 vs cuBLAS 1.61 ms: lost, removed; dense_gemm-*-s9.json).
Session 10: the adaRMS norm folded into the mma gate/up and a QKV + RoPE form of the mma kernel (6 launches a layer):
10.22 and 12.27 ms vs 8.95 and 9.02 without (two kernel versions); the mma QKV alone 9.30 / 9.35 vs Triton's 8.95 /
9.02 ms: all removed (*-s10-norm-fold-v1.json, *-s10-norm-fold-v2.json). Session 12: the prefix attention with two
programs a row block (each p v for half the head dim; 14.1 vs 16.1 us alone) slowed the prefix beside denoise step
0 (Plan B 3.11 vs 3.02 ms, Plan A 4.38 vs 4.21), four programs more: removed (*-s12-v-split.json). Vision's and
the prefix's Triton kernels on dependent launches (each waiting on griddepcontrol, launched while the GEMM before it
ran): Plan A 10.79 vs 10.67, Plan B 8.71 vs 8.57 ms (vision 1.57 vs 1.50): removed (*-s12-encoder-pdl.json).
Session 17: Plan A's bf16 expert o / down / gate_up + GeGLU on the wheel's few-row warp-MMA kernel (bf16 weight
fragments, weights requested before the chain wait): 11.22 / 11.16 ms (8 / 4 stages) vs 10.30 on Triton, denoise
5.52 vs 4.71: removed (*-s17-bf16-few-row.json).
With --recipes r1,r2,... (Plan B) the variants are instead the engine defaults on each recipe's model (one model a
recipe, same run): session 12 compared SigLIP in FP8 (recipe h100) against bf16 (h100_fast) this way.
Records bench/results/engine_variants-plan<a|b>-<gpu>-<date>.json.
    python3 bench/engine_variants.py [--plan a] [--recipe h100_measured | --recipes h100_fast,h100] [--runs 100]
        [--only 0,2,3] [--out-dir bench/results]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime.engine import (CHAIN_CARVEOUT, GEMM_TUNING_STAGES, L2_LOOKAHEAD_DEFAULT,  # noqa: E402
                                     PREFIX_ROPE_TOKENS, QKV_PREFETCH, W4A16_FEW_ROW_LAYERS,
                                     W4A16_FEW_ROW_SPLITS, W4A16_GEGLU_STAGES)
from triforce.runtime.fused import TAIL_BLOCKS  # noqa: E402
from triforce.runtime.policy import Policy  # noqa: E402
from triforce.timing import time_cuda  # noqa: E402
from triforce.workload import STANDARD, checked_standard_case, cosine  # noqa: E402

ENGINE_DEFAULTS = {"expert_path": "fused_epilogue", "overlap_step0": True, "priority": "prefix",
                   "denoise_launch": "dependent", "w4a16_few_row": "mma", "w4a16_geglu": "mma",
                   "carveout": CHAIN_CARVEOUT, "decode_attention": "cluster", "step0_attention": "triton",
                   "w4a16_geglu_stages": W4A16_GEGLU_STAGES, "qkv_prefetch": "engine",
                   "e4m3_outputs": "engine", "prefix_rope_tokens": PREFIX_ROPE_TOKENS,
                   "gemm_tuning": GEMM_TUNING_STAGES, "fp8_fast_accum": "engine", "l2_lookahead": L2_LOOKAHEAD_DEFAULT,
                   "w4a16_few_row_splits": W4A16_FEW_ROW_SPLITS, "tail_blocks": TAIL_BLOCKS,
                   "w4a16_few_row_depth": {}}
SHARED_VARIANTS = (("denoise attention on Triton (partials + combine)", {"decode_attention": "triton"}),
                   ("the prefix's RoPE with 1 token a program (before the fifteenth session)", {"prefix_rope_tokens": 1}),
                   ("the prefix's RoPE with 4 tokens a program", {"prefix_rope_tokens": 4}),
                   ("QKV + RoPE weight prefetch into L2 the other way (the default: on for int4, off for bf16)",
                    {"qkv_prefetch": "opposite"}),
                   ("torch's GEMMs everywhere (no cuBLASLt algorithm tuning)", {"gemm_tuning": ()}),
                   *((f"L2 lookahead {schedule}, bulk prefetches from {programs} programs beside the chain",
                      {"l2_lookahead": (schedule, programs)})
                     for schedule, programs in (("mlp+next_attention", 32), ("mlp", 32), ("o+mlp+next_attention", 32),
                                                ("mlp+next_attention", 16), ("mlp+next_attention", 128),
                                                ("mlp+next_attention", 4), ("mlp+next_attention", 2),
                                                ("o+mlp+next_attention", 8), ("mlp", 8))),
                   *((f"the denoise step's euler_tail on {blocks} programs a row", {"tail_blocks": blocks})
                     for blocks in (1, 2, 8, 16)),
                   ("the engine default again (drift within the run)", {}))
VARIANTS = {"a": (("engine default (cluster attention but in step 0 beside the prefix; carveout 100% shared)",
                   ENGINE_DEFAULTS),
                  *((name, {**ENGINE_DEFAULTS, **change}) for name, change in SHARED_VARIANTS)),
            "b": (("engine default (W4A16 o/down, gate/up + GeGLU on the mma kernel; cluster attention but in step 0 "
                   "beside the prefix; carveout 100%; gate/up 8 stages in steps 1-9)", ENGINE_DEFAULTS),
                  ("W4A16 gate/up + GeGLU with the default 4-stage pipeline",
                   {**ENGINE_DEFAULTS, "w4a16_geglu_stages": 0}),
                  ("prefix gate/up and SigLIP fc1 write bf16 (no E4M3 outputs)", {**ENGINE_DEFAULTS, "e4m3_outputs": ()}),
                  ("only the prefix gate/up writes E4M3", {**ENGINE_DEFAULTS, "e4m3_outputs": ("prefix",)}),
                  ("only SigLIP fc1 writes E4M3", {**ENGINE_DEFAULTS, "e4m3_outputs": ("vision",)}),
                  *((name, {**ENGINE_DEFAULTS, **change}) for name, change in SHARED_VARIANTS),
                  *((f"W4A16 o / down few-row kernel split {splits or 'by the kernel'} along K (the kernel's own "
                     f"count fills the resident CTA slots once; engine.W4A16_FEW_ROW_SPLITS)",
                     {**ENGINE_DEFAULTS, "w4a16_few_row_splits": splits})
                    for splits in ({}, {"down": 16}, {"down": 8}, {"o": 8}, {"o": 8, "down": 16})),
                  *((f"W4A16 o / down on the register-streamed few-row form, depth {depth}, splits "
                     f"{splits or 'by the kernel'} (session 28)",
                     {**ENGINE_DEFAULTS, "w4a16_few_row_depth": depth, "w4a16_few_row_splits": splits})
                    for depth, splits in (({"o": 2, "down": 2}, {}), ({"o": 2, "down": 2}, {"down": 24}),
                                          ({"down": 2}, {"down": 24}), ({"o": 2}, {"down": 24}))),
                  ("FP8 fast accumulation in the prefix", {**ENGINE_DEFAULTS, "fp8_fast_accum": ("prefix",)}),
                  ("FP8 fast accumulation in vision and the prefix",
                   {**ENGINE_DEFAULTS, "fp8_fast_accum": ("vision", "prefix")}),
                  ("FP8 fast accumulation in vision and the prefix, torch's GEMMs",
                   {**ENGINE_DEFAULTS, "fp8_fast_accum": ("vision", "prefix"), "gemm_tuning": ()}))}


W4A16_SETTINGS = ("w4a16_few_row", "w4a16_geglu", "w4a16_geglu_stages", "w4a16_few_row_splits", "w4a16_few_row_depth")


def apply_w4a16(eng, settings: dict) -> None:
    """The W4A16 settings. ENGINE_DEFAULTS' go to the layers the engine has in W4A16 (they ask nothing of those it
    lacks, e.g. on Plan A); a variant's own go to every layer they name, for the engine to refuse where it lacks them."""
    names = W4A16_FEW_ROW_LAYERS
    if all(settings[k] == ENGINE_DEFAULTS[k] for k in W4A16_SETTINGS):
        names = eng.w4a16_layer_names()
        settings = {**settings, "w4a16_few_row_splits": {n: v for n, v in settings["w4a16_few_row_splits"].items()
                                                         if n in names}}
    for name in names:
        eng.set_w4a16_few_row(settings["w4a16_geglu" if name == "gate_up" else "w4a16_few_row"], layers=(name,))
    if "gate_up" in names:
        eng.set_w4a16_geglu_stages(settings["w4a16_geglu_stages"])
    eng.set_w4a16_few_row_splits(settings["w4a16_few_row_splits"])
    eng.set_w4a16_few_row_depth(settings["w4a16_few_row_depth"])


def apply(eng, settings: dict) -> None:
    eng.set_expert_path(settings["expert_path"])
    eng.set_overlap_step0(settings["overlap_step0"], settings["priority"])
    eng.set_denoise_launch(settings["denoise_launch"])
    apply_w4a16(eng, settings)
    eng.set_carveout(settings["carveout"])
    eng.set_decode_attention(settings["decode_attention"], beside_prefix=settings["step0_attention"])
    prefetch = QKV_PREFETCH[eng.qkv_weight_kind()]
    eng.set_qkv_prefetch(prefetch if settings["qkv_prefetch"] == "engine" else not prefetch)
    eng.set_prefix_rope_tokens(settings["prefix_rope_tokens"])
    outputs = settings["e4m3_outputs"]
    eng.set_e4m3_outputs(tuple(eng.e4m3_output_layers()) if outputs == "engine" else outputs)
    eng.set_gemm_tuning(settings["gemm_tuning"])
    accum = settings["fp8_fast_accum"]
    eng.set_fp8_fast_accum(eng.default_fp8_fast_accum() if accum == "engine" else accum)
    eng.set_l2_lookahead(*settings["l2_lookahead"])
    eng.set_tail_blocks(settings["tail_blocks"])


def main():
    ap = rep.bench_parser(__doc__, runs=True)
    ap.add_argument("--plan", default="a", help="a or b")
    ap.add_argument("--recipe", default="h100_measured", help="the Plan B recipe (with --plan b)")
    ap.add_argument("--recipes", default=None, help="Plan B: compare these recipes (comma-separated), engine defaults")
    ap.add_argument("--only", default=None, help="run only these variants (comma-separated indices into the plan's "
                                                 "list, 0 the engine default, which always runs first)")
    a = ap.parse_args()
    config = STANDARD["config"]
    if a.recipes and a.plan != "b":
        raise SystemExit("engine_variants: --recipes compares Plan B recipes (use --plan b)")
    variants = VARIANTS.get(a.plan, ())
    indices = [str(i) for i in range(len(variants))]
    picked = indices if a.only is None else sorted({"0", *a.only.split(",")}, key=lambda i: (len(i), i))
    if not variants:
        raise SystemExit(f"engine_variants: --plan {a.plan}: a or b expected")
    if not set(picked) <= set(indices):
        raise SystemExit(f"engine_variants: --only {a.only} / --plan {a.plan}: the plan's variants are "
                         f"0..{len(variants) - 1}")
    recipes = a.recipes.split(",") if a.recipes else [a.recipe if a.plan == "b" else None]
    load = lambda recipe: Policy.load(f"synthetic:{config}", config, plan=a.plan, recipe=recipe)  # noqa: E731
    if a.recipes:
        runs = [(f"recipe {r}", ENGINE_DEFAULTS, load(r)) for r in recipes]
    else:
        policy = load(recipes[0])
        runs = [(*variants[int(i)], policy) for i in picked]
    cfg = runs[0][2].config
    rng = np.random.default_rng(0)
    obs, noise = checked_standard_case(cfg, rng)
    rows, results, first = [], {}, None
    for name, settings, policy in runs:
        eng = policy.backend
        apply(eng, settings)
        timing = time_cuda(eng.ready_replay(obs, noise), runs=a.runs, warmup_s=1.5)
        actions = eng.infer(obs, noise)
        stages = eng.stage_times_ms(obs, noise)
        first = first if first is not None else (timing["median_ms"], actions)
        results[name] = {**settings, "graph": timing, "stages_ms": stages, "cosine_vs_first": cosine(actions, first[1]),
                         "speedup_vs_first": first[0] / timing["median_ms"]}
        rows.append([name, timing["median_ms"], stages["vision"], stages["prefix"], stages["denoise_steps"][0],
                     stages["denoise_total"], results[name]["speedup_vs_first"], results[name]["cosine_vs_first"]])
    rep.print_table(f"engine variants, plan {a.plan}, {config} standard workload (graph replay median, ms)",
                    ["variant", "total", "vision", "prefix", "step 0 after prefix end", "denoise", "x vs first",
                     "cos vs first"], rows)
    rep.record_run(a.out_dir, f"engine_variants-plan{a.plan}", {"plan": a.plan, "recipes": recipes, "workload": STANDARD,
                                                                "variants": results,
                                                                "gemm_tuning": runs[0][2].backend.gemm_tuning_table(),
                                                                "note": rep.RANDOM_WEIGHTS_NOTE})


if __name__ == "__main__":
    main()

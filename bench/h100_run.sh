#!/usr/bin/env bash
# Every H100 measurement of a session, for the device tool (three calls: each stays under the 10-minute limit).
#   part 1 (first on a fresh machine, so cold start includes Triton's first compiles): Plan A validation, the kernel
#     wheel (development build), its GPU tests and benchmark, the engine GPU tests, the expert-layer kernels, the
#     prefix-attention and SigLIP-op sweeps, Phase 0
#   part 2: Plan B validation (h100 and h100_measured recipes, 64 observations), the NVFP4 refusal
#   part 3: the few-row GEMM paths, cold start in fresh processes, the engine + server benchmark
#   part 4 (no kernel wheel): the engine GPU tests but the wheel-backed Plan B one, Plan A validation, Plan B
#     validation of h100_measured (FP8 prefix, no wheel kernel), the engine benchmark (fp32 reference vs Plan A)
#   part 5 (no kernel wheel): the engine GPU tests but the wheel-backed Plan B one, the expert-layer kernels (launch
#     shape sweeps, both expert paths), the engine's variants for Plan A and Plan B h100_measured
#   part 6 (no kernel wheel): the engine GPU tests but the wheel-backed Plan B one, cold start in fresh processes,
#     Plan A validation, Plan B validation of h100_measured, the engine benchmark (fp32 reference vs Plan A)
#   part 7 (no kernel wheel): the few-row W4A16 kernel sweep (conversion vs bit-pattern dequant), the SigLIP ops
#   part 8 (the kernel wheel, development build): its GPU tests, the engine GPU tests, the expert-layer kernels
#     (bf16 and W4A16)
#   part 9 (the kernel wheel): the wheel-backed Plan B engine test, the engine's variants for Plan B h100 (W4A16 expert), Plan B validation (h100)
#   part 10: Plan A validation, Plan B validation (h100_measured; then h100_fast with the development wheel), the
#     engine benchmark
#   part 11 (first on a fresh machine: an empty Triton cache): Plan A validation, cold start in fresh processes
#   part 12: the engine GPU tests of the launch paths, the denoise launch modes (expert chain; engine variants of Plan A
#     and of Plan B h100_fast with the development wheel)
#   part 13: part 12 with selective prefetch and step-0 variants, Plan B's kernel profile (h100_fast), the W4A16
#     kernel at the engine's shape, plain and chained
#   part 14 (the kernel wheel, development build): all GPU tests, the denoise launch modes, Plan B validation
#     (h100_fast)
#   part 15: Plan A validation, the engine benchmark, the W4A16 kernel at the engine's shape (plain and chained)
#   part 17 (no kernel wheel): the engine GPU tests but the wheel-backed one, the engine variants of Plan A, the
#     denoise launch modes (seventh session: with the o projection reading the attention partials, since removed)
#   part 18 (the kernel wheel, development build): the wheel's few-row W4A16 kernel (w4a16_skinny) GPU tests, the
#     engine variants of Plan B h100_fast (W4A16 o/down and gate/up on it or on Triton), the few-row W4A16 sweep
#     (both kernels, M = 1, 10, 64), Plan B validation (h100_fast)
#   part 19 (the kernel wheel): the engine GPU test of both few-row kernels, Plan B validation (h100_fast)
#   part 20 (the kernel wheel): part 18's kernel tests and the sweep on the Gemma gate at M = 10 and 64 only
#   part 21 (ran at dd8364f; its CUTLASS dense GEMM lost and was removed): dense_gemm GPU tests, bench/dense_gemm.py,
#     the engine variants of Plan A and Plan B h100_fast with SigLIP's GEMMs on it
#   part 22 (ran at 1dba24a, a few-row kernel version since reverted): the few-row W4A16 kernel tests and all engine
#     GPU tests, the W4A16 sweep, the engine variants of Plan B h100_fast, Plan B and Plan A validation, the benchmark
#   part 23 (the kernel wheel, development build): the few-row kernel tests, the engine variants of Plan B h100_fast
#     (mma the default), Plan B validation (h100_fast), all engine GPU tests, the engine benchmark
#   part 24 (ran at 64f5f21 and d250461; the norm fold and the QKV + RoPE form lost and were removed): the few-row
#     kernel tests, the engine's few-row test, the engine variants of Plan B h100_fast, Plan B validation (h100_fast)
#   part 25 (the kernel wheel, development build): the few-row kernel tests, all engine GPU tests, Plan B validation
#     (h100_fast), Plan A validation, the engine benchmark
#   part 26 (the kernel wheel, development build): the engine GPU tests, the engine variants of Plan A and of Plan B
#     h100_fast (one shared-memory carveout for every kernel against the driver's choice)
#   part 27 (the kernel wheel, development build): the few-row kernel tests, all engine GPU tests, the engine variants
#     of Plan A, Plan B validation (h100_fast), Plan A validation, the engine benchmark
#   part 28 (the kernel wheel, development build): the engine variants of Plan B h100_fast (the chain's carveout;
#     the few-row kernels on Triton under it)
#   part 29 (the kernel wheel, development build): the cluster attention's kernel tests and benchmark, all engine GPU tests, the
#     engine variants of Plan A and of Plan B h100_fast (the denoise attention on the cluster kernel or on Triton)
#   part 30 (the kernel wheel, development build): the few-row and cluster attention kernel tests, all engine GPU
#     tests, Plan B validation (h100_fast), Plan A validation (with the wheel), the engine benchmark
#   part 32 (ran at c2dabb1; the prefix attention split into key ranges lost and was removed): the prefix attention
#     sweep of key splits, then part 31 with the prefix attention unsplit as a variant
#   part 33 (the kernel wheel, development build): the cluster attention's kernel tests, all engine GPU tests
#   part 34 (the kernel wheel, development build): the denoise attention benchmark (max_splits 0 included)
#   part 35 (the kernel wheel, development build): the few-row and cluster attention kernel tests, all engine GPU
#     tests, the FP8 GEMM forms (Gemma MLP and SigLIP; FP8 output), Plan B's kernel profile (h100_fast)
#   part 36 (the kernel wheel, development build): all engine GPU tests, Plan B's recipes h100_fast (bf16 SigLIP)
#     and h100 (FP8 SigLIP) in one run
#   part 37: the FP8 GEMM forms, with the prefix's gate/up + GeGLU fused in one Triton kernel
#   part 38 (the kernel wheel, development build): the prefix attention's launch shapes (v_split), all engine GPU
#     tests, the engine variants of Plan A and of Plan B h100_fast
#   part 39 (ran at 805fc76; its encoder launch mode lost and was removed): all engine GPU tests, the engine variants of Plan A and of Plan B
#     h100_fast (vision's and the prefix's Triton kernels on dependent launches)
#   part 40 (the kernel wheel, development build): every GPU test, the engine variants of Plan A and of Plan B
#     h100_fast, Plan B validation (h100_fast), Plan A validation (with the wheel), the engine benchmark
#   part 41 (the kernel wheel, development build): the few-row kernel tests, the engine variants of Plan B h100_fast
#     (the gate/up + GeGLU kernel with an 8-stage pipeline)
#   part 42 (the kernel wheel, development build): the engine's W4A16 GPU tests, the engine variants of Plan B
#     h100_fast (the gate/up + GeGLU kernel's 8 stages in steps 1-9 against 4), Plan B validation (h100_fast)
#   part 43 (the kernel wheel, development build): the engine GPU tests, the engine variants of Plan A and of Plan B
#     h100_fast (SigLIP's two views on two streams)
#   part 44 (the kernel wheel, development build): SigLIP's ops (the attention's head dim as 64 + 16 against padded
#     to 128), the prefix attention (E4M3 output against bf16 + quantize), the engine GPU tests, the engine variants
#   part 45 (the kernel wheel, development build): the engine GPU tests, the engine variants of Plan A and Plan B
#     h100_fast (the QKV + RoPE kernel's weights prefetched into L2 before its chain wait)
#   part 46 (the kernel wheel, development build; carry .device_carry/baseline too: `git archive <sha> triforce
#     bench` of the code before): the engine GPU tests, then Plan B h100_fast and Plan A engine defaults of the code
#     before and of this checkout, alternated (two processes each, same machine), Plan B validation (h100_fast)
#   part 47 (ran at 3bc9438; the norm fold, w4a16_cluster_norm, lost and was removed): its kernel GPU tests, the
#     engine's few-row and norm-fold tests, the engine variants of Plan B h100_fast (o / o + down with the adaRMS norm
#     after them in one cluster launch)
#   part 48 (ran at 01b9c5b and f26015c; both settings lost and were removed): the few-row gate/up + GeGLU kernel
#     tests, the engine's W4A16 GPU tests, the engine variants of Plan B h100_fast (the few-row o / down on fewer
#     CTAs along K; the gate/up + GeGLU CTAs each walking K from their own group)
#   part 49 (the kernel wheel, development build): the engine GPU tests of FP8 layers (E4M3 GEMM outputs) and of the
#     prefix's RoPE, the engine variants of Plan B h100_fast (the prefix gate/up and SigLIP fc1 writing E4M3 or bf16;
#     the prefix's RoPE with 1, 4 or 8 tokens a program), Plan B validation (h100_fast); with it, how
#     torch._scaled_mm scales an E4M3 output
#   part 50 (the kernel wheel, development build): every GPU test, Plan B validation (h100_fast), Plan A validation
#     (with the wheel), the engine benchmark
#   part 51 (the kernel wheel, development build): cuBLASLt with a chosen algorithm (lt_matmul) and the engine's GEMM
#     tuner: their GPU tests, every large GEMM torch vs the fastest candidate (bench/gemm_tuning.py), the engine
#     variants of Plan B h100_fast (torch's GEMMs; FP8 fast accumulation) and of Plan A (torch's GEMMs)
#   part 52 (the kernel wheel, development build): the engine GPU tests, Plan B validation (h100_fast), Plan A
#     validation (with the wheel), the engine benchmark
#   part 53: part 51 (engine variants: Plan B torch's GEMMs and fast accumulation, Plan A torch's GEMMs) with Plan
#     B validation (h100_fast) in one call
#   part 54: the engine GPU tests, bench/gemm_tuning.py, the engine benchmark (part 52 / 53 had found an engine
#     without a loadable wheel refusing to build, and a bench bug)
#   part 55: the GEMM tuner's and the engine's tuning GPU tests, Plan B validation (h100_fast)
#   part 56 (ran at 83e5a59; the warpgroup-MMA form and the blocked layout lost and were removed): the few-row
#     W4A16 kernel tests (warp and warpgroup MMA, tile and blocked layouts), the W4A16 sweep of all four forms
#   part 57 (ran at c4d6926; the bf16-fragment form lost and was removed): the few-row kernel tests, the engine's
#     few-row / tuning / reference tests, Plan A's engine variants (bf16 expert o/down/gate_up on the wheel's kernel
#     or Triton), the W4A16 sweep of the Gemma gate (warp vs warpgroup MMA), Plan A validation
#   part 58 (the kernel wheel, development build): every GPU test, Plan B (h100_fast) and Plan A validation, the
#     engine benchmark
#   part 59 (ran at 2815ec3; the search gained nothing and was removed): the GEMM tuner's configuration search (every configuration
#     cuBLASLt accepts, screened): lt_matmul's GPU tests, every large GEMM tuned over the heuristic's answers and
#     with the search (bench/gemm_tuning.py), the engine variants of Plan A and Plan B h100_fast without the search
#   part 61 (the kernel wheel, development build): the few-row W4A16 sweep (Triton, warp MMA) with a copy moving
#     the same bytes per shape (the ceiling its copy-bandwidth share is read against)
#   part 62 (the kernel wheel, development build): part 61 with CUTLASS's mixed-input GEMM (w4a16_gemm) and its
#     schedules, at M = 1, 10, 32, 50, 64
#   part 63 (the kernel wheel, development build): the cuBLASLt and engine GPU tests, Plan B (h100_fast) and Plan A
#     validation (the session's final code)
#   part 64 (the kernel wheel, development build): the engine benchmark
#   part 65 (the kernel wheel, development build): FP8 fast accumulation as the recipe's: the engine GPU tests,
#     Plan B validation of h100_fast (declares it in vision and the prefix) and h100_measured (exact)
#   part 66 (ran at e55b591 on an H200, no H100 starting; the clusters were then removed): CUTLASS's token tile 64
#     with clusters of 2 / 4 CTAs sharing each x tile (TMA multicast): its GPU tests, the W4A16 sweep of the Gemma
#     shapes at M = 32 / 50 / 64; then part 65 without h100_measured
#   part 67 (ran at f4ede68: the prefetches issued by the expert's norms before their wait, which lost): the engine
#     variants of Plan A (each schedule and prefetch mode), the L2 bound of Plan A's bf16 expert (every layer on
#     layer 0's weights), the engine variants of Plan B h100_fast, the engine GPU tests of the lookahead
#   part 68 (ran at e102107 on an H200; its variant indices are that commit's): the L2 lookahead from launches beside
#     the chain (engine.L2_LOOKAHEAD): the engine variants of Plan A and Plan B h100_fast, the engine GPU tests
#   part 69 (the kernel wheel, development build): part 68's lookahead from 2-32 programs a launch, the prefetch
#     launches under the chain's carveout (ran at dc8bdbe, the lookahead off by default)
#   part 70 (the kernel wheel, development build): the final code (the lookahead on): Plan A validation, Plan B
#     validation (h100_fast), the engine GPU tests, Phase 0 (the stage floors), the engine benchmark
#   part 71 (the kernel wheel, development build): part 70 cut to the device time left (Plan A validation, the engine
#     GPU tests, Plan B validation)
#   part 72 (ran at 6a13835; programmatic edges into vision's and the prefix's cuBLASLt GEMMs lost and were
#     removed): their GPU tests (the probe, the engine's actions), the engine variants of Plan A and of Plan B
#     h100_fast
#   part 73 (the kernel wheel, development build): the defaults captured again and again (bench/capture_spread.py,
#     Plan A and Plan B h100_fast), Phase 0 (the stage floors), the engine benchmark
#   part 74 (the kernel wheel, development build): both validations on the final code (Plan A, Plan B h100_fast), for
#     when the device time left allows no more
#   part 31: part 30 with the engine variants of Plan A and of Plan B h100_fast first (the attention of step 0
#     beside the prefix)
#   part 75 (the kernel wheel, development build): the engine GPU tests (the L2 lookahead with bulk prefetches only,
#     L2Lookahead sized by programs), bench/vision_ops.py (with one-pass 64 x 256 attention blocks), then part 73
#     with 5 captures a plan
#   part 76 (ran at 7077099; CUTLASS's W4A16 token tile 64 with K tiles of 128 lost and was removed): its GPU tests
#     and the schedules' tests, the sweep on the Gemma shapes at M = 32 / 50 / 64
#   part 77 (the kernel wheel, development build): Plan A captured 12 times with the driver's default 8 hardware
#     queues (CUDA_DEVICE_MAX_CONNECTIONS unset) and 12 times with 32
#   part 78: bench/vision_ops.py with SigLIP's add_norm in launch shapes of rows a program x warps
#   part 79 (ran at 9dd4219; SigLIP's add_norm launch shapes lost and were removed): the engine's streams created
#     once and distinct (EngineStreams): their GPU test, Plan A captured 8 times; SigLIP's add_norm on 4 warps a row
#     and on 2 rows x 8 warps against the default (1 row, 8 warps): the engine variants of Plan A and Plan B h100_fast
#   part 80: the final commit: both validations, the engine GPU tests, the kernels of the replayed graphs
#     (bench/graph_timeline.py, Plan A and Plan B h100_fast), the engine benchmark
#   part 81 (ran at 15e2f66; the one-launch o projection + LayerNorm lost and was removed): SigLIP's o projection +
#     add_norm in one launch (fused.gemm_add_layernorm): its GPU tests, its launch shapes against the pair
#     (bench/gemm_norm.py), the engine variant of Plan A, the replayed graph with it
#   part 82 (ran at 53edb65; removed with it): bench/gemm_norm.py with tensor-descriptor (TMA) tiles, SigLIP's o and
#     fc2, each GEMM alone
#   part 83: SigLIP's attention without token / key masks (bench/vision_ops.py: masked against not), the replayed
#     graph of Plan A, both validations, Phase 0
#   part 84: the final commit's engine GPU tests and benchmark; the few-row W4A16 kernel at M = 1 and 10 under Nsight
#     Compute (bench/ncu_w4a16_skinny.py)
#   part 85: the few-row W4A16 sweep at M = 1 and 10 with splits 3 / 6 / 24 (one wave of resident CTAs)
#   part 86: the engine variants of Plan B h100_fast with the W4A16 expert o / down split along K by hand
#   part 87: Plan B with the expert down split 24 along K by default (engine.W4A16_FEW_ROW_SPLITS): its engine GPU
#     tests, the variants against the kernel's own count, the h100_fast validation
#   part 88: the final code's engine GPU tests and Plan A validation
#   part 89: bench/graph_timeline.py and bench/capture_spread.py after their shared setup moved to
#     workload.standard_policy / report.parse_plan_bench
#   part 90 (ran at a1a3285; the 8-stage split form lost and was removed): the few-row W4A16 kernel with an 8-stage
#     pipeline in its split form: its GPU tests, the sweep at M = 1, 10 and 64; one expert layer of each plan's
#     replayed graph
#   part 91: the few-row W4A16 sweep at M = 1 and 10 with a read-only kernel on the same bytes beside the copy; the
#     bf16 8192^3 GEMM's throughput by time since an idle start (bench/bf16_peak_profile.py)
#   part 92 (ran at 647a992; the warp-ring form lost and was removed): the few-row W4A16 kernel's warp-ring form (a
#     ring of bulk copies a warp, no per-stage __syncthreads): its GPU tests, the sweep at M = 1 and 10
#   part 93: the final code: the kernel and engine GPU tests, both validations, Phase 0 and the bf16 GEMM's
#     throughput by time since an idle start on the same machine, the replayed graph's layers
#   part 94: Phase 0 with the GEMM rates timed sustained (timing.time_sustained), three times in fresh processes:
#     before and after a Plan A validation has heated the GPU, then beside the bf16 profile
#   part 95: Plan A validation reading each stage against its bf16 roofline floor (Phase 0's ceilings measured in
#     the same run)
#   part 96 (ran at bd19e3c; the bulk-copy prologue tied and was removed): the few-row W4A16 kernel with its
#     prologue's weight stages by bulk copies on mbarriers (stage 0 waits for its own weights only) against the single
#     cp.async group: its GPU tests, the engine's W4A16 tests, the sweep at M = 1 and 10
#   part 97: the kernel and engine GPU tests; the denoise step's euler_tail on 4 (the new default) / 1 / 2 / 8 / 16
#     programs a row (the engine variants of Plan A); both validations
#   part 98: bench/kernel_bench.py (its timing loop now timing.back_to_back); the replayed graph's layers and
#     kernels (bench/graph_timeline.py, Plan A) with the euler_tail on 4 programs a row
#   part 99: the euler_tail's programs a row in Plan B h100_fast (engine variants)
#   part 100 (its Plan A variants ran inside part 101 at 716f5a6; lost and removed): the bf16 expert o / down loading
#     their first weight block before the chain wait
#   part 101 (ran at 716f5a6; the bulk-copy weight stream lost and was removed): the few-row W4A16 kernel streaming
#     its weights by bulk copies on one mbarrier a stage (4 and 8 stages): its GPU tests, the sweep at M = 1 / 10 /
#     64, Plan B h100_fast with it; then part 100's Plan A variants once
#   part 102 (ran at 77279b6; the direct form lost at the Gemma shapes, tied in the expert's chain, and was
#     removed): the few-row W4A16 kernel's direct form (weights into registers, no shared-memory pipeline, many
#     short CTAs): its GPU tests, the sweep at M = 1 / 10 / 16
#   part 103: the final code (the engine is session 25's): the kernel, activation-quantization and engine GPU
#     tests, then Plan A's validation as far as the time allows
#   part 104 (ran at 54161e2; both forms lost or tied and were removed): the few-row W4A16 kernel's 16-byte
#     reductions and split MMA chains: its GPU tests, the sweep at M = 1 / 10 (every launch shape chained too),
#     Plan B h100_fast with each form
#   part 105: the final code (session 25's engine): Plan B h100_fast's validation, Plan A's, the engine benchmark
#   part 106: the few-row W4A16 sweep at M = 1 / 10 with every launch shape chained, against a read-only kernel
#     of the same bytes chained the same way
#   part 107 (ran at f3b35ce; the direct form, below the pipelined form chained too, was removed again): session
#     26's direct few-row form restored: its GPU tests, the sweep at M = 1 / 10 with every launch shape chained (the
#     chained read-only ceiling beside)
#   part 108 (ran at f658ce1; the deeper pipelines lost chained and were removed): the few-row W4A16 add form
#     with 5 / 8 stages (every group of a CTA requested before the chain wait): its GPU tests, the sweep at
#     M = 1 / 10 with every launch shape chained
#   part 109 (prepared in session 28; ran at 5beb451 in session 29, and the form went back into main): the few-row
#     W4A16 register-streamed form (each warp's weights in a ring of 2 / 4 groups of registers, x and scales in shared
#     memory once a CTA, no barrier a group): the sweep of the Gemma shapes at M = 1 / 10 with every launch shape
#     chained, Plan B h100_fast with it on the expert's o / down (engine variants 29-34), its GPU tests
#   part 110 (session 29; never ran, folded into part 111)
#   part 111 (session 30): the register-streamed form with 16 tiles a CTA (16 warps, or 2 tiles a warp: half the x
#     each CTA reads from L2) beside part 109's shapes (the repeat), splits 3-32, the Gemma shapes at M = 1 / 10 / 16,
#     every launch shape chained; its GPU tests
#   part 112 (session 30): the same sweep at M = 32 / 64 (the form now takes up to 64 rows), against the pipelined
#     kernel and CUTLASS's mixed-input GEMM
#   part 113 (session 30, after parts 111/112): the streamed form with its x slice arriving group by group (an
#     mbarrier a group) beside the same shapes with the whole slice behind one CTA barrier, M = 10 / 32; GPU tests
#   part 114 (session 30): the W4A16 few-row GPU tests at the final streamed form (x by group, depth 4, 4 warps of
#     one tile and 16 warps removed after parts 111-113), and its shapes' sweep at M = 1 / 10 again
#   part 115 (session 31, at 7e4201e of branch diag31): the streamed form with its reductions, its x slice or half its
#     MMAs left out (TRIFORCE_W4A16_DIAG; where M = 10 / 16 lose against M = 1); GPU tests and a probe of the
#     warpgroup form
#   part 116 (session 31, at 7e4201e of branch diag31): the warpgroup form (Hopper wgmma; lost, removed) beside the
#     streamed form, M = 1 ... 64
#   part 117 (session 31, at 0fd3b6c of branch wg31): the streamed form with the splits' sums meeting in a cluster
#     (DSMEM; lost, removed) beside it, M = 1 ... 64; the few-row GPU tests
#   part 118 (branch rt4, not run yet): the streamed form's 16-byte reductions against its scalar ones, with 4 tiles a
#     warp (M <= 16) beside the kept shapes, M = 10 ... 32; the few-row GPU tests
#   part 119 (session 33, not run yet): the issue rate of warp-level bf16 MMA (mma.sync m16n8k16, the few-row W4A16
#     kernel's instruction) at 4-32 warps a SM and 1-16 independent MMAs a warp, against cuBLAS's bf16 GEMM in the
#     same run: whether the Gemma gate's MMAs at M = 32 / 64 fit the time #4's 70% allows on that instruction
#   part 120: every GPU test of the checkout (`pytest -m gpu tests/`: kernels, activation quantization, cuBLASLt,
#     engine, the MMA probe); with part 105 after it, the final code's check
# Usage there: TRIFORCE_COMMIT=<sha> bash bench/h100_run.sh 1|2|...|120   (carry .device_carry and .whl)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:$PWD/cutlass_sm110:/tmp/site PYTHONUNBUFFERED=1 MAX_JOBS=14
LOG="$OUT/log$1.txt"
run() { echo "== $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; echo "== exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }
# the engine variants of Plan A and of Plan B h100_fast, with the development build
engine_variants_ab() {
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan a --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
}
# Plan B (h100_fast) and Plan A validation, then the engine benchmark; $1: how Plan A's validation runs ("" without
# the kernel wheel, bench/with_devbuild.py with the development build)
validate_and_bench() {
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
  run python3 $1 scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 --out-dir "$OUT"
}
if [ "$1" = 1 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  run python3 -c "import devbuild; print(devbuild.load().build_info() or 'devbuild ok')"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_act_quant_gpu.py tests/test_engine_gpu.py
  run python3 bench/expert_kernels.py --out-dir "$OUT"
  run python3 bench/expert_persistent.py --out-dir "$OUT"
  run python3 bench/w4a16_sweep.py --out-dir "$OUT"
  run python3 bench/prefix_attention.py --out-dir "$OUT"
  run python3 bench/vision_ops.py --out-dir "$OUT"
  run python3 bench/kernel_bench.py --out "$OUT" --commit "${TRIFORCE_COMMIT:-unknown}"
  run python3 bench/with_devbuild.py scripts/phase0_environment_check.py --report-dir "$OUT"
elif [ "$1" = 2 ]; then
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100 --observations 64 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/measured"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_measured --observations 64 --runs 100 --report-dir "$OUT/measured"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe thor --observations 2 --report-dir /tmp/thor
elif [ "$1" = 4 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py tests/test_act_quant_gpu.py -k "not plan_b_h100_recipe"
  run python3 scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/measured"
  run python3 scripts/validate_plan_b.py --recipe h100_measured --observations 64 --runs 100 --report-dir "$OUT/measured"
  run python3 bench/run_bench.py --plan a --runs 50 --out-dir "$OUT"
elif [ "$1" = 5 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "not plan_b_h100_recipe"
  run python3 bench/expert_kernels.py --out-dir "$OUT"
  run python3 bench/engine_variants.py --plan a --out-dir "$OUT"
  run python3 bench/engine_variants.py --plan b --recipe h100_measured --out-dir "$OUT"
elif [ "$1" = 6 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "not plan_b_h100_recipe"
  run python3 bench/cold_start.py --out-dir "$OUT"
  run python3 scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/measured"
  run python3 scripts/validate_plan_b.py --recipe h100_measured --observations 64 --runs 100 --report-dir "$OUT/measured"
  run python3 bench/run_bench.py --plan a --runs 50 --out-dir "$OUT"
elif [ "$1" = 7 ]; then
  run python3 bench/w4a16_sweep.py --out-dir "$OUT"
  run python3 bench/vision_ops.py --out-dir "$OUT"
elif [ "$1" = 8 ]; then
  run python3 -c "import devbuild; print(devbuild.load().build_info() or 'devbuild ok')"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_act_quant_gpu.py tests/test_engine_gpu.py
  run python3 bench/expert_kernels.py --out-dir "$OUT"
elif [ "$1" = 9 ]; then
  run python3 -c "import devbuild; print(devbuild.load().build_info() or 'devbuild ok')"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k plan_b_h100_recipe
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100 --out-dir "$OUT"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100 --observations 64 --runs 100 --report-dir "$OUT"
elif [ "$1" = 12 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "dependent or expert_paths or step0 or matches_reference"
  run python3 bench/expert_kernels.py --launch-modes-only --out-dir "$OUT"
  run python3 bench/engine_variants.py --plan a --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
elif [ "$1" = 13 ]; then
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "dependent or expert_paths or step0"
  run python3 bench/expert_kernels.py --launch-modes-only --out-dir "$OUT"
  run python3 bench/engine_variants.py --plan a --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/profile_engine.py --plan b --recipe h100_fast --top 45
  run python3 bench/w4a16_sweep.py --engine-shape-only --out-dir "$OUT"
elif [ "$1" = 14 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -c "import devbuild; print(devbuild.load().build_info() or 'devbuild ok')"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_act_quant_gpu.py tests/test_engine_gpu.py
  run python3 bench/expert_kernels.py --launch-modes-only --out-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 15 ]; then
  run python3 scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  run python3 bench/run_bench.py --plan a --runs 50 --out-dir "$OUT"
  run python3 bench/w4a16_sweep.py --engine-shape-only --out-dir "$OUT"
elif [ "$1" = 17 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "not plan_b_h100_recipe"
  run python3 bench/engine_variants.py --plan a --out-dir "$OUT"
  run python3 bench/expert_kernels.py --launch-modes-only --out-dir "$OUT"
elif [ "$1" = 18 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -c "import devbuild; print(devbuild.load().build_info() or 'devbuild ok')"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/w4a16_sweep.py --out-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 20 ]; then
  run python3 -c "import devbuild; print(devbuild.load().build_info() or 'devbuild ok')"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny
  run python3 bench/with_devbuild.py bench/w4a16_sweep.py --shapes 1 --rows 10,64 --out-dir "$OUT"
elif [ "$1" = 23 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 --out-dir "$OUT"
elif [ "$1" = 25 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  validate_and_bench ""
elif [ "$1" = 26 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  engine_variants_ab
elif [ "$1" = 27 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan a --out-dir "$OUT"
  validate_and_bench ""
elif [ "$1" = 29 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k "mqa_cluster or carveout"
  run python3 bench/with_devbuild.py bench/decode_attention.py --out-dir "$OUT"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  engine_variants_ab
elif [ "$1" = 30 ] || [ "$1" = 31 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k "skinny or mqa_cluster"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  if [ "$1" = 31 ]; then
    engine_variants_ab
  fi
  validate_and_bench bench/with_devbuild.py
elif [ "$1" = 33 ]; then
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k mqa_cluster
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
elif [ "$1" = 34 ]; then
  run python3 bench/with_devbuild.py bench/decode_attention.py --out-dir "$OUT"
elif [ "$1" = 36 ]; then
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipes h100_fast,h100 --out-dir "$OUT"
elif [ "$1" = 46 ]; then
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  for tree in .device_carry/baseline .; do
    mkdir -p "$OUT/$(basename "$tree")"
    run python3 "$tree/bench/with_devbuild.py" "$tree/bench/engine_variants.py" --plan b --recipes h100_fast --out-dir "$OUT/$(basename "$tree")"
  done
  for tree in .device_carry/baseline .; do
    run python3 "$tree/bench/with_devbuild.py" "$tree/bench/engine_variants.py" --plan a --out-dir "$OUT/$(basename "$tree")"
  done
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 48 ]; then  # ran at 01b9c5b and f26015c (fewer o / down splits, rotated gate/up: lost, removed)
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny_geglu
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "few_row or h100_recipe"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
elif [ "$1" = 47 ]; then  # ran at 3bc9438 (the norm fold: lost, removed)
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -x -p no:cacheprovider tests/test_kernels_gpu.py -k cluster_norm
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "norm_fold or few_row"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
elif [ "$1" = 44 ]; then
  run python3 bench/vision_ops.py --out-dir "$OUT"
  run python3 bench/prefix_attention.py --out-dir "$OUT"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  engine_variants_ab
elif [ "$1" = 43 ] || [ "$1" = 45 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py tests/test_act_quant_gpu.py
  engine_variants_ab
elif [ "$1" = 42 ]; then
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "few_row or h100_recipe or fp8_vision"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 41 ]; then  # ran at 7aec4c4 (8 stages in every step, step 0 included)
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
elif [ "$1" = 55 ]; then   # the tuner's workspace per shape (was per stream): its tests, the engine's, Plan B validation
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_lt_matmul_gpu.py
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "gemm_tuning or matches_reference"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 54 ]; then   # after part 52's fixes: the engine GPU tests, the GEMM table, the engine benchmark
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py bench/gemm_tuning.py --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 --out-dir "$OUT"
elif [ "$1" = 53 ]; then   # part 51 and Plan B's validation in one call (device starts were scarce)
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider -x tests/test_lt_matmul_gpu.py
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k gemm_tuning
  run python3 bench/with_devbuild.py bench/gemm_tuning.py --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --only 9,11 --out-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan a --only 5 --out-dir "$OUT"
elif [ "$1" = 52 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  validate_and_bench bench/with_devbuild.py
elif [ "$1" = 59 ]; then   # the tuner's configuration search against the heuristic's answers, same run (ran at 2815ec3)
  echo "part 59 ran at 2815ec3 (the GEMM tuner's configuration search, removed after it); check that commit out" | tee -a "$LOG"
  exit 1
elif [ "$1" = 62 ]; then   # the W4A16 sweep with CUTLASS's mixed-input GEMM, at the horizons of the three configs
  run python3 bench/with_devbuild.py bench/w4a16_sweep.py --rows 1,10,32,50,64 --out-dir "$OUT"
elif [ "$1" = 63 ]; then   # the final code: its cuBLASLt / engine GPU tests and both validations
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_lt_matmul_gpu.py tests/test_engine_gpu.py
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
elif [ "$1" = 67 ]; then   # ran at f4ede68 (the norms' own prefetches; removed)
  echo "part 67 ran at f4ede68; its lookahead form was removed (see the header)"; exit 1
elif [ "$1" = 68 ]; then   # the L2 lookahead beside the chain
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan a --only 6,7,8,9,10,11,12,13 --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --only 10,11,12,17 --out-dir "$OUT"
elif [ "$1" = 69 ]; then   # the L2 lookahead beside the chain from fewer programs
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan a --only 6,11,13,14,15,16,17,19 --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --only 10,15,17,23 --out-dir "$OUT"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "l2_lookahead or matches_reference"
elif [ "$1" = 70 ]; then   # the final code: validations, the floors, the engine tests, the benchmark
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py scripts/phase0_environment_check.py --report-dir "$OUT"
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 --out-dir "$OUT"
elif [ "$1" = 71 ]; then   # part 70 cut to the device time left: Plan A validation, the engine GPU tests, Plan B validation
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 72 ]; then   # ran at 6a13835 (programmatic edges into the library GEMMs; removed)
  echo "part 72 ran at 6a13835; its programmatic GEMM edges were removed (see the header)"; exit 1
elif [ "$1" = 73 ]; then   # the defaults' spread across captures, the floors, the benchmark
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/with_devbuild.py bench/capture_spread.py --plan a --captures 6 --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/capture_spread.py --plan b --recipe h100_fast --captures 6 --out-dir "$OUT"
  run python3 bench/with_devbuild.py scripts/phase0_environment_check.py --report-dir "$OUT"
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 --out-dir "$OUT"
elif [ "$1" = 75 ]; then   # part 73 after the lookahead's cleanup, with its engine tests and vision's attention shapes
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/vision_ops.py --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/capture_spread.py --plan a --captures 5 --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/capture_spread.py --plan b --recipe h100_fast --captures 5 --out-dir "$OUT"
  run python3 bench/with_devbuild.py scripts/phase0_environment_check.py --report-dir "$OUT"
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 --out-dir "$OUT"
elif [ "$1" = 76 ]; then   # ran at 7077099 (CUTLASS W4A16 with K tiles of 128: lost, removed)
  echo "part 76 ran at 7077099; its K-128 W4A16 unit was removed (see the header)"; exit 1
elif [ "$1" = 77 ]; then   # Plan A's captures again and again, with the driver's 8 hardware queues and with 32
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/with_devbuild.py bench/capture_spread.py --plan a --captures 12 --out-dir "$OUT/default"
  run env CUDA_DEVICE_MAX_CONNECTIONS=32 python3 bench/with_devbuild.py bench/capture_spread.py --plan a --captures 12 --out-dir "$OUT/conn32"
elif [ "$1" = 78 ]; then   # SigLIP's launches, with the add_norm launch shapes
  run python3 bench/vision_ops.py --out-dir "$OUT"
elif [ "$1" = 79 ]; then   # ran at 9dd4219 (the add_norm launch-shape variants: lost, removed)
  echo "part 79 ran at 9dd4219; its add_norm launch-shape variants were removed (see the header)"; exit 1
elif [ "$1" = 80 ]; then   # the final commit: both validations, the engine GPU tests, the replayed graph's kernels, the benchmark
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
  run python3 bench/with_devbuild.py bench/graph_timeline.py --plan a --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/graph_timeline.py --plan b --recipe h100_fast --out-dir "$OUT/fast"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 --out-dir "$OUT"
elif [ "$1" = 81 ] || [ "$1" = 82 ]; then   # ran at 15e2f66 / 53edb65 (the one-launch o + LayerNorm: lost, removed)
  echo "part $1 ran at 15e2f66 / 53edb65; fused.gemm_add_layernorm and bench/gemm_norm.py were removed (see the header)"; exit 1
elif [ "$1" = 83 ]; then   # SigLIP's attention without token / key masks (EVEN), then the final commit's validations
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/vision_ops.py --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/graph_timeline.py --plan a --out-dir "$OUT"
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/phase0_environment_check.py --report-dir "$OUT/fast"
elif [ "$1" = 84 ]; then   # the final commit's engine GPU tests and benchmark; the few-row W4A16 kernel under Nsight Compute
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 --out-dir "$OUT"
  run timeout 240 ncu -k regex:w4a16_skinny -c 4 --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy \
    python3 bench/with_devbuild.py bench/ncu_w4a16_skinny.py
elif [ "$1" = 85 ]; then   # the few-row W4A16 kernel with splits that fill the resident CTA slots once (3 / 6 / 24)
  run python3 bench/with_devbuild.py bench/w4a16_sweep.py --rows 1,10 --out-dir "$OUT"
elif [ "$1" = 86 ]; then   # Plan B h100_fast with the expert o / down few-row kernel split along K by hand
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --only 19,20,21,22,23,24 --out-dir "$OUT"
elif [ "$1" = 87 ]; then   # the expert down split 24 along K by default: Plan B's engine tests, the variants, its validation
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "w4a16 or plan_b or l2_lookahead"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --only 19,20,21 --out-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 88 ]; then   # the final code: every engine GPU test, Plan A validation
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
elif [ "$1" = 89 ]; then   # the one-engine bench scripts after their shared setup moved (workload.standard_policy)
  run timeout 120 python3 bench/with_devbuild.py bench/graph_timeline.py --plan a --replays 2 --out-dir "$OUT"
  run timeout 120 python3 bench/with_devbuild.py bench/capture_spread.py --plan a --captures 2 --out-dir "$OUT"
elif [ "$1" = 90 ]; then   # ran at a1a3285 (the 8-stage split form of the few-row W4A16 kernel: lost, removed)
  echo "part 90 ran at a1a3285; the few-row W4A16 split form's stages option was removed (see the header)"; exit 1
elif [ "$1" = 91 ]; then   # the W4A16 sweep with the read-only ceiling; bf16 throughput by time since an idle start
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/with_devbuild.py bench/w4a16_sweep.py --rows 1,10 --out-dir "$OUT"
  run python3 bench/bf16_peak_profile.py --out-dir "$OUT"
elif [ "$1" = 92 ]; then   # ran at 647a992 (the few-row W4A16 warp-ring form: lost, removed)
  echo "part 92 ran at 647a992; the few-row W4A16 warp-ring form was removed (see the header)"; exit 1
elif [ "$1" = 93 ]; then   # the final code: GPU tests, both validations, Phase 0 and the bf16 profile, the graph's layers
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/phase0_environment_check.py --report-dir "$OUT"
  run python3 bench/bf16_peak_profile.py --out-dir "$OUT"
  run timeout 150 python3 bench/with_devbuild.py bench/graph_timeline.py --plan a --out-dir "$OUT"
elif [ "$1" = 94 ]; then   # Phase 0's sustained GEMM rates, cool and hot, three processes
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee -a "$LOG"
  mkdir -p "$OUT/cool" "$OUT/hot" "$OUT/again"
  run python3 bench/with_devbuild.py scripts/phase0_environment_check.py --report-dir "$OUT/cool"
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  run python3 bench/with_devbuild.py scripts/phase0_environment_check.py --report-dir "$OUT/hot"
  run python3 bench/with_devbuild.py scripts/phase0_environment_check.py --report-dir "$OUT/again"
  run python3 bench/bf16_peak_profile.py --out-dir "$OUT"
elif [ "$1" = 95 ]; then   # Plan A validation with each stage against its bf16 floor
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee -a "$LOG"
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
elif [ "$1" = 96 ]; then   # ran at bd19e3c (the few-row W4A16 bulk-copy prologue: tied, removed)
  echo "part 96 ran at bd19e3c; the few-row W4A16 bulk-copy prologue was removed (see the header)"; exit 1
elif [ "$1" = 97 ]; then   # GPU tests; euler_tail programs a row (Plan A variants); both validations
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan a --only 15,16,17,18,19 --out-dir "$OUT"
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 98 ]; then   # the kernel bench on timing.back_to_back; the replayed graph's layers with the new tail
  run timeout 200 python3 bench/kernel_bench.py --out "$OUT" --commit "${TRIFORCE_COMMIT:-unknown}"
  run timeout 150 python3 bench/with_devbuild.py bench/graph_timeline.py --plan a --out-dir "$OUT"
elif [ "$1" = 99 ]; then   # the euler_tail's programs a row in Plan B
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --only 19,20,21,22,23 \
    --out-dir "$OUT"
elif [ "$1" = 100 ] || [ "$1" = 101 ]; then   # ran at 716f5a6 (early weights, bulk-copy weights: lost, removed)
  echo "part $1 ran at 716f5a6; the bf16 early weights and the W4A16 bulk-copy weights were removed (see the header)"
  exit 1
elif [ "$1" = 102 ]; then   # ran at 77279b6 (the few-row W4A16 direct form: removed)
  echo "part 102 ran at 77279b6; the few-row W4A16 direct form was removed (see the header)"; exit 1
elif [ "$1" = 111 ]; then   # the streamed form with 16 tiles a CTA, M <= 16 (part 109's shapes again too)
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny
  run timeout 330 python3 bench/with_devbuild.py bench/w4a16_sweep.py --kernels mma --rows 1,10,16 --shapes 2 \
    --chain-grid --out-dir "$OUT"
elif [ "$1" = 115 ] || [ "$1" = 116 ] || [ "$1" = 117 ]; then   # ran on branches diag31 / wg31 (forms removed)
  echo "part $1 ran at 7e4201e (branch diag31) or 0fd3b6c (branch wg31); see the header"; exit 1
elif [ "$1" = 120 ]; then   # every GPU test of the checkout (pytest -m gpu over tests/), with the development build
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider tests/
elif [ "$1" = 119 ]; then   # mma.sync's issue rate against cuBLAS bf16 (no kernel wheel; about a minute)
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run timeout 60 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_mma_rate.py
  run timeout 150 python3 bench/mma_rate.py --out-dir "$OUT"
elif [ "$1" = 118 ]; then   # on branch rt4
  echo "part 118 runs on branch rt4 (its 16-byte reductions and 4 tiles a warp are not on main); see the header"; exit 1
elif [ "$1" = 114 ]; then   # the kernel wheel's GPU tests
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run timeout 60 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny
  run timeout 100 python3 bench/with_devbuild.py bench/w4a16_sweep.py --kernels mma --streamed-only --rows 1,10 \
    --shapes 2 --chain-grid --out-dir "$OUT"
elif [ "$1" = 113 ]; then   # ran at a765b3d (x by group: tied or lost, removed)
  echo "part 113 ran at a765b3d; the streamed form's x by group was removed (see the header)"; exit 1
elif [ "$1" = 112 ]; then   # the streamed form at M = 32 / 64
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run timeout 500 python3 bench/with_devbuild.py bench/w4a16_sweep.py --kernels mma,cutlass --rows 32,64 --shapes 2 \
    --chain-grid --out-dir "$OUT"
elif [ "$1" = 109 ]; then   # the register-streamed few-row form
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run timeout 200 python3 bench/with_devbuild.py bench/w4a16_sweep.py --kernels mma --rows 1,10 --shapes 2 \
    --chain-grid --out-dir "$OUT"
  run timeout 200 python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast \
    --only 0,29,30,31,32,33,34,23 --out-dir "$OUT"
  run timeout 100 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k skinny
elif [ "$1" = 108 ]; then   # ran at f658ce1 (the add form's 5 / 8 stages: removed)
  echo "part 108 ran at f658ce1; the add form's deeper pipelines were removed (see the header)"; exit 1
elif [ "$1" = 107 ]; then   # ran at f3b35ce (the direct form: removed again)
  echo "part 107 ran at f3b35ce; the direct few-row form was removed again (see the header)"; exit 1
elif [ "$1" = 106 ]; then   # the chained read-only ceiling beside the chained W4A16 kernel
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run timeout 400 python3 bench/with_devbuild.py bench/w4a16_sweep.py --kernels mma --rows 1,10 --chain-grid \
    --out-dir "$OUT"
elif [ "$1" = 105 ]; then   # the final code: both validations
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  mkdir -p "$OUT/fast"
  run timeout 240 python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 \
    --runs 100 --report-dir "$OUT/fast"
  run timeout 200 python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 \
    --report-dir "$OUT"
  run timeout 120 python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 \
    --out-dir "$OUT"
elif [ "$1" = 104 ]; then   # ran at 54161e2 (the few-row W4A16 forms: removed)
  echo "part 104 ran at 54161e2; the few-row W4A16 kernel forms were removed (see the header)"; exit 1
elif [ "$1" = 103 ]; then   # the final code's GPU tests, then Plan A's validation
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_act_quant_gpu.py tests/test_engine_gpu.py
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
elif [ "$1" = 74 ]; then   # both validations only
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/with_devbuild.py scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 64 ]; then
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100_fast --runs 50 --out-dir "$OUT"
elif [ "$1" = 65 ] || [ "$1" = 66 ]; then   # (66: W4A16 clusters first) FP8 fast accumulation declared by the recipe
  if [ "$1" = 66 ]; then
    run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k "w4a16 and not skinny"
    run python3 bench/with_devbuild.py bench/w4a16_sweep.py --shapes 2 --rows 32,50,64 --out-dir "$OUT"
  fi
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  mkdir -p "$OUT/fast" "$OUT/measured"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
  [ "$1" = 65 ] && run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_measured --observations 64 --runs 100 --report-dir "$OUT/measured"
elif [ "$1" = 61 ]; then   # the W4A16 sweep with the same-bytes copy
  run python3 bench/with_devbuild.py bench/w4a16_sweep.py --out-dir "$OUT"
elif [ "$1" = 58 ]; then   # the final code (the review commit 94b90bc's kernels and engine): every GPU test, validation
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_act_quant_gpu.py tests/test_lt_matmul_gpu.py tests/test_engine_gpu.py
  validate_and_bench bench/with_devbuild.py
elif [ "$1" = 51 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider -x tests/test_lt_matmul_gpu.py
  run python3 bench/with_devbuild.py bench/gemm_tuning.py --out-dir "$OUT"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k gemm_tuning
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --only 9,10,11,12 --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan a --only 5 --out-dir "$OUT"
elif [ "$1" = 50 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_act_quant_gpu.py tests/test_engine_gpu.py
  validate_and_bench bench/with_devbuild.py
elif [ "$1" = 49 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 bench/scaled_mm_output_scale.py --out-dir "$OUT"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k "e4m3 or scaled_mm or rope"
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --only 2,3,4,6,7 --out-dir "$OUT"
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 40 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee -a "$LOG"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_act_quant_gpu.py tests/test_engine_gpu.py
  engine_variants_ab
  validate_and_bench bench/with_devbuild.py
elif [ "$1" = 39 ]; then  # ran at 805fc76 (dependent launches for vision and the prefix: lost, removed)
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  engine_variants_ab
elif [ "$1" = 38 ]; then
  run python3 bench/prefix_attention.py --out-dir "$OUT"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  engine_variants_ab
elif [ "$1" = 37 ]; then
  run python3 bench/fp8_gemm.py --out-dir "$OUT"
elif [ "$1" = 35 ]; then
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py -k "skinny or mqa_cluster"
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py
  run python3 bench/fp8_gemm.py --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/profile_engine.py --plan b --recipe h100_fast --top 40
elif [ "$1" = 28 ]; then
  run python3 bench/with_devbuild.py bench/engine_variants.py --plan b --recipe h100_fast --out-dir "$OUT"
elif [ "$1" = 19 ]; then
  run python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py -k few_row
  mkdir -p "$OUT/fast"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
elif [ "$1" = 11 ]; then
  run python3 scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  run python3 bench/cold_start.py --out-dir "$OUT"
elif [ "$1" = 10 ]; then
  run python3 scripts/validate_plan_a.py --observations 32 --runs 100 --report-dir "$OUT"
  mkdir -p "$OUT/measured" "$OUT/fast"
  run python3 scripts/validate_plan_b.py --recipe h100_measured --observations 64 --runs 100 --report-dir "$OUT/measured"
  run python3 bench/run_bench.py --plan a --runs 50 --out-dir "$OUT"
  run python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100_fast --observations 64 --runs 100 --report-dir "$OUT/fast"
else
  run python3 bench/w4a16_paths.py --out-dir "$OUT"
  run python3 bench/cold_start.py --out-dir "$OUT"
  run python3 bench/with_devbuild.py bench/run_bench.py --plan all --recipe h100 --runs 50 --out-dir "$OUT"
fi

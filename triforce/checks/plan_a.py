"""Plan A validation: engine vs fp32 reference (per-sample worst cosine), the bf16 floor, latency per stage against
its bf16 roofline floor (Phase 0's ceilings measured in the same run), Hz, cold start and peak memory, on the
standard workload."""

from __future__ import annotations

import time

import numpy as np

from .. import report as rep
from ..runtime.checkpoint import load_state, resolve_checkpoint
from ..runtime.config import load_config
from ..runtime.observation import check_observation
from ..timing import time_cuda, time_wall
from ..workload import STANDARD, checked_standard_case, cosine, random_noise, random_observation, standard_case

GATE_COSINE = 0.999
STAGE_TARGET_X_FLOOR = 2.0   # #3: each stage within 2x of its bf16 roofline floor (a target, reported; not a gate)
STAGE_OF_ROOFLINE = {"vision": "vision", "prefix": "prefix", "denoise_total": "expert"}   # stages_ms key -> roofline


def stages_vs_floors(stages_ms: dict, stage_floor_ms: dict) -> dict:
    """Each stage's time against its bf16 roofline floor (roofline.analyse's stage_floor_ms): x floor, target met."""
    out = {}
    for key, stage in STAGE_OF_ROOFLINE.items():
        floor = stage_floor_ms[stage]["bf16"]
        x = stages_ms[key] / floor
        out[stage] = {"ms": stages_ms[key], "bf16_floor_ms": floor, "x_floor": x,
                      "within_target": x <= STAGE_TARGET_X_FLOOR}
    return out


def measure_floors(cfg, stages_ms: dict) -> dict:
    """Phase 0's ceilings measured now, the bf16 floors they give, and each stage against its floor."""
    from ..roofline import analyse
    from .phase0 import measure_ceilings

    ceilings = measure_ceilings()
    floors = analyse(cfg, ceilings["tflops"], ceilings["copy_gbs"], ["bf16"])["stage_floor_ms"]
    return {"ceilings": ceilings, "target_x_floor": STAGE_TARGET_X_FLOOR, "stages": stages_vs_floors(stages_ms, floors)}


def compare_with_reference(policy, cfg, path, n_obs: int, seed: int) -> dict:
    """Worst and median per-sample cosine of the engine and of a plain bf16 port against the fp32 reference."""
    import torch

    from ..runtime.model import ReferencePi05

    rng = np.random.default_rng(seed)
    cases = [standard_case(cfg, rng) for _ in range(n_obs)]
    engine_out = [policy.infer(o, n) for o, n in cases]
    state = load_state(path, cfg, device="cuda")
    results = {}
    for label, dtype in (("fp32", torch.float32), ("bf16_port", torch.bfloat16)):
        model = ReferencePi05(cfg, state, "cuda", dtype=dtype)
        results[label] = [_run_ref(model, check_observation(o, cfg), n) for o, n in cases]
        del model
        torch.cuda.empty_cache()
    engine_cos = [cosine(e, r) for e, r in zip(engine_out, results["fp32"])]
    floor_cos = [cosine(b, r) for b, r in zip(results["bf16_port"], results["fp32"])]
    return {"observations": n_obs, "engine_vs_fp32": _stats(engine_cos), "bf16_port_vs_fp32": _stats(floor_cos),
            "max_abs_err": float(max(np.abs(e - r).max() for e, r in zip(engine_out, results["fp32"])))}


def _run_ref(model, obs, noise):
    import torch

    t = lambda a: torch.from_numpy(a).to("cuda")  # noqa: E731
    return model.sample_actions(t(obs.images), t(obs.image_masks), t(obs.tokens), t(obs.token_mask), t(noise)).cpu().numpy()


def _stats(values) -> dict:
    return {"worst": float(np.min(values)), "median": float(np.median(values))}


def measure_latency(policy, cfg, runs: int, seed: int) -> dict:
    """Graph replay (device events) and the full predict call (host in/out) for 16- and 48-token prompts."""
    engine, rng = policy.backend, np.random.default_rng(seed + 1)
    out = {}
    for tokens in (STANDARD["prompt_tokens"], STANDARD["also_prompt_tokens"]):
        tokens = min(tokens, cfg.max_token_len)
        obs, noise = random_observation(cfg, rng, STANDARD["real_views"], tokens), random_noise(cfg, rng)
        checked = check_observation(obs, cfg)
        replay = time_cuda(engine.ready_replay(checked, noise), runs=runs, warmup_s=1.5)
        predict = time_wall(lambda: policy.infer(obs, noise), runs=runs)
        out[f"prompt_{tokens}"] = {"graph_replay": replay, "predict_call": predict,
                                   "hz": 1e3 / replay["median_ms"], "bucket": cfg.token_bucket(checked.num_tokens)}
    checked, noise = checked_standard_case(cfg, rng)
    out["stages_ms"] = engine.stage_times_ms(checked, noise, replays=runs)
    return out


def run(checkpoint: str, config: str, observations: int, runs: int, seed: int = 0) -> tuple[dict, int]:
    import torch

    from ..runtime.policy import Policy

    if not torch.cuda.is_available():
        return {"status": "no_gpu", "message": "Plan A validation needs a CUDA GPU; none is visible"}, rep.EXIT_NO_GPU
    torch.backends.cuda.matmul.allow_tf32 = False   # the reference must be real fp32
    torch.backends.cudnn.allow_tf32 = False
    cfg = load_config(config)
    path, synthetic = resolve_checkpoint(checkpoint, cfg)   # a synthetic checkpoint is written before the clock starts
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    policy = Policy.load(checkpoint, config, plan="a")
    first = random_observation(cfg, np.random.default_rng(seed), STANDARD["real_views"], STANDARD["prompt_tokens"])
    policy.infer(first)
    cold_start = time.perf_counter() - start
    peak_gb = torch.cuda.max_memory_allocated() / 2**30
    latency = measure_latency(policy, cfg, runs, seed)
    roofline = measure_floors(cfg, latency["stages_ms"])
    precision = compare_with_reference(policy, cfg, path, observations, seed)
    passed = precision["engine_vs_fp32"]["worst"] >= GATE_COSINE
    report = {"plan": "a", "config": config, "checkpoint": checkpoint, "synthetic_weights": synthetic,
              "note": rep.RANDOM_WEIGHTS_NOTE if synthetic else "", "workload": STANDARD,
              "gate": {"worst_cosine_vs_fp32": GATE_COSINE, "passed": passed},
              "precision": precision, "latency": latency, "stage_roofline": roofline, "cold_start_s": cold_start,
              "load_s": policy.load_seconds, "peak_gpu_memory_gb": peak_gb,
              "weight_bytes": policy.backend.weight_bytes(), **policy.backend.launch_settings(),
              "gemm_tuning_table": policy.backend.gemm_tuning_table()}
    return report, rep.EXIT_PASS if passed else rep.EXIT_GATE_FAILED


def _denoise_note(steps: list, report: dict) -> str:
    """Per-step time: with step 0 beside the prefix, its stage time is only what is left of it after the prefix."""
    later = float(np.median(steps[1:])) if len(steps) > 1 else steps[0]
    overlap = f" (step 0: {steps[0]:.3f} after the prefix ends)" if report.get("overlap_step0") else ""
    launch = f", {report['denoise_launch']} launches" if "denoise_launch" in report else ""
    if report.get("chain_carveout", -1) >= 0:
        launch += f" (carveout {report['chain_carveout']}% shared)"
    if "decode_attention" in report:
        launch += f", {report['decode_attention']} attention"
        if report.get("overlap_step0") and report.get("step0_attention") != report["decode_attention"]:
            launch += f" ({report['step0_attention']} in step 0)"
    return f"{later:.3f}/step{overlap}, {report['expert_path']} expert layers{launch}"


def _floor_note(report: dict, stage: str) -> str:
    roof = report.get("stage_roofline")
    if roof is None:      # a report from before the floors were measured in the run
        return ""
    st, c = roof["stages"][stage], roof["ceilings"]
    return (f"{st['x_floor']:.2f}x its bf16 floor {st['bf16_floor_ms']:.3f} ms (bf16 {c['tflops']['bf16']:.0f} "
            f"TFLOP/s, copy {c['copy_gbs']:.0f} GB/s; target <= {roof['target_x_floor']:g}x: "
            f"{'met' if st['within_target'] else 'missed'})")


def print_summary(report: dict) -> None:
    p, lat = report["precision"], report["latency"]
    rows = [["worst cosine engine vs fp32", p["engine_vs_fp32"]["worst"], f">= {GATE_COSINE}"],
            ["worst cosine plain bf16 port vs fp32 (floor)", p["bf16_port_vs_fp32"]["worst"], "reported"]]
    for key in [k for k in lat if k.startswith("prompt_")]:
        rows.append([f"graph replay ms ({key})", lat[key]["graph_replay"]["median_ms"], f"{lat[key]['hz']:.1f} Hz"])
        rows.append([f"predict call ms ({key})", lat[key]["predict_call"]["median_ms"], "host in/out"])
    st = lat["stages_ms"]
    rows += [["vision ms", st["vision"], _floor_note(report, "vision")],
             ["prefix ms", st["prefix"], _floor_note(report, "prefix")],
             ["denoise ms (10 steps)", st["denoise_total"],
              f"{_denoise_note(st['denoise_steps'], report)}; {_floor_note(report, 'expert')}"],
             ["cold start s (load + capture)", report["cold_start_s"], "<= 10"],
             ["peak GPU memory GB", report["peak_gpu_memory_gb"], ""]]
    rep.print_table(f"Plan A — {report['config']} on {report['device']['gpu']} ({'synthetic' if report['synthetic_weights'] else 'real'} weights)",
                    ["metric", "value", "gate / note"], rows)
    print("PASS" if report["gate"]["passed"] else "FAIL: worst cosine below the gate")

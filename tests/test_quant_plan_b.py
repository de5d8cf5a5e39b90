"""Plan B on CPU: recipes as data and their errors, `invoke quantize` round trips on pi05_tiny, strict loading of
quantized checkpoints, and the refusals (NVFP4 without Blackwell, calibration with no observation, inf weights)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from triforce.errors import TriforceError, UnsupportedError
from triforce.quant import formats as fm
from triforce.quant.plan_b import quantize_checkpoint, read_quantized
from triforce.quant.quantize import engine_weight
from triforce.quant.recipes import layer_ids, resolve_recipe
from triforce.runtime.checkpoint import load_state, write_synthetic
from triforce.runtime.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = load_config("pi05_tiny")


def test_named_recipes_resolve_every_layer():
    plan, _ = resolve_recipe("h100", TINY)
    assert set(plan) == set(layer_ids(TINY))
    assert plan["vision.0.fc1"] == "fp8" and plan["prefix.1.down"] == "fp8" and plan["expert.0.qkv"] == "w4a16"
    assert set(resolve_recipe("thor", TINY)[0].values()) == {"nvfp4", "w4a16"}
    measured, _ = resolve_recipe("h100_measured", TINY)
    assert measured["prefix.0.qkv"] == "fp8" and measured["expert.1.down"] == "bf16" and measured["vision.0.fc1"] == "bf16"
    fast, fast_accum = resolve_recipe("h100_fast", TINY)
    assert fast["prefix.0.qkv"] == "fp8" and fast["expert.1.gate_up"] == "w4a16" and fast["vision.0.fc1"] == "fp8"
    assert fast_accum == ["vision", "prefix"]


@pytest.mark.parametrize("body, message", [
    ('vision = "fp8"\nprefix_attn = "fp8"\n', "unknown stage"),
    ('vision = "int3"\n', "unknown precision 'int3'"),
    ('[overrides]\n"prefix.99.qkv" = "bf16"\n', "unknown layer"),
    ('vision = "w4a16"\n', "w4a16 for vision.0.qkv is not supported"),
    ('vision = [\n', "not valid TOML"),
    ('prefix_mlp = "fp8"\nfp8_fast_accum = ["expert"]\n', r"fp8_fast_accum names unknown stage\(s\) \['expert'\]"),
    ('prefix_mlp = "fp8"\nfp8_fast_accum = ["vision"]\n', "fp8_fast_accum lists vision, which runs no FP8 layer"),
    ('prefix_mlp = "fp8"\nfp8_fast_accum = "prefix"\n', "fp8_fast_accum must be a list of stage names"),
])
def test_bad_recipe_files(tmp_path, body, message):
    path = tmp_path / "r.toml"
    path.write_text(body)
    with pytest.raises(TriforceError, match=message):
        resolve_recipe(str(path), TINY)


def test_fast_accumulation_is_the_recipes():
    """Which stages' FP8 GEMMs accumulate fast is declared per recipe (checked against its plan): h100_fast, h100
    and fp8 list vision and the prefix; h100_measured (precision first) lists none; a one-layer override to FP8 is
    enough for its stage."""
    from triforce.quant.recipes import fast_accum_stages, load_recipe_spec

    for name, want in (("h100_fast", ["vision", "prefix"]), ("h100", ["vision", "prefix"]), ("fp8", ["vision", "prefix"]),
                       ("h100_measured", []), ("thor", []), ("w4a16", [])):
        assert fast_accum_stages(load_recipe_spec(name), resolve_recipe(name, TINY)[0]) == want, name
    spec = {"name": "r", "fp8_fast_accum": ["prefix"], "overrides": {"prefix.1.down": "fp8"}}
    plan = {lid: "bf16" for lid in layer_ids(TINY)} | spec["overrides"]
    assert fast_accum_stages(spec, plan) == ["prefix"]


def test_recipe_overrides_one_layer(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('expert_mlp = "w4a16"\n[overrides]\n"expert.1.down" = "bf16"\n')
    plan, _ = resolve_recipe(str(path), TINY)
    assert plan["expert.0.down"] == "w4a16" and plan["expert.1.down"] == "bf16" and plan["vision.0.qkv"] == "bf16"


def test_unknown_recipe_and_auto_without_gpu():
    with pytest.raises(TriforceError, match="unknown recipe"):
        resolve_recipe("fastest", TINY)
    with pytest.raises(TriforceError, match="needs Phase 0"):
        resolve_recipe("auto", TINY)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "h100"
    report = quantize_checkpoint("synthetic:pi05_tiny", "pi05_tiny", "h100", str(out), calibration=2, device="cpu", log=lambda *a: None)
    return out, report


def test_quantize_reports_bytes_per_stage(quantized):
    _, report = quantized
    wb = report["weight_bytes"]
    assert 0.5 < wb["prefix"]["ratio"] < 0.53          # fp8 + per-channel scales
    assert 0.25 < wb["expert"]["ratio"] < 0.27         # int4 + bf16 scale per 128
    assert report["precisions"] == {"fp8": 16, "w4a16": 8}


def test_quantized_checkpoint_round_trips(quantized):
    out, _ = quantized
    plan, tensors, meta = read_quantized(TINY, out / "model.safetensors")
    assert meta["recipe"] == "h100" and meta["config"] == "pi05_tiny" and plan == resolve_recipe("h100", TINY)[0]
    assert meta["fp8_fast_accum"] == ["vision", "prefix"]          # the recipe's, for the engine at load
    state = load_state(write_synthetic(TINY), TINY)
    x = torch.randn(32, TINY.prefix.width)
    # FP8 layer: dequantized weights reproduce the layer (prefix qkv, RMSNorm weight folded)
    w, _ = engine_weight(state, "prefix.0.qkv")
    deq = fm.dequantize_fp8_weight(tensors["gemm.prefix.0.qkv.weight"], tensors["gemm.prefix.0.qkv.weight_scale"])
    assert torch.linalg.norm(x @ deq.T - x @ w.T) / torch.linalg.norm(x @ w.T) < 0.05
    # INT4 AWQ layer: (x / s) @ dequant(W s)^T ~= x @ W^T
    w, _ = engine_weight(state, "expert.0.gate_up")
    deq = fm.dequantize_int4_g128(tensors["gemm.expert.0.gate_up.qweight"], tensors["gemm.expert.0.gate_up.scales"])
    xs = x * tensors["gemm.expert.0.gate_up.channel_scale"]
    assert torch.linalg.norm(xs @ deq.T - x @ w.T) / torch.linalg.norm(x @ w.T) < 0.15
    assert "gemm.expert.0.gate_up.input_scale" not in tensors


def test_e4m3_output_layers_store_a_calibrated_output_scale(quantized):
    """The prefix's gate/up and SigLIP's fc1 (FP8, before GeGLU / GELU) store output_scale = headroom x the raw GEMM
    output's calibrated abs-max / 448; the raw outputs of the calibration rows then fit E4M3 with that headroom."""
    from triforce.quant.calibrate import calibrate
    from triforce.quant.quantize import E4M3_OUTPUT_HEADROOM
    from triforce.runtime.model import ReferencePi05

    out, _ = quantized
    _, tensors, meta = read_quantized(TINY, out / "model.safetensors")
    want = sorted([f"prefix.{i}.gate_up" for i in range(TINY.prefix.depth)] +
                  [f"vision.{i}.fc1" for i in range(TINY.vision.depth)])
    assert meta["output_scaled"] == want
    assert {k for k in tensors if k.endswith(".output_scale")} == {f"gemm.{lid}.output_scale" for lid in want}
    stats = calibrate(ReferencePi05(TINY, load_state(write_synthetic(TINY), TINY)), TINY, 2)   # the fixture's run
    for lid in ("prefix.1.gate_up", "vision.0.fc1"):
        t = lambda n: tensors[f"gemm.{lid}.{n}"].float()  # noqa: E731
        raw_amax = (stats.out_chan_amax[lid] / t("weight_scale")).max()
        assert float(t("output_scale")) == pytest.approx(float(E4M3_OUTPUT_HEADROOM * raw_amax / 448), rel=1e-6)
        # what the GEMM computes before its deferred channel scales, on the calibration rows
        x = stats.samples[lid]
        xq = fm.quantize_fp8_activation(x, 1 / t("input_scale")).float() * t("input_scale")
        raw = xq @ t("weight").T
        assert float(raw.abs().max() / t("output_scale")) <= 448 / E4M3_OUTPUT_HEADROOM * 1.1
        assert float(raw.abs().max() / t("output_scale")) >= 448 / E4M3_OUTPUT_HEADROOM / 4   # a tight range


def test_calibrated_output_ranges_follow_the_smoothing_and_refuse_nan():
    from triforce.quant.calibrate import ActivationStats

    stats = ActivationStats()
    stats.output("prefix.0.gate_up", torch.tensor([[1.0, -4.0, 2.0, 8.0]]))
    stats.output("prefix.0.gate_up", torch.tensor([[-3.0, 1.0, 0.5, 2.0]]))
    assert stats.output_chan_amax("prefix.0.gate_up").tolist() == [3.0, 4.0, 2.0, 8.0]
    stats.smooth_output("prefix.0.gate_up", torch.tensor([1.0, 1.0, 2.0, 4.0]))   # down's AWQ s in the up rows
    assert stats.output_chan_amax("prefix.0.gate_up").tolist() == [3.0, 4.0, 1.0, 2.0]
    assert stats.output_chan_amax("prefix.1.gate_up") is None
    with pytest.raises(TriforceError, match="non-finite activations at the output of vision.0.fc1"):
        stats.output("vision.0.fc1", torch.tensor([[1.0, float("nan")]]))


def test_output_scale_of_a_gate_up_whose_up_rows_carry_downs_awq_scale(tmp_path):
    """FP8 gate/up before an INT4 down: down's AWQ s divides the up rows, and the output scale follows (the raw
    outputs of the calibration rows fit E4M3 with the headroom, not with s folded in twice or not at all)."""
    from triforce.quant.quantize import E4M3_OUTPUT_HEADROOM

    recipe = tmp_path / "mixed.toml"
    recipe.write_text('prefix_attention = "fp8"\nprefix_mlp = "fp8"\n[overrides]\n"prefix.0.down" = "w4a16"\n')
    quantize_checkpoint("synthetic:pi05_tiny", "pi05_tiny", str(recipe), str(tmp_path / "q"), calibration=2,
                        device="cpu", log=lambda *a: None)
    _, tensors, _ = read_quantized(TINY, tmp_path / "q" / "model.safetensors")
    t = lambda n: tensors[f"gemm.prefix.0.{n}"].float()  # noqa: E731
    assert "gemm.prefix.0.down.channel_scale" not in tensors     # s went into gate/up's up rows
    from triforce.quant.calibrate import calibrate
    from triforce.runtime.model import ReferencePi05

    state = load_state(write_synthetic(TINY), TINY)
    stats = calibrate(ReferencePi05(TINY, state), TINY, 2)
    # a weight row's scale absorbs the s it was divided by, so the raw output is the unsmoothed layer's
    w, _ = engine_weight(state, "prefix.0.gate_up")
    raw_amax = (stats.out_chan_amax["prefix.0.gate_up"] / (w.abs().amax(1) / 448)).max()
    assert float(t("gate_up.output_scale")) == pytest.approx(float(E4M3_OUTPUT_HEADROOM * raw_amax / 448), rel=1e-5)


def test_an_e4m3_output_layer_without_a_calibrated_output_range_is_refused():
    from triforce.quant.quantize import quantize_layer

    w = torch.randn(32, 16)
    with pytest.raises(TriforceError, match="no calibrated output range for prefix.0.gate_up"):
        quantize_layer("prefix.0.gate_up", "fp8", w, None, 1.0, None, None)
    assert "gemm.prefix.0.o.output_scale" not in quantize_layer("prefix.0.o", "fp8", w, None, 1.0, None, None)
    got = quantize_layer("prefix.0.gate_up", "fp8", w, None, 1.0, None, torch.ones(32))
    assert got["gemm.prefix.0.gate_up.output_scale"].shape == (1,)


def test_quantized_checkpoint_without_output_scales_still_loads(quantized, tmp_path):
    """A checkpoint written before E4M3 outputs (no output_scaled list, no output_scale tensors) reads: its layers
    write bf16; but one listing them without the tensors is refused."""
    out, _ = quantized
    old = tmp_path / "old"
    shutil.copytree(out, old)
    tensors = {k: v for k, v in load_file(str(old / "model.safetensors")).items() if not k.endswith(".output_scale")}
    save_file(tensors, str(old / "model.safetensors"))
    with pytest.raises(TriforceError, match=r"missing \(gemm\.prefix\.0\.gate_up\.output_scale"):
        read_quantized(TINY, old / "model.safetensors")
    meta = json.loads((old / "recipe.json").read_text())
    del meta["output_scaled"]
    (old / "recipe.json").write_text(json.dumps(meta))
    _, read, _ = read_quantized(TINY, old / "model.safetensors")
    assert not any(k.endswith(".output_scale") for k in read)


def test_quantized_checkpoint_of_another_config_is_refused(quantized, tmp_path):
    out, _ = quantized
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    meta = json.loads((bad / "recipe.json").read_text())
    meta["config"] = "pi05_libero"
    (bad / "recipe.json").write_text(json.dumps(meta))
    with pytest.raises(TriforceError, match="made for config 'pi05_libero'"):
        read_quantized(TINY, bad / "model.safetensors")


def test_quantized_checkpoint_with_a_missing_tensor_is_refused(quantized, tmp_path):
    out, _ = quantized
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["gemm.expert.1.down.scales"]
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(TriforceError, match=r"1 missing \(gemm.expert.1.down.scales\)"):
        read_quantized(TINY, bad / "model.safetensors")


def test_requested_recipe_must_match_the_stored_one(quantized):
    out, _ = quantized
    with pytest.raises(TriforceError, match="holds recipe 'h100'; requested 'thor'"):
        read_quantized(TINY, out / "model.safetensors", recipe="thor")


def test_nvfp4_quantization_runs_on_cpu_and_stores_swizzled_scales(tmp_path):
    out = tmp_path / "thor"
    quantize_checkpoint("synthetic:pi05_tiny", "pi05_tiny", "thor", str(out), calibration=1, device="cpu", log=lambda *a: None)
    _, tensors, _ = read_quantized(TINY, out / "model.safetensors")
    sf = tensors["gemm.prefix.0.gate_up.weight_sf"]
    n, k = 2 * TINY.prefix.mlp_dim, TINY.prefix.width
    assert sf.numel() == fm.nvfp4_sf_bytes(n, k)
    linear_sf = fm.unswizzle_block_scales(sf, n, k)
    deq = fm.dequantize_nvfp4(tensors["gemm.prefix.0.gate_up.qweight"], linear_sf, tensors["gemm.prefix.0.gate_up.weight_global"])
    assert deq.shape == (n, k) and torch.isfinite(deq).all()


def test_calibration_needs_observations(tmp_path):
    with pytest.raises(TriforceError, match="at least one observation"):
        quantize_checkpoint("synthetic:pi05_tiny", "pi05_tiny", "h100", str(tmp_path / "x"), calibration=0, device="cpu")
    assert not (tmp_path / "x").exists()


def test_out_dir_must_be_new(quantized):
    out, _ = quantized
    with pytest.raises(TriforceError, match="exists and is not an empty directory"):
        quantize_checkpoint("synthetic:pi05_tiny", "pi05_tiny", "h100", str(out), calibration=1, device="cpu")


def test_weights_with_nan_are_refused(tmp_path):
    state = load_file(str(write_synthetic(TINY)))
    state["paligemma_with_expert.gemma_expert.model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    ckpt = tmp_path / "nan"
    ckpt.mkdir()
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(TriforceError, match="inf/NaN"):
        quantize_checkpoint(str(ckpt), "pi05_tiny", "h100", str(tmp_path / "out"), calibration=1, device="cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_nvfp4_without_gpu_is_refused():
    from triforce.quant.plan_b import check_backend

    with pytest.raises(UnsupportedError, match="needs a CUDA GPU"):
        check_backend("nvfp4")


def test_invoke_quantize_round_trip_and_errors(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "invoke", "quantize", *a], cwd=REPO, capture_output=True, text=True, timeout=900)  # noqa: E731
    r = run("--checkpoint", "synthetic:pi05_tiny", "--config", "pi05_tiny", "--recipe", "w4a16", "--out", str(tmp_path / "q"), "--calibration", "1")
    assert r.returncode == 0, r.stderr
    assert "expert" in r.stdout and (tmp_path / "q" / "recipe.json").is_file()
    r = run("--checkpoint", "synthetic:pi05_tiny", "--config", "pi05_tiny", "--recipe", "nope", "--out", str(tmp_path / "q2"))
    assert r.returncode == 1 and r.stderr.startswith("error: unknown recipe") and not (tmp_path / "q2").exists()

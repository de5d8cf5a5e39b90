"""The Pi0.5 runtime on CPU: openpi naming, strict loading of real safetensors files, input validation, the
reference path through the Policy API and `invoke infer`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from triforce.errors import TriforceError, UnsupportedError
from triforce.runtime.checkpoint import IGNORED, expected_tensors, load_state, write_synthetic
from triforce.runtime.config import load_config
from triforce.runtime.policy import Policy
from triforce.workload import random_noise, random_observation

REPO = Path(__file__).resolve().parents[1]
TINY = load_config("pi05_tiny")


@pytest.fixture(scope="module")
def tiny_state():
    path = write_synthetic(TINY)
    return path, load_file(str(path))


def test_expected_tensors_match_openpi_checkpoint_exactly():
    ref = json.loads((REPO / "tests/data/openpi_pi05_keys.json").read_text())["tensors"]
    ref = {k: (tuple(v["shape"]), v["dtype"]) for k, v in ref.items() if k not in IGNORED}
    assert expected_tensors(load_config("pi05_libero")) == ref
    assert len(ref) == 811


def test_a_changed_config_never_reads_a_stale_synthetic_checkpoint(tmp_path, monkeypatch):
    """The synthetic file's name carries its shapes' digest: a config edited under the same name gets a new file
    that its loader accepts, not the old one (which the strict loader would refuse as mis-shaped)."""
    from dataclasses import replace

    monkeypatch.setenv("TRIFORCE_CACHE", str(tmp_path))
    old = write_synthetic(TINY)
    edited = replace(TINY, expert=replace(TINY.expert, mlp_dim=2 * TINY.expert.mlp_dim))
    new = write_synthetic(edited)
    assert new != old and old.is_file() and write_synthetic(TINY) == old
    assert set(load_state(new, edited)) == set(expected_tensors(edited))


@pytest.mark.parametrize("name", ["pi05_libero", "pi05_droid", "pi05_base"])
def test_configs_horizons(name):
    assert load_config(name).action_horizon == {"pi05_libero": 10, "pi05_droid": 15, "pi05_base": 50}[name]


def test_unknown_config():
    with pytest.raises(TriforceError, match="unknown model config"):
        load_config("pi0_fast")


def _write(tmp_path, tensors):
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path


def test_strict_load_accepts_synthetic_and_the_ignored_lm_head(tmp_path, tiny_state):
    _, state = tiny_state
    extra = {**state, "paligemma_with_expert.gemma_expert.lm_head.weight": torch.zeros(8, TINY.expert.width, dtype=torch.bfloat16)}
    loaded = load_state(_write(tmp_path, extra), TINY)
    assert set(loaded) == set(expected_tensors(TINY))


def test_missing_tensor_is_listed(tmp_path, tiny_state):
    _, state = tiny_state
    name = "time_mlp_in.bias"
    with pytest.raises(TriforceError, match=r"1 missing \(time_mlp_in.bias\)"):
        load_state(_write(tmp_path, {k: v for k, v in state.items() if k != name}), TINY)


def test_unexpected_tensor_is_listed(tmp_path, tiny_state):
    _, state = tiny_state
    with pytest.raises(TriforceError, match="1 unexpected .*bogus.weight"):
        load_state(_write(tmp_path, {**state, "bogus.weight": torch.zeros(2)}), TINY)


def test_misshaped_tensor(tmp_path, tiny_state):
    _, state = tiny_state
    bad = {**state, "action_in_proj.weight": torch.zeros(3, 3)}
    with pytest.raises(TriforceError, match=r"action_in_proj.weight: float32\[3, 3\] \(expected float32\[128, 32\]\)"):
        load_state(_write(tmp_path, bad), TINY)


def test_wrong_dtype(tmp_path, tiny_state):
    _, state = tiny_state
    bad = {**state, "action_in_proj.weight": state["action_in_proj.weight"].to(torch.bfloat16)}
    with pytest.raises(TriforceError, match="wrong shape or dtype.*bfloat16"):
        load_state(_write(tmp_path, bad), TINY)


def test_truncated_file(tmp_path, tiny_state):
    path, _ = tiny_state
    data = path.read_bytes()
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TriforceError, match="not a readable safetensors file"):
        load_state(cut, TINY)


def test_missing_checkpoint_dir(tmp_path):
    with pytest.raises(TriforceError, match="no model.safetensors"):
        Policy.load(str(tmp_path), "pi05_tiny", plan="ref", device="cpu")


def test_synthetic_for_another_config_is_refused():
    with pytest.raises(TriforceError, match="is for config 'pi05_libero'"):
        Policy.load("synthetic:pi05_libero", "pi05_tiny", plan="ref", device="cpu")


@pytest.fixture(scope="module")
def tiny_policy():
    return Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="ref", device="cpu")


def test_reference_inference_shape_and_determinism(tiny_policy):
    rng = np.random.default_rng(3)
    obs, noise = random_observation(TINY, rng, 2, 6), random_noise(TINY, rng)
    a, b = tiny_policy.infer(obs, noise), tiny_policy.infer(obs, noise)
    assert a.shape == (TINY.action_horizon, TINY.action_dim) and a.dtype == np.float32
    assert np.isfinite(a).all() and np.array_equal(a, b)
    assert not np.allclose(a, noise)           # the model did something
    assert tiny_policy.synthetic


def test_masked_padding_and_masked_view_do_not_change_actions(tiny_policy):
    """What the engine relies on to drop them: padding tokens and a masked view are never attended."""
    rng = np.random.default_rng(4)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    base = tiny_policy.infer(obs, noise)
    obs.tokens[5:] = rng.integers(0, TINY.vocab_size, TINY.max_token_len - 5)
    obs.images[TINY.image_slots[2]] = rng.uniform(-1, 1, (224, 224, 3)).astype(np.float32)
    obs.image_masks[TINY.image_slots[2]] = False
    np.testing.assert_allclose(tiny_policy.infer(obs, noise), base, rtol=1e-4, atol=1e-4)


def _obs(**over):
    rng = np.random.default_rng(0)
    obs = random_observation(TINY, rng, 2, 4)
    for k, v in over.items():
        setattr(obs, k, v)
    return obs


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o.images.update(base_0_rgb=np.zeros((100, 100, 3), np.float32)), "has shape"),
    (lambda o: o.images.update(base_0_rgb=np.zeros((224, 224, 3), np.uint8)), "expected float"),
    (lambda o: o.images["base_0_rgb"].__setitem__((0, 0, 0), np.nan), "NaN"),
    (lambda o: o.images["base_0_rgb"].__setitem__((0, 0, 0), 3.0), r"expected \[-1, 1\]"),
    (lambda o: o.images.update(top_rgb=np.zeros((224, 224, 3), np.float32)), "unknown image slot"),
    (lambda o: setattr(o, "tokens", np.ones(TINY.max_token_len + 1, np.int64)) or setattr(o, "token_mask", np.ones(TINY.max_token_len + 1, bool)), "longer than max_token_len"),
    (lambda o: o.tokens.__setitem__(0, TINY.vocab_size), "out of vocabulary"),
    (lambda o: o.token_mask.__setitem__(slice(None), False), "prompt is empty"),
])
def test_bad_observations(tiny_policy, mutate, message):
    obs = _obs()
    mutate(obs)
    with pytest.raises(TriforceError, match=message):
        tiny_policy.infer(obs)


def test_bad_noise(tiny_policy):
    with pytest.raises(TriforceError, match="noise has shape"):
        tiny_policy.infer(_obs(), noise=np.zeros((2, 2), np.float32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("plan", ["a", "b"])
def test_engines_refuse_without_cuda(plan):
    with pytest.raises(UnsupportedError, match="needs a CUDA GPU"):
        Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan=plan, recipe="h100")


def _invoke(*args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_invoke_infer_on_cpu():
    r = _invoke("infer", "--checkpoint", "synthetic:pi05_tiny", "--config", "pi05_tiny", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"actions ({TINY.action_horizon}, {TINY.action_dim}) (finite)" in r.stdout and "plan ref" in r.stdout


def test_invoke_infer_engine_on_cpu_is_one_line_error():
    r = _invoke("infer", "--plan", "a", "--device", "cpu")
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: plan a")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU paths")
def test_invoke_bench_and_plan_a_validation_without_gpu(tmp_path):
    r = _invoke("bench", "--runs", "10")
    assert r.returncode == 3 and r.stderr.startswith("error: --runs 10: benchmarks time at least 50 runs")
    r = _invoke("bench")
    assert r.returncode == 3 and "needs a GPU" in r.stderr
    r = _invoke("validate", "--plan", "a", "--local", "--report-dir", str(tmp_path))
    assert r.returncode == 4, r.stdout + r.stderr
    assert json.loads((tmp_path / "plan_a.json").read_text())["status"] == "no_gpu"
    r = _invoke("validate", "--plan", "a", "--local", "--recipe", "h100")
    assert r.returncode == 1 and "--recipe applies to plan b" in r.stderr


def test_step0_overlap_setting_refuses_an_unknown_priority_and_changes_nothing():
    from types import SimpleNamespace

    from triforce.runtime.engine import OVERLAP_PRIORITIES, Pi05Engine

    stub = SimpleNamespace(overlap_step0=True, overlap_priority="prefix", slots={"key": 1})
    with pytest.raises(TriforceError, match="unknown overlap priority 'fastest': equal, prefix, step0"):
        Pi05Engine.set_overlap_step0(stub, False, "fastest")
    assert stub.overlap_step0 and stub.overlap_priority == "prefix" and stub.slots      # nothing changed
    Pi05Engine.set_overlap_step0(stub, False)
    assert not stub.overlap_step0 and stub.overlap_priority == "prefix" and not stub.slots   # graphs re-capture
    assert set(OVERLAP_PRIORITIES) == {"equal", "prefix", "step0"}


def _w4a16_engine(layers: dict, **attrs):
    """A stand-in engine whose W4A16 expert layers are `layers` ({name: layer}, one of each), with the engine's own
    W4A16 setters and their helpers bound to it."""
    from types import SimpleNamespace

    from triforce.runtime.engine import Pi05Engine

    stub = SimpleNamespace(w4a16_few_row_splits={}, w4a16_few_row_depth={}, w4a16_geglu_stages=0, slots={"key": 1},
                           _w4a16_layers=lambda names: [layers[n] for n in names if n in layers], **attrs)
    for method in ("_set_mma_add_into", "_refuse_absent_w4a16", "w4a16_layer_names", "set_w4a16_few_row",
                   "set_w4a16_few_row_splits", "set_w4a16_few_row_depth", "set_w4a16_geglu_stages",
                   "_default_w4a16_few_row"):
        setattr(stub, method, getattr(Pi05Engine, method).__get__(stub))
    return stub


def _w4a16_layer(kernel="mma", tk=None):
    from types import SimpleNamespace

    layer = SimpleNamespace(few_row=kernel, few_row_splits=0, few_row_depth=0, tk=tk)
    layer.use_few_row_kernel = lambda kernel: setattr(layer, "few_row", kernel)
    return layer


def test_w4a16_few_row_splits_setting_refuses_other_layers_and_bad_counts():
    """Splits along K are for the W4A16 layers added into the residual (o, down) only; a refused call changes
    nothing, an accepted one reaches every such layer and drops the captured graphs."""
    o, down = _w4a16_layer(), _w4a16_layer()
    stub = _w4a16_engine({"o": o, "down": down})
    for bad in ({"gate_up": 4}, {"down": -1}, {"down": 2.5}):
        with pytest.raises(TriforceError, match="W4A16 few-row splits .* non-negative ints for \\('o', 'down'\\)"):
            stub.set_w4a16_few_row_splits(bad)
    assert stub.slots and (o.few_row_splits, down.few_row_splits) == (0, 0)
    stub.set_w4a16_few_row_splits({"down": 24})
    assert (o.few_row_splits, down.few_row_splits) == (0, 24) and not stub.slots
    assert stub.w4a16_few_row_splits == {"down": 24}


def test_w4a16_few_row_splits_are_refused_on_the_triton_kernel_and_dropped_openly_when_it_takes_over():
    """Splits along K belong to the wheel's 'mma' kernel: asked for on layers running Triton they are refused, and
    switching split layers to Triton drops them with a log line, never keeping a setting nothing reads."""
    layers = {"o": _w4a16_layer(), "down": _w4a16_layer()}
    logged = []
    stub = _w4a16_engine(layers, log=logged.append)
    stub.set_w4a16_few_row_splits({"down": 24})
    stub.set_w4a16_few_row("triton", ("o", "down"))
    assert stub.w4a16_few_row_splits == {} and layers["down"].few_row_splits == 0
    assert logged == ["[engine] W4A16 few-row splits {'down': 24} dropped: they split the 'mma' kernel, these layers "
                      "now run 'triton'"]
    with pytest.raises(TriforceError, match="those layers run the triton few-row kernel; splits along K are the "
                                            "wheel's 'mma' kernel's"):
        stub.set_w4a16_few_row_splits({"down": 24})
    assert stub.w4a16_few_row_splits == {} and layers["down"].few_row_splits == 0
    stub.set_w4a16_few_row_splits({"down": 0})        # zero (the kernel's own count) asks nothing of the kernel


def test_w4a16_few_row_depth_is_checked_applied_and_dropped_openly_when_triton_takes_over():
    """The register-streamed form (depth) is the 'mma' kernel's, for o / down at horizons it takes: bad depths, too
    long a horizon and layers on Triton are refused and change nothing; an accepted depth reaches the layer;
    switching it to Triton drops it with a log line, beside the splits."""
    from types import SimpleNamespace

    wheel = SimpleNamespace(W4A16_STREAMED_DEPTHS=(0, 2, 4), W4A16_STREAMED_MAX_ROWS=16)
    layers = {n: _w4a16_layer(tk=wheel) for n in ("o", "down")}
    logged = []
    stub = _w4a16_engine(layers, log=logged.append, cfg=SimpleNamespace(name="pi05_base", action_horizon=50))
    with pytest.raises(TriforceError, match="takes at most 16 rows, pi05_base's action horizon is 50"):
        stub.set_w4a16_few_row_depth({"down": 2})
    assert stub.slots and stub.w4a16_few_row_depth == {}
    stub.set_w4a16_few_row_depth({"down": 0})     # the pipelined form: any horizon
    assert stub.w4a16_few_row_depth == {"down": 0}
    stub.cfg, stub.slots, stub.w4a16_few_row_depth = SimpleNamespace(name="pi05_libero", action_horizon=10), {"k": 1}, {}
    for bad in ({"gate_up": 2}, {"down": 3}, {"o": -2}):
        with pytest.raises(TriforceError, match="W4A16 few-row depth .* one of \\(0, 2, 4\\) for \\('o', 'down'\\)"):
            stub.set_w4a16_few_row_depth(bad)
    assert stub.slots and stub.w4a16_few_row_depth == {} and layers["down"].few_row_depth == 0
    stub.set_w4a16_few_row_splits({"down": 24})
    stub.set_w4a16_few_row_depth({"down": 2})
    assert (layers["o"].few_row_depth, layers["down"].few_row_depth) == (0, 2) and not stub.slots
    stub.set_w4a16_few_row("triton", ("o", "down"))
    assert stub.w4a16_few_row_depth == {} == stub.w4a16_few_row_splits and layers["down"].few_row_depth == 0
    assert logged == ["[engine] W4A16 few-row splits {'down': 24} dropped: they split the 'mma' kernel, these layers "
                      "now run 'triton'",
                      "[engine] W4A16 few-row depth {'down': 2} dropped: they set the register-streamed form of the "
                      "'mma' kernel, these layers now run 'triton'"]
    with pytest.raises(TriforceError, match="those layers run the triton few-row kernel; the register-streamed form is "
                                            "the wheel's 'mma' kernel's"):
        stub.set_w4a16_few_row_depth({"o": 4})
    assert stub.w4a16_few_row_depth == {} and layers["o"].few_row_depth == 0


def test_w4a16_settings_for_layers_the_engine_lacks_in_w4a16_are_refused_and_change_nothing():
    """On Plan A (no W4A16 expert layers) or a recipe with only some of them in W4A16, a W4A16 setting naming the
    others would be kept and read by nothing: every setter refuses it in one line that names the layers, and leaves
    the engine as it was; the engine's own default asks only for the layers it has."""
    from types import SimpleNamespace

    wheel = SimpleNamespace(W4A16_STREAMED_DEPTHS=(0, 2, 4), W4A16_STREAMED_MAX_ROWS=16,
                            W4A16_SKINNY_GEGLU_STAGES=(0, 4, 8), has_op=lambda op: True)
    plan_a = _w4a16_engine({}, cfg=SimpleNamespace(name="pi05_libero", action_horizon=10))
    refusals = ((plan_a.set_w4a16_few_row, ("mma", ("o", "down")), "kernel 'mma' for \\('o', 'down'\\): .* o, down "),
                (plan_a.set_w4a16_few_row_splits, ({"down": 0},), "splits \\{'down': 0\\}: .* down "),
                (plan_a.set_w4a16_few_row_depth, ({"o": 2},), "depth \\{'o': 2\\}: .* o "),
                (plan_a.set_w4a16_geglu_stages, (8,), "GeGLU stages 8: .* gate_up "))
    for setter, args, what in refusals:
        with pytest.raises(TriforceError, match=f"^W4A16 (few-row )?{what}layers \\(Plan A, or a recipe keeping them "
                                                f"in another precision\\); its W4A16 layers: none$"):
            setter(*args)
    assert (plan_a.slots, plan_a.w4a16_few_row_splits, plan_a.w4a16_few_row_depth, plan_a.w4a16_geglu_stages) == \
        ({"key": 1}, {}, {}, 0)
    plan_a.set_w4a16_few_row_splits({})               # asking nothing of no layer
    plan_a._default_w4a16_few_row()                   # Plan A: nothing to set, nothing logged (no log attribute)

    logged = []
    gate_up = _w4a16_layer(kernel="triton", tk=wheel)
    mlp_only = _w4a16_engine({"gate_up": gate_up}, log=logged.append)
    mlp_only._default_w4a16_few_row()                 # W4A16_FEW_ROW_SPLITS' down is not asked of a bf16 down
    assert gate_up.few_row == "mma" and mlp_only.w4a16_few_row_splits == {}
    assert logged == ["[engine] W4A16 expert gate_up few-row kernel: mma, splits along K the kernel's own"]
    with pytest.raises(TriforceError, match="its W4A16 layers: gate_up$"):
        mlp_only.set_w4a16_few_row_splits({"down": 24})
    mlp_only.set_w4a16_geglu_stages(8)
    assert mlp_only.w4a16_geglu_stages == 8 and mlp_only.w4a16_few_row_splits == {}


def test_plan_a_report_gives_the_later_steps_time_when_step0_hides_behind_the_prefix():
    from triforce.checks.plan_a import _denoise_note

    steps = [0.06] + [0.71] * 8 + [0.72]
    assert _denoise_note(steps, {"overlap_step0": True, "expert_path": "per_op"}) == \
        "0.710/step (step 0: 0.060 after the prefix ends), per_op expert layers"
    assert _denoise_note([0.75] * 10, {"overlap_step0": False, "expert_path": "per_op"}) == "0.750/step, per_op expert layers"
    chain = {"overlap_step0": False, "expert_path": "fused_epilogue", "denoise_launch": "dependent"}
    assert _denoise_note([0.55] * 10, {**chain, "chain_carveout": 100}) == \
        "0.550/step, fused_epilogue expert layers, dependent launches (carveout 100% shared)"
    assert _denoise_note([0.55] * 10, {**chain, "chain_carveout": -1}).endswith("dependent launches")
    beside = {**chain, "overlap_step0": True, "decode_attention": "cluster", "step0_attention": "triton"}
    assert _denoise_note([0.05] + [0.5] * 9, beside).endswith("dependent launches, cluster attention (triton in step 0)")
    assert _denoise_note([0.5] * 10, {**chain, "decode_attention": "triton", "step0_attention": "triton"}).endswith(
        ", triton attention")


def test_placeholder_state_has_every_expected_tensor_in_one_buffer():
    """What the engine is first built on while the checkpoint loads: every name, shape and dtype the loader
    expects, all views of one buffer the size of the largest tensor (no second copy of the weights)."""
    import math

    from triforce.runtime.checkpoint import expected_tensors, placeholder_state

    cfg = load_config("pi05_tiny")
    spec, state = expected_tensors(cfg), placeholder_state(cfg, device="cpu")
    assert set(state) == set(spec)
    for name, (shape, dtype) in spec.items():
        assert tuple(state[name].shape) == shape and str(state[name].dtype) == f"torch.{dtype}", name
    storages = {t.untyped_storage().data_ptr() for t in state.values()}
    largest = max(math.prod(t.shape) * t.element_size() for t in state.values())
    assert len(storages) == 1 and next(iter(state.values())).untyped_storage().nbytes() == largest


def test_siglip_mlp_width_padding_is_exact():
    """fc1 gains zero rows and bias, fc2 zero columns, up to a multiple of 128 (4304 -> 4352 in SigLIP): the MLP's
    output is unchanged (GELU(0) = 0); a quantized pair is left as it is."""
    import torch.nn.functional as F

    from triforce.runtime.engine import Linear, pad_mlp_width

    def linear(w, b):                   # a bf16 layer without moving weights to a GPU
        lin = object.__new__(Linear)
        lin.weight, lin.bias = w, b
        return lin

    torch.manual_seed(0)
    fc1, fc2 = linear(torch.randn(300, 64), torch.randn(300)), linear(torch.randn(64, 300), torch.randn(64))
    x = torch.randn(5, 64)
    mlp = lambda: F.linear(F.gelu(F.linear(x, fc1.weight, fc1.bias), approximate="tanh"), fc2.weight, fc2.bias)  # noqa: E731
    before = mlp()
    pad_mlp_width(fc1, fc2)
    assert fc1.weight.shape == (384, 64) and fc1.bias.shape == (384,) and fc2.weight.shape == (64, 384)
    # equal up to summation order (the padded reduction is blocked differently on CPU, by CPU: 3e-5 seen on outputs
    # of ~30 over K = 300; a non-zero pad would be off by units)
    torch.testing.assert_close(mlp(), before, rtol=1e-4, atol=1e-4)
    quantized = object()
    pad_mlp_width(quantized, fc2)       # nothing to pad into: no error, no change
    assert fc2.weight.shape == (64, 384)

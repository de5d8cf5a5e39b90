"""Plan A / Plan B engines on a real GPU (marked gpu: run on the lent H100, not in CI)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from triforce.errors import TriforceError, UnsupportedError
from triforce.runtime import fused
from triforce.runtime.config import load_config
from triforce.runtime.engine import CHAIN_CARVEOUT, PREFIX_ROPE_TOKENS
from triforce.runtime.observation import check_observation
from triforce.runtime.policy import Policy
from triforce.workload import cosine, random_noise, random_observation

pytestmark = pytest.mark.gpu
TINY = load_config("pi05_tiny")


def _load_devbuild():
    """The kernel wheel's development build (cutlass_sm110/devbuild.py), which the W4A16 layers need."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cutlass_sm110"))
    import devbuild

    devbuild.load()


@pytest.fixture(scope="module")
def policies():
    return Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="ref", device="cuda"), Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="a")


def test_engine_matches_reference_and_recaptures_new_buckets(policies, capsys):
    ref, eng = policies
    rng = np.random.default_rng(0)
    for tokens in (3, 7, 16, 3):                     # buckets 4, 8, 16, then a cached one
        obs, noise = random_observation(TINY, rng, 2, tokens), random_noise(TINY, rng)
        assert cosine(eng.infer(obs, noise), ref.infer(obs, noise)) >= 0.999
    out = capsys.readouterr().out
    assert out.count("capturing a CUDA graph") == 3 and "prompt bucket 8" in out


def test_one_view_is_its_own_graph(policies):
    ref, eng = policies
    rng = np.random.default_rng(1)
    obs, noise = random_observation(TINY, rng, 1, 4), random_noise(TINY, rng)
    assert cosine(eng.infer(obs, noise), ref.infer(obs, noise)) >= 0.999


def test_parallel_precompile_changes_nothing(policies):
    """The dry forward that compiles every Triton kernel in parallel leaves the captured inference as it was (up to
    the order of the split-K atomics, which is not deterministic)."""
    _, policy = policies
    eng = policy.backend
    rng = np.random.default_rng(3)
    obs, noise = random_observation(TINY, rng, 2, 6), random_noise(TINY, rng)
    outs = []
    try:
        for workers in (0, 4):
            eng.precompile_workers = workers
            eng.slots.clear()
            outs.append(policy.infer(obs, noise))
    finally:
        eng.slots.clear()
        eng.precompile_workers = 4
    assert cosine(outs[0], outs[1]) >= 0.99999


def test_compiling_while_loading_gives_the_plainly_built_engine(policies):
    """Policy.load builds the engine on placeholder weights, compiles, then loads the checkpoint: its actions are
    those of an engine built straight from the checkpoint (no placeholder weight survives the load)."""
    from triforce.runtime.checkpoint import load_state
    from triforce.runtime.engine import Pi05Engine

    _, policy = policies
    plain = Pi05Engine(TINY, load_state(policy.checkpoint_path, TINY, device="cuda"))
    rng = np.random.default_rng(6)
    obs, noise = check_observation(random_observation(TINY, rng, 2, 6), TINY), random_noise(TINY, rng)
    assert cosine(policy.backend.infer(obs, noise), plain.infer(obs, noise)) >= 0.99999


def test_fp8_norm_output_is_exact_e4m3():
    x = torch.randn(64, 1024, device="cuda")
    out = torch.empty(64, 1024, dtype=torch.float8_e4m3fn, device="cuda")
    want = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * 3.0).clamp(-448, 448).to(torch.float8_e4m3fn)
    fused.add_norm(x.clone(), out, quant_scale=torch.tensor([3.0], device="cuda"))
    assert (out.float() != want.float()).float().mean() < 1e-3


def test_plan_b_h100_recipe_on_tiny():
    _load_devbuild()
    ref = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="ref", device="cuda")
    b = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="b", recipe="h100", calibration=4)
    rng = np.random.default_rng(2)
    for _ in range(4):
        obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
        assert cosine(b.infer(obs, noise), ref.infer(obs, noise)) >= 0.98


def test_fp8_vision_applies_the_deferred_epilogues(policies):
    """The h100 recipe's SigLIP o / fc1 / fc2 run per-tensor FP8 and leave their per-channel weight scales and
    biases to the kernels after them (GELU, residual add): the image tokens match the bf16 engine's."""
    _load_devbuild()
    b = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="b", recipe="h100", calibration=4)
    layer = b.backend.vision_layers[0]
    assert all(layer[n].output_bias is not None and layer[n].output_channel_scale is not None
               for n in ("o", "fc1", "fc2")), "SigLIP's FP8 o / fc1 / fc2 defer their epilogue"
    assert layer["qkv"].output_channel_scale is None, "SigLIP's FP8 QKV applies its own"
    images = torch.rand(2, TINY.image_size, TINY.image_size, 3, device="cuda") * 2 - 1
    with torch.no_grad():
        want, got = policies[1].backend._vision(images), b.backend._vision(images)
    assert cosine(got.float().cpu().numpy(), want.float().cpu().numpy()) >= 0.99


def test_w4a16_few_row_kernels_give_the_same_actions():
    """Plan B's W4A16 expert o/down, then also gate/up with its GeGLU, on the wheel's warp-MMA kernel (fragment
    layout) against the Triton kernels, with dependent launches (the engine default on sm_90+): the same actions up
    to fp32 summation order."""
    _load_devbuild()
    b = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="b", recipe="h100", calibration=4)
    eng = b.backend
    rng = np.random.default_rng(4)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    eng.set_w4a16_few_row("triton")
    want = b.infer(obs, noise)
    for layers in (("o", "down"), ("gate_up",)):
        eng.set_w4a16_few_row("mma", layers)
        assert all(layer[name].few_row == "mma" for layer in eng.expert_layers for name in layers), \
            "the h100 recipe's expert layers are W4A16"
        assert cosine(b.infer(obs, noise), want) >= 0.9999
    with pytest.raises(TriforceError, match="unknown few-row W4A16 kernel"):
        eng.set_w4a16_few_row("cutlass")


def test_qkv_weight_prefetch_is_the_int4_default_and_keeps_the_actions(policies):
    """The QKV + RoPE kernel asking L2 for its weights before its chain wait changes no result: on by default for
    Plan B's int4 weights, off for Plan A's bf16 ones, and either way the same actions replay after replay."""
    from triforce.runtime.engine import QKV_PREFETCH

    _load_devbuild()
    b = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="b", recipe="h100", calibration=4)
    rng = np.random.default_rng(10)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    for policy, kind in ((b, "int4"), (policies[1], "bf16")):
        eng = policy.backend
        assert eng.qkv_weight_kind() == kind and eng.qkv_prefetch == QKV_PREFETCH[kind]
        try:
            eng.set_qkv_prefetch(False)
            want = policy.infer(obs, noise)
            eng.set_qkv_prefetch(True)
            for _ in range(3):
                assert cosine(policy.infer(obs, noise), want) >= 0.99999, kind
        finally:
            eng.set_qkv_prefetch(QKV_PREFETCH[kind])


def test_engine_streams_stay_distinct_across_the_stream_pool(policies):
    """After torch's stream pool has gone round twice, a fresh capture still puts the prefix, the denoise chain and
    the L2 lookahead on the engine's own streams, all different (a pool stream drawn per forward once put the
    lookahead into the denoise chain: capture_spread-plana-*-s21*.json), with the same actions."""
    eng = policies[1].backend
    rng = np.random.default_rng(21)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    want = policies[1].infer(obs, noise)
    for priority in (0, -1):
        for _ in range(64):
            torch.cuda.Stream(priority=priority)
    eng.slots.clear()
    assert cosine(policies[1].infer(obs, noise), want) >= 0.99999
    used = {role: eng.streams.get(role, p) for role, p in
            (("capture", 0), ("warm-up", 0), ("prefix", -1), ("denoise", 0), ("prefetch", 0))}
    assert len({s.cuda_stream for s in used.values()}) == len(used)
    assert all(s.cuda_stream != torch.cuda.default_stream().cuda_stream for s in used.values())


def test_l2_lookahead_keeps_the_actions(policies):
    """The expert's norms asking L2 for later GEMMs' weights (every schedule) change no result, Plan A's bf16
    weights and Plan B's W4A16 ones (the mma kernels' fragments), replay after replay."""
    from triforce.runtime.engine import L2_LOOKAHEAD, L2_LOOKAHEAD_DEFAULT

    _load_devbuild()
    b = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="b", recipe="h100", calibration=4)
    rng = np.random.default_rng(12)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    for policy in (policies[1], b):
        eng = policy.backend
        try:
            eng.set_l2_lookahead("off")
            want = policy.infer(obs, noise)
            for schedule in L2_LOOKAHEAD:
                eng.set_l2_lookahead(schedule)
                for _ in range(2):
                    assert cosine(policy.infer(obs, noise), want) >= 0.99999, schedule
            assert eng.slots and all(slot.lookahead for slot in eng.slots.values())   # the tables were used
        finally:
            eng.set_l2_lookahead(*L2_LOOKAHEAD_DEFAULT)


def test_scaled_mm_writes_e4m3_scaled_by_scale_a_and_saturates():
    """What Fp8Linear.write_e4m3 relies on: torch._scaled_mm with an E4M3 output stores
    e4m3(scale_a * scale_b * (a b^T)) (the output scale folded into scale_a), and a product beyond 448 saturates to
    +-448 instead of NaN."""
    from triforce.quant import formats as fm

    torch.manual_seed(0)
    a = (torch.randn(64, 256, device="cuda") * 2).to(torch.float8_e4m3fn)
    b = (torch.randn(128, 256, device="cuda") * 2).to(torch.float8_e4m3fn)
    one = torch.ones((), device="cuda")
    exact = a.float() @ b.float().T
    for scale in (400 / float(exact.abs().max()), 2000 / float(exact.abs().max())):   # fits; overflows
        got = torch._scaled_mm(a, b.t(), scale_a=torch.tensor(scale, device="cuda"), scale_b=one,
                               out_dtype=torch.float8_e4m3fn).float()
        want = fm.e4m3_saturate(exact * scale).float()
        assert torch.isfinite(got).all() and float(got.abs().max()) <= 448
        steps = (got - want).abs() > want.abs() / 8 + 2 ** -8        # within one E4M3 step (fp32 summation order)
        assert int(steps.sum()) == 0, scale
        if scale * float(exact.abs().max()) > 448:
            assert int((got.abs() == 448).sum()) >= 1


def test_prefix_rope_tokens_a_program_keep_the_actions(policies):
    """The prefix's RoPE + K/V cache write with several tokens a program gives the actions of one token a program,
    up to fp32 rounding (the compiler may contract x1 cos - x2 sin into an FMA in one launch shape and not in
    another: the first GPU run of this test saw 1 and 8 tokens differ in the last bits)."""
    policy = policies[1]
    eng = policy.backend
    rng = np.random.default_rng(13)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    want = policy.infer(obs, noise)
    try:
        for tokens in fused.ROPE_TOKENS:
            eng.set_prefix_rope_tokens(tokens)
            got = policy.infer(obs, noise)
            assert cosine(got, want) >= 0.99999 and np.abs(got - want).max() <= 1e-2 * np.abs(want).max(), tokens
    finally:
        eng.set_prefix_rope_tokens(PREFIX_ROPE_TOKENS)


def test_e4m3_gemm_outputs_keep_the_actions():
    """Plan B's prefix gate/up and SigLIP fc1 writing E4M3 under their calibrated output scales (the default where
    the checkpoint has them) against the same layers writing bf16: the same actions within E4M3 rounding; either
    stage alone; a stage without such layers (Plan A) is refused."""
    _load_devbuild()
    b = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="b", recipe="h100", calibration=4)
    eng = b.backend
    assert eng.launch_settings()["e4m3_outputs"] == ("vision", "prefix")
    assert eng.prefix_layers[0]["gate_up"](torch.zeros(16, TINY.prefix.width, dtype=torch.float8_e4m3fn, device="cuda")).dtype \
        == torch.float8_e4m3fn
    rng = np.random.default_rng(12)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    default = b.infer(obs, noise)
    try:
        for stages in ((), ("prefix",), ("vision",)):
            eng.set_e4m3_outputs(stages)
            assert eng.launch_settings()["e4m3_outputs"] == stages
            assert cosine(b.infer(obs, noise), default) >= 0.999, stages
    finally:
        eng.set_e4m3_outputs(("vision", "prefix"))
    assert cosine(b.infer(obs, noise), default) >= 0.99999
    a = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="a").backend
    with pytest.raises(TriforceError, match="E4M3 GEMM outputs in prefix: no FP8 layer there"):
        a.set_e4m3_outputs(("prefix",))


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] in (10, 11), reason="Blackwell runs NVFP4")
def test_nvfp4_refused_on_this_gpu():
    with pytest.raises(UnsupportedError, match="NVFP4 needs Blackwell.*this GPU is"):
        Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="b", recipe="thor")


def test_expert_paths_give_the_same_actions(policies):
    """Every expert path (the default fused_epilogue, per_op, the opt-in persistent layer) gives the same actions."""
    _, policy = policies
    eng = policy.backend
    assert eng.expert_path == "fused_epilogue"
    rng = np.random.default_rng(4)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    actions = {}
    try:
        for path in ("fused_epilogue", "per_op", "persistent"):
            eng.set_expert_path(path)
            actions[path] = policy.infer(obs, noise)
    finally:
        eng.set_expert_path("fused_epilogue")
    for path in ("per_op", "persistent"):
        assert cosine(actions["fused_epilogue"], actions[path]) >= 0.9999, path


def test_tail_blocks_give_the_same_actions(policies):
    """The denoise step's euler_tail on 1, 4 and 8 programs a row gives the same actions (each program repeats the
    row's norm and action_out; only block 0 writes the new x_t), and the input noise is never written."""
    _, policy = policies
    eng = policy.backend
    rng = np.random.default_rng(9)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    kept = noise.copy()
    actions = {}
    try:
        for blocks in (1, 4, 8):
            eng.set_tail_blocks(blocks)
            actions[blocks] = policy.infer(obs, noise)
            [slot] = eng.slots.values()                    # the one graph captured since the setting changed
            assert np.array_equal(slot.noise.cpu().numpy(), kept)
    finally:
        eng.set_tail_blocks(fused.TAIL_BLOCKS)
    for blocks in (4, 8):
        np.testing.assert_allclose(actions[blocks], actions[1], rtol=1e-5, atol=1e-5)


def test_step0_beside_the_prefix_gives_the_serial_actions(policies):
    """Denoise step 0 on its own stream, waiting per layer for the prefix's K/V, gives the serial engine's actions,
    replay after replay and whichever stream goes first (a missing wait would read K/V not written yet)."""
    from triforce.runtime.engine import OVERLAP_PRIORITIES

    _, policy = policies
    eng = policy.backend
    rng = np.random.default_rng(5)
    obs, noise = random_observation(TINY, rng, 2, 6), random_noise(TINY, rng)
    assert eng.overlap_step0
    try:
        eng.set_overlap_step0(False)
        serial = policy.infer(obs, noise)
        for priority in OVERLAP_PRIORITIES:
            eng.set_overlap_step0(True, priority)
            for _ in range(3):
                assert cosine(policy.infer(obs, noise), serial) >= 0.99999, priority
    finally:
        eng.set_overlap_step0(True)


def test_dependent_launches_give_the_plain_actions(policies):
    """The denoise chain under programmatic dependent launch (the default on this GPU: each kernel waits on the GPU
    for the one before it) gives the plain launches' actions replay after replay, with step 0 beside the prefix or
    after it (a kernel reading before its wait would read the previous kernel's inputs)."""
    _, policy = policies
    eng = policy.backend
    assert eng.denoise_launch == "dependent"
    rng = np.random.default_rng(6)
    obs, noise = random_observation(TINY, rng, 2, 6), random_noise(TINY, rng)
    try:
        eng.set_denoise_launch("plain")
        plain = policy.infer(obs, noise)
        eng.set_denoise_launch("dependent")
        for overlap in (True, False):
            eng.set_overlap_step0(overlap)
            for _ in range(3):
                assert cosine(policy.infer(obs, noise), plain) >= 0.99999, overlap
    finally:
        eng.set_denoise_launch("dependent")
        eng.set_overlap_step0(True)


def test_one_carveout_keeps_the_actions(policies):
    """set_carveout gives the dependent-launch chain's compiled kernels one L1 / shared-memory split (and back to the
    driver's choice); the actions do not change, a bad percent is refused."""
    _, policy = policies
    eng = policy.backend
    rng = np.random.default_rng(8)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    want = policy.infer(obs, noise)
    assert eng.carveout == CHAIN_CARVEOUT
    for percent in (50, fused.CARVEOUT_DEFAULT):
        eng.set_carveout(percent)
        assert cosine(policy.infer(obs, noise), want) >= 0.99999
    assert fused.set_chain_carveout(fused.CARVEOUT_DEFAULT) >= 5, "the denoise chain's compiled Triton kernels"
    with pytest.raises(TriforceError, match="carveout"):
        eng.set_carveout(101)
    eng.set_carveout(CHAIN_CARVEOUT)


def test_cluster_attention_gives_the_triton_actions():
    """The denoise step's attention on the wheel's one-launch cluster kernel (the default where the wheel has it)
    against the Triton partials + combine, with dependent launches and step 0 beside the prefix (the defaults)."""
    _load_devbuild()
    policy = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan="a")
    eng = policy.backend
    assert eng.decode_attention == "cluster"
    rng = np.random.default_rng(12)
    for tokens in (5, 16):
        obs, noise = random_observation(TINY, rng, 2, tokens), random_noise(TINY, rng)
        eng.set_decode_attention("triton")
        want = policy.infer(obs, noise)
        for beside_prefix in ("triton", "cluster"):
            eng.set_decode_attention("cluster", beside_prefix=beside_prefix)
            assert cosine(policy.infer(obs, noise), want) >= 0.9999
    with pytest.raises(TriforceError, match="unknown denoise attention"):
        eng.set_decode_attention("flash")


def test_gemm_tuning_and_fast_accum_keep_the_actions():
    """Tuned cuBLASLt algorithms (the default where the wheel has lt_matmul) give torch's actions, in Plan A and in
    Plan B with E4M3 outputs; FP8 fast accumulation stays close; stages without such GEMMs are refused."""
    _load_devbuild()
    rng = np.random.default_rng(21)
    obs, noise = random_observation(TINY, rng, 2, 5), random_noise(TINY, rng)
    for plan in ("a", "b"):
        policy = Policy.load("synthetic:pi05_tiny", "pi05_tiny", plan=plan,
                             **({"recipe": "h100", "calibration": 4} if plan == "b" else {}))
        eng = policy.backend
        assert eng.launch_settings()["gemm_tuning"] == ("vision", "prefix")
        # fast accumulation by default only where the recipe (h100: vision and prefix) declares it
        assert eng.launch_settings()["fp8_fast_accum"] == (("vision", "prefix") if plan == "b" else ())
        tuned = policy.infer(obs, noise)
        table = eng.gemm_tuning_table()
        assert table and all(row["us"] is None or row["us"] <= row["torch_us"] for row in table)
        eng.set_gemm_tuning(())
        assert cosine(policy.infer(obs, noise), tuned) >= 0.99999, plan
        eng.set_gemm_tuning(("vision", "prefix"))
        if plan == "a":
            with pytest.raises(TriforceError, match="FP8 fast accumulation in prefix: no FP8 GEMM there"):
                eng.set_fp8_fast_accum(("prefix",))
        else:
            eng.set_fp8_fast_accum(("vision", "prefix"))
            assert eng.launch_settings()["fp8_fast_accum"] == ("vision", "prefix")
            assert cosine(policy.infer(obs, noise), tuned) >= 0.999
            eng.set_fp8_fast_accum(())
        with pytest.raises(TriforceError, match="GEMM tuning in expert: only vision and prefix"):
            eng.set_gemm_tuning(("expert",))

"""How the denoise chain launches (engine.DENOISE_LAUNCHES, fused.dependent_launches), on CPU: what each mode makes the
kernels' launch keywords, which steps it covers, and what it refuses."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from triforce.errors import TriforceError, UnsupportedError
from triforce.runtime import fused
from triforce.runtime.engine import DENOISE_LAUNCHES, L2_LOOKAHEAD_DEFAULT, EngineStreams, Pi05Engine

PLAIN = {"PDL": False, "launch_pdl": False}


def test_dependent_launches_set_the_chain_keywords_and_restore_them_on_error():
    assert fused._dependent() == PLAIN
    with pytest.raises(RuntimeError, match="inside"):
        with fused.dependent_launches():
            assert fused._dependent() == {"PDL": True, "launch_pdl": True}
            raise RuntimeError("inside")
    assert fused._dependent() == PLAIN


def test_step0_beside_the_prefix_launches_plain_and_the_later_steps_dependently():
    stub = SimpleNamespace(denoise_launch="dependent", overlap_step0=True)
    with Pi05Engine._launches(stub, 0):
        assert fused._dependent() == PLAIN
    with Pi05Engine._launches(stub, 1):
        assert fused._dependent()["PDL"]
    stub.overlap_step0 = False                  # step 0 after the prefix: nothing to share the SMs with
    with Pi05Engine._launches(stub, 0):
        assert fused._dependent()["PDL"]
    stub.denoise_launch = "plain"
    assert isinstance(Pi05Engine._launches(stub, 5), contextlib.nullcontext)


def test_dependent_launch_is_refused_without_pdl_naming_the_gpu(monkeypatch):
    stub = SimpleNamespace(denoise_launch="plain", slots={"graph": 1})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA GeForce RTX 3090")
    with pytest.raises(TriforceError, match=r"denoise launch 'dependent' needs programmatic dependent launch "
                                            r"\(compute capability >= 9.0\); NVIDIA GeForce RTX 3090 is 8.6"):
        Pi05Engine.set_denoise_launch(stub, "dependent")
    with pytest.raises(TriforceError, match="unknown denoise launch 'fast': plain, dependent"):
        Pi05Engine.set_denoise_launch(stub, "fast")
    assert stub.denoise_launch == "plain" and stub.slots          # nothing changed
    Pi05Engine.set_denoise_launch(stub, "plain")
    assert not stub.slots                                         # graphs re-capture
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (11, 0))   # Thor
    Pi05Engine.set_denoise_launch(stub, "dependent")
    assert stub.denoise_launch == "dependent" and set(DENOISE_LAUNCHES) == {"plain", "dependent"}


def test_a_carveout_the_wheel_cannot_apply_is_refused(monkeypatch):
    """The few-row mma kernels of a wheel without set_chain_carveout would keep the driver's split silently:
    the capture refuses instead, naming the op and the way out."""
    from triforce.runtime import engine

    applied = []
    monkeypatch.setattr(fused, "set_chain_carveout", applied.append)
    old_wheel = SimpleNamespace(has_op=lambda op: op != "set_chain_carveout")
    monkeypatch.setattr(engine, "kernel_wheel", lambda: old_wheel)
    layer = SimpleNamespace(use_few_row_kernel=None, few_row="mma", tk=old_wheel)
    stub = SimpleNamespace(carveout=100, _carveout_pushed=False, decode_attention="triton", step0_attention="triton",
                           expert_layers=[{"qkv": object(), "o": layer, "gate_up": object(), "down": layer}])
    stub._w4a16_layers = lambda names: Pi05Engine._w4a16_layers(stub, names)
    with pytest.raises(UnsupportedError, match="no set_chain_carveout.*set_carveout\\(-1\\)"):
        Pi05Engine._apply_carveout(stub)
    assert applied == [100]
    layer.few_row = "triton"                      # no mma kernel in use: nothing to ask the wheel
    Pi05Engine._apply_carveout(stub)
    assert applied == [100, 100]


def test_cluster_attention_is_refused_naming_why_and_its_carveout_reaches_the_wheel(monkeypatch):
    """'cluster' needs the wheel's op and a head dim it takes; asked for where it cannot run, it raises naming why
    (the default then is 'triton', logged). Where it runs, the capture gives the wheel the chain's carveout even
    with no few-row mma layer (Plan A)."""
    from triforce.runtime import engine

    cfg = SimpleNamespace(name="pi05_tiny", expert=SimpleNamespace(dim_head=64))
    stub = SimpleNamespace(cfg=cfg, slots={"graph": 1}, decode_attention="triton")
    stub._cluster_attention_refusal = lambda: Pi05Engine._cluster_attention_refusal(stub)
    monkeypatch.setattr(engine, "kernel_wheel", lambda: None)
    with pytest.raises(UnsupportedError, match="denoise attention 'cluster' cannot run: no triforce_kernels wheel"):
        Pi05Engine.set_decode_attention(stub, "cluster")
    with pytest.raises(TriforceError, match="unknown denoise attention 'flash': triton, cluster"):
        Pi05Engine.set_decode_attention(stub, "flash")
    assert stub.decode_attention == "triton" and stub.slots                 # nothing changed
    pushed = []
    wheel = SimpleNamespace(has_op=lambda op: op != "mqa_cluster_attention", MQA_CLUSTER_HEAD_DIMS=(64, 128, 256),
                            UnsupportedError=UnsupportedError, set_chain_carveout=pushed.append)
    monkeypatch.setattr(engine, "kernel_wheel", lambda: wheel)
    with pytest.raises(UnsupportedError, match="has no mqa_cluster_attention"):
        Pi05Engine.set_decode_attention(stub, "cluster")
    wheel.has_op = lambda op: True
    cfg.expert.dim_head = 96
    with pytest.raises(UnsupportedError, match=r"head dims \(64, 128, 256\); pi05_tiny has 96"):
        Pi05Engine.set_decode_attention(stub, "cluster")
    cfg.expert.dim_head = 64
    Pi05Engine.set_decode_attention(stub, "cluster")
    assert stub.decode_attention == "cluster" and not stub.slots            # graphs re-capture
    stub.overlap_step0 = True                     # step 0 beside the prefix keeps Triton's kernels unless asked
    assert [Pi05Engine._attention_kernel(stub, step) for step in (0, 1)] == ["triton", "cluster"]
    Pi05Engine.set_decode_attention(stub, "cluster", beside_prefix="cluster")
    assert Pi05Engine._attention_kernel(stub, 0) == "cluster"
    stub.overlap_step0, stub.step0_attention = False, "triton"
    assert Pi05Engine._attention_kernel(stub, 0) == "cluster"               # step 0 after the prefix: the chain's
    monkeypatch.setattr(fused, "set_chain_carveout", lambda percent: None)
    stub.carveout, stub._carveout_pushed, stub.expert_layers = 100, False, []
    stub._w4a16_layers = lambda names: []
    Pi05Engine._apply_carveout(stub)
    assert pushed == [100]


def test_geglu_pipeline_depth_is_checked_against_the_wheel_and_kept_out_of_step0_beside_the_prefix():
    wheel = SimpleNamespace(W4A16_SKINNY_GEGLU_STAGES=(0, 4, 8))
    gate_ups = [SimpleNamespace(tk=wheel) for _ in range(3)]
    stub = SimpleNamespace(slots={"graph": 1}, w4a16_geglu_stages=0, overlap_step0=True,
                           _w4a16_layers=lambda names: gate_ups if names == ("gate_up",) else [])
    stub._refuse_absent_w4a16 = lambda what, names: Pi05Engine._refuse_absent_w4a16(stub, what, names)
    with pytest.raises(TriforceError, match=r"W4A16 GeGLU stages 6: one of \(0, 4, 8\) expected"):
        Pi05Engine.set_w4a16_geglu_stages(stub, 6)
    assert stub.w4a16_geglu_stages == 0 and stub.slots                          # nothing changed
    Pi05Engine.set_w4a16_geglu_stages(stub, 8)
    assert stub.w4a16_geglu_stages == 8 and not stub.slots                      # graphs re-capture
    assert [Pi05Engine._geglu_stages(stub, step) for step in (0, 1, 9)] == [0, 8, 8]
    stub.overlap_step0 = False                                                  # step 0 after the prefix
    assert Pi05Engine._geglu_stages(stub, 0) == 8


def test_few_row_attention_refuses_an_fp8_output():
    q, k = torch.zeros(80, 256, dtype=torch.bfloat16), torch.zeros(538, 256, dtype=torch.bfloat16)
    with pytest.raises(TriforceError, match="few-row attention kernels write bf16"):
        Pi05Engine._attend(q, k, k, torch.zeros(538, dtype=torch.bfloat16), quant_scale=torch.ones(1))


def test_engine_variants_refuses_recipes_without_plan_b():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "bench/engine_variants.py", "--plan", "a", "--recipes", "h100_fast,h100"],
                       cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--recipes compares Plan B recipes (use --plan b)" in r.stderr
    for only in ("99", "x"):
        r = subprocess.run([sys.executable, "bench/engine_variants.py", "--plan", "b", "--only", only], cwd=repo,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and f"--only {only} / --plan b: the plan's variants are 0.." in r.stderr


def test_engine_variants_asks_the_w4a16_defaults_only_of_the_engines_w4a16_layers():
    """bench/engine_variants.py runs every variant on Plan A too: the W4A16 defaults reach only the layers the engine
    has in W4A16 (none there: nothing asked), while a variant's own W4A16 settings reach the engine whole, for its
    setters to refuse where it lacks the layers."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "engine_variants.py"
    spec = importlib.util.spec_from_file_location("engine_variants", path)
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)

    def engine(names):
        calls = []
        stub = SimpleNamespace(w4a16_layer_names=lambda: names, calls=calls)
        for setter in ("set_w4a16_few_row", "set_w4a16_geglu_stages", "set_w4a16_few_row_splits",
                       "set_w4a16_few_row_depth"):
            setattr(stub, setter, lambda *a, setter=setter, **k: calls.append((setter, a, k)))
        return stub

    defaults = variants.ENGINE_DEFAULTS
    plan_a = engine(())
    variants.apply_w4a16(plan_a, defaults)
    assert plan_a.calls == [("set_w4a16_few_row_splits", ({},), {}), ("set_w4a16_few_row_depth", ({},), {})]
    mlp_only = engine(("gate_up",))
    variants.apply_w4a16(mlp_only, defaults)
    assert [c[0] for c in mlp_only.calls] == ["set_w4a16_few_row", "set_w4a16_geglu_stages",
                                              "set_w4a16_few_row_splits", "set_w4a16_few_row_depth"]
    assert mlp_only.calls[0][2] == {"layers": ("gate_up",)} and mlp_only.calls[2][1] == ({},)
    asked = engine(())
    variants.apply_w4a16(asked, {**defaults, "w4a16_few_row_depth": {"down": 2}})
    assert [c[2].get("layers") for c in asked.calls[:3]] == [("o",), ("down",), ("gate_up",)]
    assert asked.calls[-2:] == [("set_w4a16_few_row_splits", (defaults["w4a16_few_row_splits"],), {}),
                                ("set_w4a16_few_row_depth", ({"down": 2},), {})]


def test_qkv_prefetch_default_follows_the_qkv_weight_kind():
    """The QKV + RoPE kernel's L2 prefetch defaults by weight kind (engine.QKV_PREFETCH): int4 weights come with
    scales in the kernel's weight arguments, bf16 ones without (or none, with a bias)."""
    from triforce.runtime.engine import QKV_PREFETCH

    for weights, kind in (({"w": 1, "scales": 2}, "int4"), ({"w": 1}, "bf16"), (None, "bf16")):
        stub = SimpleNamespace(expert_layers=[{"qkv": SimpleNamespace(few_row_weights=weights)}])
        assert Pi05Engine.qkv_weight_kind(stub) == kind
    assert set(QKV_PREFETCH) == {"int4", "bf16"}
    stub = SimpleNamespace(qkv_prefetch=True, slots={"graph": 1})
    Pi05Engine.set_qkv_prefetch(stub, False)
    assert stub.qkv_prefetch is False and not stub.slots                        # graphs re-capture


def test_tail_blocks_must_divide_the_expert_width():
    stub = SimpleNamespace(cfg=SimpleNamespace(expert=SimpleNamespace(width=1024)), tail_blocks=1, slots={"graph": 1})
    for bad in (0, 3, 2048):
        with pytest.raises(TriforceError, match=f"euler tail blocks {bad}: a divisor of the expert width 1024"):
            Pi05Engine.set_tail_blocks(stub, bad)
    assert stub.tail_blocks == 1 and stub.slots == {"graph": 1}                # nothing changed
    Pi05Engine.set_tail_blocks(stub, 8)
    assert stub.tail_blocks == 8 and not stub.slots                            # graphs re-capture


def test_e4m3_outputs_are_set_per_stage_and_refused_without_scales():
    """set_e4m3_outputs: the named stages' output-scaled layers write E4M3, the others bf16; the default is every
    stage that has them; a stage without them is refused and changes nothing."""
    class Layer:
        def __init__(self, scaled):
            self.output_scale, self.e4m3 = (1.0 if scaled else None), None

        def write_e4m3(self, on):
            self.e4m3 = on

    stub = SimpleNamespace(vision_layers=[{"fc1": Layer(True)}, {"fc1": Layer(True)}],
                           prefix_layers=[{"gate_up": Layer(True)}, {"gate_up": Layer(False)}], expert_layers=[],
                           slots={"graph": 1})
    stub.e4m3_output_layers = lambda: Pi05Engine.e4m3_output_layers(stub)
    assert {k: len(v) for k, v in stub.e4m3_output_layers().items()} == {"vision": 2, "prefix": 1}
    Pi05Engine.set_e4m3_outputs(stub, ("prefix",))
    assert stub.e4m3_outputs == ("prefix",) and not stub.slots
    assert [l["fc1"].e4m3 for l in stub.vision_layers] == [False, False]
    assert [l["gate_up"].e4m3 for l in stub.prefix_layers] == [True, None]      # the unscaled layer is left alone
    stub.vision_layers = [{"fc1": Layer(False)}]
    with pytest.raises(TriforceError, match="E4M3 GEMM outputs in vision: no FP8 layer there has a calibrated"):
        Pi05Engine.set_e4m3_outputs(stub, ("vision", "prefix"))
    assert stub.e4m3_outputs == ("prefix",)


def test_prefix_rope_tokens_are_checked():
    stub = SimpleNamespace(prefix_rope_tokens=1, slots={"graph": 1})
    Pi05Engine.set_prefix_rope_tokens(stub, 8)
    assert stub.prefix_rope_tokens == 8 and not stub.slots
    with pytest.raises(TriforceError, match=r"prefix RoPE tokens a program 3: one of \(1, 2, 4, 8\) expected"):
        Pi05Engine.set_prefix_rope_tokens(stub, 3)
    assert stub.prefix_rope_tokens == 8


def test_reports_record_the_engine_launch_settings():
    """Both validation reports take the engine's settings from launch_settings(); the Plan A note reads them."""
    from triforce.checks.plan_a import _denoise_note

    stub = SimpleNamespace(expert_path="fused_epilogue", overlap_step0=True, denoise_launch="dependent", carveout=100,
                           decode_attention="cluster", step0_attention="triton", w4a16_geglu_stages=8,
                           w4a16_few_row_splits={"down": 24}, w4a16_few_row_depth=2, qkv_prefetch=True,
                           tail_blocks=4, e4m3_outputs=("prefix",), prefix_rope_tokens=4, gemm_tuning=("vision", "prefix"),
                           fp8_fast_accum=(), l2_lookahead=("mlp", 32))
    settings = Pi05Engine.launch_settings(stub)
    assert settings == {"expert_path": "fused_epilogue", "overlap_step0": True, "denoise_launch": "dependent",
                        "chain_carveout": 100, "decode_attention": "cluster", "step0_attention": "triton",
                        "w4a16_geglu_stages": 8, "w4a16_few_row_splits": {"down": 24}, "w4a16_few_row_depth": 2,
                        "qkv_prefetch": True,
                        "tail_blocks": 4, "e4m3_outputs": ("prefix",),
                        "prefix_rope_tokens": 4, "gemm_tuning": ("vision", "prefix"), "fp8_fast_accum": (),
                        "l2_lookahead": ["mlp", 32]}
    assert _denoise_note([0.05] + [0.5] * 9, settings) == (
        "0.500/step (step 0: 0.050 after the prefix ends), fused_epilogue expert layers, dependent launches "
        "(carveout 100% shared), cluster attention (triton in step 0)")


def _rows(lookahead):
    """The (address, bytes) rows of an L2Lookahead table that ask for something."""
    return [tuple(r) for r in lookahead.table.tolist() if r[1]]


def test_l2_lookahead_table_covers_every_byte_once_in_aligned_chunks():
    """The table cuts the tensors' bytes into 16-byte-aligned chunks of at most L2_PREFETCH_MAX_CHUNK, at most one a
    thread of the launch, in order, with (0, 0) rows after; a tensor's bytes not in whole 16-byte units at its ends
    are left out."""
    tensors = [torch.zeros(1000, 24, dtype=torch.bfloat16), torch.zeros(4096, dtype=torch.uint8),
               torch.zeros(3, dtype=torch.float32)]
    la = fused.L2Lookahead(tensors, programs=2)
    rows = _rows(la)
    assert la.table.shape == (64, 2) and len(rows) <= 64 and la.table[len(rows):].abs().sum() == 0
    assert fused.L2_PREFETCH_THREADS == 32 and la.programs == 2
    assert all(a % 16 == 0 and 0 < n <= la.chunk <= fused.L2_PREFETCH_MAX_CHUNK and n % 16 == 0 for a, n in rows)
    for t in tensors[:2]:                               # 16-aligned allocations: every byte, once
        start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        spans = sorted((a, a + n) for a, n in rows if start <= a < end)
        assert spans[0][0] == start and spans[-1][1] == end
        assert all(x[1] == y[0] for x, y in zip(spans, spans[1:]))
    assert la.nbytes == 1000 * 24 * 2 + 4096


def test_l2_lookahead_refuses_what_it_cannot_ask_for():
    t = torch.zeros(64, 64)
    with pytest.raises(ValueError, match=r"contiguous tensors .* got \(64, 32\) torch.float32"):
        fused.L2Lookahead([t[:, ::2]], 1)
    with pytest.raises(ValueError, match="more than 40 prefetch threads expected"):
        fused.L2Lookahead([t] * 40, 1)
    with pytest.raises(ValueError, match="over 1 programs is more than 1048560 bytes a prefetch"):
        fused.L2Lookahead([torch.zeros(1 << 24)], 1)       # 64 MB over 32 threads: chunks beyond 1 MB


def test_l2_lookahead_tables_follow_the_schedule_and_stop_after_the_last_layer():
    """Each norm's table holds the chain tensors its schedule names (layers ahead wrap to the next step's first
    layer), except in the last step, where nothing after the last layer is asked for; no schedule, no tables."""
    from triforce.runtime.engine import L2_LOOKAHEAD

    class Layer:
        def __init__(self, n):
            self.chain_tensors = (torch.zeros(n, dtype=torch.uint8),)

    depth, sizes = 3, {"qkv": 1024, "o": 512, "gate_up": 4096, "down": 2048}
    layers = [{g: Layer(n + 16 * i) for g, n in sizes.items()} for i in range(depth)]
    logged = []
    stub = SimpleNamespace(expert_layers=layers, expert_path="fused_epilogue", l2_lookahead=("off", 4),
                           denoise_launch="dependent", log=logged.append)
    assert Pi05Engine._lookahead_tables(stub) == {}
    stub.l2_lookahead = ("mlp+next_attention", 4)
    tables = Pi05Engine._lookahead_tables(stub)
    assert L2_LOOKAHEAD["mlp+next_attention"] == {"norm1": ((0, "gate_up"), (0, "down")),
                                                  "norm2": ((1, "qkv"), (1, "o"))}
    asked = lambda la: sum(n for _, n in _rows(la))   # noqa: E731
    for i in range(depth):
        assert tables[i, "norm1", False].nbytes == asked(tables[i, "norm1", True]) == 4096 + 2048 + 32 * i
        assert asked(tables[i, "norm2", False]) == 1024 + 512 + 32 * ((i + 1) % depth)
        assert tables[i, "norm2", False].programs == 4
    assert tables[depth - 1, "norm2", True] is None and tables[0, "norm2", True] is not None
    assert not logged
    stub.expert_path = "per_op"                    # its kernels are not the chain's few-row kernels
    assert Pi05Engine._lookahead_tables(stub) == {}
    assert logged == ["[engine] L2 lookahead mlp+next_attention not used: the expert path is per_op (it runs beside "
                      "the fused_epilogue path's dependent launches)"]
    stub.expert_path, stub.denoise_launch = "fused_epilogue", "plain"   # said, not silently dropped
    assert Pi05Engine._lookahead_tables(stub) == {} and "the denoise chain launches plain" in logged[-1]


def test_l2_lookahead_forks_beside_the_chain_under_dependent_launches_only(monkeypatch):
    """A point's prefetch launches on the prefetch stream, after what the chain stream has queued, and only under
    dependent launches (step 0 beside the prefix launches plain); a point without a table launches nothing."""
    launched = []
    monkeypatch.setattr(fused, "l2_prefetch", lambda la: launched.append(la))

    class Stream:
        def __init__(self):
            self.waited, self.cuda_stream = [], 1

        def wait_stream(self, other):
            self.waited.append(other)

    current = object()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: current)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    prefetch = Stream()
    stub = SimpleNamespace(_lookahead={(0, "norm1", False): "table"}, _prefetch_forked=False,
                           streams=EngineStreams(lambda priority: prefetch))
    Pi05Engine._prefetch_beside(stub, (0, "norm1", False))
    assert launched == [] and not stub._prefetch_forked            # plain launches: nothing
    monkeypatch.setattr(fused._Dependent, "on", True)
    Pi05Engine._prefetch_beside(stub, (0, "norm2", False))
    assert launched == []                                          # no table at this point
    Pi05Engine._prefetch_beside(stub, (0, "norm1", False))
    assert launched == ["table"] and prefetch.waited == [current] and stub._prefetch_forked


def test_engine_streams_are_distinct_and_kept():
    """Each (role, priority) gets its own stream for the engine's life, never one another role holds, although the
    pool hands streams out round-robin (here a pool of 3 per priority); a pool with none free is an error."""
    drawn = []

    def pool(priority, size=3):
        handle = (priority, len([d for d in drawn if d[0] == priority]) % size)
        drawn.append(handle)
        return SimpleNamespace(cuda_stream=handle)

    streams = EngineStreams(pool)
    roles = [streams.get(r) for r in ("capture", "warm-up", "denoise")] + [streams.get("prefix", -1)]
    assert len({s.cuda_stream for s in roles}) == 4
    assert streams.get("denoise") is roles[2] and streams.get("prefix", -1) is roles[3]   # kept, not drawn again
    before = len(drawn)
    with pytest.raises(TriforceError, match="no CUDA stream of priority 0 free for the engine's prefetch stream "
                                            r"\(it has 4\)"):
        streams.get("prefetch")                         # the pool of 3 at priority 0 is all taken
    assert len(drawn) - before == 64
    assert streams.get("denoise", -1).cuda_stream not in {s.cuda_stream for s in roles}   # a second priority-(-1)
    with pytest.raises(TriforceError, match="unknown engine stream role 'prefetchh'; the roles are capture, warm-up"):
        streams.get("prefetchh")


def test_set_l2_lookahead_is_checked():
    stub = SimpleNamespace(l2_lookahead=("off", 32), slots={"graph": 1})
    Pi05Engine.set_l2_lookahead(stub, "mlp", 16)
    assert stub.l2_lookahead == ("mlp", 16) and not stub.slots
    Pi05Engine.set_l2_lookahead(stub, "mlp+next_attention")
    assert stub.l2_lookahead == L2_LOOKAHEAD_DEFAULT == ("mlp+next_attention", 8)
    with pytest.raises(TriforceError, match="L2 lookahead 'everything' from 8 programs: schedules off, mlp"):
        Pi05Engine.set_l2_lookahead(stub, "everything")
    with pytest.raises(TriforceError, match="1-1024 programs"):
        Pi05Engine.set_l2_lookahead(stub, "mlp", 0)
    assert stub.l2_lookahead == L2_LOOKAHEAD_DEFAULT


def test_every_layer_kind_names_what_its_chain_kernel_reads():
    """The lookahead asks for each expert layer's chain_tensors: every layer kind an expert GEMM can be has them."""
    from triforce.quant.plan_b import Fp8Linear, NvFp4Linear, W4A16Linear
    from triforce.runtime.engine import Linear

    for kind in (Linear, Fp8Linear, W4A16Linear, NvFp4Linear):
        assert isinstance(getattr(kind, "chain_tensors", None), property), kind.__name__
    w4 = object.__new__(W4A16Linear)
    w4.qweight, w4.scales, w4._fragments, w4.few_row = "q", "s", ("fq", "fs"), "triton"
    assert w4.chain_tensors == ("q", "s")
    w4.few_row = "mma"                                   # the wheel's kernel reads the prepacked fragments
    assert w4.chain_tensors == ("fq", "fs")

"""bench/mma_rate.py: the mma.sync rate probe. Its arithmetic and argument checks on CPU, its kernels compiled for
Hopper and Thor and read in SASS, and (on a GPU) its MMAs checked against their exact result."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import mma_rate  # noqa: E402

from triforce.errors import TriforceError  # noqa: E402


def test_gemm_counts_match_the_w4a16_sweep():
    # the sweep's record of the Gemma gate: 17301504 int4 bytes; 4.30 GFLOP of MMAs at M = 64 (README)
    assert mma_rate.int4_g128_bytes(16384, 2048) == 17301504
    assert mma_rate.gemm_mmas(64, 16384, 2048) * mma_rate.FLOP_PER_MMA == 2 * 64 * 16384 * 2048
    # M = 10 pads to two token tiles of 8: the MMAs of M = 16
    assert mma_rate.gemm_mmas(10, 16384, 2048) == mma_rate.gemm_mmas(16, 16384, 2048) == 1024 * 128 * 2
    assert [mma_rate.streamed_ilp(m) for m in (1, 10, 16, 32, 64)] == [2, 4, 4, 8, 16]


def test_projections_read_the_rate_of_the_streamed_shape():
    rates = {(8, 8): 300.0, (8, 16): 400.0, (32, 8): 600.0}
    rows = {r["m"]: r for r in mma_rate.projections(rates, best_tflops=600.0, copy_gbs=3000.0, ms=(16, 32, 64))}
    target = 17301504 / (0.7 * 3000e9) * 1e6
    assert all(r["target_us"] == pytest.approx(target) for r in rows.values())          # 8.24 us
    assert rows[64]["best_rate_us"] == pytest.approx(2 * 64 * 16384 * 2048 / 600e12 * 1e6)
    assert rows[32]["streamed_shape"] == [8, 8]
    assert rows[32]["streamed_rate_us"] == pytest.approx(2 * 32 * 16384 * 2048 / 300e12 * 1e6)
    assert rows[64]["streamed_rate_tflops"] == 400.0
    assert rows[16]["streamed_rate_us"] is None       # (8, 4) not timed: said so, not guessed


@pytest.mark.parametrize("warps, ilp, message", [
    ("6", "4", "multiples of 4"), ("68", "4", "up to 64"), ("0", "4", "multiples of 4"), ("8", "3", "not compiled"),
    ("8,x", "4", "comma-separated integers")])
def test_bad_points_are_refused_before_any_gpu_work(warps, ilp, message):
    with pytest.raises(TriforceError, match=message):
        mma_rate.parse_points(warps, ilp)


def test_bad_points_exit_with_one_line_and_write_nothing():
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run([sys.executable, "bench/mma_rate.py", "--warps", "6", "--out-dir", out], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        assert r.stderr.strip().splitlines() == ["mma_rate: --warps [6]: warps a SM must be multiples of 4 (a CTA's) "
                                                 "up to 64"]
        assert not list(Path(out).iterdir())


@pytest.mark.compile
@pytest.mark.parametrize("arch", ["sm_90a", "sm_110a"])
def test_every_kernel_is_warp_mma_in_registers(arch, tmp_path):
    from triforce import sass

    kernels = {k.name: k for k in sass.parse_sass(sass.dump_sass(mma_rate.compile_cubin(arch, tmp_path)))}
    assert set(kernels) == {f"mma_rate_ilp{i}" for i in mma_rate.ILPS}
    for ilp in mma_rate.ILPS:
        ops = kernels[f"mma_rate_ilp{ilp}"].opcodes
        hmma = [op for op in ops if op.startswith("HMMA.16816.F32.BF16")]
        assert hmma and len(hmma) % ilp == 0, (ilp, len(hmma))   # whole rounds of ILP MMAs, however unrolled
        assert not [op for op in ops if op.split(".")[0] in ("LDL", "STL")]   # no spills: operands stay in registers


@pytest.mark.gpu
def test_the_probe_does_the_mmas_it_counts(tmp_path):
    import torch

    probe = mma_rate.Probe(tmp_path)
    for ilp in mma_rate.ILPS:
        out = probe.run(ilp, warps_per_sm=8, iters=100, seed=0)   # all-ones operands: each MMA adds 16 an element
        torch.cuda.synchronize()
        assert out.numel() == probe.grid(8) * mma_rate.WARPS_A_CTA * 32
        assert torch.all(out == ilp * 4 * 16 * 100), ilp
    noisy = probe.run(8, warps_per_sm=8, iters=100, seed=1)
    torch.cuda.synchronize()
    assert torch.isfinite(noisy).all() and noisy.abs().max() > 0 and noisy.unique().numel() > 1


SASS_SNIPPET = """
        Function : kernel_a
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0020*/                   LOP3.LUT R2, R2, 0xf, RZ, 0xc0, !PT ;
        /*0030*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0040*/                   ISETP.NE.AND P0, PT, R2, RZ, PT ;
        /*0050*/               @P0 BRA 0x10 ;
        /*0060*/                   LDS.128 R8, [R3] ;
        /*0070*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0080*/               @P0 BRA 0x60 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0xa0;
        Function : kernel_b
        /*0000*/                   EXIT ;
"""


def test_loop_mix_takes_the_loop_with_the_most_tensor_instructions():
    import sass_loop_mix as slm

    from triforce import sass

    fns = {k.name: k.instructions for k in sass.parse_sass(SASS_SNIPPET)}
    assert set(fns) == {"kernel_a", "kernel_b"}
    body = slm.main_loop(fns["kernel_a"])     # 0x10-0x50 (two HMMAs), not 0x60-0x80 (one) nor the self-branch tail
    assert [addr for addr, _, _ in body] == [0x10, 0x20, 0x30, 0x40, 0x50]
    m = slm.mix(body)
    assert (m["instructions"], m["tensor"], m["per_tensor"]) == (5, 2, 2.5)
    assert m["opcodes"] == {"HMMA": 2, "LOP3": 1, "ISETP": 1, "BRA": 1}
    assert slm.main_loop(fns["kernel_b"]) == []
    assert slm.short_name("void ns::(anonymous namespace)::k<4, 8, 2, 2>(ns::(anonymous namespace)::Args)") == \
        "k<4, 8, 2, 2>"


@pytest.mark.compile
def test_loop_mix_of_the_probe_is_whole_rounds_of_its_mmas(tmp_path):
    import sass_loop_mix as slm

    rows = {slm.short_name(r["kernel"]): r for r in
            slm.analyse(mma_rate.compile_cubin("sm_90a", tmp_path), r"mma_rate_ilp")}
    with pytest.raises(TriforceError, match="no kernel matches 'zzz'"):
        slm.analyse(tmp_path / "mma_rate.sm_90a.cubin", "zzz")
    for ilp in mma_rate.ILPS:
        r = rows[f"mma_rate_ilp{ilp}"]
        assert r["tensor"] >= ilp and r["tensor"] % ilp == 0, (ilp, r)
        # the probe's loop is its MMAs and a counter (NOPs pad dependent MMAs at ILP 1 / 2): nothing else issues
        assert sum(n for op, n in r["opcodes"].items() if op not in ("HMMA", "NOP")) <= 4, r["opcodes"]


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/_C.so"], "sass_loop_mix: /nonexistent/_C.so: no such binary"),
    (["bench/mma_rate.cu"], "sass_loop_mix: cuobjdump -sass bench/mma_rate.cu failed"),   # source, not a binary
])
def test_loop_mix_bad_input_is_one_line_and_non_zero(args, message):
    r = subprocess.run([sys.executable, "bench/sass_loop_mix.py", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(message), r.stderr

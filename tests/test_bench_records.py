"""How bench scripts record their runs (triforce/report.py): one parser for the shared flags, one stamped record."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from triforce import report as rep


def test_record_run_stamps_the_command_and_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench/some_bench.py", "--out-dir", str(tmp_path)])
    path = rep.record_run(tmp_path, "some_bench", {"rows": [1, 2]})
    record = json.loads(path.read_text())
    assert record["command"] == f"bench/some_bench.py --out-dir {tmp_path}" and record["rows"] == [1, 2]
    assert {"date", "commit", "device"} <= record.keys()
    assert path.parent == tmp_path and path.name.startswith("some_bench-")
    assert path.name.endswith(f"-{record['date'][:10]}.json")
    assert f"recorded: {path}" in capsys.readouterr().out


def test_bench_parser_shares_out_dir_and_runs():
    assert rep.bench_parser("doc").parse_args([]).out_dir == "bench/results"
    args = rep.bench_parser("doc", runs=True).parse_args(["--runs", "70", "--out-dir", "x"])
    assert (args.runs, args.out_dir) == (70, "x")
    assert not hasattr(rep.bench_parser("doc").parse_args([]), "runs")


@pytest.mark.parametrize("script,argv,message", [
    ("graph_timeline", ["--replays", "1"], "graph_timeline: --plan a|b and --replays >= 2 expected (got a, 1)"),
    ("capture_spread", ["--plan", "c"], "capture_spread: --plan a|b and --captures >= 2 expected (got c, 8)")])
def test_one_engine_bench_scripts_refuse_a_bad_plan_or_count_before_loading(script, argv, message):
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, f"bench/{script}.py", *argv], cwd=repo, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == message, r.stderr


def test_bf16_peak_profile_refuses_a_machine_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the refusal cannot be shown here")
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "bench/bf16_peak_profile.py", "--out-dir", "/nonexistent"], cwd=repo,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == "bf16_peak_profile: needs a CUDA GPU", r.stderr
    assert not Path("/nonexistent").exists(), "nothing written"


def test_graph_timeline_cuts_layers_at_their_landmark_and_keeps_the_common_sequence():
    """Periods run from one landmark kernel to the next; the expert's (exact=False) keep the most common kernel
    sequence, so a prefetch on its own stream falling into one period does not mix into the medians."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import graph_timeline as gt

    def layer(t0, extra=False):   # (name, start, end) in us: attention 2, gemm 3 after a gap of 1, norm 1
        ks = [("attn", t0, t0 + 2), ("gemm", t0 + 3, t0 + 6), ("norm", t0 + 6.5, t0 + 7.5)]
        return ks + ([("prefetch", t0 + 4, t0 + 5)] if extra else [])
    run = sorted(layer(0) + layer(10, extra=True) + layer(20) + layer(30) + [("attn", 40, 42)], key=lambda k: k[1])
    periods = gt.layer_periods(run, ("attn",))
    assert len(periods) == 4 and [n for n, _, _ in periods[0]] == ["gemm", "norm", "attn"]
    with pytest.raises(SystemExit, match="differ"):
        gt.median_layer(periods, exact=True)
    rows, period, same = gt.median_layer(periods, exact=False)
    assert same == 3 and period == 10.0
    assert [(r["kernel"], r["median_us"], r["median_gap_before_us"]) for r in rows] == [
        ("gemm", 3.0, 1.0), ("norm", 1.0, 0.5), ("attn", 2.0, 2.5)]
    with pytest.raises(SystemExit, match="no two landmark"):
        gt.median_layer(gt.layer_periods(run, ("absent",)), exact=False)


def test_bench_summary_prints_a_recorded_run(capsys):
    """`invoke bench`'s table reads the record's keys (a renamed key once broke it after the run had finished)."""
    from pathlib import Path

    from triforce import bench

    record = Path(__file__).resolve().parent.parent / "bench/results/pi05-pi05_libero-plana-nvidia-h100-80gb-hbm3-2026-11-25-s5.json"
    bench.print_summary(json.loads(record.read_text()))
    out = capsys.readouterr().out
    assert "persistent expert layers" in out and "fused_epilogue time" in out and "28.5x" in out


def test_records_name_the_commit_and_a_tree_that_differs_from_it(tmp_path, monkeypatch):
    """git_commit (every record, image label and wheel): HEAD, '-dirty' once a tracked file (under the given paths)
    differs from it; untracked files do not count; TRIFORCE_COMMIT overrides (a lent GPU's copy may carry an older
    .git: its records then said a commit whose code had not run); 'unknown' outside git."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout

    monkeypatch.delenv("TRIFORCE_COMMIT", raising=False)
    monkeypatch.setattr(rep, "REPO_ROOT", tmp_path)
    assert rep.git_commit() == "unknown"
    git("init", "-q")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "a.cu").write_text("a")
    (tmp_path / "notes.md").write_text("n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git("rev-parse", "HEAD").strip()
    assert rep.git_commit() == head and rep.git_commit(short=True) == head[:12]
    (tmp_path / "scratch.txt").write_text("untracked")
    assert rep.git_commit() == head
    (tmp_path / "notes.md").write_text("edited")
    assert rep.git_commit() == head + "-dirty"
    assert rep.git_commit(paths=("kernels",)) == head          # the change is outside the paths asked about
    (tmp_path / "kernels" / "a.cu").write_text("b")
    assert rep.git_commit(paths=("kernels",)) == head + "-dirty"
    monkeypatch.setenv("TRIFORCE_COMMIT", "abc1234")
    assert rep.git_commit() == "abc1234"


def test_w4a16_sweep_refuses_an_unknown_kernel_before_any_timing():
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "bench/w4a16_sweep.py", "--kernels", "triton,nope"], cwd=repo,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
        "w4a16_sweep: no kernel ['nope'] here (have ["), r.stderr
    assert "recorded:" not in r.stdout

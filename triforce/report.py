"""Reports and benchmark records: device facts, git commit, JSON files, and rich tables for the terminal."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

RANDOM_WEIGHTS_NOTE = "synthetic (random) weights: no activation outliers, so quantization error is optimistic vs a real checkpoint"

REPO_ROOT = Path(__file__).resolve().parent.parent

# Exit codes every validation script uses (documented in the README).
EXIT_PASS, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_NO_GPU = 0, 1, 2, 4


def git_commit(short: bool = False, paths: tuple = ()) -> str:
    """The checkout's HEAD, '-dirty' when tracked files (under `paths`, or anywhere) differ from it, so a record
    never names a commit its code was not; TRIFORCE_COMMIT names it where the tree travelled without its own git
    (a lent GPU, whose copy may carry an older .git); 'unknown' outside git."""
    if os.environ.get("TRIFORCE_COMMIT"):
        return os.environ["TRIFORCE_COMMIT"]

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", *(["--short=12"] if short else []), "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *paths).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def device_facts() -> dict:
    """What ran it: GPU name and capability, driver/CUDA/torch versions (empty GPU fields without one)."""
    facts = {"host_platform": platform.machine(), "python": sys.version.split()[0]}
    try:
        import torch
    except ImportError:
        return {**facts, "torch": None, "gpu": None}
    facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda, gpu=None)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                     gpu_memory_gb=round(props.total_memory / 2**30, 1), driver=_driver_version())
    return facts


def _driver_version():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def write_json(path: Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def write_record(out_dir, name: str, payload: dict) -> Path:
    """A stamped benchmark record (payload carries stamp()'s fields) at <out_dir>/<name>-<gpu, or cpu>-<date>.json."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", payload["device"]["gpu"] or "cpu").strip("-").lower()
    return write_json(Path(out_dir) / f"{name}-{gpu}-{payload['date'][:10]}.json", payload)


def bench_parser(doc: str, runs: bool = False) -> argparse.ArgumentParser:
    """The flags every bench script shares: --out-dir, and --runs where it times graph replays."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--out-dir", default="bench/results", help="where the JSON record goes")
    if runs:
        ap.add_argument("--runs", type=int, default=50, help="timed replays per entry (>= 50)")
    return ap


def parse_plan_bench(doc: str, script: str, count: str, default: int, help_text: str, runs: bool = False):
    """The arguments of a bench script that times one engine: bench_parser's, --plan a|b, --recipe (Plan B's) and
    one count flag (>= 2), checked (a bad value exits naming them)."""
    ap = bench_parser(doc, runs=runs)
    ap.add_argument("--plan", default="a", help="a or b")
    ap.add_argument("--recipe", default="h100_fast", help="the Plan B recipe (with --plan b)")
    ap.add_argument(f"--{count}", type=int, default=default, help=f"{help_text} (>= 2)")
    a = ap.parse_args()
    if a.plan not in ("a", "b") or getattr(a, count) < 2:
        raise SystemExit(f"{script}: --plan a|b and --{count} >= 2 expected (got {a.plan}, {getattr(a, count)})")
    return a


def record_run(out_dir, name: str, payload: dict) -> Path:
    """A bench script's record: payload stamped with this command line (write_record), and where it went."""
    path = write_record(out_dir, name, {**stamp(" ".join(sys.argv)), **payload})
    print("recorded:", path)
    return path


def stamp(command: str) -> dict:
    """The fields every report and benchmark record carries."""
    return {"date": now_utc(), "command": command, "commit": git_commit(), "device": device_facts()}


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    Console(width=140).print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        if 0.99 < v < 1.0:                      # cosines: show how many nines
            return f"{v:.6f}"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)

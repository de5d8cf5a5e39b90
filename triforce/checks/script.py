"""The common tail of the validation scripts: run the check, stamp and write its report, print it, exit code."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import report as rep
from ..errors import TriforceError


def finish(name: str, report_dir: str, run, print_summary) -> int:
    """run() -> (report, exit code); writes <report_dir>/<name>.json. A TriforceError is bad input (exit 2)."""
    try:
        report, code = run()
    except TriforceError as err:
        print(f"error: {err}", file=sys.stderr)
        return rep.EXIT_BAD_INPUT
    report = {**rep.stamp(" ".join(sys.argv)), **report}
    path = rep.write_json(Path(report_dir) / f"{name}.json", report)
    if report.get("status") == "no_gpu":
        print(f"{name}: {report['message']} (exit {rep.EXIT_NO_GPU})")
    else:
        print_summary(report)
    print(f"report: {path}")
    return code


def add_model_args(ap, report_name: str | None = None) -> None:
    """The flags every check and benchmark script shares: where the report goes, which checkpoint and config."""
    if report_name:
        ap.add_argument("--report-dir", default="reports", help=f"where {report_name}.json is written")
    ap.add_argument("--checkpoint", default="synthetic:pi05_libero", help="checkpoint dir/file or synthetic:<config>")
    ap.add_argument("--config", default="pi05_libero", help="model config")


def bad_input(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return rep.EXIT_BAD_INPUT

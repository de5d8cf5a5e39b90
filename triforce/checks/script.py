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


def bad_input(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return rep.EXIT_BAD_INPUT

"""`invoke validate --plan 0|a|b`: run the plan's validation script in the eval container or on this host.

The plan -> script table is triforce/data/validation.toml. In the container the project lives at the image's project
dir (/opt/triforce): the script writes its report into a fresh folder there, which is copied back with get_archive.
The caller exits with the script's own exit code (0 pass, 1 a gate failed, 2 bad input, 4 no usable GPU).
"""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import container
from .container import Engine, Log
from .errors import TriforceError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTAINER_PROJECT_DIR = "/opt/triforce"   # docker/image.toml project_dir
CONTAINER_REPORT_ROOT = "/tmp/triforce-reports"


@dataclass(frozen=True)
class Outcome:
    plan: str
    where: str
    exit_code: int
    meaning: str
    reports: list[Path]


def _table() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("validation.toml").read_text())


def plan_script(plan: str) -> str:
    plans = _table()["plans"]
    if plan not in plans:
        raise TriforceError(f"unknown validation plan '{plan}': choose one of {', '.join(plans)}")
    return plans[plan]["script"]


def meaning(code: int) -> str:
    return _table()["exit_codes"].get(str(code), "undocumented exit code")


def run_local(plan: str, extra: list[str], report_dir: Path, log: Log = print) -> Outcome:
    """The script as a subprocess of this Python, output streamed straight through, reports into report_dir."""
    script = REPO_ROOT / plan_script(plan)
    if not script.is_file():
        raise TriforceError(f"plan {plan} needs {script}, which is not in this checkout: pull the latest main")
    report_dir = Path(report_dir).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    before = _snapshot(report_dir)
    argv = [sys.executable, str(script), "--report-dir", str(report_dir), *extra]
    log(f"$ {' '.join(argv)}")
    code = subprocess.run(argv, cwd=REPO_ROOT).returncode
    written = sorted(p for p, mtime in _snapshot(report_dir).items() if before.get(p) != mtime)
    return _outcome(plan, "this host", code, written)


def run_in_container(engine: Engine, name: str, plan: str, extra: list[str], report_dir: Path,
                     log: Log = print) -> Outcome:
    """The script inside the running container (exec, streamed), its report folder copied back into report_dir."""
    container.require_running(engine, name)
    script = f"{CONTAINER_PROJECT_DIR}/{plan_script(plan)}"
    code, _, _ = container.exec_capture(engine, name, ["test", "-f", script])
    if code != 0:
        raise TriforceError(f"{script} is missing in container {name} on {engine.where}: rebuild the image "
                            f"(`invoke build-image`) and recreate the container (`invoke up --replace`)")
    remote = f"{CONTAINER_REPORT_ROOT}/plan-{plan}-{time.strftime('%Y%m%dT%H%M%S')}"
    argv = ["python3", script, "--report-dir", remote, *extra]
    log(f"[{name}] $ {' '.join(argv)}")
    code = container.exec_stream(engine, name, argv, log=log, workdir=CONTAINER_PROJECT_DIR)
    written = container.get_dir(engine, name, remote, report_dir) if _exists(engine, name, remote) else []
    container.exec_capture(engine, name, ["rm", "-rf", remote])
    return _outcome(plan, f"container {name} on {engine.where}", code, written)


def _outcome(plan: str, where: str, code: int, written: list[Path]) -> Outcome:
    if code == 0 and not written:
        raise TriforceError(f"plan {plan} on {where} exited 0 but wrote no report: the script broke its contract "
                            f"(it must write <report-dir>/<name>.json)")
    return Outcome(plan, where, code, meaning(code), written)


def _exists(engine: Engine, name: str, path: str) -> bool:
    return container.exec_capture(engine, name, ["test", "-d", path])[0] == 0


def _snapshot(folder: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}

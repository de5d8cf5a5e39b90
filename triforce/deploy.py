"""Deploy kernel wheels into the eval container: check each against the container, install, verify, roll back.

For each wheel of wheels/manifest.json (or those named): the manifest record must fit the container (platform, Python
tag, torch version, arch against the image's target and against the GPU's compute capability when one is visible).
Then the wheel is copied in (put_archive), pip-installed, its record's import_check is run in a fresh interpreter, and
the installed version is read back. In the container each package's installed wheel is kept in
/opt/triforce/wheels/current/<package>/ and the one before it in .../previous/<package>/: on any failure the previous
version is reinstalled (or the package uninstalled if there was none) for every wheel of the run, and deploy fails.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from . import container
from .container import Engine, Log
from .errors import TriforceError, UnsupportedError
from .manifest import WheelRecord, read_manifest, verify_wheel
from .targets import KNOWN_ARCHS

WHEEL_HOME = "/opt/triforce/wheels"
RECORD_NAME = "record.json"
PIP_ENV = {"PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore"}

# Runs inside the container: what a wheel has to match. Stdlib only at top level; torch is optional.
_PROBE = r"""
import json, sys, sysconfig
import importlib.metadata as md
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
gpu, gpu_note = None, "torch not installed"
if version("torch"):
    try:
        import torch
        if torch.cuda.is_available():
            gpu, gpu_note = "%d.%d" % torch.cuda.get_device_capability(0), torch.cuda.get_device_name(0)
        else:
            gpu_note = "torch sees no CUDA device"
    except Exception as err:
        gpu_note = "torch failed to import: %s" % err
print(json.dumps({"platform": sysconfig.get_platform(), "python_tag": "cp%d%d" % sys.version_info[:2],
                  "torch": version("torch"), "compute_capability": gpu, "gpu_note": gpu_note,
                  "installed": {name: version(name) for name in sys.argv[1:]}}))
"""


@dataclass(frozen=True)
class ContainerFacts:
    platform: str                 # sysconfig platform, e.g. linux-aarch64
    python_tag: str               # cp312
    torch: str | None
    compute_capability: str | None
    gpu_note: str
    installed: dict               # package -> installed version or None
    target_arch: str | None       # from the image label org.triforce.arch

    @property
    def machine(self) -> str:
        return self.platform.split("-", 1)[-1].replace("-", "_")


@dataclass(frozen=True)
class DeployResult:
    wheel: str
    package: str
    version: str
    previous: str | None
    action: str      # installed | would install


def probe(engine: Engine, name: str, packages: list[str]) -> ContainerFacts:
    info = container.require_running(engine, name)
    code, out, err = container.exec_capture(engine, name, ["python3", "-c", _PROBE, *packages])
    if code != 0:
        last = err.strip().splitlines()[-1] if err.strip() else "no output"
        raise TriforceError(f"cannot inspect Python in {name} on {engine.where} (exit {code}: {last}): "
                            f"is python3 in the image?")
    facts = json.loads(out.strip().splitlines()[-1])
    labels = info["Config"].get("Labels") or {}
    return ContainerFacts(target_arch=labels.get(f"{container.LABEL_PREFIX}.arch"), **facts)


def misfit(record: WheelRecord, facts: ContainerFacts) -> str | None:
    """Why the wheel cannot run in the container, or None when it fits."""
    if record.platform_tag != "any" and not record.platform_tag.endswith(facts.machine):
        return f"it is built for {record.platform_tag} but the container is {facts.platform}"
    if record.python_tag not in (facts.python_tag, "py3"):
        return f"it is built for {record.python_tag} but the container's Python is {facts.python_tag}"
    if record.torch_version and facts.torch != record.torch_version:
        have = f"torch {facts.torch}" if facts.torch else "no torch"
        return f"it is built against torch {record.torch_version} but the container has {have}"
    if KNOWN_ARCHS.get(record.arch) != record.compute_capability:
        return f"its manifest pairs arch {record.arch} with compute capability {record.compute_capability}"
    if facts.target_arch and facts.target_arch != record.arch:
        return f"it is built for {record.arch} but the container's image targets {facts.target_arch}"
    if facts.compute_capability and facts.compute_capability != record.compute_capability:
        return (f"it is built for {record.arch} (compute capability {record.compute_capability}) but the container's "
                f"GPU is {facts.compute_capability}")
    return None


def select(records: dict[str, WheelRecord], wanted: list[str] | None, facts: ContainerFacts, where: str,
           log: Log) -> list[WheelRecord]:
    """The named wheels (each must fit), or every manifest wheel that fits the container (at least one)."""
    if wanted:
        chosen = []
        for item in wanted:
            name = Path(item).name
            if name not in records:
                raise TriforceError(f"{name} is not in the wheel manifest: choose one of {', '.join(records) or 'none'}"
                                    f" or rebuild with `invoke build-kernels`")
            reason = misfit(records[name], facts)
            if reason:
                raise UnsupportedError(f"{name} does not fit {where}: {reason}")
            chosen.append(records[name])
        return chosen
    chosen, reasons = [], []
    for name, record in records.items():
        reason = misfit(record, facts)
        if reason:
            log(f"skipping {name}: {reason}")
            reasons.append(f"{name}: {reason}")
        else:
            chosen.append(record)
    if not chosen:
        raise UnsupportedError(f"no wheel in the manifest fits {where} ({'; '.join(reasons) or 'manifest is empty'}): "
                               f"build for this target with `invoke build-kernels`")
    return chosen


def deploy(engine: Engine, name: str, wheel_dir: Path, wheels: list[str] | None = None, dry_run: bool = False,
           log: Log = print) -> list[DeployResult]:
    wheel_dir = Path(wheel_dir)
    records = read_manifest(wheel_dir)
    packages = sorted({r.package for r in records.values()})
    facts = probe(engine, name, packages)
    where = f"container {name} on {engine.where}"
    gpu = f"GPU {facts.compute_capability}" if facts.compute_capability else f"no GPU visible ({facts.gpu_note})"
    log(f"{where}: {facts.platform}, {facts.python_tag}, torch {facts.torch or 'none'}, "
        f"image arch {facts.target_arch or 'unlabelled'}, {gpu}")
    chosen = select(records, wheels, facts, where, log)
    packages = [r.package for r in chosen]
    if len(set(packages)) != len(packages):
        twice = sorted({p for p in packages if packages.count(p) > 1})
        raise TriforceError(f"more than one wheel of {', '.join(twice)} selected: name one per package with --wheel")
    for record in chosen:
        verify_wheel(wheel_dir, record)
    if dry_run:
        return [DeployResult(r.wheel, r.package, r.version, facts.installed.get(r.package), "would install")
                for r in chosen]
    steps = [_Step(engine, name, record, facts.installed.get(record.package), log) for record in chosen]
    for step in steps:
        step.preflight()
    done: list[_Step] = []
    for step in steps:
        record = step.record
        try:
            step.install(wheel_dir)
        except TriforceError as err:
            restored = [s.rollback() for s in [step, *reversed(done)]]
            raise TriforceError(f"deploy of {record.wheel} to {where} failed: {err}; rolled back "
                                f"({'; '.join(restored)})") from None
        done.append(step)
    return [DeployResult(s.record.wheel, s.record.package, s.record.version, s.previous, "installed") for s in done]


class _Step:
    """One wheel's install in the container and how to undo it."""

    def __init__(self, engine: Engine, name: str, record: WheelRecord, previous: str | None, log: Log):
        self.engine, self.name, self.record, self.previous, self.log = engine, name, record, previous, log
        pkg = record.package
        self.incoming = f"{WHEEL_HOME}/incoming"
        self.current, self.kept = f"{WHEEL_HOME}/current/{pkg}", f"{WHEEL_HOME}/previous/{pkg}"
        self.rotated = False

    def run(self, what: str, argv: list[str], env: dict | None = None, workdir: str = "/") -> None:
        self.log(f"$ {shlex.join(argv)}")
        code = container.exec_stream(self.engine, self.name, argv, log=self.log, env=env, workdir=workdir)
        if code != 0:
            raise TriforceError(f"{what} exited {code}")

    def preflight(self) -> None:
        """What is installed now must be restorable: deploy keeps the wheel of everything it installed."""
        if self.previous is not None and not self._has_kept_wheel(self.current):
            raise TriforceError(f"{self.record.package} {self.previous} is installed in {self.name} but not by deploy "
                                f"(no wheel kept in {self.current}), so a failed deploy could not restore it: "
                                f"`pip uninstall {self.record.package}` in the container first")

    def install(self, wheel_dir: Path) -> None:
        record = self.record
        with tempfile.TemporaryDirectory() as tmp:
            record_file = Path(tmp) / RECORD_NAME
            record_file.write_text(json.dumps(asdict(record), indent=2))
            self.run("clearing the incoming folder", ["rm", "-rf", self.incoming])
            container.put_files(self.engine, self.name, self.incoming, [wheel_dir / record.wheel, record_file])
        if self.previous is not None:
            self.run("keeping the installed wheel", ["rm", "-rf", self.kept])
            self.run("keeping the installed wheel", ["mkdir", "-p", f"{WHEEL_HOME}/previous"])
            self.run("keeping the installed wheel", ["mv", self.current, self.kept])
            self.rotated = True
        self.run("pip install", ["python3", "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall",
                                 f"{self.incoming}/{record.wheel}"], env=PIP_ENV)
        self.run(f"import check `{record.import_check}`", ["python3", "-c", record.import_check])
        self._check_version(record.package, record.version)
        self.run("recording the installed wheel", ["mkdir", "-p", f"{WHEEL_HOME}/current"])
        self.run("recording the installed wheel", ["mv", self.incoming, self.current])
        self.log(f"installed {record.package} {record.version} ({record.wheel})")

    def rollback(self) -> str:
        """Put back what was installed before this step; say what that was."""
        pkg = self.record.package
        try:
            if self.previous is None:
                self.run(f"uninstalling {pkg}", ["python3", "-m", "pip", "uninstall", "-y", pkg], env=PIP_ENV)
                self.run("clearing the kept wheel", ["rm", "-rf", self.current, self.incoming])
                return f"{pkg} uninstalled, as before"
            kept = json.loads(self._read(f"{self.kept if self.rotated else self.current}/{RECORD_NAME}"))
            source = self.kept if self.rotated else self.current
            self.run(f"reinstalling {pkg} {self.previous}", ["python3", "-m", "pip", "install", "--no-deps",
                     "--no-index", "--force-reinstall", f"{source}/{kept['wheel']}"], env=PIP_ENV)
            self.run(f"import check of the restored {pkg}", ["python3", "-c", kept["import_check"]])
            self._check_version(pkg, self.previous)
            if self.rotated:
                self.run("restoring the kept wheel", ["rm", "-rf", self.current])
                self.run("restoring the kept wheel", ["mv", self.kept, self.current])
            return f"{pkg} {self.previous} restored"
        except TriforceError as err:
            raise TriforceError(f"deploy of {self.record.wheel} failed and so did restoring {pkg} {self.previous} "
                                f"({err}): the container {self.name} needs a manual fix or `invoke up --replace`"
                                ) from None

    def _has_kept_wheel(self, folder: str) -> bool:
        code, _, _ = container.exec_capture(self.engine, self.name, ["test", "-f", f"{folder}/{RECORD_NAME}"])
        return code == 0

    def _read(self, path: str) -> str:
        code, out, err = container.exec_capture(self.engine, self.name, ["cat", path])
        if code != 0:
            raise TriforceError(f"cannot read {path} in {self.name}: {err.strip()}")
        return out

    def _check_version(self, package: str, version: str) -> None:
        code, out, _ = container.exec_capture(self.engine, self.name, [
            "python3", "-c", "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))", package])
        if code != 0 or out.strip() != version:
            raise TriforceError(f"after install {package} reports version {out.strip() or 'none'}, expected {version}")

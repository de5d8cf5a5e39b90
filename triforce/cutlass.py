"""The CUTLASS source tree the kernels build against: the pinned copy and the SM110 patch set (patches/*.toml).

Patching is all-or-nothing: every new file text is computed in memory first (a rule that does not match its declared
count fails before anything is written), then files are replaced by atomic renames, each original kept as `<file>.orig`
for `revert`. A journal in the CUTLASS root marks a run in progress; a journal left behind (the process was killed
between files) is detected by `check` and rolled back by the next `patch`. A stamp records what was applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from .errors import TriforceError

REPO_ROOT = Path(__file__).resolve().parents[1]
PATCH_DIR = REPO_ROOT / "patches"
STAMP_NAME = ".triforce_patch_stamp.json"
JOURNAL_NAME = ".triforce_patch_journal.json"
ORIG_SUFFIX = ".orig"
VERSION_HEADER = "include/cutlass/version.h"
# What the build needs from a CUTLASS tree (the nvidia-cutlass wheel ships these three folders).
SOURCE_FOLDERS = ("include", "examples", "tools")
_RULE_KEYS = {"id", "why", "files", "count", "cutlass", "pattern", "replacement"}


@dataclass(frozen=True)
class Rule:
    id: str
    why: str
    files: tuple
    count: int
    cutlass: str
    pattern: str
    replacement: str
    source: str  # the patch file that declares it

    def applies_to(self, version: str) -> bool:
        return version_in_range(version, self.cutlass)

    def identity(self) -> dict:
        return {"id": self.id, "files": list(self.files), "count": self.count, "pattern": self.pattern,
                "replacement": self.replacement}


@dataclass
class PatchResult:
    root: Path
    cutlass_version: str
    applied: list = field(default_factory=list)    # rule ids applied by this run
    already: list = field(default_factory=list)    # rule ids found applied
    skipped: list = field(default_factory=list)    # (rule id, reason): outside the rule's CUTLASS range
    files_written: list = field(default_factory=list)
    recovered: list = field(default_factory=list)  # files restored from an interrupted run
    stamp: dict = field(default_factory=dict)
    stamp_written: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.files_written or self.recovered)


@dataclass
class PatchStatus:
    root: Path
    cutlass_version: str
    applied: list
    pending: list
    skipped: list
    problems: list  # one line each: why the tree is not fully patched

    @property
    def ok(self) -> bool:
        return not self.problems


# ── versions ───────────────────────────────────────────────────────────────────────────────────────────────────────
def _version_tuple(text: str) -> tuple:
    parts = text.strip().split(".")
    if not all(p.isdigit() for p in parts):
        raise TriforceError(f"bad version '{text}' in a patch rule's cutlass range: use numbers such as 4.2 or 4.1.0")
    return tuple(int(p) for p in parts)


def version_in_range(version: str, spec: str) -> bool:
    """spec: comma-separated comparisons such as '>=4.0,<4.2'; versions compare padded with zeros."""
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
           ">": lambda a, b: a > b, "<": lambda a, b: a < b}
    have = _version_tuple(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.fullmatch(r"(>=|<=|==|>|<)\s*([\d.]+)", clause)
        if not m:
            raise TriforceError(f"bad cutlass range '{spec}' in a patch rule: use comparisons like '>=4.0,<4.2'")
        want = _version_tuple(m.group(2))
        width = max(len(have), len(want))
        if not ops[m.group(1)](have + (0,) * (width - len(have)), want + (0,) * (width - len(want))):
            return False
    return True


def cutlass_version(root: Path) -> str:
    """MAJOR.MINOR.PATCH from include/cutlass/version.h of a CUTLASS tree."""
    header = Path(root) / VERSION_HEADER
    if not header.is_file():
        raise TriforceError(f"{root} is not a CUTLASS source tree (no {VERSION_HEADER}): pass the root of a CUTLASS "
                            "checkout, or omit --cutlass-dir to use the pinned one")
    text = header.read_text()
    parts = [re.search(rf"#define CUTLASS_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise TriforceError(f"{header} has no CUTLASS_MAJOR/MINOR/PATCH defines: is {root} a CUTLASS checkout?")
    return ".".join(m.group(1) for m in parts)


# ── the pinned source ──────────────────────────────────────────────────────────────────────────────────────────────
def pinned_source() -> tuple[Path, str]:
    """The CUTLASS source shipped in the nvidia-cutlass wheel, and the wheel's version."""
    try:
        import cutlass_library
        version = metadata.version("nvidia-cutlass")
    except (ImportError, metadata.PackageNotFoundError):
        raise TriforceError("nvidia-cutlass is not installed: run `pip install -e .` (it pins nvidia-cutlass)") from None
    source = Path(cutlass_library.__file__).parent / "source"
    if not (source / VERSION_HEADER).is_file():
        raise TriforceError(f"nvidia-cutlass {version} has no C++ source at {source}: reinstall it "
                            "(`pip install --force-reinstall nvidia-cutlass==4.2.0.0`)")
    return source, version


def cache_dir() -> Path:
    return Path(os.environ.get("TRIFORCE_CACHE_DIR") or Path.home() / ".cache" / "triforce")


def default_cutlass_dir() -> Path:
    return cache_dir() / f"cutlass-{pinned_source()[1]}"


def materialize(dest: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Copy the pinned CUTLASS source into dest (default: the cache) unless it is already there."""
    source, version = pinned_source()
    dest = Path(dest or default_cutlass_dir()).expanduser()
    if (dest / VERSION_HEADER).is_file():
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise TriforceError(f"{dest} exists but holds no CUTLASS tree: remove it, or pass another --cutlass-dir")
    log(f"materializing the pinned CUTLASS {version} into {dest}")
    staging = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for folder in SOURCE_FOLDERS:
        shutil.copytree(source / folder, staging / folder)
    if dest.exists():
        dest.rmdir()
    staging.rename(dest)  # the tree appears whole or not at all
    return dest


# ── rules ──────────────────────────────────────────────────────────────────────────────────────────────────────────
def load_rules(patch_dir: Path = PATCH_DIR) -> list[Rule]:
    files = sorted(Path(patch_dir).glob("*.toml"))
    if not files:
        raise TriforceError(f"no patch rules (*.toml) in {patch_dir}: is the repository checkout complete?")
    rules, seen = [], set()
    for path in files:
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise TriforceError(f"{path} is not valid TOML ({err}): fix the patch file") from None
        for raw in table.get("rule", []):
            rules.append(_parse_rule(raw, path, seen))
    return rules


def _parse_rule(raw: dict, path: Path, seen: set) -> Rule:
    where = f"{path.name} rule '{raw.get('id', '?')}'"
    if set(raw) != _RULE_KEYS:
        raise TriforceError(f"{where}: keys must be exactly {sorted(_RULE_KEYS)}: fix the patch file")
    if raw["id"] in seen:
        raise TriforceError(f"{where}: duplicate rule id: give each rule its own id")
    seen.add(raw["id"])
    if not raw["pattern"] or raw["pattern"] == raw["replacement"] or raw["replacement"] in raw["pattern"]:
        raise TriforceError(f"{where}: the replacement must differ from the pattern and not be part of it "
                            "(else a patched file cannot be told from an unpatched one)")
    if not isinstance(raw["count"], int) or raw["count"] < 1 or not raw["files"]:
        raise TriforceError(f"{where}: count must be a positive integer and files a non-empty list")
    version_in_range("0", raw["cutlass"])  # validates the range syntax now, not at first use
    return Rule(id=raw["id"], why=raw["why"], files=tuple(raw["files"]), count=raw["count"], cutlass=raw["cutlass"],
                pattern=raw["pattern"], replacement=raw["replacement"], source=path.name)


def ruleset_hash(rules: list[Rule]) -> str:
    blob = json.dumps([r.identity() for r in rules], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _is_applied(text: str, rule: Rule) -> bool:
    return (text.count(rule.replacement) == rule.count
            and text.count(rule.pattern) == rule.count * rule.replacement.count(rule.pattern))


# ── planning (pure: nothing is written) ────────────────────────────────────────────────────────────────────────────
@dataclass
class _Plan:
    version: str
    rules: list        # applicable rules, in declaration order
    skipped: list      # (id, reason)
    applied: list      # ids already applied
    pending: list      # ids to apply
    new_texts: dict    # relative path -> patched text, for files that change
    drift: list        # one line per rule that matches neither way


def _plan(root: Path, rules: list[Rule]) -> _Plan:
    version = cutlass_version(root)
    active = [r for r in rules if r.applies_to(version)]
    skipped = [(r.id, f"CUTLASS {version} is outside the rule's range '{r.cutlass}'") for r in rules if r not in active]
    missing = sorted({f for r in active for f in r.files if not (root / f).is_file()})
    if missing:
        raise TriforceError(f"{root} lacks {', '.join(missing)} (needed by the SM110 patch rules): pass the root of a "
                            "complete CUTLASS source tree, or omit --cutlass-dir to use the pinned one")
    texts = {f: (root / f).read_text() for r in active for f in r.files}
    originals = dict(texts)
    applied, pending, drift = [], [], []
    for rule in active:
        states = []
        for f in rule.files:
            if _is_applied(texts[f], rule):
                states.append("applied")
            elif texts[f].count(rule.pattern) == rule.count:
                texts[f] = texts[f].replace(rule.pattern, rule.replacement)
                states.append("pending")
            else:
                found = texts[f].count(rule.pattern)
                drift.append(f"rule '{rule.id}' ({rule.source}) expects its pattern {rule.count}x in {f} but finds it "
                             f"{found}x")
                states.append("drift")
        if "drift" not in states:
            (applied if set(states) == {"applied"} else pending).append(rule.id)
    new_texts = {f: t for f, t in texts.items() if t != originals[f]}
    return _Plan(version, active, skipped, applied, pending, new_texts, drift)


def _stamp(plan: _Plan) -> dict:
    return {"cutlass_version": plan.version, "rules": [r.id for r in plan.rules],
            "skipped": [rid for rid, _ in plan.skipped], "ruleset_sha256": ruleset_hash(plan.rules)}


def read_stamp(root: Path) -> dict | None:
    path = Path(root) / STAMP_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # reported by check() as an outdated stamp


# ── writing ────────────────────────────────────────────────────────────────────────────────────────────────────────
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".triforce-tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():
        shutil.copymode(path, tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    _write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _recover(root: Path) -> list:
    """Undo what a killed run left: an apply is rolled back, a revert is finished. Returns the files restored."""
    journal = root / JOURNAL_NAME
    if not journal.exists():
        return []
    try:
        files = json.loads(journal.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise TriforceError(f"{journal} is unreadable (an interrupted patch run): restore the tree from the .orig "
                            "files or a fresh checkout, then delete the journal") from None
    restored = []
    for rel in files:
        orig = root / (rel + ORIG_SUFFIX)
        if orig.is_file():
            os.replace(orig, root / rel)
            restored.append(rel)
        (root / (rel + ".triforce-tmp")).unlink(missing_ok=True)
    (root / STAMP_NAME).unlink(missing_ok=True)
    journal.unlink()
    return restored


def patch(cutlass_dir: Path, rules: list[Rule] | None = None,
          on_file: Callable[[str], None] | None = None) -> PatchResult:
    """Apply the SM110 rules to a CUTLASS tree: all or nothing, idempotent, recovering an interrupted run first."""
    root = Path(cutlass_dir).expanduser()
    rules = load_rules() if rules is None else rules
    cutlass_version(root)  # a clear error for a non-CUTLASS directory before touching anything
    recovered = _recover(root)
    plan = _plan(root, rules)
    if plan.drift:
        raise TriforceError(f"{plan.drift[0]} in {root}: the source drifted from the rules; nothing was changed "
                            "(use the pinned CUTLASS, or update patches/*.toml for this version)")
    result = PatchResult(root, plan.version, applied=plan.pending, already=plan.applied, skipped=plan.skipped,
                         recovered=recovered, stamp=_stamp(plan))
    if plan.new_texts:
        _write_json(root / JOURNAL_NAME, {"op": "apply", "files": sorted(plan.new_texts)})
        for rel, text in sorted(plan.new_texts.items()):
            path = root / rel
            orig = root / (rel + ORIG_SUFFIX)
            if not orig.exists():  # an existing .orig is the pristine file from an earlier run: keep it
                _write_atomic(orig, path.read_text())
            _write_atomic(path, text)
            result.files_written.append(rel)
            if on_file:
                on_file(rel)
    if read_stamp(root) != result.stamp:
        _write_json(root / STAMP_NAME, result.stamp)
        result.stamp_written = True
    (root / JOURNAL_NAME).unlink(missing_ok=True)
    return result


def revert(cutlass_dir: Path, rules: list[Rule] | None = None,
           on_file: Callable[[str], None] | None = None) -> list:
    """Restore every patched file from its .orig backup and drop the stamp. Returns the files restored."""
    root = Path(cutlass_dir).expanduser()
    rules = load_rules() if rules is None else rules
    cutlass_version(root)
    restored = _recover(root)
    files = sorted({f for r in rules for f in r.files if (root / (f + ORIG_SUFFIX)).is_file()})
    if files:
        _write_json(root / JOURNAL_NAME, {"op": "revert", "files": files})
        for rel in files:
            os.replace(root / (rel + ORIG_SUFFIX), root / rel)
            restored.append(rel)
            if on_file:
                on_file(rel)
    (root / STAMP_NAME).unlink(missing_ok=True)
    (root / JOURNAL_NAME).unlink(missing_ok=True)
    return restored


def check(cutlass_dir: Path, rules: list[Rule] | None = None) -> PatchStatus:
    """Whether the tree is fully patched with the current rule set (reads only)."""
    root = Path(cutlass_dir).expanduser()
    rules = load_rules() if rules is None else rules
    version = cutlass_version(root)
    if (root / JOURNAL_NAME).exists():
        return PatchStatus(root, version, [], [], [], [f"an interrupted patch run left {JOURNAL_NAME} in {root}: run "
                                                       "`invoke patch-cutlass` to roll it back and patch again"])
    plan = _plan(root, rules)
    problems = list(plan.drift)
    if plan.pending:
        problems.append(f"rules not applied: {', '.join(plan.pending)}: run `invoke patch-cutlass`")
    elif not plan.drift and read_stamp(root) != _stamp(plan):
        problems.append(f"{STAMP_NAME} is missing or from another rule set: run `invoke patch-cutlass`")
    return PatchStatus(root, version, plan.applied, plan.pending, plan.skipped, problems)


def ensure_patched(cutlass_dir: Path | None, log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """The CUTLASS tree a build uses and its stamp: the pinned one is materialized and patched on demand; a tree
    the user names must already be patched (we do not modify it behind their back)."""
    if cutlass_dir is None:
        root = materialize(log=log)
        result = patch(root)
        if result.changed:
            log(f"patched {root}: {', '.join(result.applied) or 'no rule'} applied")
        return root, result.stamp
    root = Path(cutlass_dir).expanduser().resolve()
    status = check(root)
    if not status.ok:
        raise TriforceError(f"CUTLASS at {root} is not patched for SM110 ({status.problems[0]}): run "
                            f"`invoke patch-cutlass --cutlass-dir {cutlass_dir}` first")
    return root, read_stamp(root)


def resolve(cutlass_dir: Path | None, create: bool) -> Path:
    """The tree a patch-cutlass run acts on: the user's, or the pinned one in the cache (materialized if create)."""
    if cutlass_dir is not None:
        root = Path(cutlass_dir).expanduser()
        if not root.is_dir():
            raise TriforceError(f"--cutlass-dir {root} does not exist: pass the root of a CUTLASS checkout, or omit "
                                "it to use the pinned CUTLASS")
        return root
    if create:
        return materialize()
    root = default_cutlass_dir()
    if not (root / VERSION_HEADER).is_file():
        raise TriforceError(f"the pinned CUTLASS is not materialized at {root}: run `invoke patch-cutlass`")
    return root


def describe(result: PatchResult) -> list[str]:
    """Lines for the terminal: what this run did to each rule."""
    lines = [f"CUTLASS {result.cutlass_version} at {result.root}"]
    if result.recovered:
        lines.append(f"  recovered an interrupted run: restored {', '.join(result.recovered)} from .orig")
    lines += [f"  applied  {rid}" for rid in result.applied]
    lines += [f"  present  {rid}" for rid in result.already]
    lines += [f"  skipped  {rid}: {reason}" for rid, reason in result.skipped]
    if result.files_written:
        lines.append(f"patched {len(result.files_written)} files (originals kept as *.orig; --revert restores them)")
    elif result.stamp_written:
        lines.append(f"already patched: only {STAMP_NAME} was (re)written")
    else:
        lines.append("already patched: nothing changed")
    return lines

"""The SM110 CUTLASS patch stage: real rules (patches/*.toml) on real CUTLASS 4.2 files copied from the pinned wheel."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from triforce import cutlass
from triforce.errors import TriforceError

REPO = Path(__file__).resolve().parents[1]
RULES = cutlass.load_rules()
RULE_FILES = sorted({f for r in RULES for f in r.files})
ACTIVE_42 = [r.id for r in RULES if r.applies_to("4.2.0")]


def _digest(root: Path) -> dict:
    """Every file under root (names and bytes): the whole observable state of a tree."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tree(tmp_path) -> Path:
    """The files the rules touch plus version.h, copied from the pinned CUTLASS 4.2 source."""
    source, _ = cutlass.pinned_source()
    root = tmp_path / "cutlass"
    for rel in RULE_FILES + [cutlass.VERSION_HEADER]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, root / rel)
    return root


def _invoke(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_rules_cover_the_sm110_blockers():
    assert {"ex72-runtime-cc", "ex72-cmake-archs", "ex86-cuda-version", "ex86-runtime-cc", "reg-reconfig-sm110a",
            "reg-reconfig-sm110f", "gdc-sm110"} <= set(ACTIVE_42)
    assert "config-sm110a-as-sm100a" not in ACTIVE_42  # CUTLASS 4.2 already has its own SM110 block
    assert cutlass.version_in_range("4.1.0", "<4.2") and not cutlass.version_in_range("4.2.0", "<4.2")


def test_patch_applies_every_rule_then_is_idempotent(tree):
    first = cutlass.patch(tree)
    assert first.cutlass_version == "4.2.0"
    assert first.applied == ACTIVE_42 and first.already == []
    assert [rid for rid, _ in first.skipped] == ["config-sm110a-as-sm100a"]
    assert "outside the rule's range '<4.2'" in first.skipped[0][1]
    text = (tree / "include/cutlass/arch/reg_reconfig.h").read_text()
    assert "__CUDA_ARCH__ == 1100 && defined(__CUDA_ARCH_FEAT_SM110_ALL)" in text
    assert "CUDA_ARCH_FAMILY(1100)" in (tree / "include/cutlass/arch/grid_dependency_control.h").read_text()
    assert cutlass.check(tree).ok
    stamp = json.loads((tree / cutlass.STAMP_NAME).read_text())
    assert stamp["rules"] == ACTIVE_42 and stamp["cutlass_version"] == "4.2.0"
    assert stamp["ruleset_sha256"] == cutlass.ruleset_hash([r for r in RULES if r.id in ACTIVE_42])

    before = _digest(tree)
    second = cutlass.patch(tree)
    assert not second.changed and second.applied == [] and second.already == ACTIVE_42
    assert _digest(tree) == before


def test_check_and_revert(tree):
    pristine = _digest(tree)
    status = cutlass.check(tree)
    assert not status.ok and status.pending == ACTIVE_42
    cutlass.patch(tree)
    restored = cutlass.revert(tree)
    assert sorted(restored) == sorted({f for r in RULES if r.id in ACTIVE_42 for f in r.files})
    assert _digest(tree) == pristine
    assert cutlass.revert(tree) == []  # reverting a pristine tree changes nothing


def test_drifted_source_fails_naming_file_and_rule_and_writes_nothing(tree):
    header = tree / "include/cutlass/arch/grid_dependency_control.h"
    header.write_text(header.read_text().replace("CUDA_ARCH_FAMILY(1030)", "CUDA_ARCH_FAMILY_1030"))
    before = _digest(tree)
    with pytest.raises(TriforceError, match=r"rule 'gdc-sm110' .*grid_dependency_control\.h but finds it 0x"):
        cutlass.patch(tree)
    assert _digest(tree) == before  # no file patched, no backup, no journal, no stamp
    assert not cutlass.check(tree).ok


@pytest.mark.parametrize("layout", ["empty", "only-version-header"])
def test_directory_without_cutlass_files_is_refused(tmp_path, layout):
    root = tmp_path / "notcutlass"
    root.mkdir()
    if layout == "only-version-header":
        source, _ = cutlass.pinned_source()
        (root / "include/cutlass").mkdir(parents=True)
        shutil.copy2(source / cutlass.VERSION_HEADER, root / cutlass.VERSION_HEADER)
    with pytest.raises(TriforceError, match="version.h" if layout == "empty" else "lacks examples/72"):
        cutlass.patch(root)
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ([] if layout == "empty" else ["version.h"])


def test_patch_killed_between_files_is_detected_and_recovered(tree):
    pristine = _digest(tree)
    # A real SIGKILL right after the first file is replaced: no cleanup code can run.
    script = textwrap.dedent(f"""
        import os, signal
        from triforce import cutlass
        cutlass.patch({str(tree)!r}, on_file=lambda rel: os.kill(os.getpid(), signal.SIGKILL))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9
    assert (tree / cutlass.JOURNAL_NAME).exists()
    status = cutlass.check(tree)
    assert not status.ok and "interrupted patch run" in status.problems[0]

    result = cutlass.patch(tree)
    assert len(result.recovered) == 1 and result.applied == ACTIVE_42
    assert cutlass.check(tree).ok and not (tree / cutlass.JOURNAL_NAME).exists()
    cutlass.revert(tree)
    assert _digest(tree) == pristine


def test_bad_rule_file_is_refused(tmp_path):
    (tmp_path / "bad.toml").write_text(textwrap.dedent("""
        [[rule]]
        id = "r"
        why = "w"
        files = ["a.h"]
        count = 1
        cutlass = ">=4.0"
        pattern = "int x = 1;"
        replacement = "x = 1"
    """))
    with pytest.raises(TriforceError, match="bad.toml rule 'r'.*part of it"):
        cutlass.load_rules(tmp_path)


def test_materialize_pinned_source_and_ensure_patched(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIFORCE_CACHE_DIR", str(tmp_path / "cache"))
    root, stamp = cutlass.ensure_patched(None, log=lambda _: None)
    assert root == tmp_path / "cache" / "cutlass-4.2.0.0"
    assert {p.name for p in root.iterdir()} >= {"include", "examples", "tools", cutlass.STAMP_NAME}
    assert stamp["rules"] == ACTIVE_42 and cutlass.check(root).ok
    # A tree the user names is never patched behind their back.
    other = tmp_path / "user"
    shutil.copytree(root, other)
    cutlass.revert(other)
    with pytest.raises(TriforceError, match="not patched for SM110.*invoke patch-cutlass --cutlass-dir"):
        cutlass.ensure_patched(other)


def test_cli_check_patch_revert(tree, tmp_path):
    assert _invoke("patch-cutlass", "--cutlass-dir", str(tree), "--check").returncode == 1
    out = _invoke("patch-cutlass", "--cutlass-dir", str(tree))
    assert out.returncode == 0 and "config-sm110a-as-sm100a" in out.stdout and "skipped" in out.stdout
    again = _invoke("patch-cutlass", "--cutlass-dir", str(tree))
    assert again.returncode == 0 and "already patched" in again.stdout
    assert _invoke("patch-cutlass", "--cutlass-dir", str(tree), "--check").returncode == 0
    assert _invoke("patch-cutlass", "--cutlass-dir", str(tree), "--revert").returncode == 0
    bad = _invoke("patch-cutlass", "--cutlass-dir", str(tmp_path / "nope"))
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1

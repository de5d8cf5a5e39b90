"""The carried development build (cutlass_sm110/devbuild.py) is used only for the exact checkout, torch and Python
it was compiled for; anything else falls back to compiling, never to a stale module."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cutlass_sm110"))
import devbuild  # noqa: E402


@pytest.fixture
def carried(tmp_path, monkeypatch):
    folder = tmp_path / "devbuild-hopper"
    folder.mkdir()
    monkeypatch.setattr(devbuild, "prebuilt_dir", lambda family: folder)
    return folder


def test_no_carried_build_means_compile(carried):
    assert devbuild.load_prebuilt("hopper", "9.0a") is None


def test_a_stamp_of_another_torch_is_refused(carried, capsys):
    stamp = devbuild.fingerprint("hopper", "9.0a") | {"torch": "0.0.0+other"}
    (carried / "stamp.json").write_text(json.dumps(stamp))
    (carried / "_C.so").write_bytes(b"not a library")
    assert devbuild.load_prebuilt("hopper", "9.0a") is None
    assert "another checkout, torch or Python" in capsys.readouterr().out


def test_the_fingerprint_follows_every_source(tmp_path, monkeypatch):
    before = devbuild.fingerprint("hopper", "9.0a")
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for f in (devbuild.HERE / "csrc").iterdir():
        (csrc / f.name).write_bytes(f.read_bytes())
    (tmp_path / "kernels.toml").write_bytes((devbuild.HERE / "kernels.toml").read_bytes())
    monkeypatch.setattr(devbuild, "HERE", tmp_path)
    assert devbuild.fingerprint("hopper", "9.0a") == before
    (csrc / "w4a16_skinny.cu").write_text((csrc / "w4a16_skinny.cu").read_text() + "\n// changed\n")
    assert devbuild.fingerprint("hopper", "9.0a")["sources"] != before["sources"]


def test_a_matching_stamp_loads_the_carried_library(carried):
    (carried / "stamp.json").write_text(json.dumps(devbuild.fingerprint("hopper", "9.0a")))
    (carried / "_C.so").write_bytes(b"not a library")
    with pytest.raises(ImportError):  # it really tried to load the carried file
        devbuild.load_prebuilt("hopper", "9.0a")


def test_an_unknown_prebuild_family_is_refused_before_any_compile(tmp_path):
    import subprocess

    run = subprocess.run([sys.executable, str(devbuild.HERE / "devbuild.py"), "--prebuild", "ampere"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip() == "usage: devbuild.py --prebuild hopper|blackwell"
    assert not devbuild.prebuilt_dir("ampere").exists()

"""Workspace root resolution and the one function that keeps paths inside it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lora_lab import workspace as wsmod
from lora_lab.errors import LoraLabError
from lora_lab.workspace import Workspace, check_name, default_root


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_LAB_HOME", str(tmp_path / "env"))
    assert default_root() == tmp_path / "env"
    monkeypatch.delenv("LORA_LAB_HOME")
    monkeypatch.setattr(wsmod, "POD_VOLUME", tmp_path)  # a pod image: /workspace exists
    assert default_root() == tmp_path / "lora-lab"
    monkeypatch.setattr(wsmod, "POD_VOLUME", tmp_path / "absent")
    assert default_root() == Path.home() / "lora-lab"


def test_folders_are_created(tmp_path):
    ws = Workspace(tmp_path / "root")
    assert sorted(p.name for p in ws.root.iterdir()) == sorted(wsmod.FOLDERS)


def test_resolve_keeps_paths_inside(tmp_path):
    ws = Workspace(tmp_path / "root")
    assert ws.resolve("exports/x") == ws.root / "exports" / "x"
    assert ws.resolve("x", ws.exports) == ws.exports / "x"
    assert ws.resolve(str(ws.root / "loras" / "a")) == ws.loras / "a"
    for bad in ("../x", "exports/../../x", "/etc/passwd", "a\x00b"):
        with pytest.raises(LoraLabError):
            ws.resolve(bad)
    (ws.exports / "link").symlink_to(tmp_path)
    with pytest.raises(LoraLabError, match="outside the workspace"):
        ws.resolve("exports/link/secret")


@pytest.mark.parametrize("name", ["cats", "my cats 2", "a.b-c_d", "Δέλτα"])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".x", "_x", "a/b", "a\\b", "..", "x ", "x.", "a\nb", None])
def test_bad_names(name):
    with pytest.raises(LoraLabError, match="invalid dataset name"):
        check_name(name)


def test_atomic_writes_keep_usual_permissions(tmp_path):
    from lora_lab import atomic

    new = tmp_path / "new.txt"
    atomic.write_text(new, "a")
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    new.chmod(0o640)
    atomic.write_text(new, "b")
    assert new.stat().st_mode & 0o777 == 0o640 and new.read_text() == "b"


def test_atomic_writes_follow_the_umask_of_the_moment_and_leave_nothing_on_failure(tmp_path):
    from lora_lab import atomic

    before = os.umask(0o077)  # as a user's shell could set it after lora_lab was imported
    try:
        atomic.write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(before)
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    kept = tmp_path / "kept.txt"
    atomic.write_text(kept, "old")
    with pytest.raises(RuntimeError), atomic.writing(kept) as f:
        f.write(b"half")
        raise RuntimeError("the writer failed")
    assert kept.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "kept.txt", "private.txt"]

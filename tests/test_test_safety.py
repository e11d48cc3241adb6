"""The tests' own safety: in-process deletions outside the temporary folder fail instead of deleting
(tests/deletion_guard.py), and the openpi-client helper never removes a directory it did not make."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.deletion_guard import OutsideTemporaryFolder, inside_temporary


def test_deletions_outside_the_temporary_folder_are_refused(tmp_path):
    outside = Path.home() / ".vitac-deletion-guard-probe-that-does-not-exist"
    assert not inside_temporary(outside) and not outside.exists()
    for delete in (lambda: os.unlink(outside), lambda: os.remove(outside), lambda: outside.unlink(),
                   lambda: os.rmdir(outside), lambda: shutil.rmtree(outside)):
        with pytest.raises(OutsideTemporaryFolder):
            delete()
    inside = tmp_path / "d"
    (inside / "sub").mkdir(parents=True)
    (inside / "sub" / "f").write_text("x")
    shutil.rmtree(inside)                       # inside: as before
    assert not inside.exists()
    link = tmp_path / "link"
    link.symlink_to(Path.home())
    link.unlink()                               # the link itself is in tmp: removed, its target untouched
    assert Path.home().is_dir()


def test_openpi_helper_never_removes_an_existing_directory(tmp_path, monkeypatch):
    """VITAC_OPENPI_VENV naming a folder of the user's, an install that fails (offline): the folder
    and its files stay."""
    import tests.test_serving as ts

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    monkeypatch.setattr(ts, "OPENPI_VENV", mine)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    assert ts._openpi_python() is None
    assert (mine / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"], "the helper wrote into the user's folder"

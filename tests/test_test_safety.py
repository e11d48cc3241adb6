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


def test_the_net_comes_off_before_pytest_writes_its_cache(tmp_path):
    """CI clones outside the temporary folder, and pytest's cache provider makes its folder there at
    the session's end through a temporary sibling it removes: the net must be off by then, or a
    green run exits 1 with a traceback. A child session reproduces it: its temporary folder (TMPDIR)
    is not where its cache goes."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    child_tmp, cache = tmp_path / "child-tmp", tmp_path / "elsewhere" / "cache"
    child_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(child_tmp)}
    test = "tests/test_test_safety.py::test_deletions_outside_the_temporary_folder_are_refused"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "cacheprovider", "-o",
                        f"cache_dir={cache}", "--basetemp", str(child_tmp / "base"), test],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 passed" in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert (cache / "v" / "cache" / "nodeids").is_file(), "pytest wrote no cache"

"""The golden files ship with the project: all present and intact, and a missing one, or a golden
test that skips, fails the run (never a silent skip)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import GOLDEN_DIR

ROOT = Path(__file__).resolve().parents[1]


def _sums() -> dict[str, str]:
    lines = (GOLDEN_DIR / "SHA256SUMS").read_text().splitlines()
    return {name.strip(): digest for digest, name in (ln.split(None, 1) for ln in lines if ln.strip())}


def test_every_golden_file_is_present_and_intact():
    """Each file of tests/golden/SHA256SUMS is there with its digest, and every case file there is listed."""
    sums = _sums()
    assert len(sums) == 10, sorted(sums)
    for name, digest in sums.items():
        f = GOLDEN_DIR / name
        assert f.is_file(), f"golden file missing: {f}"
        assert hashlib.sha256(f.read_bytes()).hexdigest() == digest, f"golden file changed: {f}"
    on_disk = {f.name for f in GOLDEN_DIR.iterdir() if f.suffix in (".json", ".npz")}
    assert on_disk == set(sums), on_disk ^ set(sums)


def _pytest(tmp_path: Path, *args: str, golden_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("VITAC_GOLDEN_DIR", None)
    if golden_dir is not None:
        env["VITAC_GOLDEN_DIR"] = str(golden_dir)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_missing_golden_file_fails_and_names_the_path(tmp_path):
    gdir = tmp_path / "golden"
    shutil.copytree(GOLDEN_DIR, gdir)
    (gdir / "mpc_franka.npz").unlink()
    p = _pytest(tmp_path, "tests/test_pose.py::test_golden_upstream_pose_update", golden_dir=gdir)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert f"golden file missing: {gdir / 'mpc_franka.npz'}" in out, out
    assert "1 failed" in out and "skipped" not in out.split("vitac-deploy test summary")[0], out


def test_a_skipped_golden_test_fails_the_run_and_the_summary_says_why(tmp_path):
    """The conftest's accounting, on a throwaway test file that loads the project's conftest as a plugin."""
    t = tmp_path / "test_probe.py"
    t.write_text("import pytest\n"
                 "from tests.conftest import golden_path\n\n"
                 "@pytest.mark.golden\n"
                 "def test_golden_but_skipped():\n"
                 "    pytest.skip('pretend the files are elsewhere')\n\n"
                 "@pytest.mark.gpu\n@pytest.mark.golden\n"
                 "def test_golden_on_a_gpu():\n"
                 "    pytest.skip('needs a CUDA GPU')\n\n"
                 "def test_reads_golden_unmarked():\n"
                 "    golden_path('mpc_franka')\n\n"
                 "def test_plain():\n"
                 "    pass\n")
    p = _pytest(tmp_path, "-p", "tests.conftest", "--rootdir", str(tmp_path), str(t))
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "ran 2 (1 passed, 1 failed), 0 errors, skipped 2; golden-dependent: 0 ran, 1 skipped" in out, out
    assert "skipped   1: needs a CUDA GPU" in out and "skipped   1: pretend the files are elsewhere" in out, out
    assert "FAIL golden-dependent test did not run: " in out and "test_golden_but_skipped" in out, out
    assert "test_golden_on_a_gpu: needs" not in out, out     # a hardware skip is not a lost golden test
    assert "reads golden case mpc_franka but is not marked `golden`" in out, out

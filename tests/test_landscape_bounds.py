"""`energy-landscape` within bounds: the grid is rolled out in chunks (a memory budget, a default
chunk), the number of grid actions is bounded, and what cannot fit is a one-line exit 2. Real
files and a real `vitac-deploy` process, whose peak resident memory is read from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vitac_deploy.benchmarks.serving import robot_requests, tiny_artifact

PEAK = """
import runpy, sys
sys.argv = ["vitac-deploy"] + sys.argv[1:]
code = 0
try:
    runpy.run_module("vitac_deploy", run_name="__main__")
except SystemExit as e:
    code = e.code
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print("PEAK_MIB", int(line.split()[1]) // 1024, file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("landscape")
    art = tiny_artifact(d / "art")
    r = robot_requests(1, 3)[0]
    np.savez(d / "obs.npz", images=r["observation/image"][None])
    np.savez(d / "goal.npz", images=r["goal/image"][None])
    (d / "peak.py").write_text(PEAK)
    return d, art


def _landscape(scene, *extra) -> tuple[subprocess.CompletedProcess, int]:
    d, art = scene
    p = subprocess.run([sys.executable, str(d / "peak.py"), "energy-landscape", str(art), "--observation",
                        str(d / "obs.npz"), "--goal", str(d / "goal.npz"), "--pose", "0,0,0,0,0,0,0.5",
                        "--plot", str(d / "p.png"), *map(str, extra)], capture_output=True, text=True, timeout=600)
    peak = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("PEAK_MIB")]
    return p, peak[0] if peak else -1


def _one_error_line(p: subprocess.CompletedProcess) -> str:
    lines = [line for line in p.stderr.splitlines() if not line.startswith(("PEAK_MIB", "opening"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in lines[0], p.stderr
    return lines[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux) to read peak RSS")
def test_a_large_grid_is_rolled_out_in_chunks(scene):
    """--grid 30: 27000 actions. All at once took about 1.6 GiB on this tiny model; in chunks, the
    peak stays within a few hundred MiB. The energies are those of the grid alone (checked on a
    small grid against one action at a time below)."""
    d, _ = scene
    p, peak = _landscape(scene, "--grid", 30, "--json", d / "g30.json")
    assert p.returncode == 0, p.stderr
    out = json.loads((d / "g30.json").read_text())
    assert len(out["energies"]) == 27000 and out["chunk"] <= 512
    assert 0 < peak < 600, f"peak RSS {peak} MiB for 27000 grid actions"


def test_chunks_do_not_change_the_energies(scene):
    from vitac_deploy.encoder import read_images
    from vitac_deploy.planning.landscape import energy_landscape
    from vitac_deploy.runtimes import open_runtime
    from vitac_deploy.runtimes import open_encoder

    d, art = scene
    rt, enc = open_runtime(art, backend="onnxruntime"), open_encoder(art / "encoder", backend="onnxruntime")
    cur, goal = enc.encode(read_images([d / "obs.npz"])), enc.encode(read_images([d / "goal.npz"]))
    pose = np.array([[0, 0, 0, 0, 0, 0, 0.5]], np.float32)
    a, whole = energy_landscape(rt, cur, goal, pose, 4, chunk=64)
    b, chunked = energy_landscape(rt, cur, goal, pose, 4, chunk=5)
    assert np.array_equal(a, b) and np.abs(whole - chunked).max() <= 1e-6


def test_a_grid_beyond_the_bound_is_one_line_exit_2(scene):
    p, peak = _landscape(scene, "--grid", 100000)
    assert p.returncode == 2, p.stderr
    assert "--grid 100000" in _one_error_line(p)


def test_a_budget_that_fits_nothing_is_one_line_exit_2(scene):
    p, _ = _landscape(scene, "--grid", 5, "--memory-budget", "100KiB")
    assert p.returncode == 2, p.stderr
    assert "not even one sample fits" in _one_error_line(p)
    p, _ = _landscape(scene, "--grid", 5, "--memory-budget", "lots")
    assert p.returncode == 2 and "cannot read 'lots' as a size" in _one_error_line(p)

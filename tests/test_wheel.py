"""The wheel (`pip wheel . --no-deps`) installs into a fresh virtual environment with numpy and
onnxruntime alone, and there its runtime side imports and runs: a rollout, an encoding, a plan and
`vitac-deploy plan`, without torch or onnx (scripts/check_wheel.py; what docs/jetson.md installs)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_wheel_runs_with_numpy_and_onnxruntime_alone(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_wheel.py"), "--keep", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=600)
    text = p.stdout + p.stderr
    if p.returncode != 0 and ("No matching distribution" in text or "Could not find a version" in text):
        pytest.skip("no package index here to install numpy and onnxruntime into a fresh venv")
    assert p.returncode == 0, text[-3000:]
    assert "all passed" in p.stdout and "runtime ok" in p.stdout
    installed = next(line for line in p.stdout.splitlines() if "installed:" in line)
    assert "numpy" in installed and "onnxruntime" in installed
    assert "torch" not in installed and " onnx," not in installed

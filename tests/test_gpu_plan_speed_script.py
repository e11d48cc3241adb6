"""scripts/gpu_plan_speed.py, the plan-speed step of scripts/gpu_check.sh, dry-run on the CPU with
tiny sizes: every part but the CUDA-only rows runs here, so a lent GPU's minutes go to measuring."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_plan_speed.py"


def test_the_dry_run_measures_every_row_a_cpu_can(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path),
                        "--budget", "300"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = json.loads((tmp_path / "plan_speed.json").read_text())
    assert r["complete"] and r["errors"] == [] and r["device"]["kind"] == "cpu" and r["device"]["peak_datasheet"] is None
    assert {"gemm", "copy_on_device", "host_broadcast_before"} <= set(r["ceilings"])
    rows = {row["variant"]: row for row in r["plans"]}
    assert {"before: torch-reference, host context", "torch-reference, staged context", "torch, eager",
            "torch-compile default", "before: onnxruntime, host context", "onnxruntime, staged context",
            "vitg torch, eager", "vitg before: torch-reference, host context"} <= set(rows)
    skipped = {s.get("variant") or s.get("profile"): s["reason"] for s in r["skipped"]}
    assert skipped["torch, CUDA graphs"] == "needs cuda" and skipped["torch-compile reduce-overhead"] == "needs cuda"
    first = rows["before: torch-reference, host context"]
    staged = rows["torch, eager"]
    # the way before moves the observation's broadcast every step; staged, only the conditioning
    N, D = 16, 64
    assert first["host_to_device_bytes_per_step"] - staged["host_to_device_bytes_per_step"] == 16 * N * D * 4
    assert staged["host_to_device_bytes_per_step"] == 16 * 2 * 2 * 7 * 4
    for name, row in rows.items():   # same problem, same draws: every row scores step 0 alike
        assert row["plan_s"] > 0 and row["flops"] > 0 and row["bytes_model"] > 0, name
        if "energy_max_abs_step0_vs_first" in row:
            assert row["energy_max_abs_step0_vs_first"] < 1e-5, name
    prof = {row["variant"]: row for row in r["profile"]}
    assert prof["torch, eager"]["aten_ops"] < prof["torch-reference, staged context"]["aten_ops"]

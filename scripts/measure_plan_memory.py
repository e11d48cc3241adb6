"""Measure what a plan costs in memory on the CPU (ONNX Runtime, fp32) and set it beside the memory
model (vitac_deploy/planning/memory.py).

Each chunk size runs in a fresh process that imports only the runtime side (numpy + onnxruntime),
opens the runtime for that chunk, scores one chunk of samples (one CEM rollout) and reports its
peak resident memory (VmHWM). Memory per sample is the slope between chunk sizes; the model's per-sample
bytes are the same slope of `plan_memory`. On a CPU, "device" memory is host memory, so the peak
also holds Python, numpy and ONNX Runtime themselves: compare slopes, and the fixed part loosely.

    python scripts/measure_plan_memory.py --preset vitac-l384 --chunks 4,8,16,32 --horizon 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
import numpy as np
from vitac_deploy.planning import energies, planning_problem
from vitac_deploy.runtimes import open_runtime

def status(key):   # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

art, chunk, horizon = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = status("VmHWM")
rt = open_runtime(art, backend="onnxruntime", precision="fp32", max_batch=chunk, max_frames=horizon)
current, goal, pose = planning_problem(rt.cfg, 0)
actions = (0.05 * np.random.default_rng(0).standard_normal((chunk, horizon, rt.cfg.action_dim))).astype(np.float32)
energies(rt, current, goal, pose, actions)
print(json.dumps({"chunk": chunk, "rss_after_imports_kib": base, "peak_rss_kib": status("VmHWM"),
                  "modules": sorted(m for m in ("torch", "onnx") if m in sys.modules)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="vitac-l384")
    ap.add_argument("--chunks", default="4,8,16,32")
    ap.add_argument("--horizon", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]

    from vitac_deploy import PredictorConfig
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.planning.memory import MiB, plan_memory
    from vitac_deploy.reference import random_predictor

    cfg = PredictorConfig.preset(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "artifact"
        export_artifact(random_predictor(cfg, 0), art, ExportOptions(precisions=["fp32"], validate=False,
                                                                     first_frame_graph=False))
        runs = []
        for c in chunks:
            out = subprocess.run([sys.executable, "-c", CHILD, str(art), str(c), str(args.horizon)],
                                 capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.preset}, ONNX Runtime CPU fp32, horizon {args.horizon}, one chunk scored per process")
    print(f"{'chunk':>6} {'peak RSS MiB':>13} {'model MiB':>10}")
    model = {c: plan_memory(cfg, c, args.horizon, precision="fp32", backend="onnxruntime").device_total / MiB
             for c in chunks}
    for r in runs:
        print(f"{r['chunk']:>6} {r['peak_rss_kib'] / 1024:>13.1f} {model[r['chunk']]:>10.1f}")
    lo, hi = runs[0], runs[-1]
    measured = (hi["peak_rss_kib"] - lo["peak_rss_kib"]) / 1024 / (hi["chunk"] - lo["chunk"])
    modelled = (model[hi["chunk"]] - model[lo["chunk"]]) / (hi["chunk"] - lo["chunk"])
    print(f"per sample: measured {measured:.2f} MiB, model {modelled:.2f} MiB ({measured / modelled:.2f}x)")
    print(f"imports only (numpy + onnxruntime + vitac_deploy): {lo['rss_after_imports_kib'] / 1024:.0f} MiB; "
          f"torch/onnx imported by the child: {lo['modules'] or 'no'}")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "horizon": args.horizon, "runs": runs,
                                         "model_mib": model, "per_sample_measured_mib": measured,
                                         "per_sample_model_mib": modelled}, indent=2) + "\n")


if __name__ == "__main__":
    main()

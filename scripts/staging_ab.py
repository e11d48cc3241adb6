#!/usr/bin/env python3
"""The upstream plan with the observation staged once vs broadcast on the host every rollout (the
way before), on every backend, interleaved so that a shared machine's drift falls on all alike:
`--reps` rounds in which each (backend, staging) arm plans once, in a rotating order; medians,
host / staged per backend, and every arm against the way torch planned before (torch-reference,
host context); and the host broadcast alone at the plan's size and at upstream's 400 samples.
Raw figures to JSON.

    python scripts/staging_ab.py --preset vitac-l384 --samples 8 --reps 5 --json OUT.json
    python scripts/staging_ab.py --config narrow.json --samples 64 --reps 7 --json OUT.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitac_deploy.config import PredictorConfig  # noqa: E402
from vitac_deploy.artifacts import now_iso, versions, write_json_atomic  # noqa: E402
from vitac_deploy.planning import CEMOptions, plan, planning_problem  # noqa: E402


def broadcast_s(cfg: PredictorConfig, samples: int, reps: int = 5) -> float:
    """Median seconds of the host broadcast [samples, N, D] float32 each rollout built before."""
    ctx = np.random.default_rng(0).standard_normal((1, cfg.tokens_per_frame, cfg.embed_dim)).astype(np.float32)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        np.ascontiguousarray(np.broadcast_to(ctx, (samples, cfg.tokens_per_frame, cfg.embed_dim)))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None)
    p.add_argument("--config", default=None, help="PredictorConfig JSON")
    p.add_argument("--backend", action="append", default=None, help="repeatable (default onnxruntime, torch, "
                                                                     "torch-reference)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--cem-steps", type=int, default=1)
    p.add_argument("--horizon", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", required=True)
    a = p.parse_args()
    cfg = PredictorConfig.from_json(a.config) if a.config else PredictorConfig.preset(a.preset or "vitac-l384")
    backends = a.backend or ["onnxruntime", "torch", "torch-reference"]
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor
    from vitac_deploy.runtimes import open_runtime

    opts = CEMOptions(rollout=a.horizon, samples=a.samples, topk=min(a.topk, a.samples), cem_steps=a.cem_steps)
    current, goal, pose = planning_problem(cfg, 0)
    out = {"date": now_iso(), "versions": versions(), "command": " ".join(sys.argv), "config": cfg.to_dict(),
           "options": vars(a), "broadcast_s": {str(a.samples): broadcast_s(cfg, a.samples),
                                               "400": broadcast_s(cfg, 400)}, "rows": []}
    print(f"host broadcast [{a.samples}, {cfg.tokens_per_frame}, {cfg.embed_dim}]: "
          f"{out['broadcast_s'][str(a.samples)] * 1e3:.1f} ms; at 400 samples {out['broadcast_s']['400'] * 1e3:.1f} ms",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "art"
        export_artifact(random_predictor(cfg, 0), art, ExportOptions(precisions=["fp32"], validate=False,
                                                                      first_frame_graph=False))
        # every (backend, staging) arm is opened once and the arms take turns, in a rotating order,
        # so that a shared machine's drift falls on all of them alike
        arms = [(b, stage) for b in backends for stage in ("host", "staged")]
        rts = {b: open_runtime(art, backend=b, max_batch=a.samples, max_frames=a.horizon) for b in backends}
        for rt in rts.values():
            plan(rt, current, goal, pose, opts, seed=0)   # warm: allocation, first kernels
        times: dict = {arm: [] for arm in arms}
        actions: dict = {}
        for rep in range(a.reps):
            k = rep % len(arms)
            for b, stage in arms[k:] + arms[:k]:
                t = time.perf_counter()
                res = plan(rts[b], current, goal, pose, opts, seed=rep, stage=stage == "staged")
                times[(b, stage)].append(time.perf_counter() - t)
                actions.setdefault((b, rep), {})[stage] = res.actions
        for b in backends:
            same = max(float(np.abs(v["host"] - v["staged"]).max()) for (bb, _), v in actions.items() if bb == b)
            row = {"backend": b, "runtime": rts[b].describe(), "host_s": times[(b, "host")],
                   "staged_s": times[(b, "staged")], "host_median_s": float(np.median(times[(b, "host")])),
                   "staged_median_s": float(np.median(times[(b, "staged")])), "max_action_diff_host_vs_staged": same}
            row["host_over_staged"] = row["host_median_s"] / row["staged_median_s"]
            out["rows"].append(row)
            print(f"{b}: host-context {row['host_median_s']:.3f} s, staged {row['staged_median_s']:.3f} s "
                  f"(median of {a.reps}): host / staged = {row['host_over_staged']:.3f}; plans differ by {same:.1e}",
                  flush=True)
        base = {r["backend"]: r for r in out["rows"]}
        if "torch-reference" in base:   # every row against the way torch planned before: reference, host context
            before = base["torch-reference"]["host_median_s"]
            out["vs_torch_before"] = {f"{r['backend']} {s}": before / r[f"{s}_median_s"]
                                      for r in out["rows"] for s in ("host", "staged")}
            print("torch-reference host-context time / each arm's:", {k: round(v, 3) for k, v in
                                                                      out["vs_torch_before"].items()})
    write_json_atomic(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

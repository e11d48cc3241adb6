"""CEM planning with the world model: the inner loop of MPC on a robot.

Rolls 300 sampled action sequences as one batch per iteration through a runtime (see
`vitac_deploy.planning` for the algorithm); here on the built-in default model with seeded random
weights. `vitac-deploy bench --plan` times the same plan against the upstream way.

    python examples/plan_cem.py --device cuda         # exports the default model to a temp dir
    python examples/plan_cem.py --samples 8 --iterations 2   # on a CPU (the full plan takes hours there)
    python examples/plan_cem.py --artifact DIR --samples 64 --iterations 5
    python examples/plan_cem.py --artifact ENGINE.plan  # TensorRT, on the robot
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from vitac_deploy.planning import CEMOptions, cem_plan, planning_problem
from vitac_deploy.runtimes import open_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, help="export artifact or ENGINE.plan (default: export the default model now)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default=None)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--elites", type=int, default=30)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--horizon", type=int, default=6)
    ap.add_argument("--context", type=int, default=2, help="context frames (history + current)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        art = args.artifact
        if art is None:
            from vitac_deploy import PredictorConfig
            from vitac_deploy.exporters import ExportOptions, export_artifact
            from vitac_deploy.reference import random_predictor

            art = Path(tmp) / "artifact"
            print("exporting the default model (seeded random weights)...")
            export_artifact(random_predictor(PredictorConfig.preset("vitac-l384"), args.seed), art,
                            ExportOptions(precisions=["fp32", "fp16"], first_frame_graph=False))
        rt = open_runtime(art, backend=args.backend, device=args.device, max_batch=args.samples)
        cfg = rt.cfg
        if args.context + args.horizon - 1 > cfg.max_frames:
            raise SystemExit(f"context {args.context} + horizon {args.horizon} - 1 exceeds max_frames {cfg.max_frames}")
        context, goal, state0, history = planning_problem(cfg, args.context, args.seed)
        opts = CEMOptions(args.samples, args.elites, args.iterations, args.horizon, args.seed)
        print(f"CEM with {rt.describe()}: {opts.samples} samples, {opts.elites} elites, "
              f"{opts.iterations} iterations, horizon {opts.horizon}, {args.context} context frames")
        res = cem_plan(rt, context, goal, state0, history, opts,
                       on_iteration=lambda i, n, s: print(f"  iteration {i:2d}/{n}: best L1 {s:.6f}"))
        rollouts = opts.samples * opts.iterations
        print(f"plan time {res.seconds:.2f} s, {rollouts / res.seconds:.1f} rollouts/s, "
              f"{rollouts * opts.horizon / res.seconds:.1f} predicted frames/s; best L1 {res.score:.4f}")
        print("first planned action:", np.round(res.actions[0], 3))


if __name__ == "__main__":
    main()

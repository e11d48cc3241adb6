"""Plan the way V-JEPA 2-AC plans: the upstream CEM planner through a runtime, on the device.

Upstream settings by default (400 samples, top 10, 10 CEM steps, horizon 2, momentum 0.15,
maxnorm 0.05); here on the built-in default model with seeded random weights and a seeded
planning problem (normalized current and goal features, a pose). The energies are computed where
the rollout runs: per CEM step only the samples' energies reach the host.
`vitac-deploy bench --plan` times the same plan against the upstream way.

    python examples/plan_cem.py --device cuda                      # exports the default model to a temp dir
    python examples/plan_cem.py --samples 16 --topk 4 --cem-steps 2   # on a CPU (the full plan takes minutes there)
    python examples/plan_cem.py --artifact DIR --chunk 64          # at most 64 samples at once (memory)
    python examples/plan_cem.py --artifact ENGINE.plan             # TensorRT, on the robot
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from vitac_deploy.planning import CEMOptions, plan, planning_problem
from vitac_deploy.runtimes import open_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, help="export artifact or ENGINE.plan (default: export the default model now)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default=None)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--cem-steps", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=2, help="the planner's rollout: actions planned")
    ap.add_argument("--maxnorm", type=float, default=0.05)
    ap.add_argument("--chunk", type=int, default=None, help="samples rolled out at once (default: all)")
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
        rt = open_runtime(art, backend=args.backend, device=args.device, max_batch=args.chunk or args.samples,
                          max_frames=args.horizon)
        current, goal, pose = planning_problem(rt.cfg, args.seed)
        opts = CEMOptions(rollout=args.horizon, samples=args.samples, topk=args.topk, cem_steps=args.cem_steps,
                          maxnorm=args.maxnorm)
        print(f"CEM with {rt.describe()}: {opts.samples} samples, top {opts.topk}, {opts.cem_steps} steps, "
              f"horizon {opts.rollout}")
        res = plan(rt, current, goal, pose, opts, seed=args.seed, chunk=args.chunk,
                   on_step=lambda i, n, e: print(f"  step {i:2d}/{n}: lowest energy {e:.6f}"))
        rollouts = opts.samples * opts.cem_steps
        print(f"plan time {res.seconds:.2f} s ({res.chunk} samples at once), {rollouts / res.seconds:.1f} rollouts/s, "
              f"{rollouts * opts.rollout / res.seconds:.1f} predicted frames/s")
        print("planned actions (the robot executes the first):")
        print(np.round(res.actions, 4))


if __name__ == "__main__":
    main()

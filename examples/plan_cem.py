"""CEM planning with the world model: the inner loop of MPC on a robot.

Samples action sequences, rolls every sample out as ONE batch through the runtime, scores them by
the L1 distance between predicted and goal features, refits the sampling distribution to the
elites, repeats. Setup as in V-JEPA 2 / jepa-wms (300 samples, 30 iterations, horizon 6), here on
the built-in default model with seeded random weights.

    python examples/plan_cem.py                       # exports the default model to a temp dir
    python examples/plan_cem.py --artifact DIR --samples 64 --iterations 5

The observed history is shared by every sample: with --context 2, frame 0 and its executed action
are computed once at batch 1 and their KV cache broadcast to all samples. The current frame (the
last context frame) carries the action being planned, so its keys/values differ per sample and
are computed in the batch (upstream conditions frame t on action t).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from vitac_deploy.runtimes import open_runtime


def plan(rt, context: np.ndarray, goal: np.ndarray, state0: np.ndarray, history_actions: np.ndarray,
         samples: int, elites: int, iterations: int, horizon: int, seed: int = 0, verbose: bool = True):
    """Returns the planned action sequence [horizon, A] and the best score."""
    cfg = rt.cfg
    A, C = cfg.action_dim, context.shape[1]
    rng = np.random.default_rng(seed)
    mean, std = np.zeros((horizon, A), np.float32), np.ones((horizon, A), np.float32)
    # frame t carries action t; the history actions (frames 0..C-2) are the same for every sample
    hist = np.broadcast_to(history_actions, (samples, C - 1, A))
    best = (np.inf, mean)
    for it in range(iterations):
        cand = (mean + std * rng.standard_normal((samples, horizon, A))).astype(np.float32)
        actions = np.concatenate([hist, cand], axis=1)                   # [S, C-1+horizon, A]
        states = np.broadcast_to(state0, (samples, C, A)).astype(np.float32)
        preds = rt.rollout(context, actions, states, horizon, state_update="delta")  # [S, H, N, D]
        score = np.abs(preds[:, -1] - goal).mean(axis=(1, 2))            # L1 to the goal features
        order = np.argsort(score)[:elites]
        mean, std = cand[order].mean(0), cand[order].std(0) + 1e-3
        if score[order[0]] < best[0]:
            best = (float(score[order[0]]), cand[order[0]])
        if verbose:
            print(f"  iteration {it + 1:2d}/{iterations}: best L1 {score[order[0]]:.6f}, "
                  f"elite mean {score[order].mean():.6f}, worst sample {score.max():.6f}")
    return best[1], best[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, help="export artifact (default: export the default model now)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="cpu")
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
        rng = np.random.default_rng(args.seed)
        N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
        context = (12 * rng.standard_normal((1, args.context, N, D))).astype(np.float32)   # raw encoder features
        goal_raw = 12 * rng.standard_normal((N, D))
        goal = ((goal_raw - goal_raw.mean(-1, keepdims=True)) / goal_raw.std(-1, keepdims=True)).astype(np.float32)
        state0 = rng.standard_normal((1, args.context, A)).astype(np.float32)
        history = rng.standard_normal((1, args.context - 1, A)).astype(np.float32)
        print(f"CEM with {rt.describe()}: {args.samples} samples, {args.elites} elites, "
              f"{args.iterations} iterations, horizon {args.horizon}, {args.context} context frames")
        t0 = time.perf_counter()
        actions, score = plan(rt, context, goal, state0, history, args.samples, args.elites, args.iterations,
                              args.horizon, args.seed)
        secs = time.perf_counter() - t0
        rollouts = args.samples * args.iterations
        print(f"plan time {secs:.2f} s, {rollouts / secs:.1f} rollouts/s, "
              f"{rollouts * args.horizon / secs:.1f} predicted frames/s; best L1 {score:.4f}")
        print("first planned action:", np.round(actions[0], 3))


if __name__ == "__main__":
    main()

"""CEM planning through a runtime: the inner loop of MPC on a robot (numpy only).

Samples action sequences, rolls every sample out as ONE batch, scores them by the L1 distance
between the last predicted frame and the goal features, refits the sampling distribution to the
elites, repeats. The V-JEPA 2 setup is 300 samples, 30 iterations, horizon 6.

The observed history is shared by every sample: with 2 context frames, frame 0 and its executed
action run once at batch 1 and their KV cache is broadcast to all samples. The current frame (the
last context frame) carries the action being planned, so it runs in the batch (upstream conditions
frame t on action t).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np


@dataclass
class CEMOptions:
    """Every planning flag of `vitac-deploy bench --plan`, as a Python argument."""

    samples: int = 300
    elites: int = 30
    iterations: int = 30
    horizon: int = 6
    seed: int = 0


@dataclass
class CEMResult:
    actions: np.ndarray                # [horizon, A], the best sequence found
    score: float                       # its L1 distance to the goal
    seconds: float                     # the whole plan
    iteration_seconds: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)   # best score per iteration


def cem_plan(rt, context: np.ndarray, goal: np.ndarray, state0: np.ndarray, history_actions: np.ndarray,
             opts: CEMOptions, on_iteration: Optional[Callable[[int, int, float], None]] = None) -> CEMResult:
    """Plan `opts.horizon` actions from raw context features [1, C, N, D] towards normalized goal
    features [N, D]. state0 [1, C, A]; history_actions [1, C-1, A] (executed before the current
    frame). `rt` is any object with `cfg` and the Runtime's `rollout`."""
    A, C = rt.cfg.action_dim, context.shape[1]
    if not 1 <= opts.elites <= opts.samples:
        raise ValueError(f"need 1 <= elites <= samples, got {opts.elites} and {opts.samples}")
    rng = np.random.default_rng(opts.seed)
    mean = np.zeros((opts.horizon, A), np.float32)
    std = np.ones((opts.horizon, A), np.float32)
    hist = np.broadcast_to(history_actions, (opts.samples, C - 1, A))
    states = np.ascontiguousarray(np.broadcast_to(state0, (opts.samples, C, A)), np.float32)
    best_score, best = np.inf, mean
    result = CEMResult(mean, np.inf, 0.0)
    t_start = time.perf_counter()
    for it in range(opts.iterations):
        t0 = time.perf_counter()
        cand = (mean + std * rng.standard_normal((opts.samples, opts.horizon, A))).astype(np.float32)
        actions = np.concatenate([hist, cand], axis=1)                       # [S, C-1+H, A]
        preds = rt.rollout(context, actions, states, opts.horizon, state_update="delta")
        score = np.abs(preds[:, -1] - goal).mean(axis=(1, 2))
        order = np.argsort(score)[:opts.elites]
        mean, std = cand[order].mean(0), cand[order].std(0) + 1e-3
        if score[order[0]] < best_score:
            best_score, best = float(score[order[0]]), cand[order[0]]
        result.iteration_seconds.append(time.perf_counter() - t0)
        result.scores.append(float(score[order[0]]))
        if on_iteration:
            on_iteration(it + 1, opts.iterations, float(score[order[0]]))
    result.actions, result.score = best, best_score
    result.seconds = time.perf_counter() - t_start
    return result


def planning_problem(cfg, context: int = 2, seed: int = 0):
    """Seeded raw context [1, C, N, D], normalized goal [N, D], state0 [1, C, A], history [1, C-1, A]."""
    rng = np.random.default_rng(seed)
    N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
    ctx = (12 * rng.standard_normal((1, context, N, D))).astype(np.float32)
    goal_raw = 12 * rng.standard_normal((N, D))
    goal = ((goal_raw - goal_raw.mean(-1, keepdims=True)) / goal_raw.std(-1, keepdims=True)).astype(np.float32)
    state0 = rng.standard_normal((1, context, A)).astype(np.float32)
    history = rng.standard_normal((1, context - 1, A)).astype(np.float32)
    return ctx, goal, state0, history

"""A seeded planning problem for benchmarks and examples (numpy only): current and goal features
normalized as the encoder path returns them, and a pose."""

from __future__ import annotations

import numpy as np


def _normalized(x: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)).astype(np.float32)


def planning_problem(cfg, seed: int = 0):
    """current [1, N, D], goal [1, N, D] (normalized, realistic raw magnitudes before), pose [1, A]
    (a Franka-like pose for 7-dim models: xyz, Euler angles, gripper in [0, 1])."""
    rng = np.random.default_rng(seed)
    N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
    offset = 0.5 * rng.standard_normal((1, 1, D))          # per-channel offsets, as real encoders have
    current = _normalized(12 * (rng.standard_normal((1, N, D)) + offset), cfg.feature_norm_eps)
    goal = _normalized(12 * (rng.standard_normal((1, N, D)) + offset), cfg.feature_norm_eps)
    if A == 7:
        pose = np.concatenate([rng.uniform(0.3, 0.7, 3), rng.uniform(-np.pi, np.pi, 3), rng.uniform(0, 1, 1)])[None]
    else:
        pose = rng.standard_normal((1, A))
    return current, goal, pose.astype(np.float32)

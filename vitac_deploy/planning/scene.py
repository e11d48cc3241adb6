"""The scene a plan starts from: the predictor and encoder runtimes, the encoded observation and
goal, and the robot's pose. Shared by `vitac-deploy plan` and `energy-landscape`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..inputs import parse_pose


@dataclass
class Scene:
    """What both commands start from: runtimes, the encoded observation and goal, the pose."""

    runtime: Any
    encoder: Any
    current: np.ndarray     # [1, N, D] normalized
    goal: np.ndarray        # [1, N, D] normalized
    pose: np.ndarray        # [1, A]
    encode_s: float
    encoder_path: Path


def open_scene(artifact: Path, observation: list[Path], goal: list[Path], pose: str, encoder: Optional[Path] = None,
               backend: str = "auto", device: Optional[str] = None, precision: Optional[str] = None,
               max_batch: Optional[int] = None, max_frames: Optional[int] = None) -> Scene:
    """Read the camera frames (checked first: they cost nothing), open the models
    (`runtimes.open_models`) and encode the last frame of the observation and of the goal (in one
    batch of two when the cameras agree in size)."""
    from ..encoder import read_images
    from ..runtimes import open_models

    obs, target = read_images(observation), read_images(goal)
    rt, enc, enc_path = open_models(artifact, encoder, backend, device, precision, max_batch, max_frames)
    t0 = time.perf_counter()
    # the last frame of each is the one planned from / towards (upstream plans from one frame);
    # one batch of two frames when the cameras agree in size
    if obs.shape[1:] == target.shape[1:]:
        feats = enc.encode(np.stack([obs[-1:], target[-1:]]))          # [2, N, D]
        current, goal_f = feats[0:1], feats[1:2]
    else:
        current, goal_f = enc.encode(obs[-1:]), enc.encode(target[-1:])
    encode_s = time.perf_counter() - t0
    N = rt.cfg.tokens_per_frame
    return Scene(rt, enc, current.reshape(1, N, -1), goal_f.reshape(1, N, -1), parse_pose(pose, rt.cfg.action_dim),
                 encode_s, enc_path)

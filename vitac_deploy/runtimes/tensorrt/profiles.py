"""Optimization profiles for the step graphs, from the artifact's IO contract (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

from ...config import PredictorConfig
from ...contract import BATCH, PAST
from ...errors import VitacError

Shape = Tuple[int, ...]  # typing.Tuple: evaluated at import, and Jetsons may run Python 3.8


@dataclass(frozen=True)
class ProfileOptions:
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    max_frames: int = 0      # 0: the model's max_frames
    min_past_frames: int = 1  # 1 when the first frame runs through first.onnx; 0 to try past_len = 0


def check_profile_options(o: ProfileOptions, cfg: PredictorConfig) -> ProfileOptions:
    if not 1 <= o.min_batch <= o.opt_batch <= o.max_batch:
        raise VitacError(f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                         f"{o.min_batch}, {o.opt_batch}, {o.max_batch}")
    frames = o.max_frames or cfg.max_frames
    if not 2 <= frames <= cfg.max_frames:
        raise VitacError(f"--max-frames must be in 2..{cfg.max_frames} (the model's limit), got {frames}")
    return ProfileOptions(o.min_batch, o.opt_batch, o.max_batch, frames, o.min_past_frames)


def step_profile(graph: dict[str, Any], cfg: PredictorConfig, o: ProfileOptions) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every dynamic input of a step or first-frame graph.

    past_len runs over whole frames: from `min_past_frames` to max_frames - 1 (the last frame of a
    rollout is predicted, never cached), optimized for a cache half full.
    """
    L = cfg.tokens_per_step
    lo = o.min_past_frames
    hi = o.max_frames - 1
    opt = max(lo, min(hi, o.max_frames // 2))
    ranges = {BATCH: (o.min_batch, o.opt_batch, o.max_batch), PAST: (lo * L, opt * L, hi * L)}
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for spec in graph["inputs"]:
        dims = spec["shape"]
        shapes = tuple(tuple(ranges[d][i] if isinstance(d, str) else int(d) for d in dims) for i in range(3))
        out[spec["name"]] = shapes  # type: ignore[assignment]
    return out

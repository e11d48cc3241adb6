"""Parity of a runtime against the PyTorch reference recomputing the whole sequence (upstream way).

Used by `export` (every graph is checked before the artifact exists) and by `validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..config import PredictorConfig
from .metrics import TOLERANCES, Tolerance, frame_errors, within


@dataclass
class ParityInputs:
    """Seeded rollout inputs with realistic raw magnitudes (|x| up to ~60)."""

    context: np.ndarray
    actions: np.ndarray
    states: np.ndarray
    extrinsics: Optional[np.ndarray]
    horizon: int

    @classmethod
    def make(cls, cfg: PredictorConfig, batch: int = 2, frames: int = 4, context: int = 1,
             seed: int = 0, scale: float = 12.0) -> "ParityInputs":
        frames = min(frames, cfg.max_frames)
        context = min(context, frames)
        rng = np.random.default_rng(seed)
        N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
        # per-channel offsets as real encoders have, plus noise
        ctx = scale * (rng.standard_normal((batch, context, N, D)) + 0.5 * rng.standard_normal((1, 1, 1, D)))
        acts = rng.standard_normal((batch, frames, A))
        states = rng.standard_normal((batch, frames, A))
        ext = rng.standard_normal((batch, frames, A - 1)) if cfg.use_extrinsics else None
        f32 = lambda a: None if a is None else a.astype(np.float32)  # noqa: E731
        return cls(f32(ctx), f32(acts), f32(states), f32(ext), horizon=frames - context + 1)


@dataclass
class ParityReport:
    precision: str
    tolerance: Tolerance
    rollout: list[dict[str, Any]]
    teacher_forcing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return within(self.rollout, self.tolerance) and within(self.teacher_forcing, self.tolerance)

    def worst(self, key: str = "max_abs") -> float:
        vals = [e[key] for e in self.rollout + self.teacher_forcing]
        return min(vals) if key == "cosine" else max(vals)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "passed": self.passed, "tolerance": self.tolerance.to_dict(),
                "rollout": self.rollout, "teacher_forcing": self.teacher_forcing}


def reference_rollout(model, inputs: ParityInputs) -> np.ndarray:
    """The reference (float32, full recompute every step, as upstream)."""
    import torch

    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    with torch.no_grad():
        return model.rollout(t(inputs.context), t(inputs.actions), t(inputs.states), inputs.horizon,
                             t(inputs.extrinsics), use_cache=False).numpy()


def reference_teacher_forcing(model, frames: np.ndarray, inputs: ParityInputs) -> np.ndarray:
    """Predictions of frames 1..T-1 given the TRUE raw frames [B, T, N, D], normalized."""
    import torch

    B, T, N, D = frames.shape
    h = model.normalize(torch.from_numpy(frames))  # the identity when normalize_reps is off
    ex = None if inputs.extrinsics is None else torch.from_numpy(inputs.extrinsics[:, :T - 1])
    with torch.no_grad():
        out = model(h[:, :T - 1].reshape(B, (T - 1) * N, D), torch.from_numpy(inputs.actions[:, :T - 1]),
                    torch.from_numpy(inputs.states[:, :T - 1]), ex)
    return model.normalize(out).reshape(B, T - 1, N, D).numpy()


def runtime_teacher_forcing(rt, frames: np.ndarray, inputs: ParityInputs) -> np.ndarray:
    """The runtime streaming the true frames with `append`."""
    B, T = frames.shape[:2]
    rt.reset(B)
    preds = []
    for t in range(T - 1):
        ex = None if inputs.extrinsics is None else inputs.extrinsics[:, t]
        preds.append(rt.append(frames[:, t], inputs.actions[:, t], inputs.states[:, t], ex))
    return np.stack(preds, 1)


def check_parity(rt, model, inputs: ParityInputs, precision: str,
                 tolerance: Optional[Tolerance] = None, teacher_forcing: bool = True) -> ParityReport:
    """Closed-loop rollout and teacher forcing of `rt` against the full-recompute reference."""
    tol = tolerance or TOLERANCES[precision]
    ref = reference_rollout(model, inputs)
    got = rt.rollout(inputs.context, inputs.actions, inputs.states, inputs.horizon, inputs.extrinsics)
    report = ParityReport(precision, tol, frame_errors(got, ref))
    if teacher_forcing:
        # true frames: the context then the reference's own predictions re-scaled to raw magnitudes
        frames = np.concatenate([inputs.context[:, :1], 12.0 * ref[:, :-1]], axis=1) if ref.shape[1] > 1 \
            else inputs.context[:, :1]
        if frames.shape[1] >= 2:
            report.teacher_forcing = frame_errors(runtime_teacher_forcing(rt, frames, inputs),
                                                  reference_teacher_forcing(model, frames, inputs))
    return report

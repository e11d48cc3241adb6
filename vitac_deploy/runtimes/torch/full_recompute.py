"""The upstream way behind the runtime API: the PyTorch reference recomputing the whole sequence at
every predicted frame (`use_cache=False`) and scoring on the host. The baseline every benchmark
and planner comparison runs against, on the same device and precision."""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from ...errors import BackendUnavailable, VitacError
from ...precision import precision as get_precision
from ..base import StateUpdate, host_energy


class FullRecompute:
    """`rollout`, `set_goal`, `rollout_energy` like a Runtime, without a cache."""

    backend = "baseline (torch, full recompute)"

    def __init__(self, model, device: str = "cpu", precision: str = "fp32", max_batch: Optional[int] = None):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("the full-recompute baseline runs on torch, which has no CUDA device here "
                                     "(install a CUDA build of torch, or use --baseline none)")
        self._torch, self.device, self.precision = torch, device, precision
        self.dtype = get_precision(precision).torch_dtype(torch)
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.cfg = model.cfg
        self.max_batch, self.max_frames = max_batch, model.cfg.max_frames
        self._goal: Optional[np.ndarray] = None
        self.lock = threading.RLock()   # as Runtime: a plan holds it across its goal and rollouts

    def _states(self, states, actions, C: int, state_update: StateUpdate) -> np.ndarray:
        if state_update in (None, "given"):
            return np.asarray(states, np.float32)
        step = (lambda s, a: s + a) if state_update == "delta" else state_update   # as Runtime._states
        full = np.empty(actions.shape, np.float32)
        full[:, :C] = states[:, :C]
        for t in range(C - 1, actions.shape[1] - 1):
            full[:, t + 1] = step(full[:, t], actions[:, t])
        return full

    def rollout(self, context, actions, states, horizon, extrinsics=None, state_update: StateUpdate = None,
                on_frame=None) -> np.ndarray:
        torch = self._torch
        actions = np.asarray(actions, np.float32)
        B, C = actions.shape[0], context.shape[1]
        states = self._states(states, actions, C, state_update)
        t = lambda a: None if a is None else torch.from_numpy(np.array(a, np.float32)).to(self.device, self.dtype)  # noqa: E731
        ctx = t(np.broadcast_to(context, (B,) + context.shape[1:]))
        with torch.no_grad():
            out = self.model.rollout(ctx, t(actions), t(states), horizon, t(extrinsics), use_cache=False)
        return out.float().cpu().numpy()

    def set_goal(self, goal) -> None:
        g = np.asarray(goal, np.float32)
        self._goal = g[0] if g.ndim == 3 else g

    def rollout_energy(self, context, actions, states, horizon, extrinsics=None, state_update: StateUpdate = None,
                       on_frame=None) -> np.ndarray:
        if self._goal is None:
            raise VitacError("call set_goal(goal) before rollout_energy()")
        preds = self.rollout(context, actions, states, horizon, extrinsics, state_update)
        return host_energy(preds[:, -1], self._goal)

    def describe(self) -> str:
        return f"{self.backend} ({self.device}, {self.precision})"

    def close(self) -> None:
        pass

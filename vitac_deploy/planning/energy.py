"""The planner's energy of action sequences, through any runtime (numpy only).

`E = mean over N x D of |z_pred - z_goal|` of the LAST predicted frame (docs/planner.md section 3).
The rollout starts from the current observation's normalized features; poses start at the
current pose and follow the pose update. Samples are rolled out in chunks of at most the
runtime's batch; the energy is computed where the rollout runs (`Runtime.rollout_energy`), so a
chunk moves its actions in and its energies out, never its predictions. The observation is staged
on the runtime once per plan (`Runtime.stage_context`) and broadcast there: per chunk, only its
actions and the poses they lead to (F x (2A [+ A-1]) floats a sample) go in and its energies
(one float a sample) come out.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Union

import numpy as np

from ..contract import check_normalized, raw_equivalent
from ..errors import VitacError
from ..inputs import check_pose_values

PoseUpdate = Union[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]
def check_features(name: str, x, cfg) -> np.ndarray:
    """[1, N, D] (or [N, D]) float features of the model's shape, finite (and normalized where
    the model normalizes its features)."""
    a = np.asarray(x)
    N, D = cfg.tokens_per_frame, cfg.embed_dim
    if a.ndim == 2:
        a = a[None]
    if a.shape != (1, N, D) or a.dtype.kind != "f":
        raise VitacError(f"{name} must be float features of shape [1, {N}, {D}], got {a.dtype} {list(a.shape)}")
    if not np.isfinite(a).all():
        raise VitacError(f"{name} contains NaN or inf")
    if cfg.normalize_reps:
        check_normalized(name, a)
    return np.ascontiguousarray(a, np.float32)


def check_pose(pose, action_dim: int) -> np.ndarray:
    p = np.asarray(pose)
    if p.shape != (1, action_dim) or p.dtype.kind not in "fiu":
        raise VitacError(f"pose must be a real array of shape [1, {action_dim}], got {p.dtype} {list(p.shape)}")
    return np.ascontiguousarray(check_pose_values(p, "pose"), np.float32)


def default_pose_update(action_dim: int) -> PoseUpdate:
    """The upstream pose update for 7-dim (xyz, Euler xyz, gripper) models; a delta otherwise."""
    if action_dim == 7:
        from .pose import compute_new_pose

        return compute_new_pose
    return "delta"


def chunk_size(runtime, samples: int, chunk: Optional[int] = None) -> int:
    """The samples rolled out at once: at most `chunk` (default: all) and the runtime's max_batch."""
    if chunk is not None and (not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1):
        raise VitacError(f"chunk must be a positive integer, got {chunk!r}")
    limit = getattr(runtime, "max_batch", None) or samples
    return int(min(samples, limit, chunk or samples))


def runtime_lock(runtime):
    """The runtime's lock, held across a whole plan: its goal and buffers are shared state."""
    return getattr(runtime, "lock", None) or contextlib.nullcontext()


def rollout_energies(runtime, context: np.ndarray, pose: np.ndarray, actions: np.ndarray,
                     pose_update: PoseUpdate, chunk: int) -> np.ndarray:
    """Energies [S] of actions [S, H, A] from `context` (graph input [1, 1, N, D]) and pose [1, A],
    the goal already staged on the runtime (`set_goal`)."""
    S, H, A = actions.shape
    out = np.empty(S, np.float32)
    for lo in range(0, S, chunk):
        hi = min(S, lo + chunk)
        states = np.ascontiguousarray(np.broadcast_to(pose[:, None], (hi - lo, 1, A)), np.float32)
        out[lo:hi] = runtime.rollout_energy(context, actions[lo:hi], states, H, state_update=pose_update)
    if not np.isfinite(out).all():
        describe = getattr(runtime, "describe", lambda: type(runtime).__name__)()
        raise VitacError(f"{int((~np.isfinite(out)).sum())} of {S} energies are NaN or inf on {describe}: the "
                         f"predictions overflowed (an fp16 engine fed huge actions?); check the artifact with "
                         f"`vitac-deploy validate`")
    return out


def features_input(runtime, name: str, x, cfg):
    """(features [1, N, D], on_device): a host array checked by `check_features`, or a device array
    the runtime takes as it is (`Runtime.device_features`: e.g. the encoder's output kept on the
    device), shape-checked here; its normalization is checked where the runtime stages it."""
    take = getattr(runtime, "device_features", None)
    dev = take(x, name) if take is not None else None
    if dev is None:
        return check_features(name, x, cfg), False
    N, D = cfg.tokens_per_frame, cfg.embed_dim
    if tuple(dev.shape) not in ((N, D), (1, N, D)):
        raise VitacError(f"{name} must be features of shape [1, {N}, {D}], got {list(dev.shape)}")
    return _reshaped(dev, (1, N, D)), True


def _reshaped(dev, shape: tuple):
    """A device array (a runtimes.arrays.DeviceArray, or a tensor) seen with another shape."""
    import dataclasses

    from ..runtimes.arrays import DeviceArray

    return dataclasses.replace(dev, shape=shape) if isinstance(dev, DeviceArray) else dev.reshape(shape)


def stage_contexts(runtime, contexts: list, on_device: bool = False):
    """The contexts (one per robot: graph inputs [1, 1, N, D], or with `on_device` the normalized
    device features [1, N, D] that `features_input` gave) staged once on the runtime, a StagedContext
    of R contexts; the list itself for a runtime that cannot stage (the full-recompute baseline
    takes host arrays)."""
    stage = getattr(runtime, "stage_context", None)
    if stage is None:
        return contexts
    if on_device:
        return stage([_reshaped(c, (1, 1) + tuple(c.shape[1:])) for c in contexts], normalized=True)
    return stage(contexts)


def rollout_energies_many(runtime, contexts, goals: list, poses: list, actions: np.ndarray, samples: int,
                          pose_update: PoseUpdate, chunk: int) -> np.ndarray:
    """Energies [R * S] of the samples of R robots rolled out together: actions [R * S, H, A], robot r's
    S samples at rows r*S..(r+1)*S-1, each from its own context [1, 1, N, D] (a list of R, or the
    StagedContext `stage_contexts` made of them), pose [1, A] and goal [1, N, D]. The rows are
    chunked to `chunk` regardless of robot; a chunk that holds one robot runs exactly as
    `rollout_energies` runs it, one that holds several scores each robot's rows against its goal
    (`Runtime.rollout_energy_groups`). Each row's energy is the one it gets alone."""
    from ..runtimes.staging import StagedContext

    staged = contexts if isinstance(contexts, StagedContext) else None
    R = staged.contexts if staged is not None else len(contexts)
    context_of = (lambda r: staged.for_robot(r)) if staged is not None else (lambda r: contexts[r])  # noqa: E731
    if R == 1:   # one robot: the single-robot path itself, the goal staged once
        runtime.set_goal(goals[0])
        return rollout_energies(runtime, context_of(0), poses[0], actions, pose_update, chunk)
    S, H = samples, actions.shape[1]
    owner = np.repeat(np.arange(R), S)
    all_ctx = np.concatenate(contexts) if staged is None else None                # [R, 1, N, D]
    all_pose = np.concatenate(poses)                                               # [R, A]
    grouped = hasattr(runtime, "rollout_energy_groups")
    out = np.empty(R * S, np.float32)
    lo = 0
    while lo < R * S:
        hi = min(R * S, lo + chunk)
        if not grouped:   # a runtime without per-row goals (full recompute): a chunk never spans robots
            hi = min(hi, (owner[lo] + 1) * S)
        rows = owner[lo:hi]
        states = np.ascontiguousarray(all_pose[rows][:, None], np.float32)          # [n, 1, A]
        if rows[0] == rows[-1]:
            r = int(rows[0])
            runtime.set_goal(goals[r])
            out[lo:hi] = runtime.rollout_energy(context_of(r), actions[lo:hi], states, H, state_update=pose_update)
        else:
            present = np.unique(rows)
            groups = [(int(np.searchsorted(rows, r)), int(np.searchsorted(rows, r, "right")), i)
                      for i, r in enumerate(present)]
            context = staged.for_groups([(a, b, int(present[i])) for a, b, i in groups]) if staged is not None \
                else np.ascontiguousarray(all_ctx[rows])
            out[lo:hi] = runtime.rollout_energy_groups(
                context, actions[lo:hi], states, H, [goals[r] for r in present], groups, state_update=pose_update)
        lo = hi
    if not np.isfinite(out).all():
        describe = getattr(runtime, "describe", lambda: type(runtime).__name__)()
        raise VitacError(f"{int((~np.isfinite(out)).sum())} of {R * S} energies are NaN or inf on {describe}: the "
                         f"predictions overflowed; check the artifact with `vitac-deploy validate`")
    return out


def energies(runtime, current, goal, pose, actions, pose_update: Optional[PoseUpdate] = None,
             chunk: Optional[int] = None) -> np.ndarray:
    """The energy of given action sequences [S, H, A] from the current features [1, N, D]
    (normalized) and pose [1, A] towards the goal features [1, N, D]: [S] float32.

    With H = 1 on a grid of actions this is upstream's energy landscape."""
    cfg = runtime.cfg
    (current, on_device), (goal, _) = features_input(runtime, "current", current, cfg), \
        features_input(runtime, "goal", goal, cfg)
    A = cfg.action_dim
    pose = check_pose(pose, A)
    actions = np.asarray(actions)
    if actions.ndim != 3 or actions.shape[2] != A or actions.shape[0] < 1 or actions.shape[1] < 1 \
            or actions.dtype.kind not in "fiu":
        raise VitacError(f"actions must be a real array of shape [S, H, {A}], got {actions.dtype} {list(actions.shape)}")
    n = chunk_size(runtime, actions.shape[0], chunk)
    with runtime_lock(runtime):
        runtime.set_goal(goal)
        context = stage_contexts(runtime, [current if on_device else graph_context(current, cfg)], on_device)
        return rollout_energies(runtime, context if not isinstance(context, list) else context[0], pose,
                                np.ascontiguousarray(actions, np.float32), pose_update or default_pose_update(A), n)


def graph_context(current: np.ndarray, cfg) -> np.ndarray:
    """The runtime's context input [1, 1, N, D] for the current features (see raw_equivalent)."""
    if not cfg.normalize_reps:   # the graph takes features as they are
        return current[:, None]
    return raw_equivalent(current, cfg.feature_norm_eps)[:, None]

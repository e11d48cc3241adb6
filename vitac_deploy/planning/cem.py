"""The CEM planner of V-JEPA 2-AC (`WorldModel.infer_next_action` / `cem`), exact (numpy only).

docs/planner.md section 5. Each CEM step draws `samples` action sequences of `rollout` steps from a
per-step normal distribution over the sampled action entries (xyz and gripper for the 7-dim
Franka space), clips them, rolls every sequence out from the current observation and pose through
a runtime, keeps the `topk` lowest energies, and moves the distribution towards the elites' mean
and (unbiased) standard deviation with momentum. The plan is the final mean, the gripper entry
zeroed below a threshold. Given the same standard-normal draws (`noise`), it returns upstream's plan.

One algorithm for every model: `ActionSpace` says which action entries are sampled, which one is
a gripper (sampled with std 1, clipped to +-0.75, its own momentum), and how poses follow actions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import VitacError
from ..inputs import MAX_SAMPLES, check_action_bound, check_seed
from .energy import (PoseUpdate, check_pose, chunk_size, default_pose_update, features_input, graph_context,
                     rollout_energies_many, runtime_lock, stage_contexts)


@dataclass
class CEMOptions:
    """The upstream planner's options, names and `WorldModel` defaults."""

    rollout: int = 2                     # horizon H: actions planned (and frames predicted) per sample
    samples: int = 400
    topk: int = 10                       # elites
    cem_steps: int = 10
    momentum_mean: float = 0.15
    momentum_mean_gripper: float = 0.15
    momentum_std: float = 0.15
    momentum_std_gripper: float = 0.15
    maxnorm: float = 0.05                # bound of every non-gripper sampled entry (and its initial std)
    close_gripper: Optional[int] = None  # from this horizon step on, the gripper entry is 1.0

    def check(self) -> None:
        for name in ("rollout", "samples", "cem_steps"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise VitacError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("samples", "cem_steps"):
            if getattr(self, name) > MAX_SAMPLES:
                raise VitacError(f"{name} must be at most {MAX_SAMPLES:,}, got {getattr(self, name)!r}")
        if not _is_int(self.topk) or not 2 <= self.topk <= self.samples:
            raise VitacError(f"topk must be in 2..samples ({self.samples}): the elites' std divides by topk - 1, "
                             f"got {self.topk!r}")
        for name in ("momentum_mean", "momentum_mean_gripper", "momentum_std", "momentum_std_gripper"):
            v = getattr(self, name)
            if not _is_real(v) or not 0.0 <= v <= 1.0:
                raise VitacError(f"{name} must be a number in [0, 1], got {v!r}")
        check_action_bound(self.maxnorm, "maxnorm")
        if self.close_gripper is not None and (not _is_int(self.close_gripper) or self.close_gripper < 0):
            raise VitacError(f"close_gripper must be None or a step index >= 0, got {self.close_gripper!r}")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)


@dataclass(frozen=True)
class ActionSpace:
    """What CEM samples: `sampled` entries of a `dim`-wide action (the rest stay 0); `gripper`, one
    of them, is drawn with std 1, clipped to +-gripper_clip and zeroed in the plan below
    gripper_threshold; every other sampled entry is bounded by maxnorm. `pose_update` gives the
    next pose (state) from a pose and an action."""

    dim: int
    sampled: tuple
    gripper: Optional[int] = None
    gripper_clip: float = 0.75
    gripper_threshold: float = 0.25
    pose_update: PoseUpdate = "delta"

    @classmethod
    def franka(cls) -> "ActionSpace":
        """Upstream: xyz + extrinsic-xyz Euler + gripper; CEM samples xyz and the gripper."""
        return cls(7, (0, 1, 2, 6), gripper=6, pose_update=default_pose_update(7))

    @classmethod
    def euclidean(cls, dim: int) -> "ActionSpace":
        """Every entry sampled like upstream's xyz; poses move by the action (state + action)."""
        return cls(dim, tuple(range(dim)), gripper=None, pose_update="delta")

    @classmethod
    def for_dim(cls, dim: int) -> "ActionSpace":
        return cls.franka() if dim == 7 else cls.euclidean(dim)

    def check(self, action_dim: int) -> None:
        if self.dim != action_dim:
            raise VitacError(f"the action space is {self.dim}-dim but the model takes {action_dim}-dim actions")
        sampled = tuple(self.sampled) if isinstance(self.sampled, (tuple, list)) else None
        if not sampled or not all(_is_int(i) and 0 <= i < self.dim for i in sampled) or len(set(sampled)) != len(sampled):
            raise VitacError(f"sampled entries {self.sampled!r} must be a tuple of distinct indices in 0..{self.dim - 1}")
        if self.gripper is not None and self.gripper not in sampled:
            raise VitacError(f"the gripper entry {self.gripper} must be one of the sampled entries {sampled}")
        if not _is_real(self.gripper_clip) or self.gripper_clip <= 0:
            raise VitacError(f"gripper_clip must be a finite number > 0, got {self.gripper_clip!r}")
        if not _is_real(self.gripper_threshold) or self.gripper_threshold < 0:
            raise VitacError(f"gripper_threshold must be a finite number >= 0, got {self.gripper_threshold!r}")


@dataclass
class PlanResult:
    actions: np.ndarray                  # [rollout, A]: the plan (the robot executes row 0)
    energies: np.ndarray                 # [cem_steps, samples]: every sample's energy, in draw order
    mean: np.ndarray                     # [rollout, k]: the final sampling mean over the sampled entries
    std: np.ndarray                      # [rollout, k]
    chunk: int                           # samples rolled out at once
    seconds: float = 0.0
    step_seconds: list = field(default_factory=list)


def _per_entry(space: ActionSpace, opts: CEMOptions):
    """Initial std, clip bound, mean and std momentum of every sampled entry."""
    grip = [i == space.gripper for i in space.sampled]
    pick = lambda g, o: np.array([g if is_g else o for is_g in grip])  # noqa: E731
    return (pick(1.0, opts.maxnorm), pick(space.gripper_clip, opts.maxnorm),
            pick(opts.momentum_mean_gripper, opts.momentum_mean), pick(opts.momentum_std_gripper, opts.momentum_std))


@dataclass
class PlanRequest:
    """One robot's planning problem for `plan_many`: normalized features [1, N, D] of its current
    observation and goal, its pose [1, A], and its draws (`seed`, or `noise` as `plan` takes it)."""

    current: np.ndarray
    goal: np.ndarray
    pose: np.ndarray
    seed: int = 0
    noise: Optional[np.ndarray] = None


def plan(runtime, current, goal, pose, options: Optional[CEMOptions] = None, noise: Optional[np.ndarray] = None,
         seed: int = 0, space: Optional[ActionSpace] = None, chunk: Optional[int] = None,
         memory_budget: Optional[int] = None,
         on_step: Optional[Callable[[int, int, float], None]] = None, stage: bool = True) -> PlanResult:
    """Plan `options.rollout` actions from the current features [1, N, D] (normalized) and pose
    [1, A] towards the goal features [1, N, D]. The features may stay on the runtime's device (e.g.
    a torch encoder's output tensor for a torch runtime on the same device: `Runtime.device_features`):
    they are then staged there without a host round trip.

    `noise`: the standard normal draws [cem_steps * rollout, samples, k] in upstream draw order
    (step 0 h 0, step 0 h 1, step 1 h 0, ...; k sampled entries: xyz, gripper), used instead of
    `numpy.random.default_rng(seed)`. `chunk`: samples rolled out at once (default: all, at most the
    runtime's max_batch; the plan does not depend on it). `memory_budget` (bytes): the chunk is at
    most the largest the memory model fits in it (planning/memory.py; a runtime allocates for its
    max_batch, or for its first chunk when opened without one). `on_step(step, steps, best_energy)`.
    `stage=False` sends the observation with every rollout instead of staging it once on the
    runtime (the way before staging; for measurements: the plan is the same). It is `plan_many`
    with one robot.
    """
    return plan_many(runtime, [PlanRequest(current, goal, pose, seed, noise)], options, space, chunk,
                     memory_budget, on_step, stage)[0]


def plan_many(runtime, requests: Sequence[PlanRequest], options: Optional[CEMOptions] = None,
              space: Optional[ActionSpace] = None, chunk: Optional[int] = None,
              memory_budget: Optional[int] = None,
              on_step: Optional[Callable[[int, int, float], None]] = None, stage: bool = True) -> list[PlanResult]:
    """Plan for several robots at once: every CEM step rolls out the samples of all of them in one
    batch (R * samples rows, chunked to `chunk` / the runtime's max_batch), each robot with its own
    context, goal, pose, draws, elites and distribution. Each robot's PlanResult is the one `plan`
    returns for it alone (same draws, same per-row rollout and energy). `on_step` gets the best
    energy over all robots."""
    opts = options or CEMOptions()
    if not isinstance(opts, CEMOptions):
        raise VitacError(f"options must be a CEMOptions, got {type(opts).__name__}")
    opts.check()
    cfg = runtime.cfg
    space = space or ActionSpace.for_dim(cfg.action_dim)
    space.check(cfg.action_dim)
    if opts.close_gripper is not None and space.gripper is None:
        raise VitacError("close_gripper needs an action space with a gripper entry")
    if len(requests) < 1:
        raise VitacError("plan_many needs at least one request")
    if not all(isinstance(r, PlanRequest) for r in requests):
        raise VitacError(f"plan_many takes PlanRequests, got {sorted({type(r).__name__ for r in requests})}")
    robots = [_robot(r, opts, space, runtime) for r in requests]
    if len({r.on_device for r in robots}) > 1:
        raise VitacError("give every robot's current features on the host, or every one on the device")
    if robots[0].on_device and not stage:
        raise VitacError("features on the device are staged there: stage=False takes host features")
    n = chunk_size(runtime, opts.samples * len(robots), chunk)
    if memory_budget is not None:
        n = min(n, _fitting_chunk(runtime, memory_budget, opts.rollout, opts.samples * len(robots)))
    with runtime_lock(runtime):
        return _cem(runtime, opts, space, robots, n, on_step, stage)


@dataclass
class _Robot:
    context: np.ndarray      # graph input [1, 1, N, D] (on_device: the normalized device features [1, N, D])
    goal: np.ndarray         # [1, N, D] (a host or device array)
    pose: np.ndarray         # [1, A]
    noise: Optional[np.ndarray]
    rng: np.random.Generator
    on_device: bool = False


def _robot(req: PlanRequest, opts: CEMOptions, space: ActionSpace, runtime) -> _Robot:
    """Check one robot's inputs as `plan` always has (features on the runtime's device: their shape
    here, their normalization where the runtime stages them)."""
    cfg = runtime.cfg
    (current, on_device), (goal, _) = features_input(runtime, "current", req.current, cfg), \
        features_input(runtime, "goal", req.goal, cfg)
    pose = check_pose(req.pose, cfg.action_dim)
    H, S, k = opts.rollout, opts.samples, len(space.sampled)
    noise = req.noise
    if noise is not None:
        noise = np.asarray(noise)
        if noise.shape != (opts.cem_steps * H, S, k) or noise.dtype.kind not in "fiu":
            raise VitacError(f"noise must be a real array of shape [cem_steps * rollout, samples, {k}] = "
                             f"{[opts.cem_steps * H, S, k]}, got {noise.dtype} {list(noise.shape)}")
        if not np.isfinite(noise).all():
            raise VitacError("noise contains NaN or inf")
        noise = noise.astype(np.float64)
    seed = check_seed(req.seed)   # the server's rule, everywhere: 0..2**63-1
    return _Robot(current if on_device else graph_context(current, cfg), goal, pose, noise,
                  np.random.default_rng(seed), on_device)


def _cem(runtime, opts: CEMOptions, space: ActionSpace, robots: list, n: int, on_step,
         stage: bool = True) -> list[PlanResult]:
    cfg = runtime.cfg
    H, S, K, k, R = opts.rollout, opts.samples, opts.topk, len(space.sampled), len(robots)
    std0, bound, m_mean, m_std = _per_entry(space, opts)
    means, stds = [np.zeros((H, k)) for _ in robots], [np.tile(std0, (H, 1)) for _ in robots]
    sampled = list(space.sampled)
    results = [PlanResult(np.zeros((H, cfg.action_dim), np.float32), np.empty((opts.cem_steps, S), np.float32),
                          means[r], stds[r], n) for r in range(R)]
    t_start = time.perf_counter()
    # once per plan, where the runtime computes: a CEM step sends its samples' conditioning, nothing of the context
    contexts = [r.context for r in robots]
    contexts = stage_contexts(runtime, contexts, robots[0].on_device) if stage else contexts
    for step in range(opts.cem_steps):
        t0 = time.perf_counter()
        actions = np.zeros((R, S, H, cfg.action_dim))
        for r, robot in enumerate(robots):
            # one [S, k] draw per horizon step, in upstream's order, from the robot's own generator
            eps = robot.noise[step * H:(step + 1) * H] if robot.noise is not None else \
                np.stack([robot.rng.standard_normal((S, k)) for _ in range(H)])
            a = np.clip(eps * stds[r][:, None] + means[r][:, None], -bound, bound)      # [H, S, k]
            actions[r][:, :, sampled] = a.transpose(1, 0, 2)
        if opts.close_gripper is not None:
            actions[:, :, opts.close_gripper:, space.gripper] = 1.0
        e_all = rollout_energies_many(runtime, contexts, [r.goal for r in robots],
                                      [r.pose for r in robots], actions.reshape(R * S, H, -1).astype(np.float32),
                                      S, space.pose_update, n)
        for r in range(R):
            e = e_all[r * S:(r + 1) * S]
            results[r].energies[step] = e
            elites = actions[r][np.argsort(e, kind="stable")[:K]][:, :, sampled]   # [K, H, k], as rolled out
            means[r] = (1 - m_mean) * elites.mean(0) + m_mean * means[r]
            stds[r] = (1 - m_std) * elites.std(0, ddof=1) + m_std * stds[r]
        dt = time.perf_counter() - t0
        for res in results:
            res.step_seconds.append(dt)
        if on_step:
            on_step(step + 1, opts.cem_steps, float(e_all.min()))
    for r, res in enumerate(results):
        plan_actions = np.zeros((H, cfg.action_dim))
        plan_actions[:, sampled] = means[r]
        if space.gripper is not None:
            g = plan_actions[:, space.gripper]
            plan_actions[:, space.gripper] = np.where(np.abs(g) >= space.gripper_threshold, g, 0.0)
        res.actions, res.mean, res.std = plan_actions.astype(np.float32), means[r], stds[r]
        res.seconds = time.perf_counter() - t_start
    return results


def _fitting_chunk(runtime, budget, horizon: int, samples: int) -> int:
    """The largest chunk the memory model fits in `budget` bytes for this runtime as it allocates:
    for its max_frames (which may exceed the horizon) and, where set, its max_batch."""
    from .memory import largest_chunk

    if not _is_real(budget) or budget < 0:
        raise VitacError(f"memory_budget must be a finite number of bytes >= 0, got {budget!r}")
    layout = getattr(runtime, "memory_layout", None)
    if layout is None:
        raise VitacError(f"{runtime.describe()} has no memory model: give chunk instead of memory_budget")
    frames = max(horizon, getattr(runtime, "max_frames", horizon))
    # pinned host buffers (TensorRT's) count on a Jetson (unified memory): counted always, a few
    # MiB of caution on a discrete GPU
    kw = {"precision": runtime.precision, "backend": layout, "engines": getattr(runtime, "weight_copies", 1),
          "unified": layout.pinned_staging,
          # the static contract's cache (and the fast torch path's) is written in place: one arena, not two
          "double_buffered": getattr(runtime, "cache", "concat") not in ("static", "in-place")}
    fit = largest_chunk(runtime.cfg, int(budget), frames, samples, **kw)
    if fit == 0:
        raise VitacError(f"not even one sample fits a budget of {_size(budget)} with this runtime "
                         f"(max_frames {frames}; see `vitac-deploy info --samples`)")
    max_batch = getattr(runtime, "max_batch", None)
    if max_batch is not None and max_batch > fit:
        best = largest_chunk(runtime.cfg, int(budget), horizon, samples, **kw)   # opened for the horizon alone
        raise VitacError(f"this runtime allocates for max_batch {max_batch}, more than fits {_size(budget)} "
                         f"({fit} samples at its max_frames {frames}): open it with max_frames={horizon} and "
                         f"max_batch={best} (or without max_batch)")
    return fit


def _size(nbytes) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{int(nbytes)} bytes"

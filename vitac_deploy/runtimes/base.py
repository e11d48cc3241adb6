"""The runtime loop every backend shares: input checks, streaming `append`, batched `rollout`, and
the planner's `rollout_energy`.

numpy only. A backend owns the KV cache (allocated once for max batch x max frames) and
implements the hooks `_allocate`, `_run`, `_broadcast_cache` and `_prediction`; backends that keep
predictions on a device also implement `_stage_goal` and `_energy`, so that planning never copies
a prediction to the host (the default `_energy` scores on the host, for backends that live there).
Every backend implements `_stage_host` (and, where it takes device arrays, `_stage_device`): a
context staged once with `stage_context` is broadcast to the batch where the backend computes, and
its frames reach `_run` as `StagedFrames`. Backends count the bytes they move between host arrays
and their buffers (`_sent`, `_received`; read as `host_traffic`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from typing import Callable, Optional, Union

import numpy as np

from ..config import PredictorConfig
from ..errors import VitacError, first_line
from .arrays import DeviceArray, DeviceFrames, as_device_array
from .staging import HostTraffic, StagedContext, StagedFrames

StateUpdate = Union[None, str, Callable[[np.ndarray, np.ndarray], np.ndarray]]
_RUNTIME_IDS = itertools.count(1)   # names the runtime a StagedContext belongs to (never reused, unlike id())


def serialized(method):
    """One call at a time per runtime: its buffers, cache and goal are shared state. A second
    thread waits (a plan holds `runtime.lock` across its goal and all its rollouts). A closed
    runtime refuses the call: its buffers are freed, and a backend would read freed memory."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock:
            if getattr(self, "_closed", False):
                raise VitacError(f"this {self.backend} runtime was closed: open a new one with open_runtime")
            return method(self, *args, **kwargs)

    return locked


class Runtime:
    """Rolls the world model forward frame by frame on a KV cache.

    Streaming: `reset(batch)`, then `append(features, action, state[, extrinsics])` per camera frame
    returns the prediction of the next frame. Planning: `rollout(context, actions, states, horizon)`.
    """

    backend = "base"
    accepts_device_arrays = False   # CUDA arrays (torch/CuPy) taken by pointer, without a host copy
    cache = "concat"                # the KV cache contract driven: concat (double-buffered) or static (in place)
    memory_layout = None            # the backend's MemoryLayout (registry), for memory budgets; None: no model

    def __init__(self, cfg: PredictorConfig, precision: str, device: str,
                 max_batch: Optional[int] = None, max_frames: Optional[int] = None):
        self.cfg, self.precision, self.device = cfg, precision, device
        for name, value in (("max_batch", max_batch), ("max_frames", max_frames)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise VitacError(f"{name} must be a positive integer or None, got {value!r}")
        if max_frames is not None and not 1 <= max_frames <= cfg.max_frames:
            raise VitacError(f"max_frames must be in 1..{cfg.max_frames} (the model's limit), got {max_frames}")
        if max_batch is not None and max_batch < 1:
            raise VitacError(f"max_batch must be >= 1, got {max_batch}")
        self.max_frames = max_frames or cfg.max_frames
        self.max_batch = max_batch
        self.lock = threading.RLock()
        self._closed = False        # close() frees the buffers for good: every later call is refused
        self._capacity = 0          # batch the buffers are allocated for
        self.batch = 0
        self.frames = 0             # frames in the cache
        self._traffic = [0, 0]      # bytes to the device, to the host (host_traffic)
        self._runtime_id = next(_RUNTIME_IDS)
        self._stage_generation = 0  # stage_context calls so far: only the latest StagedContext is valid
        self._rollout_frames: Optional[int] = None   # frames of the rollout under way (None: streaming)
        self._goal_copy: Optional[np.ndarray] = None  # the host goal staged last (set_goal skips an unchanged one)

    # -- backend hooks --------------------------------------------------------------------------------
    def _allocate(self, batch: int) -> None:
        raise NotImplementedError

    def _run(self, features, cond: dict[str, np.ndarray]) -> None:
        """One frame: features [B, N, D] float32 (a host array; a DeviceArray or DeviceFrames on
        backends that accept device arrays), or None to feed back the last raw prediction.
        Must leave the cache untouched if it raises."""
        raise NotImplementedError

    def _broadcast_cache(self, batch: int) -> None:
        """Tile a batch-1 cache to `batch` rows (shared context). Only the cache: the frame after the
        shared ones runs at the full batch, so no prediction of the batch-1 frames is ever read."""
        raise NotImplementedError

    def _prediction(self) -> np.ndarray:
        """The last normalized prediction, [B, N, D] float32 (a copy)."""
        raise NotImplementedError

    def _stage_host(self, context: np.ndarray) -> None:
        """Keep raw context features [R, C, N, D] float32 where `_run` reads `StagedFrames` of them
        (replacing what was staged before); count what crosses to the device."""
        raise NotImplementedError

    def _stage_device(self, contexts: list, normalized: bool) -> bool:
        """The same from device arrays (one [1, C, N, D] per context, as `_device_input` returned
        them), without a host copy; False where this backend cannot (then they are refused)."""
        return False

    def _device_input(self, name: str, x):
        """A device-resident input this backend takes as it is (e.g. a torch tensor on its device),
        or None for a host array. Default: CUDA arrays where the backend accepts them."""
        return self._device(name, x)

    # -- host traffic ---------------------------------------------------------------------------------
    def _sent(self, nbytes: int) -> None:
        self._traffic[0] += int(nbytes)

    def _received(self, nbytes: int) -> None:
        self._traffic[1] += int(nbytes)

    @property
    def host_traffic(self) -> HostTraffic:
        """Bytes this runtime has copied from host arrays into its buffers and back since it opened
        (on the CPU: the same copies and host bindings a CUDA run makes). The difference of two
        readings is what crossed in between, e.g. per CEM step."""
        return HostTraffic(*self._traffic)

    def _stage_goal(self, goal: np.ndarray) -> None:
        """Keep the goal [N, D] float32 where `_energy` reads it."""
        self._goal = goal

    def _energy(self) -> np.ndarray:
        """Energies [B] float32 of the last prediction against the staged goal. This default copies
        the prediction to the host; device backends override it."""
        return host_energy(self._prediction(), self._goal)

    # -- checks ---------------------------------------------------------------------------------------
    def _to_host(self, array: DeviceArray) -> np.ndarray:
        """Copy a (small) device array to the host: actions and states of a device rollout."""
        raise NotImplementedError

    def _device(self, name: str, x) -> Optional[DeviceArray]:
        dev = x if isinstance(x, DeviceArray) else as_device_array(x, name)
        if dev is not None and not self.accepts_device_arrays:
            raise VitacError(f"{name} is a CUDA array, but the {self.backend} runtime takes host arrays "
                             f"(numpy); pass it with .cpu().numpy(), or use the tensorrt backend")
        return dev

    def _host(self, name: str, x):
        """Conditioning arrays are small: a device one is copied to the host once per rollout."""
        dev = self._device(name, x)
        return x if dev is None else self._to_host(dev)

    def _check(self, name: str, x, shape: tuple[int, ...]):
        """A float32 C-contiguous host array of `shape`, or the DeviceArray of a CUDA array
        (device inputs are not scanned for NaN: that would cost the host round trip they avoid)."""
        dev = self._device(name, x)
        if dev is not None:
            if dev.dtype != np.float32 or dev.shape != tuple(shape):
                raise VitacError(f"{name} must be a float32 CUDA array of shape {list(shape)}, "
                                 f"got {dev.dtype} {list(dev.shape)}")
            return dev
        arr = np.asarray(x)
        if arr.dtype.kind != "f":
            raise VitacError(f"{name} must be a float array of shape {list(shape)}, got dtype {arr.dtype}")
        if tuple(arr.shape) != tuple(shape):
            raise VitacError(f"{name} must have shape {list(shape)}, got {list(arr.shape)}")
        if not np.isfinite(arr).all():
            raise VitacError(f"{name} contains NaN or inf")
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(arr, dtype=np.float32)
        # checked after the cast: float64 values beyond float32's range (~3.4e38) become inf there
        if arr.dtype != np.float32 and not np.isfinite(out).all():
            raise VitacError(f"{name} has values beyond float32's range (max |x| {float(np.abs(arr).max()):.3g})")
        return out

    def _cond(self, action, state, extrinsics, B: int) -> dict[str, np.ndarray]:
        A = self.cfg.action_dim
        cond = {n: self._check(n, self._host(n, x), (B, A)) for n, x in (("action", action), ("state", state))}
        if self.cfg.use_extrinsics:
            if extrinsics is None:
                raise VitacError(f"this model uses extrinsics: pass extrinsics of shape {[B, A - 1]}")
            cond["extrinsics"] = self._check("extrinsics", self._host("extrinsics", extrinsics), (B, A - 1))
        return cond

    # -- streaming ------------------------------------------------------------------------------------
    @serialized
    def reset(self, batch: int = 1) -> None:
        """Empty the cache for `batch` trajectories (buffers are reused; grown only past capacity)."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise VitacError(f"batch must be a positive integer, got {batch!r}")
        if self.max_batch is not None and batch > self.max_batch:
            raise VitacError(f"batch {batch} exceeds max_batch={self.max_batch} of this runtime")
        if batch > self._capacity:
            n = self.max_batch or batch
            try:
                self._allocate(n)
            except (MemoryError, ValueError, OverflowError, RuntimeError) as e:
                # numpy past its size arithmetic ("Maximum allowed dimension exceeded"), torch's
                # allocators on the host and CUDA ("can't allocate memory", "size ... overflowed")
                if not isinstance(e, MemoryError) and not any(
                        w in str(e).lower() for w in ("memory", "dimension", "too big", "overflow")):
                    raise
                raise VitacError(f"not enough memory for this runtime's buffers at batch {n} ({first_line(e)}): "
                                 f"roll out fewer at once (a smaller max_batch, --chunk or --samples)") from None
            self._capacity = n
        self.batch, self.frames = int(batch), 0
        self._rollout_frames = None

    @serialized
    def append(self, features, action, state, extrinsics=None) -> np.ndarray:
        """Append one frame (raw or normalized features [B, N, D]); returns the next frame's
        normalized prediction [B, N, D]. The cache grows by one frame."""
        self._require_room(1)
        B, cfg = self.batch, self.cfg
        feats = self._check("features", features, (B, cfg.tokens_per_frame, cfg.embed_dim))
        cond = self._cond(action, state, extrinsics, B)
        self._rollout_frames = None   # streaming: every frame's K/V may be read by the next append
        self._run(feats, cond)
        self.frames += 1
        return self._prediction()

    def _require_room(self, n: int) -> None:
        if self.batch == 0:
            raise VitacError("call reset(batch) before append()")
        if self.frames + n > self.max_frames:
            raise VitacError(f"the cache holds {self.frames} of max {self.max_frames} frames: appending "
                             f"{n} more exceeds it (reset, or open the runtime with more max_frames)")

    # -- rollout --------------------------------------------------------------------------------------
    @serialized
    def rollout(self, context, actions, states, horizon: int, extrinsics=None,
                state_update: StateUpdate = None,
                on_frame: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Predict frames C..C+horizon-1 from RAW context features [B or 1, C, N, D].

        actions [B, C+horizon-1, A]; states [B, C+horizon-1, A] (with `state_update="delta"` or a
        callable `f(state_t, action_t) -> state_{t+1}`, only the C context states are needed).
        A context of batch 1 is shared by every row: the frames whose conditioning is identical in
        every row are computed once and their cache broadcast. Returns [B, horizon, N, D].
        `on_frame(done, total)` is called after every frame (for progress bars).
        """
        held: dict[str, np.ndarray] = {}

        def keep(j: int) -> None:
            if j == 0:   # the batch is known once _roll has checked the inputs
                held["out"] = np.empty((self.batch, horizon, self.cfg.tokens_per_frame, self.cfg.embed_dim),
                                       np.float32)
            held["out"][:, j] = self._prediction()

        self._roll(context, actions, states, horizon, extrinsics, state_update, on_frame, keep)
        return held["out"]

    @serialized
    def set_goal(self, goal) -> None:
        """The goal of `rollout_energy`: normalized features [N, D] or [1, N, D], staged once (on the
        device for device backends) and kept until the next `set_goal`."""
        N, D = self.cfg.tokens_per_frame, self.cfg.embed_dim
        dev = self._device_input("goal", goal)
        if dev is not None:   # a device goal stays on the device (backends that take it)
            shape = tuple(dev.shape)
            if shape not in ((N, D), (1, N, D)):
                raise VitacError(f"goal must have shape [{N}, {D}] or [1, {N}, {D}], got {list(shape)}")
            self._stage_goal_device(dev)
            self._goal_staged, self._goal_copy = True, None
            return
        g = np.asarray(goal)
        if g.ndim == 3 and g.shape[0] == 1:
            g = g[0]
        g = self._check("goal", g, (N, D))
        # a plan sets its goal before every step: staged once, unless it changed (compared with a
        # private copy, so a caller's array changed in place is staged again)
        if not (getattr(self, "_goal_staged", False) and self._goal_copy is not None
                and np.array_equal(self._goal_copy, g)):
            self._stage_goal(g)
        self._goal_copy = g.copy()
        self._goal_staged = True

    def _stage_goal_device(self, goal) -> None:
        """Keep a device goal ([N, D] or [1, N, D]) where `_energy` reads it."""
        raise VitacError(f"the {self.backend} runtime takes the goal as a host array")

    def device_features(self, x, name: str = "features"):
        """`x` as this runtime takes it without a host copy (a tensor on a torch runtime's device, a
        CUDA array on a CUDA backend), or None for a host array. The planner hands such features
        (the encoder's, kept on the device) to `stage_context` and `set_goal` as they are."""
        return self._device_input(name, x)

    @serialized
    def stage_context(self, context, normalized: bool = False) -> StagedContext:
        """Stage context features once where this runtime computes: one array [R, C, N, D] or a
        list of R arrays [1, C, N, D] (R contexts, e.g. one per robot). Rollouts given the result
        (or `.for_robot(r)`, `.for_groups(...)`) read them there: each backend broadcasts a context
        to the batch on its own device, so nothing of batch x tokens x width is built or copied on
        the host per rollout. Valid until the next `stage_context` on this runtime.

        The features are raw (what `rollout` takes), or with `normalized=True` LayerNorm outputs
        (what the planner takes), staged as their raw equivalent (contract.raw_equivalent).
        Device arrays (CUDA arrays, or tensors on a torch runtime's device) are taken without a host
        copy where the backend can (`_stage_device`)."""
        cfg = self.cfg
        N, D = cfg.tokens_per_frame, cfg.embed_dim
        items = list(context) if isinstance(context, (list, tuple)) else [context]
        if not items:
            raise VitacError("stage_context needs at least one context")
        devices = [self._device_input("context", x) for x in items]
        if any(d is not None for d in devices):
            if not all(d is not None for d in devices):
                raise VitacError("stage_context: give every context on the host or every one on the device")
            shapes = {tuple(d.shape) for d in devices}
            C = next(iter(shapes))[1] if len(shapes) == 1 and len(next(iter(shapes))) == 4 else 0
            if len(shapes) != 1 or next(iter(shapes)) != (1, C, N, D) or not 1 <= C <= self.max_frames:
                raise VitacError(f"each device context must have shape [1, C, {N}, {D}] with 1 <= C <= "
                                 f"{self.max_frames}, got {[list(s) for s in shapes]}")
            if not self._stage_device(devices, normalized and cfg.normalize_reps):
                raise VitacError(f"the {self.backend} runtime cannot stage {'normalized ' if normalized else ''}"
                                 f"device features: pass them as host arrays"
                                 + (" (or the encoder's raw features)" if normalized else ""))
            return self._new_staged(len(devices), C)
        arrays = [np.asarray(x) for x in items]
        if len(arrays) > 1 and (any(a.ndim != 4 or a.shape[0] != 1 for a in arrays)
                                or len({a.shape for a in arrays}) != 1):
            raise VitacError(f"a list of contexts takes arrays of one shape [1, C, {N}, {D}], got "
                             f"{[list(a.shape) for a in arrays]}")
        array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        if array.ndim != 4 or array.shape[2:] != (N, D) or array.shape[0] < 1 or array.shape[1] < 1:
            raise VitacError(f"context must have shape [R, C, {N}, {D}], got {list(array.shape)}")
        R, C = array.shape[:2]
        if C > self.max_frames:
            raise VitacError(f"context of {C} frames exceeds max_frames={self.max_frames}")
        array = self._check("context", array, (R, C, N, D))
        if normalized and cfg.normalize_reps:
            from ..contract import raw_equivalent

            array = raw_equivalent(array, cfg.feature_norm_eps)
        self._stage_host(np.ascontiguousarray(array, np.float32))
        return self._new_staged(R, C)

    def _new_staged(self, R: int, C: int) -> StagedContext:
        self._stage_generation += 1
        return StagedContext(self._runtime_id, self._stage_generation, R, C)

    def _check_staged(self, staged: StagedContext) -> None:
        if staged.runtime != self._runtime_id:
            raise VitacError("this context was staged on another runtime: stage it on this one")
        if staged.generation != self._stage_generation:
            raise VitacError("this staged context was replaced by a later stage_context on this runtime: stage it again")

    @serialized
    def rollout_energy(self, context, actions, states, horizon: int, extrinsics=None,
                       state_update: StateUpdate = None,
                       on_frame: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """The planner's energy of every row: mean |last prediction - goal| (docs/planner.md section 3), the
        goal given by `set_goal`. Same inputs as `rollout`; returns [B] float32. Predictions stay
        where the backend computes them: only the B energies cross to the host."""
        if not getattr(self, "_goal_staged", False):
            raise VitacError("call set_goal(goal) before rollout_energy()")
        out: list[np.ndarray] = []
        self._roll(context, actions, states, horizon, extrinsics, state_update, on_frame,
                   lambda j: out.append(self._energy()) if j == horizon - 1 else None)
        return out[0]

    @serialized
    def rollout_energy_groups(self, context, actions, states, horizon: int, goals, groups,
                              extrinsics=None, state_update: StateUpdate = None) -> np.ndarray:
        """`rollout_energy` with a goal per group of rows (several robots in one batch): rows
        lo:hi are scored against goals[g] for each (lo, hi, g) in `groups`, which must cover every
        row. goals: normalized features [G, N, D], or a list of G goals [1, N, D] (device arrays
        where the backend takes them). Each row's energy is the one `rollout_energy` gives it with
        goals[g] staged (the energy is per row); the last goal stays staged."""
        N, D = self.cfg.tokens_per_frame, self.cfg.embed_dim
        if not isinstance(goals, (list, tuple)):
            goals = np.asarray(goals)
            if goals.ndim != 3 or goals.shape[1:] != (N, D):
                raise VitacError(f"goals must have shape [G, {N}, {D}], got {list(goals.shape)}")
        staged = []
        for g in goals:
            dev = self._device_input("goal", g)
            if dev is not None:
                if tuple(dev.shape) not in ((N, D), (1, N, D)):
                    raise VitacError(f"goal must have shape [{N}, {D}] or [1, {N}, {D}], got {list(dev.shape)}")
                staged.append((self._stage_goal_device, dev))
            else:
                g = np.asarray(g)
                staged.append((self._stage_goal, self._check("goal", g[0] if g.ndim == 3 and g.shape[0] == 1 else g,
                                                             (N, D))))
        B = np.asarray(actions).shape[0] if not isinstance(actions, DeviceArray) else actions.shape[0]
        covered = np.zeros(B, bool)
        for lo, hi, g in groups:
            if not (0 <= lo < hi <= B and 0 <= g < len(staged)) or covered[lo:hi].any():
                raise VitacError(f"group ({lo}, {hi}, {g}) is out of range or overlaps another ({B} rows, "
                                 f"{len(staged)} goals)")
            covered[lo:hi] = True
        if not covered.all():
            raise VitacError("the groups must cover every row of the batch")
        out = np.empty(B, np.float32)

        def score(j: int) -> None:
            if j != horizon - 1:
                return
            for lo, hi, g in groups:   # the energy is cheap beside the rollout: one pass per goal
                stage, goal = staged[g]
                stage(goal)
                out[lo:hi] = self._energy()[lo:hi]

        self._roll(context, actions, states, horizon, extrinsics, state_update, None, score)
        self._goal_staged, self._goal_copy = True, None
        return out

    def _roll(self, context, actions, states, horizon: int, extrinsics, state_update: StateUpdate,
              on_frame: Optional[Callable[[int, int], None]], on_prediction: Callable[[int], None]) -> None:
        """The loop behind `rollout` and `rollout_energy`: checks, shared context, frames; calls
        `on_prediction(j)` when predicted frame j (0..horizon-1) is in the backend's buffers."""
        cfg = self.cfg
        N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
        staged = context if isinstance(context, StagedContext) else None
        if staged is not None:
            self._check_staged(staged)
            context_shape = (1 if staged.shared else None, staged.frames, N, D)
        else:
            dev_context = self._device("context", context)
            context = dev_context or np.asarray(context)
            context_shape = tuple(context.shape)
        actions, states, extrinsics = (self._host(n, x) for n, x in
                                       (("actions", actions), ("states", states), ("extrinsics", extrinsics)))
        if len(context_shape) != 4 or context_shape[2:] != (N, D):
            raise VitacError(f"context must have shape [B, C, {N}, {D}], got {list(context_shape)}")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise VitacError(f"horizon must be a positive integer, got {horizon!r}")
        actions = np.asarray(actions)
        if actions.ndim != 3:
            raise VitacError(f"actions must have shape [B, C+horizon-1, {A}], got {list(actions.shape)}")
        B, C = actions.shape[0], context_shape[1]
        if C < 1:   # nothing to condition on: the backends' buffers would be returned unwritten
            raise VitacError(f"context must hold at least one frame, got shape {list(context_shape)}")
        if B < 1:
            raise VitacError(f"actions must hold at least one row, got shape {list(actions.shape)}")
        F = C + horizon - 1
        groups = staged.rows(B) if staged is not None else None
        if staged is None and context_shape[0] not in (1, B):
            raise VitacError(f"context batch {context_shape[0]} must be 1 or the actions' batch {B}")
        if F > self.max_frames:
            raise VitacError(f"context {C} + horizon {horizon} - 1 = {F} frames exceed max_frames={self.max_frames}")
        actions = self._check("actions", actions, (B, F, A))
        states = self._states(states, actions, B, C, F, state_update)
        ext = None
        if cfg.use_extrinsics:
            if extrinsics is None:
                raise VitacError(f"this model uses extrinsics: pass extrinsics of shape {[B, F, A - 1]}")
            ext = self._check("extrinsics", extrinsics, (B, F, A - 1))
        if staged is None:
            context = self._check("context", context, (context_shape[0], C, N, D))

        def frame(t: int, batch: int):
            if staged is not None:   # broadcast by the backend where it computes
                return StagedFrames(staged, t, groups if batch == B else ((0, 1, groups[0][2]),))
            if isinstance(context, DeviceArray):
                return DeviceFrames(context, t, batch)
            return np.ascontiguousarray(np.broadcast_to(context[:, t], (batch, N, D)))

        def cond(t: int, rows: slice = slice(None)) -> dict[str, np.ndarray]:
            c = {"action": actions[rows, t], "state": states[rows, t]}
            if ext is not None:
                c["extrinsics"] = ext[rows, t]
            return {k: np.ascontiguousarray(v) for k, v in c.items()}

        # Frames of a shared context whose conditioning is the same in every row run once at batch 1.
        shared = 0
        if context_shape[0] == 1 and B > 1:
            while shared < C - 1 and all(np.array_equal(v[:1], v) for v in cond(shared).values()):
                shared += 1
        tick = on_frame or (lambda done, total: None)
        if shared:
            self.reset(B)  # allocates for B once, so the broadcast fits
            self.reset(1)
        else:
            self.reset(B)
        self._rollout_frames = F   # backends may skip work no later frame reads (the last frame's K/V)
        if shared:
            for t in range(shared):
                self._run(frame(t, 1), cond(t, slice(0, 1)))
                self.frames += 1
                tick(t + 1, F)
            self._broadcast_cache(B)
            self.batch = B
        for t in range(shared, C):
            self._run(frame(t, B), cond(t))
            self.frames += 1
            tick(t + 1, F)
        on_prediction(0)
        for j in range(1, horizon):
            self._run(None, cond(C + j - 1))   # feeds back the raw prediction: normalized once, as upstream
            self.frames += 1
            on_prediction(j)
            tick(C + j, F)

    def _states(self, states, actions: np.ndarray, B: int, C: int, F: int, update: StateUpdate) -> np.ndarray:
        A = self.cfg.action_dim
        states = np.asarray(states)
        if update is None or update == "given":
            return self._check("states", states, (B, F, A))
        if states.ndim != 3 or states.shape[0] != B or states.shape[1] < C or states.shape[2] != A:
            raise VitacError(f"states must have shape [{B}, >={C}, {A}] with state_update, got {list(states.shape)}")
        full = np.empty((B, F, A), np.float32)
        full[:, :C] = self._check("states", states[:, :C], (B, C, A))
        if update == "delta":
            step = lambda s, a: s + a  # noqa: E731
        elif callable(update):
            step = update
        else:
            raise VitacError(f"state_update must be 'given', 'delta' or a callable, got {update!r}")
        for t in range(C - 1, F - 1):
            full[:, t + 1] = self._check("state_update result", step(full[:, t], actions[:, t]), (B, A))
        return full

    def close(self) -> None:
        """Free the buffers now (they are freed with the runtime otherwise). Every later call is
        refused with a VitacError (open a new runtime); closing again does nothing."""
        # a backend whose __init__ failed half way may be closed (its __del__) before the lock exists
        with getattr(self, "lock", None) or contextlib.nullcontext():
            if getattr(self, "_closed", False):
                return
            self._closed = True
            self._close()

    def _close(self) -> None:
        """Free what the backend holds (buffers, streams, sessions' memory): the hook of close()."""

    @property
    def cache_bytes(self) -> int:
        """Bytes this runtime allocated for the KV cache (all layers, keys and values, every arena);
        0 before the first reset. Backends override it with what they really allocated."""
        return 0

    def device_memory(self) -> Optional[dict[str, float]]:
        """Device memory figures (MiB) where the backend can tell; None on the host."""
        return None

    def describe(self) -> str:
        return f"{self.backend} ({self.device}, {self.precision})"


def host_energy(prediction: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """mean |prediction - goal| per row of [B, N, D] (docs/planner.md section 3), one row at a time so
    that no [B, N, D] temporary is made; float64 accumulation."""
    out = np.empty(prediction.shape[0], np.float32)
    for b in range(prediction.shape[0]):
        out[b] = np.abs(prediction[b].astype(np.float64) - goal).mean()
    return out

"""What a request and a reply are, independent of the transport (websocket here; Ray Serve later):
the observation keys, their checks (each failure one line), the metadata sent on connect, and the
reply. numpy only."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from ..encoder.preprocess import check_frame_size
from ..errors import VitacError
from ..inputs import check_pose_values, check_seed

# two 1080p RGB frames (about 12.4 MB) and the msgpack framing, rounded up
DEFAULT_MAX_MESSAGE_MB = 16.0


class RequestError(VitacError):
    """A request the server refuses: its message is the one line the client gets."""


@dataclass
class ServeOptions:
    """The serving side's knobs (the CLI's `serve` flags besides the model and the CEM options)."""

    image_key: str = "observation/image"
    state_key: str = "observation/state"
    goal_key: str = "goal/image"
    batch_window_ms: float = 5.0        # requests arriving this close together are planned together
    max_robots: int = 8                 # connections served at once; more are refused
    max_message_mb: float = DEFAULT_MAX_MESSAGE_MB

    def check(self) -> None:
        for name in ("image_key", "state_key", "goal_key"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise VitacError(f"{name} must be a non-empty string")
        if len({self.image_key, self.state_key, self.goal_key, "seed"}) != 4:
            raise VitacError("the image, state and goal keys must differ from each other and from 'seed'")
        if not isinstance(self.batch_window_ms, (int, float)) or not 0 <= self.batch_window_ms <= 10_000:
            raise VitacError(f"batch_window_ms must be in 0..10000, got {self.batch_window_ms!r}")
        if not isinstance(self.max_robots, int) or isinstance(self.max_robots, bool) or self.max_robots < 1:
            raise VitacError(f"max_robots must be a positive integer, got {self.max_robots!r}")
        if not isinstance(self.max_message_mb, (int, float)) or not 0 < self.max_message_mb <= 4096:
            raise VitacError(f"max_message_mb must be in (0, 4096], got {self.max_message_mb!r}")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 2**20)


@dataclass
class Request:
    """One checked request: the current image, the pose [1, A] float32, the goal image (None: the
    connection's last goal) and the seed (None: the server draws one)."""

    image: np.ndarray
    pose: np.ndarray
    goal: Optional[np.ndarray]
    seed: Optional[int]


def _image(name: str, x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise RequestError(f"{name} must be a uint8 array [H, W, 3], got {type(x).__name__}")
    if x.dtype != np.uint8:
        raise RequestError(f"{name} must be uint8 [H, W, 3], got dtype {x.dtype}")
    if x.ndim != 3 or x.shape[2] != 3:
        raise RequestError(f"{name} must be uint8 [H, W, 3] (RGB), got shape {list(x.shape)}")
    try:
        check_frame_size(name, x.shape[0], x.shape[1])
    except VitacError as e:
        raise RequestError(str(e)) from None
    return x


def parse_request(message: Any, opts: ServeOptions, state_dim: int) -> Request:
    """A decoded message -> Request, or RequestError with one line saying what is wrong."""
    if not isinstance(message, dict):
        raise RequestError(f"a request must be a map of observation keys, got {type(message).__name__}")
    keys = {opts.image_key, opts.state_key, opts.goal_key, "seed"}
    for k in message:
        if not isinstance(k, str):
            raise RequestError(f"request keys must be strings, got {k!r}"[:200])
        if k not in keys:
            raise RequestError(f"unknown key {k[:80]!r} (expected {opts.image_key!r}, {opts.state_key!r}, and "
                               f"optionally {opts.goal_key!r}, 'seed')")
    for k in (opts.image_key, opts.state_key):
        if k not in message:
            raise RequestError(f"missing key {k!r}")
    image = _image(opts.image_key, message[opts.image_key])
    goal = _image(opts.goal_key, message[opts.goal_key]) if opts.goal_key in message else None
    state = message[opts.state_key]
    if not isinstance(state, np.ndarray) or state.dtype.kind != "f":
        what = state.dtype if isinstance(state, np.ndarray) else type(state).__name__
        raise RequestError(f"{opts.state_key} must be a float array [{state_dim}], got {what}")
    if state.shape != (state_dim,):
        raise RequestError(f"{opts.state_key} must have shape [{state_dim}], got {list(state.shape)}")
    try:
        check_pose_values(state, opts.state_key)
    except VitacError as e:
        raise RequestError(str(e)) from None
    seed = message.get("seed")
    if seed is not None:
        if isinstance(seed, np.ndarray) and seed.ndim == 0:
            seed = seed[()]
        try:
            seed = check_seed(seed)
        except VitacError as e:
            raise RequestError(str(e)[:200]) from None
    return Request(image, state.astype(np.float32)[None], goal, seed)


def elite_energy(energies: np.ndarray, topk: int) -> np.ndarray:
    """The mean energy of the elites per CEM step [cem_steps] float32 (convergence at a glance)."""
    return np.sort(energies, axis=1)[:, :topk].mean(1).astype(np.float32)


def metadata(runtime: Any, encoder: Any, cem: Any, opts: ServeOptions) -> dict:
    """The dict sent on connect: model, planner, runtime, versions and the expected keys."""
    from .. import __version__

    cfg = runtime.cfg
    versions = {"vitac_deploy": __version__, "numpy": np.__version__, "python": platform.python_version()}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    A = cfg.action_dim
    image = {"dtype": "uint8", "shape": [-1, -1, 3]}
    return {
        "protocol": "openpi-websocket-msgpack",
        "server": "vitac-deploy serve",
        "model": {"config": asdict(cfg), "parameters": int(cfg.num_parameters()),
                  "tokens_per_frame": int(cfg.tokens_per_frame), "embed_dim": int(cfg.embed_dim),
                  "encoder": {"config": asdict(encoder.cfg), "parameters": int(encoder.cfg.num_parameters())}},
        "action_dim": int(A),
        "rollout": int(cem.rollout),
        "cem": asdict(cem),
        "backend": runtime.backend, "device": str(runtime.device), "precision": runtime.precision,
        "versions": versions,
        "observation": {opts.image_key: image, opts.state_key: {"dtype": "float32", "shape": [A]}},
        "optional": {opts.goal_key: image, "seed": {"dtype": "int64", "shape": []}},
        "reply": {"actions": {"dtype": "float32", "shape": [int(cem.rollout), A]},
                  "seed": {"dtype": "int64", "shape": []},
                  "energies": {"dtype": "float32", "shape": [int(cem.cem_steps)]},
                  "server_timing": ["infer_ms", "encode_ms", "plan_ms", "queue_ms"]},
        "batch_window_ms": float(opts.batch_window_ms), "max_robots": int(opts.max_robots),
        "max_message_bytes": opts.max_message_bytes,
    }

"""What users hand the commands and the library, checked by one set of rules: rollout inputs
(.npz), poses, replayed CEM draws. Every entry point (CLI, Python, server) checks through here, so
that the same input gets the same answer everywhere. numpy only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import PredictorConfig
from .errors import VitacError, first_line

__all__ = ["load_inputs", "parse_pose", "read_noise", "check_seed", "check_tolerance", "check_pose_values",
           "check_action_bound", "check_count", "MAX_SEED", "MAX_POSE",
           "MAX_SAMPLES"]

MAX_SEED = 2**63 - 1   # what a msgpack int64 carries: the server's limit, and so every entry point's
# The largest pose entry or action bound taken: no robot's pose is near it, and poses and actions
# added up over a horizon stay far inside float32 (the graphs' dtype, ~3.4e38), where a float64
# number past it would turn into inf after the checks.
MAX_POSE = 1e6
# The most CEM samples (and CEM steps) a plan takes, like the landscape's 1,000,000 grid actions:
# 2,500 times upstream's 400. Past it array sizes overflow numpy's and torch's size arithmetic
# before any allocation could be refused as too large.
MAX_SAMPLES = 1_000_000


def check_count(value, what: str):
    """A count such as max_batch or threads: None (the default), or a positive integer (numpy's
    included, returned as int); bools, floats, strings and 0 are refused by name."""
    import numbers

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise VitacError(f"{what} must be a positive integer or None, got {value!r}")
    return int(value)


def check_seed(seed, what: str = "seed") -> int:
    """A seed as every entry point takes it (CLI, Python, the server): an integer in 0..2**63-1."""
    if isinstance(seed, np.ndarray) and seed.ndim == 0:
        seed = seed[()]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise VitacError(f"{what} must be an integer in 0..2**63-1, got {seed!r}")
    return int(seed)


def check_tolerance(value, what: str = "--atol") -> float:
    """A tolerance: a finite number > 0 (NaN or inf would pass everything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value) \
            or value <= 0:
        raise VitacError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def check_pose_values(values, what: str = "pose") -> np.ndarray:
    """Pose entries as every entry point takes them (CLI, Python, the server): finite, |x| <= MAX_POSE."""
    a = np.asarray(values, dtype=np.float64)
    if not np.isfinite(a).all():
        raise VitacError(f"{what} contains NaN or inf")
    if np.abs(a).max(initial=0) > MAX_POSE:
        raise VitacError(f"{what} has entries beyond 1e6: not a pose")
    return a


def check_action_bound(value, what: str) -> float:
    """A bound of sampled or gridded actions (CEM's maxnorm, the landscape's size): a finite
    number in (0, MAX_POSE], so that actions and the poses they lead to stay finite in float32."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 < value <= MAX_POSE:
        raise VitacError(f"{what} must be a finite number in (0, 1e6], got {value!r}")
    return float(value)


def _npy_header(z, key: str, source: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array in an npz, read from its header without decompressing the data."""
    try:
        with z.zip.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except Exception as e:  # noqa: BLE001 - zip and npy headers fail in many ways, all "damaged"
        raise VitacError(f"cannot read '{key}' in {source}: {first_line(e)}") from None
    return tuple(shape), dtype


def load_inputs(path: Path, cfg: PredictorConfig) -> dict[str, np.ndarray]:
    """The arrays a rollout needs from an npz, and only those: each header is checked against the
    shapes the model expects (frames bounded by max_frames, N, D, A fixed) before its data is
    decompressed, so that a small file cannot inflate to gigabytes."""
    if not path.is_file():
        raise VitacError(f"inputs not found: {path}")
    N, D, A, T = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim, cfg.max_frames
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise VitacError(f"cannot read {path}: {first_line(e)}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise VitacError(f"{path} is not an npz archive (np.savez) of arrays")
    with z:
        keys = ["features", "actions", "states"] + (["extrinsics"] if cfg.use_extrinsics else [])
        for key in keys[:3]:
            if key not in z.files:
                raise VitacError(f"{path} has no '{key}' array (has: {', '.join(sorted(z.files)) or 'nothing'})")
        heads = {k: _npy_header(z, k, path) for k in keys if k in z.files}
        want = {"features": f"[B, C <= {T}, {N}, {D}]", "actions": f"[B, T <= {T}, {A}]",
                "states": f"[B, T <= {T}, {A}]", "extrinsics": f"[B, T <= {T}, {A - 1}]"}
        last = {"features": (N, D), "actions": (A,), "states": (A,), "extrinsics": (A - 1,)}
        for key, (shape, dtype) in heads.items():
            if dtype.kind != "f":
                raise VitacError(f"'{key}' in {path} must be a float array, got dtype {dtype}")
            rank = 4 if key == "features" else 3
            if len(shape) != rank or tuple(shape[2:]) != last[key] or not 1 <= shape[1] <= T:
                raise VitacError(f"'{key}' in {path} must have shape {want[key]}, got {list(shape)}")
        B = heads["actions"][0][0]
        if heads["features"][0][0] not in (1, B) or any(heads[k][0][0] != B for k in heads if k != "features"):
            raise VitacError(f"the arrays in {path} disagree on the batch: " +
                             ", ".join(f"{k} {list(heads[k][0])}" for k in heads))
        try:
            return {k: z[k] for k in heads}
        except Exception as e:  # noqa: BLE001
            raise VitacError(f"cannot read {path}: {first_line(e)}") from None


def parse_pose(text: str, action_dim: int) -> np.ndarray:
    """'x,y,z,rx,ry,rz,g' (action_dim numbers) -> [1, action_dim] float32."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise VitacError(f"--pose must be {action_dim} comma-separated numbers, got {text!r}") from None
    if len(values) != action_dim:
        raise VitacError(f"--pose must have {action_dim} numbers (the model's state dim), got {len(values)}")
    if not np.isfinite(values).all():
        raise VitacError(f"--pose must be finite numbers, got {text!r}")
    return check_pose_values([values], "--pose").astype(np.float32)


def read_noise(path: Path) -> np.ndarray:
    """Standard normal draws to replay (an .npz with `cem_noise`, or its only array; or an .npy)."""
    if not path.is_file():
        raise VitacError(f"--noise file not found: {path}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            key = "cem_noise" if "cem_noise" in z.files else (z.files[0] if len(z.files) == 1 else None)
            if key is None:
                raise VitacError(f"{path}: expected an array named cem_noise (or a single array)")
            return z[key]
    except VitacError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VitacError(f"cannot read --noise {path}: {first_line(e)}") from None

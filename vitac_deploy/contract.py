"""The step graph's IO contract, declared once (numpy only: exporters and runtimes both read it).

Per-step graph (``step``): one frame in, the next frame's prediction out, with every block's
attention keys/values of earlier frames passed in (``past_*``) and returned grown (``present_*``),
and the frame's RoPE rows (``rope_cos``, ``rope_sin``) passed in: a runtime keeps the table of
every frame on the device and binds row t, so the graph holds no shape arithmetic that would run
on the host (which keeps CUDA-graph capture possible in ONNX Runtime).
First-frame graph (``first``): the same without past inputs, for engines whose optimization
profiles cannot express ``past_len = 0``; its RoPE rows (frame 0) are constants.
Energy graph (``energy``): the planner's energy of a batch of predictions against a goal, run
where the predictions are, so that only [batch] floats cross to the host.

Two cache contracts (the manifest's ``cache``):
- ``concat``: ``past_*`` ``[batch, heads, past_len, head_dim]`` in, ``present_* = Concat(past, new)``
  out; a runtime double-buffers the cache (two arenas, swapped every frame).
- ``static``: ``past_*`` ``[batch, heads, max_len, head_dim]`` with ``max_len`` fixed at export (cache
  frames x (K+N)); ``present_* = TensorScatter(past, new, write_index)`` (opset 24), which a runtime
  binds to the SAME buffer as ``past_*``: one arena, only the new frame written. The write position
  (``write_index`` [batch], int64) and the block-causal validity (``attn_bias`` [1, 1, 1, max_len], 0
  for the cached frames and this one, the dtype's most negative value after them) are inputs: row t
  of `static_rows`, like the RoPE rows, so the graph holds no shape arithmetic either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np

from .config import PredictorConfig
from .errors import VitacError
from .rope import all_frame_tables

Dim = Union[int, str]
BATCH, PAST, PRESENT = "batch", "past_len", "present_len"  # present_len = past_len + K + N
ROPE_INPUTS = ("rope_cos", "rope_sin")                      # [1, K+N, head_dim]: row t of rope.all_frame_tables
CACHE_CONTRACTS = ("concat", "static")
STATIC_INPUTS = ("write_index", "attn_bias")               # static contract only: row t of static_rows


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                 # "float32" | "float16"
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


def past_names(cfg: PredictorConfig) -> list[str]:
    return [f"past_{kind}.{i}" for i in range(cfg.depth) for kind in ("key", "value")]


def present_names(cfg: PredictorConfig) -> list[str]:
    return [f"present_{kind}.{i}" for i in range(cfg.depth) for kind in ("key", "value")]


def conditioning_inputs(cfg: PredictorConfig) -> list[TensorSpec]:
    A = cfg.action_dim
    specs = [TensorSpec("action", "float32", (BATCH, A)), TensorSpec("state", "float32", (BATCH, A))]
    if cfg.use_extrinsics:
        specs.append(TensorSpec("extrinsics", "float32", (BATCH, A - 1)))
    return specs


def check_cache(cache: str) -> str:
    if cache not in CACHE_CONTRACTS:
        raise ValueError(f"cache contract must be one of {', '.join(CACHE_CONTRACTS)}, got {cache!r}")
    return cache


def step_io(cfg: PredictorConfig, cache_dtype: str, first_frame: bool = False, cache: str = "concat",
            cache_frames: Optional[int] = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of the step graph (or of the first-frame graph, concat only). The static
    contract's max_len is `cache_frames` (default the model's max_frames) x (K+N)."""
    H, hd = cfg.num_heads, cfg.head_dim
    inputs = [TensorSpec("features", "float32", (BATCH, cfg.tokens_per_frame, cfg.embed_dim))]
    inputs += conditioning_inputs(cfg)
    if check_cache(cache) == "static" and first_frame:
        raise ValueError("the static cache contract has no first-frame graph (its step graph runs frame 0)")
    past: Dim = PAST
    present_len: Dim = cfg.tokens_per_step if first_frame else PRESENT
    if cache == "static":
        past = present_len = static_max_len(cfg, cache_frames)
    if not first_frame:
        inputs += [TensorSpec(n, cache_dtype, (1, cfg.tokens_per_step, hd)) for n in ROPE_INPUTS]
        if cache == "static":
            inputs += [TensorSpec("write_index", "int64", (BATCH,)),
                       TensorSpec("attn_bias", cache_dtype, (1, 1, 1, past))]
        inputs += [TensorSpec(n, cache_dtype, (BATCH, H, past, hd)) for n in past_names(cfg)]
    frame = (BATCH, cfg.tokens_per_frame, cfg.embed_dim)
    outputs = [TensorSpec("next_features", "float32", frame)]
    if cfg.normalize_reps:
        # LayerNorm with eps is not idempotent: feeding this back instead of next_features keeps a
        # rollout's predictions normalized exactly once, as upstream does.
        outputs.append(TensorSpec("next_features_raw", "float32", frame))
    outputs += [TensorSpec(n, cache_dtype, (BATCH, H, present_len, hd)) for n in present_names(cfg)]
    return inputs, outputs


def energy_io(cfg: PredictorConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The energy graph: mean over N x D of |prediction - goal| per batch row (docs/planner.md section 3)."""
    frame = (cfg.tokens_per_frame, cfg.embed_dim)
    return ([TensorSpec("prediction", "float32", (BATCH,) + frame), TensorSpec("goal", "float32", (1,) + frame)],
            [TensorSpec("energy", "float32", (BATCH,))])


def rope_rows(cfg: PredictorConfig, cache_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The rope_cos / rope_sin rows of every frame, [max_frames, 1, K+N, head_dim] in the cache dtype:
    what a runtime binds (row t for the frame after t cached frames)."""
    cos, sin = all_frame_tables(cfg)
    return (np.ascontiguousarray(cos[:, None].astype(cache_dtype)), np.ascontiguousarray(sin[:, None].astype(cache_dtype)))


def static_max_len(cfg: PredictorConfig, cache_frames: Optional[int] = None) -> int:
    """The static contract's cache length: `cache_frames` (default max_frames) whole frames."""
    frames = cfg.max_frames if cache_frames is None else int(cache_frames)
    if not 1 <= frames <= cfg.max_frames:
        raise ValueError(f"cache frames must be in 1..{cfg.max_frames} (the model's limit), got {frames}")
    return frames * cfg.tokens_per_step


def static_rows(cfg: PredictorConfig, cache_frames: int, cache_dtype: str, max_batch: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The static contract's per-frame inputs for every frame t (t cached frames):
    write_index [cache_frames, max_batch] int64 (= t x (K+N) in every row; a runtime binds the
    first `batch` entries of row t) and attn_bias [cache_frames, 1, 1, 1, max_len] in the cache
    dtype: 0 over frames 0..t, the dtype's most negative finite value after them. Block-causal
    over frames is exactly this, because the queries are the tokens of frame t alone."""
    L, M = cfg.tokens_per_step, static_max_len(cfg, cache_frames)
    write = np.repeat((np.arange(cache_frames, dtype=np.int64) * L)[:, None], max_batch, axis=1)
    keys = np.arange(M)[None, :]
    valid = keys < (np.arange(cache_frames)[:, None] + 1) * L
    # finite, not -inf: exp() gives 0 all the same, and a stale or zero key adds no inf - inf NaN
    bias = np.where(valid, 0.0, np.finfo(cache_dtype).min).astype(cache_dtype)
    return np.ascontiguousarray(write), np.ascontiguousarray(bias[:, None, None, None, :])


def dummy_inputs(cfg: PredictorConfig, batch: int, past_frames: int, cache_dtype: str = "float32",
                 seed: int = 0, first_frame: bool = False, scale: float = 12.0, cache: str = "concat",
                 cache_frames: Optional[int] = None) -> dict[str, np.ndarray]:
    """Seeded inputs of the contract's shapes; features with realistic raw magnitudes (|x| ~ 50)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    cos, sin = rope_rows(cfg, cache_dtype)
    if cache == "static":
        frames = cache_frames or cfg.max_frames
        write, bias = static_rows(cfg, frames, cache_dtype, batch)
        out["write_index"], out["attn_bias"] = write[past_frames], bias[past_frames]
    for spec in step_io(cfg, cache_dtype, first_frame, cache, cache_frames)[0]:
        if spec.name in out:
            continue
        if spec.name in ROPE_INPUTS:
            out[spec.name] = (cos if spec.name == "rope_cos" else sin)[past_frames]
            continue
        shape = [{BATCH: batch, PAST: past_frames * cfg.tokens_per_step}.get(d, d) for d in spec.shape]
        s = scale if spec.name == "features" else 1.0
        out[spec.name] = (s * rng.standard_normal(shape)).astype(spec.dtype)
    return out


# -- the features the step graph takes -------------------------------------------------------------
# The graphs normalize their `features` input (a LayerNorm without affine), as upstream normalizes
# encoder output once; a planner holds features already normalized, and hands the graph their raw
# equivalent. Runtimes (host and device) and the planner share these definitions.
MEAN_TOL, VAR_TOL = 2e-3, 5e-3    # how far from (0, <= 1) a token of "normalized" features may be


def check_normalized(name: str, x: np.ndarray) -> None:
    """Refuse features that are not LayerNorm outputs (no affine): per token mean 0 and variance
    v / (v + eps) <= 1 (0 for a constant raw token). Raw encoder features fail by far."""
    x = np.asarray(x, np.float64)
    if np.abs(x.mean(-1)).max() > MEAN_TOL or x.var(-1).max() > 1 + VAR_TOL:
        raise VitacError(f"{name} must be normalized features (LayerNorm without affine over the feature axis: "
                         f"mean 0 and variance 1 per token), as the encoder path returns them")


def raw_equivalent(normalized: np.ndarray, eps: float) -> np.ndarray:
    """Features that the graph's input LayerNorm (no affine, `eps`) maps back to `normalized`.

    The step graphs normalize their `features` input, as upstream normalizes encoder output once;
    the planner receives features already normalized. LayerNorm with eps is not idempotent, so
    they are scaled by s = sqrt(eps / (1 - var)) first: LN(s x) = x / sqrt(var + eps / s^2) = x
    exactly for zero-mean x with var < 1 (a normalized token has var = v / (v + eps) < 1)."""
    check_normalized("current", normalized)
    x = np.asarray(normalized, np.float64)
    var = x.var(-1, keepdims=True)
    gap = np.maximum(1.0 - var, 1e-12)   # var rounds to >= 1 only for huge raw variances: s is then ~1e3
    return (x * np.sqrt(eps / gap)).astype(np.float32)

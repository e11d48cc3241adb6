"""The step graph's IO contract, declared once (numpy only: exporters and runtimes both read it).

Per-step graph (``step``): one frame in, the next frame's prediction out, with every block's
attention keys/values of earlier frames passed in (``past_*``) and returned grown (``present_*``).
First-frame graph (``first``): the same without past inputs, for engines whose optimization
profiles cannot express ``past_len = 0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np

from .config import PredictorConfig

Dim = Union[int, str]
BATCH, PAST, PRESENT = "batch", "past_len", "present_len"  # present_len = past_len + K + N


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


def step_io(cfg: PredictorConfig, cache_dtype: str, first_frame: bool = False
            ) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of the step graph (or of the first-frame graph)."""
    H, hd = cfg.num_heads, cfg.head_dim
    inputs = [TensorSpec("features", "float32", (BATCH, cfg.tokens_per_frame, cfg.embed_dim))]
    inputs += conditioning_inputs(cfg)
    present_len: Dim = cfg.tokens_per_step if first_frame else PRESENT
    if not first_frame:
        inputs += [TensorSpec(n, cache_dtype, (BATCH, H, PAST, hd)) for n in past_names(cfg)]
    frame = (BATCH, cfg.tokens_per_frame, cfg.embed_dim)
    outputs = [TensorSpec("next_features", "float32", frame)]
    if cfg.normalize_reps:
        # LayerNorm with eps is not idempotent: feeding this back instead of next_features keeps a
        # rollout's predictions normalized exactly once, as upstream does.
        outputs.append(TensorSpec("next_features_raw", "float32", frame))
    outputs += [TensorSpec(n, cache_dtype, (BATCH, H, present_len, hd)) for n in present_names(cfg)]
    return inputs, outputs


def dummy_inputs(cfg: PredictorConfig, batch: int, past_frames: int, cache_dtype: str = "float32",
                 seed: int = 0, first_frame: bool = False, scale: float = 12.0) -> dict[str, np.ndarray]:
    """Seeded inputs of the contract's shapes; features with realistic raw magnitudes (|x| ~ 50)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in step_io(cfg, cache_dtype, first_frame)[0]:
        shape = [{BATCH: batch, PAST: past_frames * cfg.tokens_per_step}.get(d, d) for d in spec.shape]
        s = scale if spec.name == "features" else 1.0
        out[spec.name] = (s * rng.standard_normal(shape)).astype(spec.dtype)
    return out

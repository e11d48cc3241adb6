"""What the TensorRT runtime binds for one frame: every input shape and every tensor address
(pure logic, numpy-free, so it is tested without a GPU against the IO contract and the engine's
optimization profiles)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

from ...config import PredictorConfig
from ...contract import ROPE_INPUTS, past_names, present_names


@dataclass(frozen=True)
class FrameBuffers:
    """Device addresses the runtime owns for one frame."""

    features: int               # where this frame's features are (a staging buffer or the fed-back raw prediction)
    cond: Dict[str, int]        # action, state[, extrinsics]
    past: Dict[str, int]        # arena holding the cache, by past name
    present: Dict[str, int]     # the other arena, by past name
    prediction: int             # next_features (normalized) when normalize_reps
    raw_out: int                # the raw prediction fed back next frame
    rope: Dict[str, int]        # rope_cos / rope_sin tables [max_frames, K+N, head_dim] on the device
    rope_row_bytes: int         # bytes of one frame's row of a table
    # static contract: write_index / attn_bias tables (contract.static_rows) and one row's bytes of each;
    # cache_len is the fixed max_len (0: the concat contract)
    static: Dict[str, int] = field(default_factory=dict)
    static_row_bytes: Dict[str, int] = field(default_factory=dict)
    cache_len: int = 0


@dataclass(frozen=True)
class FrameBinding:
    role: str                                   # "first" (empty cache, first engine) or "step"
    shapes: Dict[str, Tuple[int, ...]]          # every input
    addresses: Dict[str, int]                   # every input and output
    prediction: int                             # where the normalized prediction is read back


def bind_frame(cfg: PredictorConfig, batch: int, cached_frames: int, has_first_engine: bool,
               bufs: FrameBuffers) -> FrameBinding:
    """Shapes and addresses for the frame after `cached_frames` frames. Concat: past_* bound to the
    arena holding the cache, present_* to the other one (the graph's Concat writes the grown cache
    there). Static (`bufs.cache_len` > 0): present_* bound to past_*'s own address (the KV-cache
    update layer writes the new frame in place), fixed [batch, heads, max_len, head_dim] shapes."""
    P = cached_frames * cfg.tokens_per_step
    static = bufs.cache_len > 0
    role = "first" if P == 0 and has_first_engine and not static else "step"
    frame = (batch, cfg.tokens_per_frame, cfg.embed_dim)
    widths = {"action": cfg.action_dim, "state": cfg.action_dim, "extrinsics": cfg.action_dim - 1}
    shapes: Dict[str, Tuple[int, ...]] = {"features": frame, **{n: (batch, widths[n]) for n in bufs.cond}}
    addrs: Dict[str, int] = {"features": bufs.features, **bufs.cond}
    if role == "step":   # the first-frame engine holds frame 0's rows as constants
        for name in ROPE_INPUTS:
            shapes[name] = (1, cfg.tokens_per_step, cfg.head_dim)
            addrs[name] = bufs.rope[name] + cached_frames * bufs.rope_row_bytes
    if static:
        shapes["write_index"] = (batch,)
        for name in ("write_index", "attn_bias"):
            addrs[name] = bufs.static[name] + cached_frames * bufs.static_row_bytes[name]
    for p_name, q_name in zip(past_names(cfg), present_names(cfg)):
        if role == "step":
            shapes[p_name] = (batch, cfg.num_heads, bufs.cache_len if static else P, cfg.head_dim)
            addrs[p_name] = bufs.past[p_name]
        addrs[q_name] = bufs.past[p_name] if static else bufs.present[p_name]
    if cfg.normalize_reps:
        addrs["next_features"], addrs["next_features_raw"] = bufs.prediction, bufs.raw_out
        prediction = bufs.prediction
    else:  # the prediction is itself what is fed back
        addrs["next_features"] = prediction = bufs.raw_out
    return FrameBinding(role, shapes, addrs, prediction)

"""Memory and compute model of one CEM plan: what a runtime allocates to roll out S samples in
chunks, the largest chunk a memory budget allows, and the FLOPs of a plan.

A CEM plan (docs/planner.md section 5) rolls out `samples` action sequences for `horizon`
predicted frames from `context` observed frames, for `cem_steps` steps. Our runtimes roll the
samples out in CHUNKS of at most `chunk` samples: the runtime is opened with max_batch = chunk and
max_frames = F = context + horizon - 1, and the energies are computed on the device.

What is exact and what is an estimate:
- EXACT (the runtime's own allocation formulas): the KV cache, the frame buffers, the pinned host
  buffers, the RoPE tables, goal, energies and conditioning buffers, and the weights' element count.
- ESTIMATE: the activations (an upper bound for UNFUSED attention, see `activation_terms`), and
  everything the libraries add on their own (CUDA context, cuBLAS/cuDNN workspaces, TensorRT's
  tactic scratch, ONNX Runtime's arena rounding, the Python process): that is what the reserves of
  `DEVICES` are for.

Pure Python on purpose (no numpy, no torch): the CLI and the docs generator import it cheaply.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Optional

from ..config import PredictorConfig
from ..devices import DISCRETE_RESERVE, JETSON_RESERVE  # noqa: F401  (importable here, as before)
from ..devices import Device, device as _named_device, need, with_figures
from ..errors import VitacError
from ..precision import PRECISIONS as _PRECISIONS, precision as get_precision

if TYPE_CHECKING:   # pragma: no cover - the registry imports numpy; this module stays pure Python
    from ..runtimes.registry import MemoryLayout

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "Device",
    "GiB",
    "MiB",
    "PlanMemory",
    "activation_terms",
    "affine_terms",
    "chunks_needed",
    "device",
    "frame_flops",
    "largest_chunk",
    "memory_layout",
    "parse_bytes",
    "plan_flops",
    "plan_memory",
    "upstream_plan_flops",
]

MiB = 2**20
GiB = 2**30

PRECISIONS = {name: p.bytes for name, p in _PRECISIONS.items()}   # bytes per element of cache, weights, activations
RESIDUAL_TENSORS = 3                          # residual stream, its LayerNorm output, the branch output
FLOAT32 = 4


# -- memory ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanMemory:
    """Bytes a runtime holds for one chunk of a plan, by component.

    `host_pinned` is page-locked HOST memory (TensorRT's staging of the input features and the
    conditioning; predictions stay on the device and energies are read back through a few bytes):
    it is not device memory on a discrete GPU, but on a Jetson host and device share the same DRAM,
    so `total(unified=True)` counts it.
    """

    weights: int        # num_parameters x element size x engines (TensorRT: first-frame engine holds a copy)
    kv_cache: int       # (2 arenas if double-buffered) x chunk x F x kv_bytes_per_frame   -- exact
    frame_buffers: int  # float32 [chunk, N, D] device buffers (4: input, prediction, 2 raw)  -- exact
    host_pinned: int    # TensorRT: pinned host input features + conditioning                -- exact
    activations: int    # transient tensors of one frame: an ESTIMATE (upper bound, unfused attention)
    small: int          # RoPE tables, goal features, energies, device conditioning inputs    -- exact

    @property
    def device_total(self) -> int:
        """Everything that lives in device memory (discrete GPU: what must fit its memory)."""
        return self.weights + self.kv_cache + self.frame_buffers + self.activations + self.small

    def total(self, unified: bool) -> int:
        """Device total, plus the pinned host buffers where host and device share memory (Jetson)."""
        return self.device_total + (self.host_pinned if unified else 0)

    def rows(self) -> list[tuple[str, int]]:
        """(label, bytes) of each component, in a fixed order, for printing."""
        labels = {
            "weights": "weights",
            "kv_cache": "KV cache",
            "frame_buffers": "frame buffers (device)",
            "host_pinned": "pinned host buffers",
            "activations": "activations (estimate)",
            "small": "RoPE, goal, energies, conditioning",
        }
        return [(labels[f.name], getattr(self, f.name)) for f in fields(self)]


def _element_size(precision: str) -> int:
    return get_precision(precision).bytes


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise VitacError(f"{name} must be a positive integer, got {value!r}")


def _frames(cfg: PredictorConfig, horizon: int, context: int) -> int:
    """F = context + horizon - 1: the frames the predictor runs (the last prediction is not fed back)."""
    _check_positive("horizon", horizon)
    _check_positive("context", context)
    frames = context + horizon - 1
    if frames > cfg.max_frames:
        raise VitacError(f"context {context} + horizon {horizon} - 1 = {frames} latent frames exceed "
                         f"max_frames={cfg.max_frames}")
    return frames


def memory_layout(backend: "str | MemoryLayout") -> "MemoryLayout":
    """The memory layout a backend declares (`runtimes.registry`), by its name or as given."""
    if not isinstance(backend, str):
        return backend
    from ..runtimes.registry import backends, get

    layout = get(backend)[0].memory_layout
    if layout is None:
        have = [b.name for b in backends().values() if b.memory_layout is not None]
        raise VitacError(f"the {backend} backend has no memory model (backends with one: {', '.join(have)})")
    return layout


def _check_build(layout: "MemoryLayout", engines: int, backend: "str | MemoryLayout") -> None:
    layout.check_weight_copies(engines, backend if isinstance(backend, str) else "this backend")


def activation_terms(cfg: PredictorConfig, batch: int, cache_frames: int, element_size: int,
                     fused_attention: bool = False) -> dict[str, int]:
    """Transient tensors of ONE frame at batch `batch` attending over `cache_frames` frames
    (the new one included), in bytes, and their `peak`. An ESTIMATE, meant as an upper bound:

    - scores: attention scores and probabilities, 2 x B x heads x L x (F x L) x e. Only for
      UNFUSED attention (ONNX Runtime's MatMul-Softmax-MatMul); a fused kernel (TensorRT's MHA
      fusion, flash attention) never materializes them, so `fused_attention=True` sets it to 0.
    - qkv: B x L x 3d x e; attn_out: B x L x d x e (the heads' output before `proj`).
    - mlp: the hidden activations, B x L x mlp_hidden x e x 2 (fc1 output and GELU output;
      x 3 for SwiGLU: fc1, fc2 and their product).
    - live: what stays live across the block, RESIDUAL_TENSORS float32 tensors B x L x d x 4.

    peak = live + max(attention phase = qkv + scores + attn_out, MLP phase = mlp). Libraries may
    plan memory better (in-place ops, reuse) or worse (alignment, workspaces); measure to confirm.
    """
    B, L, d = batch, cfg.tokens_per_step, cfg.predictor_embed_dim
    terms = {
        "scores": 0 if fused_attention else 2 * B * cfg.num_heads * L * (cache_frames * L) * element_size,
        "qkv": B * L * 3 * d * element_size,
        "attn_out": B * L * d * element_size,
        "mlp": B * L * cfg.mlp_hidden * element_size * (3 if cfg.use_silu else 2),
        "live": RESIDUAL_TENSORS * B * L * d * FLOAT32,
    }
    terms["peak"] = terms["live"] + max(terms["qkv"] + terms["scores"] + terms["attn_out"], terms["mlp"])
    return terms


def plan_memory(cfg: PredictorConfig, chunk: int, horizon: int, context: int = 1, precision: str = "fp16",
                backend: "str | MemoryLayout" = "tensorrt", double_buffered: bool = True, engines: int = 1,
                fused_attention: bool = False) -> PlanMemory:
    """Bytes a runtime opened with max_batch = `chunk`, max_frames = context + horizon - 1 holds.

    With B = chunk, F = context + horizon - 1, e = element size of `precision`, N patch tokens,
    D = embed_dim, L = tokens_per_step, A = action_dim:
    `backend` names a registered backend (or is its `MemoryLayout`): its layout says how many
    frame buffers and weight copies it holds, and whether it stages inputs in pinned host memory.
    - weights = num_parameters x e x engines (a TensorRT build with a separate first-frame
      engine stores them twice; ONNX Runtime once).
    - kv_cache = 2 x B x F x kv_bytes_per_frame(e): two arenas (past and present) because the
      graph's Concat writes the whole grown cache, so present cannot alias past. One with
      `double_buffered=False`: the static contract (`export --cache static`), whose TensorScatter
      writes the new frame into past's own buffer (F is then the artifact's cache frames).
    - frame_buffers, float32: input features (the staged context broadcast to the batch) +
      prediction + 2 raw predictions = 4 x B x N x D x 4, both backends.
    - host_pinned (TensorRT only): the pinned input features, B x N x D x 4, plus the pinned
      conditioning inputs B x (2A [+ A-1 with extrinsics]) x 4.
    - activations: `activation_terms(...)["peak"]` at cache length F. Every TensorRT context (step,
      first frame, energy; one per captured graph) shares ONE activation buffer sized for the
      largest, so a second engine adds weights, not activations.
    - small: RoPE cos/sin tables for every frame the config allows, 2 x cfg.max_frames x L x
      head_dim x e (the runtimes upload `contract.rope_rows` whole), goal features N x D x 4,
      energies B x 4, conditioning inputs B x (2A [+ A-1]) x 4.
    Every term is a constant or proportional to B: memory is affine in the chunk.
    """
    _check_positive("chunk", chunk)
    e = _element_size(precision)
    layout = memory_layout(backend)
    _check_build(layout, engines, backend)
    F = _frames(cfg, horizon, context)
    B, N, D, L, A = chunk, cfg.tokens_per_frame, cfg.embed_dim, cfg.tokens_per_step, cfg.action_dim
    frame = B * N * D * FLOAT32
    cond = B * (2 * A + (A - 1 if cfg.use_extrinsics else 0)) * FLOAT32
    activations = activation_terms(cfg, B, F, e, fused_attention)["peak"]
    return PlanMemory(
        weights=cfg.num_parameters() * e * engines,
        kv_cache=(2 if double_buffered else 1) * B * F * cfg.kv_bytes_per_frame(e),
        frame_buffers=layout.frame_buffers * frame,
        host_pinned=(frame + cond) if layout.pinned_staging else 0,
        activations=activations,
        small=2 * cfg.max_frames * L * cfg.head_dim * e + N * D * FLOAT32 + B * FLOAT32 + cond,
    )


def affine_terms(cfg: PredictorConfig, horizon: int, context: int = 1, precision: str = "fp16",
                 backend: "str | MemoryLayout" = "tensorrt", double_buffered: bool = True, engines: int = 1,
                 fused_attention: bool = False, unified: bool = False) -> tuple[int, int]:
    """(fixed, per_sample) bytes with total(chunk) = fixed + per_sample x chunk, exactly."""
    kw = {"horizon": horizon, "context": context, "precision": precision, "backend": backend,
          "double_buffered": double_buffered, "engines": engines, "fused_attention": fused_attention}
    one = plan_memory(cfg, 1, **kw).total(unified)
    two = plan_memory(cfg, 2, **kw).total(unified)
    return one - (two - one), two - one


def largest_chunk(cfg: PredictorConfig, budget_bytes: int, horizon: int, samples: int, context: int = 1,
                  precision: str = "fp16", backend: "str | MemoryLayout" = "tensorrt", double_buffered: bool = True,
                  engines: int = 1, fused_attention: bool = False, unified: bool = False) -> int:
    """The largest chunk <= `samples` whose `total(unified)` fits `budget_bytes`; 0 if not even one
    sample fits. Closed form (memory is affine in the chunk), then checked against `plan_memory`."""
    _check_positive("samples", samples)
    if not isinstance(budget_bytes, int) or isinstance(budget_bytes, bool) or budget_bytes < 0:
        raise VitacError(f"budget must be a non-negative number of bytes, got {budget_bytes!r}")
    kw = {"horizon": horizon, "context": context, "precision": precision, "backend": backend,
          "double_buffered": double_buffered, "engines": engines, "fused_attention": fused_attention}
    fixed, per_sample = affine_terms(cfg, unified=unified, **kw)
    chunk = min(samples, max(0, (budget_bytes - fixed) // per_sample))

    def fits(c: int) -> bool:
        return plan_memory(cfg, c, **kw).total(unified) <= budget_bytes

    while chunk > 0 and not fits(chunk):          # guards the closed form; never loops in practice
        chunk -= 1
    while chunk < samples and fits(chunk + 1):
        chunk += 1
    return chunk


def chunks_needed(samples: int, chunk: int) -> int:
    """Runtime calls per CEM step for `samples` samples in chunks of `chunk`; 0 if chunk is 0."""
    return math.ceil(samples / chunk) if chunk > 0 else 0


# -- compute ---------------------------------------------------------------------------------------
def _linear_macs(cfg: PredictorConfig) -> int:
    """Multiply-adds of the linear layers for ONE frame of ONE sample (cache length does not matter)."""
    d, D, A, h, N, L = (cfg.predictor_embed_dim, cfg.embed_dim, cfg.action_dim, cfg.mlp_hidden,
                        cfg.tokens_per_frame, cfg.tokens_per_step)
    embed = N * D * d                                     # predictor_embed over the N patch tokens
    cond = 2 * A * d + ((A - 1) * d if cfg.use_extrinsics else 0)   # action, state (, extrinsics): 1 token each
    mlp = (3 if cfg.use_silu else 2) * d * h              # fc1, fc2 (, fc3 for SwiGLU) per token
    block = L * (3 * d * d + d * d + mlp)                 # qkv, proj, mlp over L tokens
    proj = N * d * D                                      # predictor_proj over the N patch tokens
    return embed + cond + cfg.depth * block + proj


def _attention_macs(cfg: PredictorConfig, queries: int, keys: int) -> int:
    """q k^T and p v of every block: 2 x queries x keys x d (the heads split d)."""
    return cfg.depth * 2 * queries * keys * cfg.predictor_embed_dim


def frame_flops(cfg: PredictorConfig, cached_frames: int) -> int:
    """FLOPs (2 x multiply-adds) of ONE frame of ONE sample on top of `cached_frames` cached frames:
    the linear layers (`_linear_macs`) plus attention of L queries over (cached_frames + 1) x L keys.
    Not counted: biases, LayerNorms, GELU, softmax, RoPE, the energy (all O(tokens x width), < 1%)."""
    if cached_frames < 0:
        raise VitacError(f"cached_frames must be >= 0, got {cached_frames}")
    L = cfg.tokens_per_step
    return 2 * (_linear_macs(cfg) + _attention_macs(cfg, L, (cached_frames + 1) * L))


def plan_flops(cfg: PredictorConfig, samples: int, horizon: int, cem_steps: int, context: int = 1,
               chunk: Optional[int] = None) -> float:
    """FLOPs of one plan with a KV cache, as our runtimes run it.

    Per CEM step and per sample, the predictor runs frames t = context-1 .. context+horizon-2 (F' =
    horizon frames), frame t on top of t cached frames. The first context-1 frames (the observed
    history, the same in every sample) run once per runtime call at batch 1 and their cache is
    broadcast; there are ceil(samples / chunk) calls per step (chunk=None: one call).

        plan = cem_steps x [ samples x sum_{t=C-1}^{C+H-2} frame_flops(t)
                             + calls x sum_{t=0}^{C-2} frame_flops(t) ]
    """
    for name, value in (("samples", samples), ("cem_steps", cem_steps)):
        _check_positive(name, value)
    C, F = context, _frames(cfg, horizon, context)
    calls = chunks_needed(samples, chunk if chunk is not None else samples)
    per_sample = sum(frame_flops(cfg, t) for t in range(C - 1, F))
    shared = sum(frame_flops(cfg, t) for t in range(C - 1))
    return float(cem_steps * (samples * per_sample + calls * shared))


def upstream_plan_flops(cfg: PredictorConfig, samples: int, horizon: int, cem_steps: int, context: int = 1,
                        dense_mask: bool = True) -> float:
    """FLOPs of one plan the upstream way: no cache, every predicted frame recomputes the sequence.

    Predicting frame C+h (h = 0..H-1) runs the predictor on all T = C+h frames of every sample
    (the context is repeated per sample), and projects all of them. Upstream's SDPA with a
    block-causal boolean mask computes the full (T x L)^2 score matrix (`dense_mask=True`); a
    kernel that skipped masked blocks would do frame f over (f+1) x L keys (`dense_mask=False`).

        plan = cem_steps x samples x sum_{h=0}^{H-1} [ T x linear + attention(T) ],  T = C + h
    """
    for name, value in (("samples", samples), ("cem_steps", cem_steps)):
        _check_positive(name, value)
    _frames(cfg, horizon, context)
    L = cfg.tokens_per_step
    per_sample = 0
    for h in range(horizon):
        T = context + h
        if dense_mask:
            attention = _attention_macs(cfg, T * L, T * L)
        else:
            attention = sum(_attention_macs(cfg, L, (f + 1) * L) for f in range(T))
        per_sample += 2 * (T * _linear_macs(cfg) + attention)
    return float(cem_steps * samples * per_sample)


# -- devices ---------------------------------------------------------------------------------------
# The devices are the one table's (vitac_deploy.devices): its memory figures are what the budgets
# read. The --device-budget keys as they always were (two are aliases there), then any other device
# of the table with a memory size under its key; every key or alias of the table resolves (`device`).
_BUDGET_KEYS = ("orin-nano-8gb", "orin-nx-16gb", "agx-orin-32gb", "agx-orin-64gb", "h100-80gb")
DEVICES: dict[str, Device] = {k: _named_device(k) for k in _BUDGET_KEYS}
DEVICES.update({k: d for k, d in with_figures("total").items() if all(d is not v for v in DEVICES.values())})


def device(name: str) -> Device:
    """A device by key or alias (`DEVICES`, or any of `vitac_deploy.devices`) that has a memory size,
    reserve and kind; one line naming what it lacks otherwise."""
    dev = need(_named_device(name), "total", purpose="a memory budget")
    return need(dev, "reserve", "unified", purpose="a memory budget")


# -- parsing ---------------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_BYTES = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """Bytes from "8GiB", "7.5GB", "6000MiB", "512 MiB" or a plain byte count (GB = 10^9,
    GiB = 2^30; rounded down). Anything else, or zero, is a one-line VitacError."""
    m = _BYTES.fullmatch(text) if isinstance(text, str) else None
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise VitacError(f"cannot read {text!r} as a size: give a number and a unit like 8GiB, 7.5GB, "
                         f"6000MiB (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    whole, _, frac = m.group(1).partition(".")
    scale = _UNITS[unit]
    value = int(whole or 0) * scale + (int(frac) * scale // 10 ** len(frac) if frac else 0)
    if value <= 0:
        raise VitacError(f"size {text!r} must be more than 0 bytes")
    return value


# -- the encoder -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderMemory:
    """Bytes an encoder runtime holds for `batch` frames at once."""

    weights: int       # num_parameters x element size                                     -- exact
    io: int            # float32 pixels [B, 3, S, S] + features and raw features [B, N, D]   -- exact
    activations: int   # transient tensors of one block: an ESTIMATE (upper bound, unfused attention)

    @property
    def total(self) -> int:
        return self.weights + self.io + self.activations


def encoder_memory(ecfg, batch: int, precision: str = "fp16", fused_attention: bool = False) -> EncoderMemory:
    """Memory of the encoder (EncoderConfig `ecfg`) encoding `batch` frames at once, the planner's
    way (one latent frame of N tokens each). Activations as for the predictor (`activation_terms`):
    live residual stream (float32) + max(attention phase: qkv + scores [B, heads, N, N] x 2 unless
    fused + attention output, MLP phase: hidden x 2)."""
    _check_positive("batch", batch)
    e = _element_size(precision)
    B, N, D, h, S = batch, ecfg.tokens_per_frame, ecfg.embed_dim, ecfg.mlp_hidden, ecfg.img_size
    scores = 0 if fused_attention else 2 * B * ecfg.num_heads * N * N * e
    attention = B * N * 3 * D * e + scores + B * N * D * e
    mlp = 2 * B * N * h * e
    live = RESIDUAL_TENSORS * B * N * D * FLOAT32
    return EncoderMemory(weights=ecfg.num_parameters() * e, io=B * 3 * S * S * FLOAT32 + 2 * B * N * D * FLOAT32,
                         activations=live + max(attention, mlp))

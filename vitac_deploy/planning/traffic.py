"""The device-memory traffic of one plan: the bytes it moves (beside the FLOPs of
`memory.plan_flops`), and the fraction of a device's peaks (`vitac_deploy.roofline`) a measured
time reaches.

What is a model and what is a figure:
- `frame_bytes` / `plan_bytes`: a MODEL, a lower bound on device-memory traffic with every
  elementwise op (LayerNorm, RoPE, residual, activation) fused into the matrix products around
  it: the weights read once per frame, each matrix product's input read and output written once,
  the KV cache read by attention and the new frame's K/V written. Unfused runtimes move more.
- the peaks: `vitac_deploy.roofline.ROOFLINE_DEVICES` (the one device table's, `vitac_deploy.devices`),
  vendor datasheet figures (dense, no
  sparsity), not measurements; the GPU check measures the device's own ceilings (an 8192^3 fp16
  GEMM, a device-to-device copy) beside them.

Pure Python (no numpy, no torch), like memory.py.
"""

from __future__ import annotations

from typing import Optional

from ..config import PredictorConfig
from ..roofline import ROOFLINE_DEVICES, RooflineDevice, device_for_gpu
from .memory import PRECISIONS, _check_positive, _frames, chunks_needed

FLOAT32 = 4


def peak_for(gpu_name: Optional[str]) -> Optional[RooflineDevice]:
    """The datasheet peaks of a GPU by the name the driver gives it ("NVIDIA H100 80GB HBM3",
    "NVIDIA H200", ...); None where unknown (every CPU)."""
    key = device_for_gpu(gpu_name)
    return ROOFLINE_DEVICES[key] if key else None


def frame_bytes(cfg: PredictorConfig, cached_frames: int, batch: int, precision: str) -> int:
    """Device-memory bytes of ONE frame of `batch` rows on top of `cached_frames` cached frames
    (the model above): weights once; per block and token the qkv product (d in, 3d out), the K/V
    written (2d) and read by attention (2d per cached frame and this one), the attention output
    (d), the projection (d in, d out), the MLP (d in, hidden out per input product, hidden in, d
    out); the features in (float32) and their embedding, the prediction out (raw and normalized,
    float32)."""
    _check_positive("batch", batch)
    e = PRECISIONS[precision]
    L, N, D, d, h = cfg.tokens_per_step, cfg.tokens_per_frame, cfg.embed_dim, cfg.predictor_embed_dim, cfg.mlp_hidden
    mlp_in = 2 if cfg.use_silu else 1
    per_token = (d + 3 * d) + 2 * d + 2 * d * (cached_frames + 1) + d + (d + d) + (d + mlp_in * h + h + d)
    blocks = cfg.depth * batch * L * per_token * e
    ends = batch * (N * D * FLOAT32 + N * d * e + N * d * e + 2 * N * D * FLOAT32)
    return cfg.num_parameters() * e + blocks + ends


def plan_bytes(cfg: PredictorConfig, samples: int, horizon: int, cem_steps: int, precision: str = "fp16",
               context: int = 1, chunk: Optional[int] = None) -> float:
    """Device-memory bytes of one plan by the model above, counted as `memory.plan_flops` counts
    FLOPs: per CEM step, each chunk runs frames context-1 .. context+horizon-2 at its batch (the
    earlier context frames once, at batch 1)."""
    _check_positive("samples", samples)
    _check_positive("cem_steps", cem_steps)
    C, F = context, _frames(cfg, horizon, context)
    n = chunk if chunk is not None else samples
    sizes = [min(n, samples - i * n) for i in range(chunks_needed(samples, n))]
    per_step = sum(frame_bytes(cfg, t, B, precision) for B in sizes for t in range(C - 1, F))
    per_step += len(sizes) * sum(frame_bytes(cfg, t, 1, precision) for t in range(C - 1))
    return float(cem_steps * per_step)


def fractions(flops: float, nbytes: float, seconds: float, peak: Optional[RooflineDevice], precision: str) -> dict:
    """FLOP/s and bytes/s a time reaches, and their fractions of the device's peaks (None where the
    peak is unknown)."""
    flop_rate, byte_rate = flops / seconds, nbytes / seconds
    rate = peak.peak_tflops(precision) if peak else None
    return {"tflops_per_s": flop_rate / 1e12, "tbytes_per_s": byte_rate / 1e12,
            "flop_fraction_of_peak": flop_rate / (rate * 1e12) if rate else None,
            "byte_fraction_of_peak": byte_rate / (peak.bandwidth_tb_s * 1e12) if peak else None,
            "peak": peak.name if peak else None}

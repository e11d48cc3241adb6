"""Parity of an encoder runtime against the reference encoder on the planner's path
(`Encoder.encode_frames`), on seeded camera-like frames. Used by `export-encoder` (every graph is
checked before the artifact exists), by `validate` on an encoder, and by the demo."""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from .metrics import TOLERANCES, frame_errors, within


def validation_images(cfg, frames: int, seed: int, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Seeded uint8 frames [1, frames, H, W, 3] with smooth structure (a random image has no
    spatial correlation, unlike a camera's); by default (S + 8) x (S + 24), non-square so the crop
    and resize run."""
    rng = np.random.default_rng(seed)
    H, W = size or (cfg.img_size + 8, cfg.img_size + 24)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    out = np.empty((1, frames, H, W, 3), np.uint8)
    for t in range(frames):
        f = rng.uniform(1, 6, size=(3, 2))
        ph = rng.uniform(0, 2 * np.pi, size=3)
        img = np.stack([np.sin(f[c, 0] * 2 * np.pi * yy + ph[c]) * np.cos(f[c, 1] * 2 * np.pi * xx) for c in range(3)], -1)
        img = 127.5 + 100 * img + rng.normal(0, 10, size=img.shape)
        out[0, t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def encoder_parity(encoder, model, images: np.ndarray, precision: str) -> dict[str, Any]:
    """Features of `images` through an encoder runtime against the reference (the planner's path),
    per frame: max abs, mean abs, cosine, within the artifact's tolerance of `precision`."""
    import torch

    from ..encoder import preprocess

    with torch.no_grad():
        ref = model.encode_frames(torch.from_numpy(preprocess(images, model.cfg.img_size))).numpy()
    t0 = time.perf_counter()
    got = encoder.encode(images)
    seconds = time.perf_counter() - t0
    N, D = model.cfg.tokens_per_frame, model.cfg.embed_dim
    # one "frame" of the metrics per camera frame: [1, frames, N, D]
    errors = frame_errors(got.reshape(1, -1, N, D), ref.reshape(1, -1, N, D))
    return {"passed": within(errors, TOLERANCES[precision]), "tolerance": TOLERANCES[precision].to_dict(),
            "runtime": encoder.describe(), "frames": errors, "max_abs": max(e["max_abs"] for e in errors),
            "cosine": min(e["cosine"] for e in errors), "encode_s": seconds}

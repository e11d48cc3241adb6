"""Camera frames -> encoder pixels, numpy only (docs/planner.md section 1), and image files.

The upstream eval transform: center square crop, bilinear resize without antialiasing
(torch `interpolate(..., mode="bilinear", align_corners=False)`), per-channel normalization
in 0..255 units. Computed in float64, returned as float32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import VitacError, first_line

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and the weight of i1 for each output index (torch's bilinear,
    align_corners=False, no antialias: src = (dst + 0.5) * in/out - 0.5, clamped at 0)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def _check_images(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise VitacError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise VitacError(f"images must be uint8 RGB (0..255), got dtype {images.dtype}")
    if images.ndim == 4:
        images = images[None]
    if images.ndim != 5:
        raise VitacError(f"images must be [B, T, H, W, 3] or [T, H, W, 3], got shape {list(images.shape)}")
    if images.shape[-1] != 3:
        raise VitacError(f"images must have 3 channels (RGB) last, got shape {list(images.shape)}")
    if 0 in images.shape:
        raise VitacError(f"images must not be empty, got shape {list(images.shape)}")
    return images


def preprocess(images: np.ndarray, crop: int = 256) -> np.ndarray:
    """uint8 [B, T, H, W, 3] (or [T, H, W, 3]) -> float32 pixels [B, 3, T, crop, crop]."""
    if not isinstance(crop, int) or isinstance(crop, bool) or crop < 1:
        raise VitacError(f"crop must be a positive integer, got {crop!r}")
    images = _check_images(images)
    H, W = images.shape[2:4]
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    x = images[:, :, top:top + side, left:left + side].astype(np.float64)      # [B, T, s, s, 3]
    i0, i1, w = _axis_weights(side, crop)
    x = x[:, :, i0] * (1 - w)[:, None, None] + x[:, :, i1] * w[:, None, None]      # rows
    x = x[:, :, :, i0] * (1 - w)[:, None] + x[:, :, :, i1] * w[:, None]            # columns
    x = (x - 255.0 * MEAN) / (255.0 * STD)
    return np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3), dtype=np.float32)    # [B, 3, T, S, S]


def read_images(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Image files (PNG, JPEG, ... via Pillow) or `.npz`/`.npy` arrays -> uint8 [T, H, W, 3].

    An `.npz` holds one uint8 array (`images`, `observation` or its only entry) of [H, W, 3],
    [T, H, W, 3] or [1, T, H, W, 3]. Several image files must share one size."""
    frames = []
    for p in map(Path, paths):
        if not p.is_file():
            raise VitacError(f"image not found: {p}")
        if p.suffix.lower() in (".npz", ".npy"):
            frames.extend(_read_array(p))
            continue
        try:
            from PIL import Image
        except ImportError:
            raise VitacError(f"reading {p.suffix} images needs Pillow (pip install pillow), or pass an .npz of "
                             f"uint8 [T, H, W, 3]") from None
        try:
            with Image.open(p) as im:
                frames.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
            raise VitacError(f"cannot read image {p}: {first_line(e)}") from None
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VitacError(f"images of one observation must share a size, got {sorted(shapes)}")
    return np.stack(frames)


def _read_array(p: Path) -> list[np.ndarray]:
    try:
        if p.suffix.lower() == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as z:
                key = next((k for k in ("images", "observation", "observations") if k in z.files), None)
                if key is None:
                    if len(z.files) != 1:
                        raise VitacError(f"{p}: expected an array named 'images' (or a single array), "
                                         f"found {', '.join(z.files) or 'none'}")
                    key = z.files[0]
                a = z[key]
    except VitacError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VitacError(f"cannot read {p}: {first_line(e)}") from None
    if a.dtype != np.uint8:
        raise VitacError(f"{p}: images must be uint8 RGB, got dtype {a.dtype}")
    if a.ndim == 5 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise VitacError(f"{p}: expected uint8 [H, W, 3] or [T, H, W, 3], got shape {list(a.shape)}")
    return list(a)

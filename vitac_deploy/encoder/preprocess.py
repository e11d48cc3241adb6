"""Camera frames -> encoder pixels, numpy only (docs/planner.md section 1), and image files.

The upstream eval transform: center square crop, bilinear resize without antialiasing
(torch `interpolate(..., mode="bilinear", align_corners=False)`), per-channel normalization
in 0..255 units. Upstream resizes float32 frames, so torch computes each source coordinate in
float32: `scale = float32(in) / out`, `src = scale * (dst + 0.5) - 0.5` rounded once (the fused
multiply-add its CPU (AVX2/AVX-512, aarch64) and CUDA kernels compile to), `lambda = src -
floor(src)`, `1 - lambda` in float32. Those weights are reproduced exactly here; the blend and the
normalization are computed in float64 and returned as float32. Computing the coordinates in float64
instead differs from upstream by up to 1e-4 .. 4e-3 at sizes whose scale is not exact in float32
(e.g. 77 -> 48, 211 -> 224), never at the golden cases' 256 -> 64 and 60 -> 48. Only the rows
and columns the resize reads are gathered (as uint8) before any conversion: memory follows the
crop size, not the camera's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import VitacError, first_line

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# A frame larger than this is refused before it is decoded (8K UHD is 33 Mpx; Pillow's own bomb
# limit is 179 Mpx): a 236 KB PNG of 9000 x 9000 decodes to 243 MB.
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 2   # the smallest frame the crop and resize sample (every entry point: plan, serve, Python)


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and the weights of i0 and i1 for each output index, exactly as torch's
    bilinear resize of a float32 tensor computes them (align_corners=False, no antialias): float32
    scale, one rounding of scale * (dst + 0.5) - 0.5 (a fused multiply-add, exact in float64 for
    these operands), clamped at 0; lambda = src - i0 and 1 - lambda in float32."""
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    half = np.arange(n_out).astype(f32) + f32(0.5)
    src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(f32)   # product exact: one rounding
    src = np.maximum(src, f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(src - i0.astype(f32), f32(0), f32(1))
    return i0, i1, (f32(1) - lam).astype(np.float64), lam.astype(np.float64)


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
    if 0 in images.shape[:2]:
        raise VitacError(f"images must not be empty (at least one frame), got shape {list(images.shape)}")
    # an array already in memory costs nothing more here (only what the resize reads is converted):
    # the pixel cap is for what is still to be decoded or received
    check_frame_size("images", images.shape[2], images.shape[3], cap_pixels=False)
    return images


def check_frame_size(what: str, height: int, width: int, cap_pixels: bool = True) -> None:
    """One rule for a camera frame's size, wherever it comes from (a file, an array, a request):
    at least MIN_IMAGE_SIDE pixels each way, and (`cap_pixels`: for frames still to be decoded or
    received) at most MAX_IMAGE_PIXELS in all."""
    if min(height, width) < MIN_IMAGE_SIDE:
        raise VitacError(f"{what} must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, got {height}x{width}")
    if cap_pixels and height * width > MAX_IMAGE_PIXELS:
        raise VitacError(f"{what}: a frame of {width} x {height} ({height * width / 1e6:.0f} Mpx) is larger than "
                         f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx: resize it first (the encoder sees a square crop "
                         f"resized to its input size)")


def preprocess(images: np.ndarray, crop: int = 256) -> np.ndarray:
    """uint8 [B, T, H, W, 3] (or [T, H, W, 3]) -> float32 pixels [B, 3, T, crop, crop]."""
    if not isinstance(crop, int) or isinstance(crop, bool) or crop < 1:
        raise VitacError(f"crop must be a positive integer, got {crop!r}")
    images = _check_images(images)
    H, W = images.shape[2:4]
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    i0, i1, w0, w1 = _axis_weights(side, crop)
    # the crop's rows and columns the resize reads, still uint8: [B, T, S, S, 3] each
    rows0, rows1 = images[:, :, top + i0], images[:, :, top + i1]
    x00, x01 = rows0[:, :, :, left + i0].astype(np.float64), rows0[:, :, :, left + i1].astype(np.float64)
    x10, x11 = rows1[:, :, :, left + i0].astype(np.float64), rows1[:, :, :, left + i1].astype(np.float64)
    wc0, wc1 = w0[:, None], w1[:, None]
    # columns inside, rows outside, as torch's separable kernel nests them
    x = (x00 * wc0 + x01 * wc1) * w0[:, None, None] + (x10 * wc0 + x11 * wc1) * w1[:, None, None]
    x = (x - 255.0 * MEAN) / (255.0 * STD)
    return np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3), dtype=np.float32)    # [B, 3, T, S, S]


def read_images(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Image files (PNG, JPEG, ... via Pillow) or `.npz`/`.npy` arrays -> uint8 [T, H, W, 3].

    An `.npz` holds one uint8 array (`images`, `observation` or its only entry) of [H, W, 3],
    [T, H, W, 3] or [1, T, H, W, 3]. Several image files must share one size."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise VitacError("no images given: name at least one image file or .npz")
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
            with Image.open(p) as im:   # the header only: the size is known before decoding
                _check_pixels(p, im.size[1], im.size[0])
                frames.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except VitacError:
            raise
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
            raise VitacError(f"cannot read image {p}: {first_line(e)}") from None
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VitacError(f"images of one observation must share a size, got {sorted(shapes)}")
    return np.stack(frames)


def _check_pixels(p: Path, height: int, width: int) -> None:
    check_frame_size(str(p), height, width)


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
    if a.shape[0] == 0:
        raise VitacError(f"{p} holds no frame (shape {list(a.shape)})")
    _check_pixels(p, a.shape[1], a.shape[2])
    return list(a)

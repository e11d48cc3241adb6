"""The encoder runtime every backend shares: camera frames -> the normalized features the
predictor takes. numpy only.

Preprocessing is numpy (vitac_deploy.encoder.preprocess); the graph encodes single frames, so a
batch of observations is flattened to frames, encoded `max_batch` frames at a time, and put back.
A backend implements `_run(pixels [M, 3, S, S]) -> [M, N, D]`.
"""

from __future__ import annotations

import numpy as np

from ..encoder.config import EncoderConfig
from ..encoder.preprocess import preprocess
from ..errors import VitacError


class EncoderRuntime:
    """Base: `encode(images)` on top of a backend's `_run(pixels [M, 3, S, S]) -> [M, N, D]`."""

    backend = "?"

    def __init__(self, cfg: EncoderConfig, precision: str, device: str, max_batch: int = 16):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise VitacError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.cfg, self.precision, self.device, self.max_batch = cfg, precision, device, max_batch
        self._closed = False

    def describe(self) -> str:
        return f"{self.backend} encoder ({self.device}, {self.precision})"

    def checked_pixels(self, pixels) -> np.ndarray:
        """Preprocessed frames [M, 3, S, S] as the graph takes them (float32, C-contiguous), or one
        VitacError: the rule of every encode path."""
        self._check_open()
        S = self.cfg.img_size
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, S, S):
            raise VitacError(f"pixels must be a numpy array [M, 3, {S}, {S}], got "
                             f"{list(getattr(pixels, 'shape', [])) or type(pixels).__name__}")
        if pixels.shape[0] == 0:
            raise VitacError("pixels holds no frame")
        if pixels.dtype.kind != "f":   # uint8 frames not preprocessed, or complex/object data cast without a word
            raise VitacError(f"pixels must be float (preprocessed: encoder.preprocess), got dtype {pixels.dtype}")
        with np.errstate(over="ignore"):   # float64 beyond float32's range becomes inf: refused below
            pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise VitacError("pixels contain NaN or Inf")
        return pixels

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed single frames [M, 3, S, S] float32 -> normalized features [M, N, D]."""
        pixels = self.checked_pixels(pixels)
        out = [self._run(pixels[i:i + self.max_batch]) for i in range(0, pixels.shape[0], self.max_batch)]
        return np.concatenate(out) if len(out) > 1 else out[0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Camera frames uint8 [B, T, H, W, 3] (or [T, H, W, 3]) -> features [B, T*N, D] float32,
        layer-normed as the predictor and the planner take them."""
        px = preprocess(images, self.cfg.img_size)                      # [B, 3, T, S, S]
        B, _, T, S, _ = px.shape
        feats = self.encode_pixels(px.transpose(0, 2, 1, 3, 4).reshape(B * T, 3, S, S))
        return feats.reshape(B, T * self.cfg.tokens_per_frame, self.cfg.embed_dim)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_open(self) -> None:
        if getattr(self, "_closed", False):   # its buffers are freed: a backend would read freed memory
            raise VitacError(f"this {self.backend} encoder was closed: open a new one with open_encoder")

    def close(self) -> None:
        """Free what the backend holds now; every later call is refused (closing again does nothing)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._close()

    def _close(self) -> None:
        """The backend's hook of close()."""

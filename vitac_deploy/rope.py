"""The 3-D rotary position tables of the ViT-AC predictor (numpy only).

Shared by the PyTorch reference and the ONNX step graph, which stores them as constants.
Upstream quirk kept on purpose: each rotated segment of size d uses cos/sin vectors
``[f_0..f_{d/2-1}, f_0..f_{d/2-1}]`` (the half repeated) while the rotation pairs ADJACENT
elements, ``y_{2i} = -x_{2i+1}, y_{2i+1} = x_{2i}``. Published checkpoints depend on it.
"""

from __future__ import annotations

import numpy as np

from .config import PredictorConfig


def _segment(pos: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    omega = 1.0 / 10000.0 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    freq = pos[:, None].astype(np.float64) * omega[None, :]
    freq = np.concatenate([freq, freq], axis=-1)
    return np.cos(freq), np.sin(freq)


def frame_tables(cfg: PredictorConfig, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape [K + N, head_dim] (float64) for the tokens of latent frame `frame`.

    Token order is the cache order: K conditioning tokens, then N patch tokens row-major.
    Dims that are not rotated get cos = 1, sin = 0, so one formula covers every token.
    """
    d, K, H, W = cfg.rope_dim, cfg.cond_tokens, cfg.grid_height, cfg.grid_width
    L = K + H * W
    cos = np.ones((L, cfg.head_dim))
    sin = np.zeros((L, cfg.head_dim))
    t = np.full(L, float(frame))
    cos[:, :d], sin[:, :d] = _segment(t, d)          # time: every token, conditioning included
    idx = np.arange(H * W)
    rows = (idx // W) * (cfg.grid_height / H)         # upstream "snaps" to grid_size = grid_height
    cols = (idx % W) * (cfg.grid_height / W)
    cos[K:, d:2 * d], sin[K:, d:2 * d] = _segment(rows, d)
    cos[K:, 2 * d:3 * d], sin[K:, 2 * d:3 * d] = _segment(cols, d)
    return cos, sin


def all_frame_tables(cfg: PredictorConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape [max_frames, K + N, head_dim] (float64)."""
    tables = [frame_tables(cfg, t) for t in range(cfg.max_frames)]
    return np.stack([c for c, _ in tables]), np.stack([s for _, s in tables])


def pair_rotation_matrix(head_dim: int) -> np.ndarray:
    """R with ``x @ R = y``: y_{2i} = -x_{2i+1}, y_{2i+1} = x_{2i} (exact: one +-1 per column)."""
    R = np.zeros((head_dim, head_dim))
    for i in range(head_dim // 2):
        R[2 * i + 1, 2 * i] = -1.0
        R[2 * i, 2 * i + 1] = 1.0
    return R


def encoder_tables(cfg, latent_frames: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape [latent_frames * N, head_dim] (float64) for the encoder's tokens, ordered
    (latent frame, row, col), at their integer positions: the same rotation convention as the
    predictor (`frame_tables`), no conditioning tokens, unrotated dims last. `cfg`: EncoderConfig."""
    d, G = cfg.rope_dim, cfg.grid
    idx = np.arange(latent_frames * G * G)
    t, rows, cols = idx // (G * G), (idx % (G * G)) // G, idx % G
    cos = np.ones((idx.size, cfg.head_dim))
    sin = np.zeros((idx.size, cfg.head_dim))
    for axis, pos in enumerate((t, rows, cols)):
        cos[:, axis * d:(axis + 1) * d], sin[:, axis * d:(axis + 1) * d] = _segment(pos, d)
    return cos, sin

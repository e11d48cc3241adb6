"""Parity metrics and tolerances (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..precision import TOLERANCES, Tolerance

__all__ = ["TOLERANCES", "Tolerance", "frame_errors", "within"]


def frame_errors(pred: np.ndarray, ref: np.ndarray) -> list[dict[str, float]]:
    """Per frame of [B, F, N, D] arrays: max abs, mean abs, cosine (worst batch element), rel L1."""
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {ref.shape}")
    p, r = pred.astype(np.float64), ref.astype(np.float64)
    out = []
    for f in range(p.shape[1]):
        a, b = p[:, f].reshape(p.shape[0], -1), r[:, f].reshape(r.shape[0], -1)
        d = np.abs(a - b)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
        out.append({
            "frame": f, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "cosine": float(cos.min()), "rel_l1": float(d.sum() / (np.abs(b).sum() + 1e-30)),
            "finite": bool(np.isfinite(a).all()),
        })
    return out


def within(errors: list[dict[str, Any]], tol: Tolerance) -> bool:
    return all(e["finite"] and e["max_abs"] <= tol.max_abs and e["mean_abs"] <= tol.mean_abs
               and e["cosine"] >= tol.cosine_min for e in errors)

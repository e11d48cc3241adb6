"""Seeded weights: the recipe the golden files were made with, applied to any config."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from ..config import PredictorConfig


def recipe_state_dict(param_shapes: Mapping[str, Sequence[int]], seed: int, linear_std: float = 0.02,
                      overrides: Optional[Mapping[str, float]] = None) -> dict[str, np.ndarray]:
    """Weights from the golden recipe (tests/golden/README.md), float32 numpy arrays.

    `linear_std` and `overrides` (key -> std) are the recipe's variants for the planner case, whose
    actions must move the energy clearly (`predictor_linear_std`, `predictor_weight_overrides`)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    overrides = overrides or {}
    out: dict[str, np.ndarray] = {}
    for key in sorted(param_shapes):
        shape = tuple(param_shapes[key])
        if key.endswith("weight") and len(shape) >= 2:   # Linear (and the encoder's Conv3d) weights
            w = rng.standard_normal(shape) * overrides.get(key, linear_std)
            if key.endswith(("attn.proj.weight", "mlp.fc2.weight", "mlp.fc3.weight")):
                w /= math.sqrt(2 * (int(key.split(".")[1]) + 1))
        elif key.endswith("weight"):
            w = 1 + 0.1 * rng.standard_normal(shape)
        elif "norm" in key:
            w = 0.05 * rng.standard_normal(shape)
        else:
            w = 0.02 * rng.standard_normal(shape)
        out[key] = w.astype(np.float32)
    return out


def param_shapes(cfg: PredictorConfig) -> dict[str, tuple[int, ...]]:
    """Every upstream state_dict key of `cfg` with its shape."""
    from .model import Predictor  # torch only when asked
    import torch

    with torch.device("meta"):
        model = Predictor(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def random_predictor(cfg: PredictorConfig, seed: int = 0):
    """A reference `Predictor` in eval mode with seeded recipe weights (same seed + shapes as a
    golden case gives that case's weights)."""
    import torch
    from ..errors import VitacError
    from .model import Predictor

    # numpy refuses a negative seed with a raw ValueError: a user error, said as one
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise VitacError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    model = Predictor(cfg)
    sd = recipe_state_dict(param_shapes(cfg), seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    model.weights_source = {"checkpoint": None, "random_init_seed": seed}   # export records it in the manifest
    return model.eval()

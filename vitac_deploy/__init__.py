"""vitac-deploy: the V-JEPA 2 action-conditioned ViT predictor from PyTorch to robots.

Imports stay light: the torch side (`load_predictor`, `Predictor`) loads only when used, so the
runtime side works on a device with numpy and its backend alone.
"""

from __future__ import annotations

from typing import Any

from .config import PRESETS, PredictorConfig
from .errors import ValidationError, VitacError

__version__ = "0.1.0"

__all__ = ["PredictorConfig", "PRESETS", "VitacError", "ValidationError", "load_predictor",
           "Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("load_predictor", "Predictor", "random_predictor"):
        from . import reference

        return getattr(reference, name)
    raise AttributeError(f"module 'vitac_deploy' has no attribute {name!r}")

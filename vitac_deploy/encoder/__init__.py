"""The camera side of the loop: encoder config and preprocessing (numpy only, no torch)."""

from .config import ENCODER_FOR_PREDICTOR, ENCODER_PRESETS, EncoderConfig
from .preprocess import preprocess, read_images

__all__ = ["EncoderConfig", "ENCODER_PRESETS", "ENCODER_FOR_PREDICTOR", "preprocess", "read_images"]

"""The PyTorch reference: the model every artifact and runtime is measured against (needs torch)."""

from .checkpoint import load_predictor, read_state_dict, save_checkpoint
from .init import random_predictor, recipe_state_dict
from .model import KVCache, Predictor, normalize_features

__all__ = ["Predictor", "KVCache", "load_predictor", "read_state_dict", "save_checkpoint",
           "random_predictor", "recipe_state_dict", "normalize_features"]

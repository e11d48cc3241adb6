"""The PyTorch reference: the model every artifact and runtime is measured against (needs torch)."""

from .checkpoint import (encoder_from_source, load_encoder, load_predictor, predictor_from_source, read_state_dict,
                         save_checkpoint)
from .encoder import Encoder, encoder_param_shapes, random_encoder
from .from_graph import encoder_from_graph, predictor_from_graph, state_dict_from_graph
from .init import random_predictor, recipe_state_dict
from .model import KVCache, Predictor, normalize_features

__all__ = ["Encoder", "encoder_param_shapes", "random_encoder", "load_encoder", "Predictor", "KVCache", "load_predictor",
           "read_state_dict", "save_checkpoint", "random_predictor", "recipe_state_dict", "normalize_features",
           "encoder_from_graph", "predictor_from_graph", "state_dict_from_graph", "encoder_from_source",
           "predictor_from_source"]

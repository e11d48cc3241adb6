"""The reference models with the weights an artifact's fp32 graphs hold: what the torch backends
run, and the baseline `bench` and `validate` compare against when given an artifact (needs torch
and onnx)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..config import PredictorConfig
from ..encoder.config import EncoderConfig
from .encoder import Encoder, encoder_param_shapes
from .init import param_shapes


def state_dict_from_graph(path: str | os.PathLike, cfg: PredictorConfig) -> dict[str, np.ndarray]:
    """Upstream state_dict (float32) from a float32 step graph's initializers."""
    model = onnx.load(str(path), load_external_data=True)
    by_name = {t.name: t for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for key, shape in param_shapes(cfg).items():
        for name, transpose in ((f"{key}.T:float32", True), (f"{key}:float32", False)):
            if name in by_name:
                a = numpy_helper.to_array(by_name[name]).astype(np.float32)
                out[key] = np.ascontiguousarray(a.T if transpose else a)
                break
        else:
            if key.startswith("extrinsics_encoder") and not cfg.use_extrinsics:
                out[key] = np.zeros(shape, np.float32)  # unused by the graph; upstream keeps it
            else:
                raise KeyError(f"{path} has no weight for {key}")
    return out


def encoder_from_graph(graph: Path, cfg: EncoderConfig) -> Encoder:
    """The reference encoder with the weights of an fp32 encoder graph (needs torch and onnx)."""
    model = onnx.load(str(graph))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    sd = {}
    for key, shape in encoder_param_shapes(cfg).items():
        if key == "patch_embed.proj.weight":
            # the graph holds the tubelet-folded kernel; an even split gives back a Conv3d kernel that
            # computes the same on a repeated frame (the only way the planner encodes)
            folded = inits[f"{key}.folded:float32"]
            sd[key] = np.repeat(folded[:, :, None] / cfg.tubelet_size, cfg.tubelet_size, axis=2)
            continue
        name = f"{key}.T:float32" if f"{key}.T:float32" in inits else f"{key}:float32"
        a = inits[name].T if name.endswith(".T:float32") else inits[name]
        sd[key] = a.reshape(shape)
    m = Encoder(cfg)
    m.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()})
    return m.eval()


def predictor_from_graph(path: str | os.PathLike, cfg: PredictorConfig):
    """The reference `Predictor` (eval, float32) with a float32 step graph's weights. Raises
    KeyError, RuntimeError or ValueError when `cfg` does not describe the graph."""
    from .model import Predictor

    model = Predictor(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict_from_graph(path, cfg).items()})
    return model.eval()

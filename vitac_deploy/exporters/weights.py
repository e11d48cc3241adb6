"""Weights in and out of step graphs: shared external data, and reading them back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

from ..config import PredictorConfig

_INLINE_MAX = 1024  # bytes: small constants stay in the graph
_ALIGN = 4096       # offsets aligned so that runtimes can map the file


def save_with_shared_data(models: Iterable[tuple[onnx.ModelProto, Path]], data_path: Path) -> None:
    """Save graphs whose large initializers live in ONE external-data file, stored once even when
    several graphs (step and first-frame) hold the same tensor."""
    offsets: dict[str, tuple[int, int]] = {}
    with open(data_path, "wb") as data:
        for model, path in models:
            for tensor in model.graph.initializer:
                raw = tensor.raw_data
                if len(raw) <= _INLINE_MAX:
                    continue
                if tensor.name not in offsets:
                    pad = (-data.tell()) % _ALIGN
                    data.write(b"\0" * pad)
                    offsets[tensor.name] = (data.tell(), len(raw))
                    data.write(raw)
                offset, length = offsets[tensor.name]
                set_external_data(tensor, location=data_path.name, offset=offset, length=length)
                tensor.ClearField("raw_data")
            with open(path, "wb") as f:
                f.write(model.SerializeToString())


def state_dict_from_graph(path: str | os.PathLike, cfg: PredictorConfig) -> dict[str, np.ndarray]:
    """Upstream state_dict (float32) from a float32 step graph's initializers."""
    from ..reference.init import param_shapes

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

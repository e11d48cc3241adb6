"""Weights into step graphs: one shared external-data file for the graphs of an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import onnx
from onnx.external_data_helper import set_external_data


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

"""Which TensorRT layers an ONNX graph becomes: its network as TensorRT's ONNX parser builds it,
counted by layer type (no engine is built, no GPU is needed; TensorRT for RTX parses anywhere)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ...errors import VitacError


def parsed_layer_types(trt, onnx_path: str | Path, strongly_typed: bool = True) -> Counter:
    """Layer type name -> count of the network TensorRT's parser makes of `onnx_path` (external data
    beside it is read). One line naming the parser's errors when it refuses the graph."""
    logger = trt.Logger(trt.Logger.ERROR)
    flags = 0
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and flag is not None:
        flags |= 1 << int(flag)
    network = trt.Builder(logger).create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VitacError(f"{trt.__name__} cannot parse {onnx_path}: {errors}")
    return Counter(network.get_layer(i).type.name for i in range(network.num_layers))

"""The export side: reference model -> per-step ONNX graphs with a KV-cache interface (needs torch, onnx)."""

from .artifact import ExportOptions, export_artifact, graph_files
from .encoder_artifact import EncoderExportOptions, export_encoder
from .step_graph import build_step_graph

__all__ = ["ExportOptions", "export_artifact", "build_step_graph", "graph_files", "EncoderExportOptions",
           "export_encoder"]

"""ONNX Runtime backend (CPU and CUDA execution providers)."""

from .backend import OnnxRuntimeRuntime

__all__ = ["OnnxRuntimeRuntime"]

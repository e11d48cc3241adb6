"""PyTorch backend: the reference model behind the runtime interface (parity and baseline)."""

from .backend import TorchRuntime

__all__ = ["TorchRuntime"]

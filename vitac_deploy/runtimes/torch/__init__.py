"""PyTorch backends: `torch` (fast.py, the fast path; `torch-compile` under torch.compile) and
`torch-reference` (backend.py, the reference model behind the runtime interface: the parity
baseline)."""

from .backend import TorchRuntime
from .fast import FastTorchRuntime

__all__ = ["TorchRuntime", "FastTorchRuntime"]

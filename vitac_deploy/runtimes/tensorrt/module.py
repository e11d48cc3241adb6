"""Which TensorRT: the `tensorrt` module (TensorRT, Jetson and desktop) or `tensorrt_rtx`
(TensorRT for RTX), imported only when asked for. Shared by the builder and the runtime."""

from __future__ import annotations

import importlib

from ...errors import BackendUnavailable, VitacError

FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


def import_tensorrt(flavour: str = "tensorrt"):
    """The TensorRT module of a flavour, or one line saying what is missing and how to get it."""
    module = FLAVOURS.get(flavour)
    if module is None:
        raise VitacError(f"unknown TensorRT flavour {flavour!r} (tensorrt or tensorrt-rtx)")
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = ("on a Jetson it comes with JetPack (python3-libnvinfer); on a desktop: pip install tensorrt"
                if module == "tensorrt" else "pip install tensorrt-rtx-cu13 (RTX GPUs, compute capability 7.5+)")
        raise BackendUnavailable(f"{module} is not installed: {hint}") from None

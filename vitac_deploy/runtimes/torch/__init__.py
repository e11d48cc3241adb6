"""PyTorch backend: the reference model behind the runtime interface (`backend.py`, the parity
baseline; `torch-compile` compiles its blocks), the reference encoder (`encoder.py`) and the
upstream way of rolling out, recomputing the whole sequence (`full_recompute.py`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional

from ...artifacts import graph_names, verify_files
from ...errors import VitacError
from ..registry import ENCODER, PREDICTOR, Backend, MemoryLayout

__all__ = ["BACKEND", "TorchRuntime", "TorchEncoder"]


class TorchBackend(Backend):
    name = "torch"
    library = "torch"
    opens = (PREDICTOR, ENCODER)
    devices = ("cpu", "cuda")
    cache_contracts = ()   # its own preallocated cache, written in place; no ONNX contract
    # counted as ONNX Runtime's (two cache arenas, three frame buffers): an upper bound of what it holds
    memory_layout = MemoryLayout(frame_buffers=3, pinned_staging=False, weight_copies=(1,), default_weight_copies=1)
    variants = {"torch-compile": {"compile": True}}   # the reference under torch.compile

    def available(self, device: str) -> bool:
        if not super().available(device):
            return False
        if device == "cuda":
            import torch

            return torch.cuda.is_available()
        return True

    def open_predictor(self, path: Path, manifest: dict[str, Any], precision: str, device: str,
                       max_batch: Optional[int], max_frames: Optional[int], verify: bool, **options: Any):
        from .backend import TorchRuntime

        if verify:
            verify_files(path, manifest, graph_names(manifest, ("step.fp32",)))
        return TorchRuntime.from_artifact(path, manifest, precision, device, max_batch, max_frames, **options)

    def open_encoder(self, path: Path, manifest: dict[str, Any], precision: str, device: str,
                     max_batch: Optional[int], verify: bool, **options: Any):
        from ...encoder.config import EncoderConfig
        from ...reference import encoder_from_graph
        from .encoder import TorchEncoder

        if options:
            raise VitacError(f"the torch encoder takes no options ({', '.join(options)})")
        if "encoder.fp32" not in manifest["graphs"]:
            raise VitacError(f"{path} has no fp32 encoder graph: the torch backend reads its weights from it")
        if verify:
            verify_files(path, manifest, graph_names(manifest, ("encoder.fp32",)))
        cfg = EncoderConfig.from_dict(manifest["config"])
        return TorchEncoder(encoder_from_graph(path / manifest["graphs"]["encoder.fp32"]["file"], cfg), precision,
                            device, max_batch or 16)


BACKEND = TorchBackend()


def __getattr__(name: str) -> Any:   # the runtime classes load with their module, when asked for
    if name == "TorchRuntime":
        return importlib.import_module(".backend", __name__).TorchRuntime
    if name == "TorchEncoder":
        return importlib.import_module(".encoder", __name__).TorchEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""PyTorch backends: `torch` (`fast.py`, the fast path: K/V written in place, SDPA over the cache
view, RoPE resident; `torch-compile` runs it under torch.compile) and `torch-reference`
(`backend.py`, the reference model behind the runtime interface: the parity baseline); the
reference encoder (`encoder.py`) and the upstream way of rolling out, recomputing the whole
sequence (`full_recompute.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ...artifacts import graph_names, verify_files
from ...errors import VitacError
from ..registry import ENCODER, PREDICTOR, Backend, MemoryLayout, lazy_classes

__all__ = ["BACKEND", "TorchRuntime", "FastTorchRuntime", "TorchEncoder"]


class TorchBackend(Backend):
    name = "torch"
    library = "torch"
    opens = (PREDICTOR, ENCODER)
    devices = ("cpu", "cuda")
    cache_contracts = ()   # its own preallocated cache, written in place; no ONNX contract
    graph_forms = ("portable", "ort-fused", "trt-attention")   # it reads the weights only
    cuda_graphs = True     # the fast path replays frames as CUDA graphs (cuda_graphs=True)
    # counted as the graph runtimes' (input, prediction, two raw frame buffers): an upper bound
    memory_layout = MemoryLayout(frame_buffers=4, pinned_staging=False, weight_copies=(1,), default_weight_copies=1)
    # torch-compile: the fast path under torch.compile (mode "default" unless compile= says);
    # torch-reference: the reference model itself, the parity baseline
    variants = {"torch-compile": {"compile": "default"}, "torch-reference": {"reference": True}}

    def has_cuda_graphs(self, options: dict[str, Any]) -> bool:
        return self.cuda_graphs and not options.get("reference")   # the reference runs eager

    def available(self, device: str) -> bool:
        if not super().available(device):
            return False
        if device == "cuda":
            import torch

            return torch.cuda.is_available()
        return True

    def open_predictor(self, path: Path, manifest: dict[str, Any], precision: str, device: str,
                       max_batch: Optional[int], max_frames: Optional[int], verify: bool, **options: Any):
        if verify:
            verify_files(path, manifest, graph_names(manifest, ("step.fp32",)))
        if options.pop("reference", False):
            from .backend import TorchRuntime

            return TorchRuntime.from_artifact(path, manifest, precision, device, max_batch, max_frames, **options)
        from .fast import FastTorchRuntime

        if "compile" in options and options["compile"] is None:
            options.pop("compile")
        return FastTorchRuntime.from_artifact(path, manifest, precision, device, max_batch, max_frames, **options)

    def open_encoder(self, path: Path, manifest: dict[str, Any], precision: str, device: str,
                     max_batch: Optional[int], verify: bool, **options: Any):
        from ...encoder.config import EncoderConfig
        from ...reference import encoder_from_graph
        from .encoder import TorchEncoder

        options = {k: v for k, v in options.items() if k not in ("reference", "compile")}   # one reference encoder
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
__getattr__ = lazy_classes(__name__, {"TorchRuntime": ".backend", "FastTorchRuntime": ".fast",
                                      "TorchEncoder": ".encoder"})

"""ONNX Runtime backend (CPU and CUDA execution providers): the step graphs driven through I/O
binding (`backend.py`), their buffers (`memory.py`), the encoder graph (`encoder.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ...artifacts import cache_contract, graph_names, verify_files
from ...errors import VitacError
from ...graph_forms import graph_form
from ..registry import ENCODER, PREDICTOR, Backend, MemoryLayout, lazy_classes

__all__ = ["BACKEND", "OnnxRuntimeRuntime", "OnnxRuntimeEncoder"]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    library = "onnxruntime"
    opens = (PREDICTOR, ENCODER)
    devices = ("cpu", "cuda")
    cache_contracts = ("concat", "static")
    graph_forms = ("portable", "ort-fused", "trt-attention")
    cuda_graphs = True
    runs_exported_graphs = True
    # the staged input features, a prediction and two raw predictions in device memory; the weights
    # once (one session)
    memory_layout = MemoryLayout(frame_buffers=4, pinned_staging=False, weight_copies=(1,), default_weight_copies=1)

    def available(self, device: str) -> bool:
        if not super().available(device):
            return False
        if device == "cuda":   # the CPU package installs the same module without the CUDA provider
            import onnxruntime as ort

            return "CUDAExecutionProvider" in ort.get_available_providers()
        return True

    def open_predictor(self, path: Path, manifest: dict[str, Any], precision: str, device: str,
                       max_batch: Optional[int], max_frames: Optional[int], verify: bool, **options: Any):
        from ...config import PredictorConfig
        from .backend import OnnxRuntimeRuntime, energy_graph_path

        key = f"step.{precision}"
        if key not in manifest["graphs"]:
            raise VitacError(f"{path} has no {precision} step graph (exported: {', '.join(sorted(manifest['graphs']))})")
        cache = cache_contract(manifest, path)   # concat when the manifest predates the static contract
        if verify:
            verify_files(path, manifest, graph_names(manifest, (key, "energy")))
        return OnnxRuntimeRuntime(path / manifest["graphs"][key]["file"], PredictorConfig.from_dict(manifest["config"]),
                                  precision, device, max_batch, max_frames, energy_graph=energy_graph_path(path, manifest),
                                  cache=cache, cache_frames=manifest["cache"]["frames"] if cache == "static" else None,
                                  graph_form=graph_form(manifest, path), **options)

    def open_encoder(self, path: Path, manifest: dict[str, Any], precision: str, device: str,
                     max_batch: Optional[int], verify: bool, **options: Any):
        from ...encoder.config import EncoderConfig
        from .encoder import OnnxRuntimeEncoder

        key = f"encoder.{precision}"
        if key not in manifest["graphs"]:
            raise VitacError(f"{path} has no {precision} encoder graph (exported: {', '.join(sorted(manifest['graphs']))})")
        if verify:   # what ONNX Runtime reads is what the manifest's hashes vouch for
            verify_files(path, manifest, graph_names(manifest, (key,)))
        return OnnxRuntimeEncoder(path / manifest["graphs"][key]["file"], EncoderConfig.from_dict(manifest["config"]),
                                  precision, device, max_batch or 16, **options)


BACKEND = OnnxRuntimeBackend()


__getattr__ = lazy_classes(__name__, {"OnnxRuntimeRuntime": ".backend", "OnnxRuntimeEncoder": ".encoder"})

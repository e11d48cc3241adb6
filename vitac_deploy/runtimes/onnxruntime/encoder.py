"""The encoder graph on ONNX Runtime (CPU or CUDA execution provider)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...encoder.config import EncoderConfig
from ...errors import BackendUnavailable, VitacError, first_line
from ..encoder_base import EncoderRuntime
from . import BACKEND
from .backend import import_ort, check_providers, cuda_provider_failure, cuda_provider_options

log = logging.getLogger("vitac_deploy")


class OnnxRuntimeEncoder(EncoderRuntime):
    backend = BACKEND.name

    def __init__(self, graph: Path, cfg: EncoderConfig, precision: str, device: str = "cpu", max_batch: int = 16,
                 threads: Optional[int] = None):
        super().__init__(cfg, precision, device, max_batch)
        ort = import_ort()
        providers: list[Any] = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime has no CUDAExecutionProvider here: install onnxruntime-gpu "
                                         "and run on a machine with an NVIDIA GPU")
            if hasattr(ort, "preload_dlls"):
                try:
                    ort.preload_dlls()
                except Exception as e:  # noqa: BLE001 - shows up as a missing provider below
                    log.debug("onnxruntime.preload_dlls: %s", first_line(e))
            providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(False, False)))
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(graph), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises plain exceptions
            raise VitacError(f"onnxruntime cannot load {graph}: {first_line(e)}") from None
        check_providers(device == "cuda", self.session.get_providers(),
                        cuda_provider_failure(ort) if device == "cuda" else "")
        if [i.name for i in self.session.get_inputs()] != ["pixels"]:
            raise VitacError(f"{graph} is not an encoder graph (input 'pixels'): re-export it")

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(["features"], {"pixels": pixels})[0]

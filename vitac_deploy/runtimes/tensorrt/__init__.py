"""TensorRT backend: the runtime (`backend.py`) and encoder (`encoder.py`) over engines, engine
building (`build.py`), optimization profiles (`profiles.py`), the checks an engine's manifest must
pass before deserialization (`compat.py`) and the choice of TensorRT flavour (`module.py`).
Imports tensorrt only when used."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable, Optional

from ...errors import VitacError
from ..registry import ENCODER_ENGINE, ENGINE, Backend, MemoryLayout

__all__ = ["BACKEND"]


class TensorRTBackend(Backend):
    name = "tensorrt"
    library = "tensorrt"
    opens = (ENGINE, ENCODER_ENGINE)
    devices = ("cuda",)
    cache_contracts = ("concat", "static")
    graph_forms = ("portable", "trt-attention")   # which TensorRT parses which: tensorrt/compat.py
    cuda_graphs = True
    runs_exported_graphs = True
    needs_first_frame_graph = True
    # input staging + a prediction + two raw predictions on the device, pinned host copies of the
    # inputs; the weights twice with the first-frame engine (the default build), once without
    memory_layout = MemoryLayout(frame_buffers=4, pinned_staging=True, weight_copies=(1, 2), default_weight_copies=2)

    def installed(self) -> bool:
        return any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx"))

    @staticmethod
    def _check_precision(path: Path, manifest: dict[str, Any], precision: Optional[str]) -> None:
        if precision is not None and precision != manifest.get("precision"):
            raise VitacError(f"{path} was built {manifest.get('precision')}, not {precision}: rebuild with "
                             f"--precision {precision}")

    def open_predictor(self, path: Path, manifest: dict[str, Any], precision: Optional[str], device: str,
                       max_batch: Optional[int], max_frames: Optional[int], verify: bool, **options: Any):
        if manifest.get("kind") == "encoder":
            raise VitacError(f"{path} is an encoder engine: open it with vitac_deploy.runtimes.open_encoder "
                             f"(or pass it to `plan --encoder`)")
        self._check_precision(path, manifest, precision)
        from .backend import TensorRTRuntime

        return TensorRTRuntime(path, manifest, max_batch, max_frames, verify_files=verify, **options)

    def open_encoder(self, path: Path, manifest: dict[str, Any], precision: Optional[str], device: str,
                     max_batch: Optional[int], verify: bool, **options: Any):
        self._check_precision(path, manifest, precision)
        from .encoder import TensorRTEncoder

        return TensorRTEncoder(path, manifest, max_batch, verify_files=verify, **options)

    def prepare(self, artifact: Path, precision: str, max_batch: int, workdir: Path,
                say: Callable[[str], None]) -> Path:
        """An engine of `artifact` for batches up to `max_batch`, built once into `workdir`."""
        from .build import EngineOptions, build_engine
        from .profiles import ProfileOptions

        flavour = "tensorrt" if importlib.util.find_spec("tensorrt") or not importlib.util.find_spec("tensorrt_rtx") \
            else "tensorrt-rtx"
        plan = Path(workdir) / f"bench-{Path(artifact).name}-b{max_batch}.plan"
        if not plan.is_file():
            say(f"building a {flavour} engine for batch <= {max_batch}")
            build_engine(artifact, plan, EngineOptions(precision=precision, flavour=flavour,
                                                       profile=ProfileOptions(1, max_batch, max_batch)), say=say)
        return plan


BACKEND = TensorRTBackend()

"""The encoder as a TensorRT engine (from `build-engine` on an encoder artifact): frames in through
pinned host memory, features back the same way. No PyTorch: device memory from cuda-python."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...encoder.config import EncoderConfig
from ...errors import VitacError
from ...artifacts import sha256_file
from ..encoder_base import EncoderRuntime
from . import BACKEND
from ..gpu import DeviceBuffer, PinnedBuffer, Stream, gpu_info, import_cudart
from .compat import check_engine_compat
from .contexts import ContextFactory, activation_bytes, configure
from .module import import_tensorrt


class TensorRTEncoder(EncoderRuntime):
    backend = BACKEND.name

    def __init__(self, engine_path: str | Path, manifest: dict[str, Any], max_batch: Optional[int] = None,
                 verify_files: bool = True):
        if manifest.get("kind") != "encoder":
            raise VitacError(f"{engine_path} is not an encoder engine (build one with `vitac-deploy build-engine "
                             f"ENCODER_ARTIFACT --out ...`)")
        flavour = manifest.get("tensorrt", {}).get("flavour", "tensorrt")
        trt = self._trt = import_tensorrt(flavour)
        cfg = EncoderConfig.from_dict(manifest["config"])
        engine_batch = manifest.get("build_flags", {}).get("batch", [1, 1, 1])[2]
        if max_batch is not None and max_batch > engine_batch:
            raise VitacError(f"max_batch {max_batch} exceeds the encoder engine's profile (max batch {engine_batch}): "
                             f"rebuild with `build-engine --max-batch {max_batch}`")
        super().__init__(cfg, manifest.get("precision", "fp16"), "cuda", max_batch or engine_batch)
        gpu = gpu_info(required=False)
        check_engine_compat(manifest, trt.__version__, flavour, gpu and gpu["name"], gpu and gpu["compute_capability"])
        (entry,) = manifest["engines"]
        path = Path(engine_path).parent / entry["file"]
        if not path.is_file():
            raise VitacError(f"engine file missing: {path}")
        if verify_files and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            raise VitacError(f"{path} differs from its manifest's sha256: rebuild it with `vitac-deploy build-engine`")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if manifest.get("build_flags", {}).get("version_compatible"):
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise VitacError(f"{trt.__name__} {trt.__version__} cannot deserialize {path}: rebuild it here")
        c = self._c = import_cudart()
        B, S, N, D = self.max_batch, cfg.img_size, cfg.tokens_per_frame, cfg.embed_dim
        self._stream = Stream(c)
        self._activation_size = activation_bytes(self._engine)
        self._activation = DeviceBuffer(c, self._activation_size)
        self._contexts = ContextFactory(trt, flavour, lambda: self._activation.ptr, lambda: self._activation_size)
        self._ctx = self._contexts.create(self._engine)
        self._pixels = DeviceBuffer(c, B * 3 * S * S * 4)
        self._out = {name: DeviceBuffer(c, B * N * D * 4) for name in ("features", "features_raw")}
        self._host_in = PinnedBuffer(c, B * 3 * S * S)
        self._host_out = PinnedBuffer(c, B * N * D)
        self._shape: Optional[tuple] = None

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        M = pixels.shape[0]
        N, D = self.cfg.tokens_per_frame, self.cfg.embed_dim
        shape = (M, 3, self.cfg.img_size, self.cfg.img_size)
        if shape != self._shape:   # shapes and addresses once per batch size, not per call
            configure(self._ctx, {"pixels": shape},
                      {"pixels": self._pixels.ptr, **{n: b.ptr for n, b in self._out.items()}}, "encoder")
            self._shape = shape
        self._host_in.array[:pixels.size] = pixels.ravel()
        self._stream.copy(self._pixels.ptr, self._host_in.ptr, pixels.nbytes, "h2d")
        if not self._ctx.execute_async_v3(self._stream.ptr):
            raise VitacError("TensorRT failed to enqueue the encoder engine")
        n = M * N * D
        self._stream.copy(self._host_out.ptr, self._out["features"].ptr, n * 4, "d2h")
        self._stream.synchronize()
        return self._host_out.array[:n].reshape(M, N, D).copy()

    def _close(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._stream.synchronize()
        self._ctx = None
        if hasattr(self, "_contexts"):
            self._contexts.release()
        for b in [getattr(self, "_pixels", None), *getattr(self, "_out", {}).values(),
                  getattr(self, "_host_in", None), getattr(self, "_host_out", None),
                  getattr(self, "_activation", None)]:
            if b is not None:
                b.free()
        if getattr(self, "_stream", None) is not None:
            self._stream.destroy()
            self._stream = None

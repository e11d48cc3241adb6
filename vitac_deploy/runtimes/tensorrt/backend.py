"""TensorRT: engines built by `vitac-deploy build-engine`, driven on preallocated device memory.

- The engine's manifest is checked against this TensorRT and GPU before the plan is deserialized.
- Every block's cache lives in two device arenas of (max batch x max frames), allocated once;
  past_* is bound to one, present_* to the other, and they swap after every frame (the graph's
  Concat is the only copy of the cache). Inputs and the prediction go through pinned buffers.
- `execute_async_v3` on a non-blocking stream. With `cuda_graphs` (default on) the first run of
  each (engine, batch, frame index, buffer parity) is enqueued and then captured; later runs of the
  same key launch the graph. A failed capture turns graphs off for this runtime, with a warning.
  TensorRT for RTX uses its own whole-graph capture (runtime config) instead.
- No PyTorch: device memory and streams come from cuda-python. CUDA arrays (PyTorch, CuPy) are
  taken by pointer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...config import PredictorConfig
from ...contract import past_names
from ...errors import VitacError
from ...manifest import sha256_file
from ..arrays import DeviceArray, DeviceFrames
from ..base import Runtime
from ..gpu import DeviceBuffer, PinnedBuffer, Stream, check, gpu_info, import_cudart, tile_copies
from .binding import FrameBuffers, bind_frame
from .compat import check_engine_compat
from .module import import_tensorrt

log = logging.getLogger("vitac_deploy")


class TensorRTRuntime(Runtime):
    backend = "tensorrt"
    accepts_device_arrays = True

    def __init__(self, engine_path: str | Path, manifest: dict[str, Any], max_batch: Optional[int] = None,
                 max_frames: Optional[int] = None, cuda_graphs: bool = True, verify_files: bool = True):
        flavour = manifest.get("tensorrt", {}).get("flavour", "tensorrt")
        trt = self._trt = import_tensorrt(flavour)
        cfg = PredictorConfig.from_dict(manifest["config"])
        flags = manifest.get("build_flags", {})
        engine_batch = flags.get("batch", [1, 1, 1])[2]
        engine_frames = flags.get("max_frames", cfg.max_frames)
        if max_batch is not None and max_batch > engine_batch:
            raise VitacError(f"max_batch {max_batch} exceeds the engine's profile (max batch {engine_batch}): "
                             f"rebuild with `build-engine --max-batch {max_batch}`")
        if max_frames is not None and max_frames > engine_frames:
            raise VitacError(f"max_frames {max_frames} exceeds the engine's profile ({engine_frames} frames): "
                             f"rebuild with `build-engine --max-frames {max_frames}`")
        super().__init__(cfg, manifest.get("precision", "fp16"), "cuda", max_batch or engine_batch,
                         max_frames or engine_frames)
        gpu = gpu_info(required=False)
        check_engine_compat(manifest, trt.__version__, flavour, gpu and gpu["name"], gpu and gpu["compute_capability"])
        self._cudart = import_cudart()
        self._free_at_open = self._mem_free()
        self.flavour, self.manifest = flavour, manifest
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engines, self._ctx = {}, {}
        folder = Path(engine_path).parent
        for e in manifest["engines"]:
            path = folder / e["file"]
            if not path.is_file():
                raise VitacError(f"engine file missing: {path} (listed in {Path(engine_path).name}.json)")
            if verify_files and e.get("sha256") and sha256_file(path) != e["sha256"]:
                raise VitacError(f"{path} differs from its manifest's sha256: rebuild it with `vitac-deploy build-engine`")
            data = path.read_bytes()
            self._check_validity(path, data)
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise VitacError(f"TensorRT {trt.__version__} cannot deserialize {path}: rebuild it here")
            self._engines[e["role"]] = engine
            self._ctx[e["role"]] = self._context(engine, cuda_graphs)
        self.cache_dtype = np.dtype(trt.nptype(self._engines["step"].get_tensor_dtype("past_key.0")))
        self._stream = Stream(self._cudart)
        # RTX captures on its own; for TensorRT we capture per frame index.
        self.cuda_graphs = cuda_graphs and flavour == "tensorrt"
        self._rtx_graphs = cuda_graphs and flavour == "tensorrt-rtx"
        self._graphs: dict[tuple, Any] = {}
        self._bindings: dict[tuple, Any] = {}   # frame key -> FrameBinding
        self._buffers: list = []

    def _check_validity(self, path: Path, data: bytes) -> None:
        """TensorRT for RTX (1.1+) says from the header alone whether a plan runs on this GPU."""
        trt = self._trt
        if not hasattr(self._runtime, "get_engine_validity"):
            return
        validity, diagnostics = self._runtime.get_engine_validity(data)
        if validity == trt.EngineValidity.INVALID:
            reasons = [name.lower().replace("_", " ") for name, bit in trt.EngineInvalidityDiagnostics.__members__.items()
                       if int(diagnostics) & int(bit)] or ["unknown"]
            raise VitacError(f"{trt.__name__} {trt.__version__} cannot run {path} on this GPU "
                             f"({', '.join(reasons)}): rebuild it with `vitac-deploy build-engine`")
        if validity == trt.EngineValidity.SUBOPTIMAL:
            log.warning("%s runs %s sub-optimally here; rebuilding it for this GPU may be faster", trt.__name__, path)

    def _context(self, engine, cuda_graphs: bool):
        trt = self._trt
        if self.flavour == "tensorrt-rtx":
            rc = engine.create_runtime_config()
            rc.cuda_graph_strategy = (trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE if cuda_graphs
                                      else trt.CudaGraphStrategy.DISABLED)
            ctx = engine.create_execution_context(rc)
        else:
            ctx = engine.create_execution_context()
        if ctx is None:
            raise VitacError("TensorRT could not create an execution context (out of device memory?)")
        return ctx

    # -- memory ---------------------------------------------------------------------------------------
    def _mem_free(self) -> Optional[int]:
        err, free, _total = self._cudart.cudaMemGetInfo() if hasattr(self, "_cudart") else (1, 0, 0)
        return int(free) if int(err) == 0 else None

    def device_memory(self) -> dict[str, float]:
        """Device memory this runtime holds, in MiB: its buffers, TensorRT's activation memory, and
        the drop in free device memory since it was opened (engines and all)."""
        mib = 1 / 2**20
        out = {"cache_and_io_buffers_mib": sum(b.nbytes for b in self._buffers if isinstance(b, DeviceBuffer)) * mib}
        act = 0
        for e in self._engines.values():
            act += int(getattr(e, "device_memory_size_v2", getattr(e, "device_memory_size", 0)))
        out["activation_mib"] = act * mib
        free = self._mem_free()
        if free is not None and self._free_at_open is not None:
            out["device_used_since_open_mib"] = (self._free_at_open - free) * mib
        return out

    def _allocate(self, batch: int) -> None:
        self._release()
        cfg, c = self.cfg, self._cudart
        L, N, D, A = cfg.tokens_per_step, cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
        kv = batch * cfg.num_heads * self.max_frames * L * cfg.head_dim * self.cache_dtype.itemsize
        self._arenas = [{n: DeviceBuffer(c, kv) for n in past_names(cfg)} for _ in range(2)]
        frame = batch * N * D * 4
        self._d_feat = DeviceBuffer(c, frame)
        self._d_pred = DeviceBuffer(c, frame)
        self._d_raw = [DeviceBuffer(c, frame) for _ in range(2)]
        self._h_feat = PinnedBuffer(c, batch * N * D)
        self._h_pred = PinnedBuffer(c, batch * N * D)
        cond = ["action", "state"] + (["extrinsics"] if cfg.use_extrinsics else [])
        width = {"action": A, "state": A, "extrinsics": A - 1}
        self._d_cond = {n: DeviceBuffer(c, batch * width[n] * 4) for n in cond}
        self._h_cond = {n: PinnedBuffer(c, batch * width[n]) for n in cond}
        self._buffers = ([b for a in self._arenas for b in a.values()] + [self._d_feat, self._d_pred, *self._d_raw,
                         self._h_feat, self._h_pred, *self._d_cond.values(), *self._h_cond.values()])
        self._cur, self._raw_cur = 0, 0
        self._graphs.clear()   # captured addresses are gone
        self._bindings.clear()

    def _release(self) -> None:
        for g in getattr(self, "_graphs", {}).values():
            self._cudart.cudaGraphExecDestroy(g)
        if hasattr(self, "_graphs"):
            self._graphs.clear()
        for b in getattr(self, "_buffers", []):
            b.free()
        self._buffers = []

    def close(self) -> None:
        """Free device memory now (it is freed with the runtime otherwise)."""
        self._release()
        if getattr(self, "_stream", None) is not None:
            self._stream.destroy()
            self._stream = None
        self._capacity = 0

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- one frame ------------------------------------------------------------------------------------
    def _load_features(self, features) -> int:
        """Put this frame's features where the engine reads them; returns that address."""
        s = self._stream
        row = self.cfg.tokens_per_frame * self.cfg.embed_dim * 4
        if features is None:
            return self._d_raw[self._raw_cur].ptr
        if isinstance(features, np.ndarray):
            self._h_feat.array[:features.size] = features.ravel()
            s.copy(self._d_feat.ptr, self._h_feat.ptr, features.nbytes, "h2d")
        elif isinstance(features, DeviceArray):   # copied so a captured graph keeps its address
            s.copy(self._d_feat.ptr, features.ptr, features.nbytes, "d2d")
        elif isinstance(features, DeviceFrames):
            src = features.array
            rows, C = src.shape[0], src.shape[1]
            s.copy_rows(self._d_feat.ptr, row, src.ptr + features.t * row, C * row, row, rows, "d2d")
            self._tile(self._d_feat.ptr, row, rows, features.batch)
        else:
            raise TypeError(f"unexpected features {type(features).__name__}")
        return self._d_feat.ptr

    def _tile(self, ptr: int, row_bytes: int, have: int, want: int) -> None:
        """Repeat the first `have` rows of a buffer up to `want` rows, doubling (log2 copies)."""
        for row, n in tile_copies(have, want):
            self._stream.copy(ptr + row * row_bytes, ptr, n * row_bytes, "d2d")

    def _run(self, features, cond: dict[str, np.ndarray]) -> None:
        cfg, B, s = self.cfg, self.batch, self._stream
        feat_ptr = self._load_features(features)
        for name, value in cond.items():
            self._h_cond[name].array[:value.size] = value.ravel()
            s.copy(self._d_cond[name].ptr, self._h_cond[name].ptr, value.nbytes, "h2d")
        # shapes and every address are fixed by this key: one binding (and one captured graph) serves it
        key = (B, self.frames, self._cur, self._raw_cur, features is None)
        bind = self._bindings.get(key)
        if bind is None:
            past, present = self._arenas[self._cur], self._arenas[1 - self._cur]
            bind = self._bindings[key] = bind_frame(cfg, B, self.frames, "first" in self._ctx, FrameBuffers(
                features=feat_ptr, cond={n: self._d_cond[n].ptr for n in cond},
                past={n: b.ptr for n, b in past.items()}, present={n: b.ptr for n, b in present.items()},
                prediction=self._d_pred.ptr, raw_out=self._d_raw[1 - self._raw_cur].ptr))
        ctx = self._ctx[bind.role]
        if not (self.cuda_graphs and key in self._graphs):   # a replayed graph needs no rebinding
            for name, shape in bind.shapes.items():
                if not ctx.set_input_shape(name, shape):
                    raise VitacError(f"TensorRT refused shape {list(shape)} for {name} (outside the engine's profile?)")
            for name, ptr in bind.addresses.items():
                ctx.set_tensor_address(name, ptr)
        self._enqueue(ctx, key)
        s.copy(self._h_pred.ptr, bind.prediction, B * cfg.tokens_per_frame * cfg.embed_dim * 4, "d2h")
        s.synchronize()
        self._cur, self._raw_cur = 1 - self._cur, 1 - self._raw_cur

    def _enqueue(self, ctx, key: tuple) -> None:
        s = self._stream
        graph = self._graphs.get(key) if self.cuda_graphs else None
        if graph is not None:
            s.launch(graph)
            return
        if not ctx.execute_async_v3(s.ptr):
            raise VitacError(f"TensorRT failed on frame {self.frames} (execute_async_v3 returned False)")
        if self.cuda_graphs:
            # Shapes and addresses are fixed per key, so the enqueue above (which also settles
            # TensorRT's shape-dependent state, as capture requires) can be recorded for replay.
            try:
                self._graphs[key] = s.capture(lambda: ctx.execute_async_v3(s.ptr))
            except VitacError as e:
                self.cuda_graphs = False
                log.warning("CUDA graph capture failed (%s): running without CUDA graphs", e)

    # -- rollout hooks --------------------------------------------------------------------------------
    def _broadcast_cache(self, batch: int) -> None:
        if batch > self._capacity:
            raise VitacError(f"batch {batch} exceeds the runtime's allocated batch {self._capacity}")
        cfg = self.cfg
        kv_row = cfg.num_heads * self.frames * cfg.tokens_per_step * cfg.head_dim * self.cache_dtype.itemsize
        for buf in self._arenas[self._cur].values():
            self._tile(buf.ptr, kv_row, 1, batch)
        frame_row = cfg.tokens_per_frame * cfg.embed_dim * 4
        self._tile(self._d_raw[self._raw_cur].ptr, frame_row, 1, batch)
        n = cfg.tokens_per_frame * cfg.embed_dim
        self._h_pred.array[n:batch * n] = np.tile(self._h_pred.array[:n], batch - 1)
        self._stream.synchronize()

    def _prediction(self) -> np.ndarray:
        cfg = self.cfg
        n = self.batch * cfg.tokens_per_frame * cfg.embed_dim
        return self._h_pred.array[:n].reshape(self.batch, cfg.tokens_per_frame, cfg.embed_dim).copy()

    def _to_host(self, array: DeviceArray) -> np.ndarray:
        out = np.empty(array.shape, array.dtype)
        c = self._cudart
        check(c.cudaMemcpy(out.ctypes.data, array.ptr, array.nbytes, c.cudaMemcpyKind.cudaMemcpyDeviceToHost),
              "cudaMemcpy (device array to host)")
        return out

    def describe(self) -> str:
        graphs = "CUDA graphs" if self.cuda_graphs or self._rtx_graphs else "no CUDA graphs"
        return f"{self.flavour} {self._trt.__version__} (cuda, {self.precision}, {graphs})"

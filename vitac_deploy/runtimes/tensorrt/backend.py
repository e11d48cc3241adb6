"""TensorRT: engines built by `vitac-deploy build-engine`, driven on preallocated device memory.

- The engine's manifest is checked against this TensorRT and GPU before the plan is deserialized.
- Concat contract: every block's cache lives in two device arenas of (max batch x max frames),
  allocated once; past_* is bound to one, present_* to the other, and they swap after every frame
  (the graph's Concat is the only copy of the cache). Static contract (TensorRT >= 10.15, or for
  RTX with IKVCacheUpdateLayer): one zeroed arena per block of (max batch x the fixed max_len),
  present_* bound to past_*'s address, so the KV-cache update layer writes only the new frame.
  Its shapes are fixed and the frame's rows (RoPE, write index, mask) are copied on the stream to
  fixed slots, so one binding and one captured CUDA graph serve every frame of a batch (per
  raw-prediction parity), instead of one per frame index. The RoPE rows of every frame live on the device; frame t
  binds row t. Host inputs go through pinned buffers; predictions stay on the device until asked
  for (`_prediction`), and the planner's energy runs as an engine of its own on them.
- All contexts (step, first frame, energy) share one activation buffer (see contexts.py).
- `execute_async_v3` on a non-blocking stream. CUDA graphs are OFF by default: until a GPU run has
  shown replay equal to eager execution for every frame, they are an option (`cuda_graphs=True`).
  With them, each (batch, frame, parity) key gets its own context, configured once, run eagerly
  once, then captured; later runs of the key replay the graph. Any capture failure turns graphs off
  with a warning. TensorRT for RTX uses its own whole-graph capture instead.
- CUDA arrays (PyTorch, CuPy) are taken by pointer; the copy waits for the producer's stream.
- A staged context (`stage_context`, host or CUDA arrays) lives in a device buffer of its own and
  is broadcast into the features buffer on the stream (skipped when the buffer holds it already):
  per CEM step only the conditioning goes in and the energies come out.
- No PyTorch: device memory and streams come from cuda-python.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...config import PredictorConfig
from ...contract import ROPE_INPUTS, past_names, rope_rows, static_max_len, static_rows
from ...graph_forms import graph_form
from ...errors import VitacError, first_line
from ...artifacts import cache_contract, file_digest
from ..arrays import DeviceArray, DeviceFrames
from ..base import Runtime
from ..staging import StagedFrames
from ..gpu import DeviceBuffer, PinnedBuffer, Stream, device_to_host, gpu_info, import_cudart
from .binding import FrameBinding, FrameBuffers, bind_frame
from . import BACKEND
from .compat import check_engine_compat, check_kv_cache_support
from .contexts import ContextFactory, activation_bytes, configure
from .module import import_tensorrt

log = logging.getLogger("vitac_deploy")


class TensorRTRuntime(Runtime):
    backend = BACKEND.name
    memory_layout = BACKEND.memory_layout
    accepts_device_arrays = True

    def __init__(self, engine_path: str | Path, manifest: dict[str, Any], max_batch: Optional[int] = None,
                 max_frames: Optional[int] = None, cuda_graphs: bool = False, verify_files: bool = True):
        flavour = manifest.get("tensorrt", {}).get("flavour", "tensorrt")
        trt = self._trt = import_tensorrt(flavour)
        cfg = PredictorConfig.from_dict(manifest["config"])
        self.cache = cache_contract(manifest)
        check_kv_cache_support(trt, flavour, self.cache)   # before anything is deserialized
        self.graph_form = graph_form(manifest)            # what the engines were built from (describe)
        flags = manifest.get("build_flags", {})
        engine_batch = flags.get("batch", [1, 1, 1])[2]
        engine_frames = flags.get("max_frames", cfg.max_frames)
        if max_batch is not None and max_batch > engine_batch:
            raise VitacError(f"max_batch {max_batch} exceeds the engine's profile (max batch {engine_batch}): "
                             f"rebuild with `build-engine --max-batch {max_batch}`")
        if max_frames is not None and max_frames > engine_frames:
            fix = (f"re-export with `export --cache static --cache-frames {max_frames}` and rebuild"
                   if cache_contract(manifest) == "static"
                   else f"rebuild with `build-engine --max-frames {max_frames}`")
            what = "static cache" if "static" in fix else "profile"
            raise VitacError(f"max_frames {max_frames} exceeds the engine's {what} ({engine_frames} frames): {fix}")
        super().__init__(cfg, manifest.get("precision", "fp16"), "cuda", max_batch or engine_batch,
                         max_frames or engine_frames)
        gpu = gpu_info(required=False)
        check_engine_compat(manifest, trt.__version__, flavour, gpu and gpu["name"], gpu and gpu["compute_capability"])
        self._cudart = c = import_cudart()
        self._free_at_open = self._mem_free()
        self.flavour, self.manifest = flavour, manifest
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if flags.get("version_compatible"):
            # a version-compatible plan embeds the lean runtime it was built with: TensorRT refuses
            # to deserialize it unless host code is allowed
            self._runtime.engine_host_code_allowed = True
        self._engines: dict[str, Any] = {}
        folder = Path(engine_path).parent
        for e in manifest["engines"]:
            path = folder / e["file"]
            if not path.is_file():
                raise VitacError(f"engine file missing: {path} (listed in {Path(engine_path).name}.json)")
            # read_engine_manifest refused entries without a sha256: nothing is deserialized unchecked
            # unless the caller opted out (verify_files=False)
            if verify_files and file_digest(path) != e["sha256"]:
                raise VitacError(f"{path} differs from its manifest's sha256: rebuild it with `vitac-deploy build-engine`")
            data = path.read_bytes()
            self._check_validity(path, data)
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise VitacError(f"{trt.__name__} {trt.__version__} cannot deserialize {path}: rebuild it here")
            self._engines[e["role"]] = engine
        if "step" not in self._engines:
            raise VitacError(f"{engine_path}: its manifest lists no step engine")
        step = self._engines["step"]
        self.cache_dtype = np.dtype(trt.nptype(step.get_tensor_dtype("past_key.0")))
        self.rope_dtype = np.dtype(trt.nptype(step.get_tensor_dtype("rope_cos")))
        self.cache_frames = manifest["cache"]["frames"] if self.cache == "static" else None
        self._activation_size = max(activation_bytes(e) for e in self._engines.values())
        self._activation = DeviceBuffer(c, self._activation_size)
        self._stream = Stream(c)
        self.cuda_graphs = cuda_graphs and flavour == "tensorrt"
        self._rtx_graphs = cuda_graphs and flavour == "tensorrt-rtx"
        self._contexts = ContextFactory(trt, flavour, lambda: self._activation.ptr, lambda: self._activation_size,
                                        self._rtx_graphs)
        self._eager = {role: self._contexts.create(engine) for role, engine in self._engines.items()}
        self._eager_key: dict[str, Any] = {}     # role -> the frame key its context is configured for
        self._keyed: dict[tuple, Any] = {}       # frame key -> its own context (CUDA graphs)
        self._graphs: dict[tuple, Any] = {}      # frame key -> instantiated CUDA graph
        self._bindings: dict[tuple, FrameBinding] = {}
        self._buffers: list = []
        self._last_pred = 0
        self._context_buf: Optional[DeviceBuffer] = None   # the staged context, kept across allocations
        self._feat_holds = None   # which staged frames _d_feat holds (None: anything else)

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

    # -- memory ---------------------------------------------------------------------------------------
    def _mem_free(self) -> Optional[int]:
        err, free, _total = self._cudart.cudaMemGetInfo() if hasattr(self, "_cudart") else (1, 0, 0)
        return int(free) if int(err) == 0 else None

    def device_memory(self) -> dict[str, float]:
        """Device memory this runtime holds, in MiB: its buffers, the activation buffer its contexts
        share, and the drop in free device memory since it was opened (engines and all)."""
        mib = 1 / 2**20
        out = {"cache_and_io_buffers_mib": sum(b.nbytes for b in self._buffers if isinstance(b, DeviceBuffer)) * mib,
               "activation_mib": self._activation_size * mib}
        free = self._mem_free()
        if free is not None and self._free_at_open is not None:
            out["device_used_since_open_mib"] = (self._free_at_open - free) * mib
        return out

    def _allocate(self, batch: int) -> None:
        if self._stream is None:
            raise VitacError("this TensorRT runtime was closed: open a new one")
        self._release()
        cfg, c = self.cfg, self._cudart
        N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
        static = self.cache == "static"
        tokens = static_max_len(cfg, self.cache_frames) if static else self.max_frames * cfg.tokens_per_step
        kv = batch * cfg.num_heads * tokens * cfg.head_dim * self.cache_dtype.itemsize
        # static: one arena, read whole behind the mask, so zeroed (no NaN bit patterns in unwritten slots)
        self._arenas = [{n: DeviceBuffer(c, kv, zero=static) for n in past_names(cfg)}
                        for _ in range(1 if static else 2)]
        frame = batch * N * D * 4
        self._d_feat = DeviceBuffer(c, frame)
        self._d_pred = DeviceBuffer(c, frame)
        self._d_raw = [DeviceBuffer(c, frame) for _ in range(2)]
        self._h_feat = PinnedBuffer(c, batch * N * D)
        cond = ["action", "state"] + (["extrinsics"] if cfg.use_extrinsics else [])
        width = {"action": A, "state": A, "extrinsics": A - 1}
        self._d_cond = {n: DeviceBuffer(c, batch * width[n] * 4) for n in cond}
        self._h_cond = {n: PinnedBuffer(c, batch * width[n]) for n in cond}
        tables = dict(zip(ROPE_INPUTS, rope_rows(cfg, self.rope_dtype.name)))
        self._d_rope = {n: DeviceBuffer(c, t.nbytes) for n, t in tables.items()}
        for n, t in tables.items():
            self._h2d(self._d_rope[n].ptr, t.ctypes.data, t.nbytes)
        self._rope_row_bytes = cfg.tokens_per_step * cfg.head_dim * self.rope_dtype.itemsize
        self._d_static: dict = {}
        self._static_tables: dict = {}   # kept until the copies below are done
        self._row_slots: dict = {}
        self._d_static_slots: list = []
        if static:
            write, bias = static_rows(cfg, self.cache_frames, self.cache_dtype.name, batch)
            for n, t in (("write_index", write), ("attn_bias", bias)):
                self._d_static[n] = DeviceBuffer(c, t.nbytes)
                self._h2d(self._d_static[n].ptr, t.ctypes.data, t.nbytes)
                self._static_tables[n] = t
            self._static_row_bytes = {"write_index": write[0].nbytes, "attn_bias": bias[0].nbytes}
            # the frame's rows are copied (on the stream, before the engine) to fixed slots: every
            # address is then the same for all frames, so one binding and one captured graph serve
            # every frame of a batch, not one per frame index
            rows = {**{n: (self._d_rope[n].ptr, self._rope_row_bytes) for n in ROPE_INPUTS},
                    **{n: (self._d_static[n].ptr, self._static_row_bytes[n]) for n in self._d_static}}
            self._row_slots = {n: (DeviceBuffer(c, size), src, size) for n, (src, size) in rows.items()}
            self._d_static_slots = [slot for slot, _, _ in self._row_slots.values()]
        self._d_goal = DeviceBuffer(c, N * D * 4)
        self._d_energy = DeviceBuffer(c, batch * 4)
        self._buffers = ([b for a in self._arenas for b in a.values()] + [self._d_feat, self._d_pred, *self._d_raw,
                         self._h_feat, *self._d_cond.values(), *self._h_cond.values(), *self._d_rope.values(),
                         self._d_goal, self._d_energy, *self._d_static.values(),
                         *getattr(self, "_d_static_slots", [])])
        self._cur, self._raw_cur = 0, 0
        self._feat_holds = None
        if getattr(self, "_goal", None) is not None:
            self._put_goal()
        self._stream.synchronize()   # the tables above were copied from temporaries
        self._static_tables = {}

    def _forget_frames(self) -> None:
        """Captured graphs and keyed contexts hold the addresses of the old buffers. The stream must
        be idle: a context is not destroyed while its work is queued."""
        for g in self._graphs.values():
            self._cudart.cudaGraphExecDestroy(g)
        self._graphs.clear()
        self._keyed.clear()
        self._bindings.clear()
        self._eager_key.clear()

    def _release(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._stream.synchronize()
        self._forget_frames()
        for b in getattr(self, "_buffers", []):
            b.free()
        self._buffers = []

    def _close(self) -> None:
        """Free device memory now (it is freed with the runtime otherwise)."""
        self._release()
        if getattr(self, "_context_buf", None) is not None:
            self._context_buf.free()
            self._context_buf = None
        self._eager = {}
        if getattr(self, "_contexts", None) is not None:
            self._contexts.release()
        if getattr(self, "_activation", None) is not None:
            self._activation.free()
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
        if isinstance(features, StagedFrames):
            self._load_staged(features)
            return self._d_feat.ptr
        self._feat_holds = None
        if isinstance(features, np.ndarray):
            self._h_feat.array[:features.size] = features.ravel()
            self._h2d(self._d_feat.ptr, self._h_feat.ptr, features.nbytes)
        elif isinstance(features, DeviceArray):   # copied so a captured graph keeps its address
            s.wait_for(features.stream)
            s.copy(self._d_feat.ptr, features.ptr, features.nbytes, "d2d")
        elif isinstance(features, DeviceFrames):
            src = features.array
            rows, C = src.shape[0], src.shape[1]
            s.wait_for(src.stream)
            s.copy_rows(self._d_feat.ptr, row, src.ptr + features.t * row, C * row, row, rows, "d2d")
            s.tile(self._d_feat.ptr, row, rows, features.batch)
        else:
            raise TypeError(f"unexpected features {type(features).__name__}")
        return self._d_feat.ptr

    def _run(self, features, cond: dict[str, np.ndarray]) -> None:
        cfg, B, s = self.cfg, self.batch, self._stream
        s.synchronize()   # the pinned staging buffers are reused: the last frame's copies must be done
        feat_ptr = self._load_features(features)
        for name, value in cond.items():
            self._h_cond[name].array[:value.size] = value.ravel()
            self._h2d(self._d_cond[name].ptr, self._h_cond[name].ptr, value.nbytes)
        static = self.cache == "static"
        # shapes and every address are fixed by this key: one binding (and one captured graph) serves
        # it. Static: the frame's rows go to fixed slots, so the frame index is not part of the key
        key = (B, "static" if static else self.frames, self._cur, self._raw_cur, features is None)
        if static:
            for slot, src, size in self._row_slots.values():
                s.copy(slot.ptr, src + self.frames * size, size, "d2d")
        bind = self._bindings.get(key)
        if bind is None:
            past, present = self._arenas[self._cur], self._arenas[0 if static else 1 - self._cur]
            slots = {n: slot.ptr for n, (slot, _, _) in self._row_slots.items()}
            bind = self._bindings[key] = bind_frame(cfg, B, 0 if static else self.frames, "first" in self._engines,
                                                    FrameBuffers(
                features=feat_ptr, cond={n: self._d_cond[n].ptr for n in cond},
                past={n: b.ptr for n, b in past.items()}, present={n: b.ptr for n, b in present.items()},
                prediction=self._d_pred.ptr, raw_out=self._d_raw[1 - self._raw_cur].ptr,
                rope={n: slots[n] for n in ROPE_INPUTS} if static else {n: b.ptr for n, b in self._d_rope.items()},
                rope_row_bytes=self._rope_row_bytes,
                static={n: slots[n] for n in self._d_static}, static_row_bytes={n: 0 for n in self._d_static},
                cache_len=static_max_len(cfg, self.cache_frames) if static else 0))
        if self.cuda_graphs:
            self._run_graph(key, bind)
        else:
            self._run_eager(key, bind)
        self._last_pred = bind.prediction
        if self.cache != "static":   # the static cache stays in its one arena
            self._cur = 1 - self._cur
        self._raw_cur = 1 - self._raw_cur

    def _execute(self, ctx) -> None:
        if not ctx.execute_async_v3(self._stream.ptr):
            raise VitacError(f"TensorRT failed on frame {self.frames} (execute_async_v3 returned False)")

    def _run_eager(self, key: tuple, bind: FrameBinding) -> None:
        ctx = self._eager[bind.role]
        if self._eager_key.get(bind.role) != key:
            configure(ctx, bind.shapes, bind.addresses, f"frame {self.frames}")
            self._eager_key[bind.role] = key
        self._execute(ctx)

    def _run_graph(self, key: tuple, bind: FrameBinding) -> None:
        graph = self._graphs.get(key)
        if graph is not None:
            self._stream.launch(graph)
            return
        ctx = self._keyed.get(key)
        if ctx is None:   # one context per key: a captured graph's context is never reconfigured
            ctx = self._keyed[key] = self._contexts.create(self._engines[bind.role])
            configure(ctx, bind.shapes, bind.addresses, f"frame {self.frames}")
        # the eager run does this frame's work and settles TensorRT's deferred, shape-dependent
        # state, which capture requires; the capture itself executes nothing
        self._execute(ctx)
        try:
            if hasattr(ctx, "is_stream_capturable") and not ctx.is_stream_capturable(self._stream.ptr):
                raise VitacError("TensorRT says this context cannot be captured on this stream")
            self._graphs[key] = self._stream.capture(lambda: ctx.execute_async_v3(self._stream.ptr))
        except Exception as e:  # noqa: BLE001 - any capture failure: eager from here on
            log.warning("CUDA graph capture failed on frame %d (%s): running without CUDA graphs",
                        self.frames, first_line(e))
            self.cuda_graphs = False
            self._stream.synchronize()   # the eager run above still uses the keyed context: finish it first
            self._forget_frames()

    # -- predictions and energies ---------------------------------------------------------------------
    def _prediction(self) -> np.ndarray:
        cfg = self.cfg
        out = np.empty((self.batch, cfg.tokens_per_frame, cfg.embed_dim), np.float32)
        self._d2h(out.ctypes.data, self._last_pred, out.nbytes)
        self._stream.synchronize()
        return out

    def _stage_goal(self, goal: np.ndarray) -> None:
        self._goal = goal
        if self._capacity:
            self._stream.synchronize()
            self._put_goal()
            self._stream.synchronize()

    def _stage_goal_device(self, goal: DeviceArray) -> None:
        if goal.dtype != np.float32:
            raise VitacError(f"goal must be a float32 CUDA array, got {goal.dtype}")
        self._goal = goal   # kept (with its owner) to be copied again into a re-allocated buffer
        if self._capacity:
            self._stream.synchronize()
            self._put_goal()
            self._stream.synchronize()

    def _put_goal(self) -> None:
        g = self._goal
        if isinstance(g, DeviceArray):
            self._stream.wait_for(g.stream)
            self._stream.copy(self._d_goal.ptr, g.ptr, g.nbytes, "d2d")
        else:
            self._h2d(self._d_goal.ptr, g.ctypes.data, g.nbytes)

    # -- host traffic and the staged context ----------------------------------------------------------
    def _h2d(self, dst: int, src: int, nbytes: int) -> None:
        self._stream.copy(dst, src, nbytes, "h2d")
        self._sent(nbytes)

    def _d2h(self, dst: int, src: int, nbytes: int) -> None:
        self._stream.copy(dst, src, nbytes, "d2h")
        self._received(nbytes)

    def _context_buffer(self, nbytes: int) -> DeviceBuffer:
        if self._stream is None:
            raise VitacError("this TensorRT runtime was closed: open a new one")
        self._stream.synchronize()   # a frame may still read the old staged context
        if self._context_buf is None or self._context_buf.nbytes < nbytes:
            if self._context_buf is not None:
                self._context_buf.free()
            self._context_buf = DeviceBuffer(self._cudart, nbytes)
        self._feat_holds = None
        return self._context_buf

    def _stage_host(self, context: np.ndarray) -> None:
        buf = self._context_buffer(context.nbytes)
        self._h2d(buf.ptr, context.ctypes.data, context.nbytes)
        self._stream.synchronize()   # `context` may be a temporary
        self._context_shape = context.shape

    def _stage_device(self, contexts: list, normalized: bool) -> bool:
        if normalized:   # the raw equivalent needs arithmetic outside the engines
            return False
        R, (_, C, N, D) = len(contexts), contexts[0].shape
        if any(d.dtype != np.float32 for d in contexts):
            raise VitacError("device contexts must be float32")
        one = C * N * D * 4
        buf = self._context_buffer(R * one)
        for r, dev in enumerate(contexts):
            self._stream.wait_for(dev.stream)
            self._stream.copy(buf.ptr + r * one, dev.ptr, one, "d2d")
        self._context_shape = (R, C, N, D)
        return True

    def _load_staged(self, frames: StagedFrames) -> None:
        """Broadcast frame t of the staged context(s) into the features buffer on the stream, by
        group of rows (device to device, doubling); skipped when it holds exactly that already."""
        key = (frames.context.generation, frames.t, frames.groups)
        if self._feat_holds == key:
            return
        _, C, N, D = self._context_shape
        row = N * D * 4
        s = self._stream
        for lo, hi, r in frames.groups:
            s.copy(self._d_feat.ptr + lo * row, self._context_buf.ptr + (r * C + frames.t) * row, row, "d2d")
            s.tile(self._d_feat.ptr + lo * row, row, 1, hi - lo)
        self._feat_holds = key

    def _energy(self) -> np.ndarray:
        if "energy" not in self._eager:   # an engine built without its energy engine: score on the host
            if not getattr(self, "_warned_energy", False):
                log.warning("%s has no energy engine: energies are scored on the host (every prediction copied); "
                            "rebuild it with `vitac-deploy build-engine`", self.manifest.get("artifact", "this engine"))
                self._warned_energy = True
            return super()._energy()
        cfg, B = self.cfg, self.batch
        frame = (cfg.tokens_per_frame, cfg.embed_dim)
        ctx = self._eager["energy"]
        key = (B, self._last_pred)
        if self._eager_key.get("energy") != key:
            configure(ctx, {"prediction": (B,) + frame, "goal": (1,) + frame},
                      {"prediction": self._last_pred, "goal": self._d_goal.ptr, "energy": self._d_energy.ptr},
                      "energy")
            self._eager_key["energy"] = key
        self._execute(ctx)
        out = np.empty(B, np.float32)
        self._d2h(out.ctypes.data, self._d_energy.ptr, out.nbytes)
        self._stream.synchronize()
        return out

    # -- rollout hooks --------------------------------------------------------------------------------
    def _broadcast_cache(self, batch: int) -> None:
        if batch > self._capacity:
            raise VitacError(f"batch {batch} exceeds the runtime's allocated batch {self._capacity}")
        cfg = self.cfg
        tokens = static_max_len(cfg, self.cache_frames) if self.cache == "static" else self.frames * cfg.tokens_per_step
        kv_row = cfg.num_heads * tokens * cfg.head_dim * self.cache_dtype.itemsize
        for buf in self._arenas[self._cur].values():
            self._stream.tile(buf.ptr, kv_row, 1, batch)
        # stream order puts these copies before the next frame's engine: no host wait needed

    def _to_host(self, array: DeviceArray) -> np.ndarray:
        self._received(array.nbytes)
        return device_to_host(self._stream, array)

    @property
    def cache_bytes(self) -> int:
        """Bytes of device memory allocated for the KV cache (every arena of every layer)."""
        return sum(b.nbytes for a in getattr(self, "_arenas", []) for b in a.values()) if self._buffers else 0

    def describe(self) -> str:
        graphs = "CUDA graphs" if self.cuda_graphs or self._rtx_graphs else "no CUDA graphs"
        form = f", {self.graph_form} graphs" if self.graph_form != "portable" else ""
        return f"{self.flavour} {self._trt.__version__} (cuda, {self.precision}, {self.cache} cache{form}, {graphs})"

    @property
    def weight_copies(self) -> int:
        """Engines holding the weights (step, and the first-frame engine where built)."""
        return sum(role in self._engines for role in ("step", "first"))

    @property
    def graphs_in_use(self) -> bool:
        """Whether frames replay captured graphs (False after a capture failure turned them off)."""
        return self.cuda_graphs or self._rtx_graphs

"""ONNX Runtime: the step graph driven through I/O binding on preallocated, double-buffered memory.

Each block's cache lives in two flat arenas of (max batch x max frames) elements, allocated once.
`past_*` is bound to one, `present_*` to the other, and they swap after every frame: no per-frame
allocation, and the only copy of the cache is the graph's own Concat. On CUDA the arenas are
device memory, so the cache never crosses to the host.

With `cuda_graphs=True` (CUDA only) the CUDA execution provider captures one graph per (batch,
frame index, buffer parity), selected with the `gpu_graph_id` run option; every input is then
staged in device buffers of fixed address. If the session cannot be created that way (nodes not
placed on CUDA), the runtime warns and runs without graphs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...config import PredictorConfig
from ...contract import past_names, present_names
from ...errors import BackendUnavailable, VitacError, first_line
from ..base import Runtime

_NP = {"float32": np.float32, "float16": np.float16}
log = logging.getLogger("vitac_deploy")


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install 'vitac-deploy[onnxruntime]' "
                                 "(or [onnxruntime-gpu] for CUDA)") from None
    return ort


class _Buffer:
    """A flat buffer on the runtime's device, bound by pointer with any shape that fits."""

    def __init__(self, ort, n: int, dtype, device: str):
        self.dtype, self.device = np.dtype(dtype), device
        self.nbytes = max(n, 1) * self.dtype.itemsize
        if device == "cpu":
            self.host = np.empty(max(n, 1), self.dtype)
            self.ptr = self.host.ctypes.data
        else:
            self.host = None
            self.value = ort.OrtValue.ortvalue_from_shape_and_type([max(n, 1)], self.dtype.type, "cuda", 0)
            self.ptr = self.value.data_ptr()

    def view(self, shape) -> np.ndarray:
        """Host copy (CUDA) or view (CPU) of the first prod(shape) elements."""
        n = int(np.prod(shape))
        flat = self.host if self.host is not None else self.value.numpy()
        return flat[:n].reshape(shape)

    def write(self, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array, self.dtype).ravel()
        if self.host is not None:
            self.host[:a.size] = a
        else:
            full = self.value.numpy()
            full[:a.size] = a
            self.value.update_inplace(full)


class OnnxRuntimeRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(self, graph_path: str | Path, cfg: PredictorConfig, precision: str, device: str = "cpu",
                 max_batch: Optional[int] = None, max_frames: Optional[int] = None,
                 session_options: Any = None, threads: Optional[int] = None, cuda_graphs: bool = False):
        super().__init__(cfg, precision, device, max_batch, max_frames)
        ort = self._ort = _import_ort()
        if device not in ("cpu", "cuda"):
            raise VitacError(f"device must be cpu or cuda, got {device!r}")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime has no CUDAExecutionProvider here: install onnxruntime-gpu "
                                         "and run on a machine with an NVIDIA GPU")
            providers.insert(0, "CUDAExecutionProvider")
        so = session_options or ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        if cuda_graphs and device != "cuda":
            raise VitacError("cuda_graphs needs device cuda")
        self.cuda_graphs = cuda_graphs
        if cuda_graphs:
            try:
                self.session = ort.InferenceSession(
                    str(graph_path), so, providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"}),
                                                    "CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - ORT raises plain exceptions
                log.warning("onnxruntime cannot capture CUDA graphs for this graph (%s): running without",
                            first_line(e))
                self.cuda_graphs = False
        if not self.cuda_graphs:
            try:
                self.session = ort.InferenceSession(str(graph_path), so, providers=providers)
            except Exception as e:
                raise VitacError(f"onnxruntime cannot load {graph_path}: {first_line(e)}") from None
        self._staged: dict[tuple, Any] = {}     # (name, shape) -> device OrtValue (CUDA graphs)
        self._run_options: dict[tuple, Any] = {}  # frame key -> RunOptions carrying its gpu_graph_id
        names = {i.name for i in self.session.get_inputs()}
        if "past_key.0" not in names:
            raise VitacError(f"{graph_path} is not a step graph (no past_key.0 input)")
        self.cache_dtype = _NP["float16" if precision == "fp16" else "float32"]
        self._outputs = {o.name for o in self.session.get_outputs()}
        self._binding = self.session.io_binding()
        self._dev = "cuda" if device == "cuda" else "cpu"

    def _allocate(self, batch: int) -> None:
        cfg, ort = self.cfg, self._ort
        per_frame = cfg.num_heads * cfg.tokens_per_step * cfg.head_dim
        n = batch * self.max_frames * per_frame
        self._arenas = [{name: _Buffer(ort, n, self.cache_dtype, self.device) for name in past_names(cfg)}
                        for _ in range(2)]
        frame = batch * cfg.tokens_per_frame * cfg.embed_dim
        self._pred = _Buffer(ort, frame, np.float32, self.device)
        self._raw = [_Buffer(ort, frame, np.float32, self.device) for _ in range(2)]
        self._cur = 0          # arena holding the cache
        self._raw_cur = 0      # raw-prediction buffer holding the last prediction

    def _stage(self, name: str, array: np.ndarray):
        """A device copy of a host input at an address fixed per (name, batch): captured graphs
        replay reads from where they were captured."""
        key = (name, array.shape)
        value = self._staged.get(key)
        if value is None:
            value = self._staged[key] = self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
        else:
            value.update_inplace(array)
        return value

    def _bind(self, name: str, buf_or_array, shape, output: bool = False) -> None:
        if isinstance(buf_or_array, np.ndarray) and self.cuda_graphs:
            v = self._stage(name, buf_or_array)
            self._binding.bind_input(name, "cuda", 0, buf_or_array.dtype.type, list(shape), v.data_ptr())
            return
        if isinstance(buf_or_array, np.ndarray):   # host input
            if not buf_or_array.flags.c_contiguous:  # bound by pointer: must be one dense block
                raise ValueError(f"{name}: internal error, non-contiguous array bound")
            if self.device == "cpu":
                self._binding.bind_input(name, "cpu", 0, buf_or_array.dtype.type, list(shape),
                                         buf_or_array.ctypes.data)
            else:
                self._binding.bind_cpu_input(name, buf_or_array)
            return
        b = buf_or_array
        fn = self._binding.bind_output if output else self._binding.bind_input
        fn(name, self._dev, 0, b.dtype.type, list(shape), b.ptr)

    def _run(self, features: Optional[np.ndarray], cond: dict[str, np.ndarray]) -> None:
        cfg, B = self.cfg, self.batch
        P = self.frames * cfg.tokens_per_step
        frame = (B, cfg.tokens_per_frame, cfg.embed_dim)
        kv_past, kv_present = (B, cfg.num_heads, P, cfg.head_dim), (B, cfg.num_heads, P + cfg.tokens_per_step, cfg.head_dim)
        past, present = self._arenas[self._cur], self._arenas[1 - self._cur]
        raw_in, raw_out = self._raw[self._raw_cur], self._raw[1 - self._raw_cur]
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        if features is None:
            self._bind("features", raw_in, frame)
        else:
            self._bind("features", features, frame)
        for name, value in cond.items():
            self._bind(name, value, value.shape)
        for p_name, q_name in zip(past_names(cfg), present_names(cfg)):
            self._bind(p_name, past[p_name], kv_past)
            self._bind(q_name, present[p_name], kv_present, output=True)
        if "next_features_raw" in self._outputs:
            self._bind("next_features", self._pred, frame, output=True)
            self._bind("next_features_raw", raw_out, frame, output=True)
        else:  # normalize_reps off: the prediction is what is fed back, written where it is read from
            self._bind("next_features", raw_out, frame, output=True)
        run_options = None
        if self.cuda_graphs:
            key = (B, P, self._cur, self._raw_cur, features is None)
            run_options = self._run_options.get(key)
            if run_options is None:   # once per key: graph ids start at 1 (0 is ORT's own)
                run_options = self._run_options[key] = self._ort.RunOptions()
                run_options.add_run_config_entry("gpu_graph_id", str(len(self._run_options)))
        try:
            self.session.run_with_iobinding(self._binding, run_options)
        except Exception as e:
            raise VitacError(f"onnxruntime failed on frame {self.frames}: {first_line(e)}") from None
        self._cur = 1 - self._cur
        self._raw_cur = 1 - self._raw_cur

    def device_memory(self) -> Optional[dict[str, float]]:
        """The device buffers this runtime allocated (the session's own memory is not counted)."""
        if self.device != "cuda" or not hasattr(self, "_arenas"):
            return None
        kv = sum(b.nbytes for a in self._arenas for b in a.values())
        io = self._pred.nbytes + sum(b.nbytes for b in self._raw)
        return {"cache_and_io_buffers_mib": (kv + io) / 2**20}

    def _broadcast_cache(self, batch: int) -> None:
        if batch > self._capacity:
            raise VitacError(f"batch {batch} exceeds the runtime's allocated batch {self._capacity}")
        if self.device == "cuda" and self._tile_on_device(batch):
            return
        cfg = self.cfg
        shape1 = (1, cfg.num_heads, self.frames * cfg.tokens_per_step, cfg.head_dim)
        for buf in self._arenas[self._cur].values():
            block = buf.view(shape1)
            buf.write(np.broadcast_to(block, (batch,) + shape1[1:]))
        frame1 = (1, cfg.tokens_per_frame, cfg.embed_dim)
        raw = self._raw[self._raw_cur]
        raw.write(np.broadcast_to(raw.view(frame1), (batch,) + frame1[1:]))

    def _tile_on_device(self, batch: int) -> bool:
        """Broadcast row 0 of the cache with device-to-device copies (cuda-python), doubling;
        False where cuda-python is missing (the host path is used then)."""
        try:
            from ..gpu import check, import_cudart, tile_copies

            c = import_cudart()
        except VitacError:
            return False
        cfg = self.cfg
        kind = c.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        rows = [(b.ptr, cfg.num_heads * self.frames * cfg.tokens_per_step * cfg.head_dim * b.dtype.itemsize)
                for b in self._arenas[self._cur].values()]
        rows.append((self._raw[self._raw_cur].ptr, cfg.tokens_per_frame * cfg.embed_dim * 4))
        if "next_features_raw" in self._outputs:
            rows.append((self._pred.ptr, cfg.tokens_per_frame * cfg.embed_dim * 4))
        for ptr, row in rows:
            for first, n in tile_copies(1, batch):
                check(c.cudaMemcpy(ptr + first * row, ptr, n * row, kind), "cudaMemcpy (cache broadcast)")
        return True

    def _prediction(self) -> np.ndarray:
        cfg = self.cfg
        src = self._pred if "next_features_raw" in self._outputs else self._raw[self._raw_cur]
        return np.array(src.view((self.batch, cfg.tokens_per_frame, cfg.embed_dim)), copy=True)

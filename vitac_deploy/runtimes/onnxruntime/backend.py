"""ONNX Runtime: the step graph driven through I/O binding on preallocated memory.

Concat contract: each block's cache lives in two flat arenas of (max batch x max frames) elements,
allocated once. `past_*` is bound to one, `present_*` to the other, and they swap after every
frame: no per-frame allocation, and the only copy of the cache is the graph's own Concat.
Static contract: one arena per block of (max batch x the artifact's fixed max_len); `past_*` and
`present_*` are bound to the SAME address, so TensorScatter writes the new frame in place (ONNX
Runtime >= 1.25 skips its copy when the pointers match, and logs "in-place optimization not
activated" when they do not). The write index and mask rows of every frame sit beside the RoPE
tables and are bound by address too. On CUDA the arenas are
device memory (cuda-python), so the cache never crosses to the host; the RoPE rows of every frame
sit on the device too and are bound by address.

The planner's energy runs as a second, tiny graph (`energy.onnx`) bound to the prediction buffer:
only [batch] floats cross to the host per rollout. A staged context (`stage_context`) is kept in a
buffer of its own and broadcast into the features buffer where the graph runs (only when that
buffer does not hold it already): a plan's steps bind it there, nothing of batch x tokens crosses.

With `cuda_graphs=True` (CUDA, ONNX Runtime >= 1.18) the CUDA execution provider captures one graph
per (batch, frame index, buffer parity), each under a graph id never reused; every input is then
staged at a fixed device address. Whether graphs are really used is reported by `graphs_in_use`
(the session refuses them when a node is not placed on CUDA; the runtime then warns and runs
without).
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...config import PredictorConfig
from ...contract import ROPE_INPUTS, check_cache, past_names, present_names, rope_rows, static_max_len, static_rows
from ...errors import BackendUnavailable, VitacError, first_line
from ...precision import precision as get_precision
from ..arrays import DeviceArray, as_device_array
from ..base import Runtime
from ..staging import StagedFrames
from . import BACKEND
from .memory import CudaMemory, HostMemory

log = logging.getLogger("vitac_deploy")
GRAPH_ID_MIN_VERSION = (1, 18)   # gpu_graph_id (one CUDA graph per id) arrived in ONNX Runtime 1.18


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install 'vitac-deploy[onnxruntime]' "
                                 "(or [onnxruntime-gpu] for CUDA)") from None
    return ort


def version_tuple(version: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def cuda_provider_options(cuda_graphs: bool, tf32: bool, strict_skip_norm: bool = False) -> dict[str, str]:
    """CUDA execution provider options. TF32 is ONNX Runtime's default for float32 MatMuls on Ampere
    and newer; it would break the fp32 tolerance (1e-4), so it is off unless asked for.
    `strict_skip_norm`: SkipLayerNormalization with float32 statistics (its strict mode; the default
    kernel accumulates float16 inputs in float16 in ONNX Runtime releases before May 2026)."""
    opts = {"use_tf32": "1" if tf32 else "0"}
    if cuda_graphs:
        opts["enable_cuda_graph"] = "1"
    if strict_skip_norm:
        opts["enable_skip_layer_norm_strict_mode"] = "1"
    return opts


def cuda_provider_failure(ort) -> str:
    """Why ONNX Runtime's CUDA provider library does not load, in one line (the missing library),
    or an empty string when it loads."""
    import ctypes

    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not lib.is_file():
        return f"{lib.name} is not part of this onnxruntime (install onnxruntime-gpu, not onnxruntime)"
    try:
        ctypes.CDLL(str(lib))
    except OSError as e:
        return first_line(e)
    return ""


def check_providers(requested_cuda: bool, got: list[str], why: str = "") -> None:
    """ONNX Runtime silently falls back to the CPU when the CUDA provider fails to load: refuse that."""
    if requested_cuda and "CUDAExecutionProvider" not in got:
        raise BackendUnavailable("onnxruntime could not start its CUDA execution provider"
                                 + (f" ({why})" if why else "")
                                 + f"; the session would run on {', '.join(got) or 'nothing'}: install the CUDA and "
                                 "cuDNN libraries onnxruntime-gpu needs (pip install 'onnxruntime-gpu[cuda,cudnn]')")


class OnnxRuntimeRuntime(Runtime):
    backend = BACKEND.name
    memory_layout = BACKEND.memory_layout

    def __init__(self, graph_path: str | Path, cfg: PredictorConfig, precision: str, device: str = "cpu",
                 max_batch: Optional[int] = None, max_frames: Optional[int] = None,
                 session_options: Any = None, threads: Optional[int] = None, cuda_graphs: bool = False,
                 tf32: bool = False, energy_graph: Optional[str | Path] = None, cache: str = "concat",
                 cache_frames: Optional[int] = None, graph_form: str = "portable"):
        self.cache = check_cache(cache)
        self.graph_form = graph_form   # vitac_deploy.graph_forms: ort-fused turns on strict SkipLayerNormalization
        if cache == "static":   # the buffer length is fixed in the graph: rollouts fit within it
            cache_frames = cache_frames or cfg.max_frames
            if max_frames is not None and max_frames > cache_frames:
                raise VitacError(f"max_frames {max_frames} exceeds the static cache of this artifact ({cache_frames} "
                                 f"frames): re-export with `--cache-frames {max_frames}`")
            max_frames = max_frames or cache_frames
        self.cache_frames = cache_frames
        super().__init__(cfg, precision, device, max_batch, max_frames)
        ort = self._ort = import_ort()
        if device not in ("cpu", "cuda"):
            raise VitacError(f"device must be cpu or cuda, got {device!r}")
        if cuda_graphs and device != "cuda":
            raise VitacError("cuda_graphs needs device cuda")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("onnxruntime has no CUDAExecutionProvider here: install onnxruntime-gpu "
                                     "and run on a machine with an NVIDIA GPU")
        if cuda_graphs and version_tuple(ort.__version__) < GRAPH_ID_MIN_VERSION:
            log.warning("onnxruntime %s has no gpu_graph_id (needs 1.18): running without CUDA graphs", ort.__version__)
            cuda_graphs = False
        if device == "cuda" and hasattr(ort, "preload_dlls"):
            try:   # CUDA/cuDNN from the nvidia-* wheels, where installed (onnxruntime >= 1.21)
                ort.preload_dlls()
            except Exception as e:  # noqa: BLE001 - a failure shows up as a missing provider below
                log.debug("onnxruntime.preload_dlls: %s", first_line(e))
        if session_options is None:
            session_options = ort.SessionOptions()
            # errors only: ONNX Runtime's own warnings on stderr would precede (and bury) ours
            session_options.log_severity_level = 3
        self._so = session_options
        if threads:
            self._so.intra_op_num_threads = threads
        self._tf32 = tf32
        self.cuda_graphs = cuda_graphs
        if cuda_graphs:
            try:
                self.session = self._session(graph_path, cuda_graphs=True)
            except BackendUnavailable:
                raise
            except Exception as e:  # noqa: BLE001 - ORT raises plain exceptions
                log.warning("onnxruntime cannot capture CUDA graphs for this graph (%s): running without",
                            first_line(e))
                self.cuda_graphs = False
        if not self.cuda_graphs:
            self.session = self._session(graph_path, cuda_graphs=False)
        names = {i.name for i in self.session.get_inputs()}
        if "past_key.0" not in names or not set(ROPE_INPUTS) <= names:
            raise VitacError(f"{graph_path} is not a step graph of this vitac-deploy (no past_key.0 / rope_cos "
                             f"inputs): re-export it with `vitac-deploy export`")
        if ("write_index" in names) != (cache == "static"):
            raise VitacError(f"{graph_path} does not have the {cache} cache contract its manifest records "
                             f"(edited artifact?): re-export it with `vitac-deploy export`")
        self._check_contract(graph_path)
        self.energy_session = self._session(energy_graph, cuda_graphs=False) if energy_graph else None
        if self.energy_session is not None and (
                {i.name for i in self.energy_session.get_inputs()} != {"prediction", "goal"}
                or [o.name for o in self.energy_session.get_outputs()] != ["energy"]):
            raise VitacError(f"{energy_graph} is not an energy graph (inputs prediction, goal; output energy): "
                             f"re-export the artifact")
        self._energy_binding = self.energy_session.io_binding() if self.energy_session is not None else None
        self.cache_dtype = np.dtype(get_precision(precision).dtype)
        self._outputs = {o.name for o in self.session.get_outputs()}
        self._binding = self.session.io_binding()
        self._mem = CudaMemory() if device == "cuda" else HostMemory()
        self._staged: dict[tuple, Any] = {}       # (name, shape) -> device OrtValue (CUDA graphs)
        self._run_options: dict[tuple, Any] = {}  # frame key -> RunOptions carrying its gpu_graph_id
        self._graph_ids = itertools.count(1)      # never reused: an id names one captured graph for good
        self._buffers: list = []
        self._context_buf = None   # the staged context [R, C, N, D], kept across allocations
        self._feat_holds = None    # which staged frames the features buffer holds (None: anything else)

    def _check_contract(self, graph_path) -> None:
        """The graph's inputs must be the ones the config implies (names and fixed sizes): a config
        that does not describe the graph would otherwise fail deep inside ONNX Runtime, or worse."""
        from ...contract import step_io

        want = {s.name: s.shape for s in step_io(self.cfg, get_precision(self.precision).dtype,
                                                 cache=self.cache, cache_frames=self.cache_frames)[0]}
        got = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        bad = sorted(set(want) ^ set(got)) or sorted(
            n for n in want if len(want[n]) != len(got[n]) or any(
                isinstance(w, int) and isinstance(g, int) and w != g for w, g in zip(want[n], got[n])))
        if bad:
            raise VitacError(f"{graph_path} does not take the inputs its manifest's config implies "
                             f"({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}): the manifest was edited, "
                             f"re-export the artifact")

    def _session(self, path, cuda_graphs: bool):
        ort = self._ort
        providers: list = ["CPUExecutionProvider"]
        if self.device == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(
                cuda_graphs, self._tf32, strict_skip_norm=self.graph_form == "ort-fused")))
            if cuda_graphs:
                providers = providers[:1]   # graphs need every node on CUDA: no CPU fallback
        try:
            sess = ort.InferenceSession(str(path), self._so, providers=providers)
        except Exception as e:
            if cuda_graphs:
                raise
            raise VitacError(f"onnxruntime cannot load {path}: {first_line(e)}") from None
        check_providers(self.device == "cuda", sess.get_providers(),
                        cuda_provider_failure(ort) if self.device == "cuda" else "")
        return sess

    @property
    def graphs_in_use(self) -> bool:
        """True when the session was created with CUDA graphs (what the bench reports)."""
        return self.cuda_graphs

    # -- memory ---------------------------------------------------------------------------------------
    def _allocate(self, batch: int) -> None:
        self._release()
        cfg, mem = self.cfg, self._mem
        per_frame = cfg.num_heads * cfg.tokens_per_step * cfg.head_dim
        if self.cache == "static":   # one arena per layer, the graph's fixed length, written in place
            n = batch * cfg.num_heads * static_max_len(cfg, self.cache_frames) * cfg.head_dim
            self._arenas = [{name: mem.alloc(n, self.cache_dtype) for name in past_names(cfg)}]
            write, bias = static_rows(cfg, self.cache_frames, self.cache_dtype.name, batch)
            self._static = {"write_index": mem.alloc(write.size, np.int64),
                            "attn_bias": mem.alloc(bias.size, self.cache_dtype)}
            for name, table in (("write_index", write), ("attn_bias", bias)):
                self._upload(self._static[name], table)
            self._static_row = {"write_index": write[0].nbytes, "attn_bias": bias[0].nbytes}
        else:
            n = batch * self.max_frames * per_frame
            self._arenas = [{name: mem.alloc(n, self.cache_dtype) for name in past_names(cfg)} for _ in range(2)]
            self._static = {}
        frame = batch * cfg.tokens_per_frame * cfg.embed_dim
        self._pred = mem.alloc(frame, np.float32)
        self._raw = [mem.alloc(frame, np.float32) for _ in range(2)]
        self._feat = mem.alloc(frame, np.float32)   # a staged context broadcast to the batch
        self._feat_holds = None
        cos, sin = rope_rows(cfg, self.cache_dtype.name)   # [frames, 1, L, hd]: row t bound for frame t
        self._rope = {}
        for name, table in zip(ROPE_INPUTS, (cos, sin)):
            self._rope[name] = mem.alloc(table.size, self.cache_dtype)
            self._upload(self._rope[name], table)
        self._rope_row = cfg.tokens_per_step * cfg.head_dim * self.cache_dtype.itemsize
        self._goal_buf = mem.alloc(cfg.tokens_per_frame * cfg.embed_dim, np.float32)
        self._energies = mem.alloc(batch, np.float32)
        self._buffers = ([b for a in self._arenas for b in a.values()] + [self._pred, *self._raw, self._feat,
                         self._goal_buf, self._energies, *self._rope.values(), *self._static.values()])
        self._cur = 0          # arena holding the cache
        self._raw_cur = 0      # raw-prediction buffer holding the last prediction
        # captured graphs read the addresses they were captured with: a new allocation starts afresh
        self._run_options.clear()
        self._staged.clear()
        if getattr(self, "_goal", None) is not None:
            self._put_goal()

    def _release(self) -> None:
        for b in self._buffers:
            b.free()
        self._buffers = []

    def _close(self) -> None:
        self._release()
        if self._context_buf is not None:
            self._context_buf.free()
            self._context_buf = None
        self._mem.close()
        self._capacity = 0

    # -- host traffic ---------------------------------------------------------------------------------
    def _upload(self, buf, array: np.ndarray, offset: int = 0) -> None:
        self._mem.upload(buf, array, offset)
        self._sent(np.asarray(array).size * buf.dtype.itemsize)

    def _download(self, buf, shape) -> np.ndarray:
        out = self._mem.download(buf, shape)
        self._received(out.nbytes)
        return out

    # -- staged context -------------------------------------------------------------------------------
    def _device_input(self, name: str, x):
        """CUDA arrays are taken as a staged context or goal (copied device to device) on cuda."""
        if self.device == "cuda":
            dev = as_device_array(x, name)
            if dev is not None:
                if dev.dtype != np.float32:
                    raise VitacError(f"{name} must be a float32 CUDA array, got {dev.dtype}")
                return dev
        return super()._device_input(name, x)

    def _context_buffer(self, n: int):
        if self._context_buf is None or self._context_buf.nbytes < n * 4:
            if self._context_buf is not None:
                self._context_buf.free()
            self._context_buf = self._mem.alloc(n, np.float32)
        self._feat_holds = None
        return self._context_buf

    def _stage_host(self, context: np.ndarray) -> None:
        self._context_shape = context.shape
        self._upload(self._context_buffer(context.size), context)

    def _stage_device(self, contexts: list, normalized: bool) -> bool:
        if normalized or self.device != "cuda":   # the raw equivalent needs arithmetic this backend has no kernel for
            return False
        R, (_, C, N, D) = len(contexts), contexts[0].shape
        buf = self._context_buffer(R * C * N * D)
        for r, dev in enumerate(contexts):
            self._mem.copy_from_device(buf, r * C * N * D, dev)
        self._mem.synchronize()
        self._context_shape = (R, C, N, D)
        return True

    def _load_staged(self, frames: StagedFrames) -> None:
        """Broadcast frame t of the staged context(s) into the features buffer, by group of rows
        (device to device, doubling); skipped when the buffer holds exactly that already."""
        key = (frames.context.generation, frames.t, frames.groups)
        if self._feat_holds == key:
            return
        _, C, N, D = self._context_shape
        row = N * D
        for lo, hi, r in frames.groups:
            self._mem.copy(self._feat, lo * row, self._context_buf, (r * C + frames.t) * row, row)
            self._mem.tile(self._feat, row, 1, hi - lo, offset=lo * row)
        self._mem.synchronize()   # ONNX Runtime computes on its own stream
        self._feat_holds = key

    @property
    def cache_bytes(self) -> int:
        """Bytes allocated for the KV cache (every arena of every layer); 0 before the first reset."""
        return sum(b.nbytes for a in getattr(self, "_arenas", []) for b in a.values()) if self._buffers else 0

    def device_memory(self) -> Optional[dict[str, float]]:
        """The device buffers this runtime allocated (the session's own memory is not counted)."""
        if self.device != "cuda" or not self._buffers:
            return None
        return {"cache_and_io_buffers_mib": sum(b.nbytes for b in self._buffers) / 2**20}

    # -- one frame ------------------------------------------------------------------------------------
    def _stage(self, name: str, array: np.ndarray):
        """A device copy of a host input at an address fixed per (name, shape): captured graphs
        replay reads from where they were captured."""
        key = (name, array.shape)
        value = self._staged.get(key)
        if value is None:
            value = self._staged[key] = self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
        else:
            value.update_inplace(array)
        return value

    def _bind_host(self, binding, name: str, array: np.ndarray) -> None:
        self._sent(array.nbytes)   # copied to the device on cuda; bound in place on the CPU
        if self.cuda_graphs:
            v = self._stage(name, array)
            binding.bind_input(name, "cuda", 0, array.dtype.type, list(array.shape), v.data_ptr())
        elif self.device == "cpu":
            if not array.flags.c_contiguous:  # bound by pointer: must be one dense block
                raise ValueError(f"{name}: internal error, non-contiguous array bound")
            binding.bind_input(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
        else:
            binding.bind_cpu_input(name, array)

    def _bind(self, binding, name: str, buf, shape, output: bool = False, offset: int = 0) -> None:
        fn = binding.bind_output if output else binding.bind_input
        fn(name, self._mem.device, 0, buf.dtype.type, list(shape), buf.ptr + offset)

    def _run(self, features: Optional[np.ndarray], cond: dict[str, np.ndarray]) -> None:
        cfg, B, bind = self.cfg, self.batch, self._binding
        P = self.frames * cfg.tokens_per_step
        frame = (B, cfg.tokens_per_frame, cfg.embed_dim)
        static = self.cache == "static"
        if static:   # one buffer, fixed shape: past and present are the same memory
            M = static_max_len(cfg, self.cache_frames)
            kv_past = kv_present = (B, cfg.num_heads, M, cfg.head_dim)
            past = present = self._arenas[0]
        else:
            kv_past = (B, cfg.num_heads, P, cfg.head_dim)
            kv_present = (B, cfg.num_heads, P + cfg.tokens_per_step, cfg.head_dim)
            past, present = self._arenas[self._cur], self._arenas[1 - self._cur]
        raw_in, raw_out = self._raw[self._raw_cur], self._raw[1 - self._raw_cur]
        bind.clear_binding_inputs()
        bind.clear_binding_outputs()
        if features is None:
            self._bind(bind, "features", raw_in, frame)
        elif isinstance(features, StagedFrames):
            self._load_staged(features)
            self._bind(bind, "features", self._feat, frame)
        else:
            self._bind_host(bind, "features", features)
        for name, value in cond.items():
            self._bind_host(bind, name, value)
        for name, table in self._rope.items():
            self._bind(bind, name, table, (1, cfg.tokens_per_step, cfg.head_dim), offset=self.frames * self._rope_row)
        if static:
            self._bind(bind, "write_index", self._static["write_index"], (B,),
                       offset=self.frames * self._static_row["write_index"])
            self._bind(bind, "attn_bias", self._static["attn_bias"], (1, 1, 1, M),
                       offset=self.frames * self._static_row["attn_bias"])
        for p_name, q_name in zip(past_names(cfg), present_names(cfg)):
            self._bind(bind, p_name, past[p_name], kv_past)
            self._bind(bind, q_name, present[p_name], kv_present, output=True)
        if "next_features_raw" in self._outputs:
            self._bind(bind, "next_features", self._pred, frame, output=True)
            self._bind(bind, "next_features_raw", raw_out, frame, output=True)
        else:  # normalize_reps off: the prediction is what is fed back, written where it is read from
            self._bind(bind, "next_features", raw_out, frame, output=True)
        run_options = None
        if self.cuda_graphs:
            key = (B, P, self._cur, self._raw_cur, features is None, isinstance(features, StagedFrames))
            run_options = self._run_options.get(key)
            if run_options is None:   # once per key: ids start at 1 (0 is ORT's own) and are never reused
                run_options = self._run_options[key] = self._ort.RunOptions()
                run_options.add_run_config_entry("gpu_graph_id", str(next(self._graph_ids)))
        try:
            self.session.run_with_iobinding(bind, run_options)
        except Exception as e:
            raise VitacError(f"onnxruntime failed on frame {self.frames}: {first_line(e)}") from None
        if not static:
            self._cur = 1 - self._cur
        self._raw_cur = 1 - self._raw_cur

    def _last(self):
        """The buffer holding the last normalized prediction."""
        return self._pred if "next_features_raw" in self._outputs else self._raw[self._raw_cur]

    def _prediction(self) -> np.ndarray:
        cfg = self.cfg
        return self._download(self._last(), (self.batch, cfg.tokens_per_frame, cfg.embed_dim))

    # -- energy ---------------------------------------------------------------------------------------
    def _stage_goal(self, goal: np.ndarray) -> None:
        self._goal = goal
        if self._capacity:
            self._put_goal()

    def _stage_goal_device(self, goal: DeviceArray) -> None:
        if self.energy_session is None:
            raise VitacError("this artifact has no energy graph: the goal is scored on the host, pass it as a host array")
        self._goal = goal   # kept (with its owner) to be copied again into a re-allocated buffer
        if self._capacity:
            self._put_goal()

    def _put_goal(self) -> None:
        if isinstance(self._goal, DeviceArray):
            self._mem.copy_from_device(self._goal_buf, 0, self._goal)
            self._mem.synchronize()
        else:
            self._upload(self._goal_buf, self._goal)

    def _energy(self) -> np.ndarray:
        if self.energy_session is None:   # an artifact without energy.onnx: score on the host
            return super()._energy()
        cfg, B = self.cfg, self.batch
        bind = self._energy_binding
        bind.clear_binding_inputs()
        bind.clear_binding_outputs()
        self._bind(bind, "prediction", self._last(), (B, cfg.tokens_per_frame, cfg.embed_dim))
        self._bind(bind, "goal", self._goal_buf, (1, cfg.tokens_per_frame, cfg.embed_dim))
        self._bind(bind, "energy", self._energies, (B,), output=True)
        try:
            self.energy_session.run_with_iobinding(bind)
        except Exception as e:
            raise VitacError(f"onnxruntime failed on the energy graph: {first_line(e)}") from None
        return self._download(self._energies, (B,))

    # -- rollout hooks --------------------------------------------------------------------------------
    def _broadcast_cache(self, batch: int) -> None:
        if batch > self._capacity:
            raise VitacError(f"batch {batch} exceeds the runtime's allocated batch {self._capacity}")
        cfg, mem = self.cfg, self._mem
        tokens = static_max_len(cfg, self.cache_frames) if self.cache == "static" else self.frames * cfg.tokens_per_step
        kv_row = cfg.num_heads * tokens * cfg.head_dim
        for buf in self._arenas[self._cur].values():
            mem.tile(buf, kv_row, 1, batch)
        # (predictions need no broadcast: the last context frame always runs at the full batch)
        # device-to-device copies return before they finish and ONNX Runtime computes on its own
        # stream: wait here so that the next run reads the broadcast cache
        mem.synchronize()

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        form = f", {self.graph_form} graphs" if self.graph_form != "portable" else ""
        return f"{self.backend} ({self.device}, {self.precision}, {self.cache} cache{form}{graphs})"


def energy_graph_path(artifact: Path, manifest: dict[str, Any]) -> Optional[Path]:
    """The artifact's energy graph; refused when its manifest lists one that is not there (a
    runtime would otherwise score on the host without a word: every prediction copied)."""
    g = manifest.get("graphs", {}).get("energy")
    if not g:
        return None
    path = artifact / str(g.get("file", ""))
    if not os.path.isfile(path):
        raise VitacError(f"{artifact} lists an energy graph {path.name} that is missing: re-export the artifact")
    return path

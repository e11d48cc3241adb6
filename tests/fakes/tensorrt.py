"""`FakeTensorRT`: a strict, CPU-only stand-in for the TensorRT Python API (the TensorRT 10 subset the
runtime uses; 8.x spellings with `version="8.6.1"`; TensorRT 11 with `version="11.x"`: strongly typed
only, no v1 device-memory API; TensorRT for RTX with `flavour="tensorrt_rtx"`), and the build API
`build_engine` uses (section "the builder" at the end).

An engine file is a "fake plan": the bytes of a JSON document written by `write_fake_engine`:

    {"fake_tensorrt_engine": 1,
     "onnx": "/abs/path/step.onnx",              # the graph the engine "runs", with onnxruntime (CPU)
     "profile": {"input": [min, opt, max], ...}, # optimization profile 0, one entry per dynamic input
     "device_memory_size": 4096,                 # scratch bytes a context needs
     "flavour": "tensorrt",                      # which TensorRT built it ("tensorrt" / "tensorrt_rtx")
     "tensorrt_version": "10.3.0" | null,        # null: any version deserializes it
     "version_compatible": false,                # true: refused unless Runtime.engine_host_code_allowed
     "weights_size": 0,                          # device bytes the engine holds while alive
     "validity": "VALID", "diagnostics": []}    # what RTX's get_engine_validity answers

An execution context runs on a FakeCudart: `execute_async_v3(stream)` validates the bindings (every
input with a dynamic dimension needs set_input_shape, every I/O tensor set_tensor_address, a
USER_MANAGED context set_device_memory with enough live, 256-byte aligned device memory) and
enqueues ONE op on that fake stream (or into its capture). When the op runs it reads every input from
fake device memory (shape and dtype snapshotted at enqueue time), runs the ONNX graph with onnxruntime,
checks every output fits in the live device allocation at its address and writes it there. Operands
outside live device memory, or an output overlapping another operand (TensorRT does not alias I/O),
fault the fake GPU (sticky cudaErrorIllegalAddress / cudaErrorLaunchFailure).

Graph-capture fidelity: every set_input_shape / set_tensor_address / set_device_memory bumps the
context's configuration version (even when the value is unchanged, unless `strict_reconfigure=False`).
An op captured into a CUDA graph remembers the version; replaying it after the context changed faults
with "graph replayed after its execution context was reconfigured" (TensorRT's documentation says to
re-capture when shapes change; the fake enforces it strictly). With `capture_requires_warmup=True`
(default) an execute_async_v3 into a capture after a shape change without an ordinary (uncaptured)
execute_async_v3 since returns False and invalidates the capture (TensorRT recommends one enqueue
before capture so its deferred shape-dependent work happens outside the capture).

Not modelled: kernels, precision, timing, multiple optimization profiles, shape tensors, output
allocators, aux streams, races between contexts sharing user-managed memory on different streams.
"""

from __future__ import annotations

import enum
import itertools
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cudart import FakeCudaError, FakeCudart, _as_int, cudaError_t

__all__ = [
    "CudaGraphStrategy",
    "DataType",
    "EngineInvalidityDiagnostics",
    "EngineValidity",
    "ExecutionContextAllocationStrategy",
    "FakeTensorRT",
    "Logger",
    "TensorIOMode",
    "write_fake_engine",
]


# -- enums (values of TensorRT 10 / TensorRT-RTX 1.7) ------------------------------------------------

class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
          DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}
_ONNX = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int8)": DataType.INT8,
         "tensor(int32)": DataType.INT32, "tensor(bool)": DataType.BOOL, "tensor(uint8)": DataType.UINT8,
         "tensor(int64)": DataType.INT64, "tensor(bfloat16)": DataType.BF16}


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class CudaGraphStrategy(enum.IntEnum):
    DISABLED = 0
    WHOLE_GRAPH_CAPTURE = 1


class EngineValidity(enum.IntEnum):
    VALID = 0
    SUBOPTIMAL = 1
    INVALID = 2


class EngineInvalidityDiagnostics(enum.IntEnum):
    VERSION_MISMATCH = 1
    UNSUPPORTED_CC = 2
    OLD_CUDA_DRIVER = 4
    OLD_CUDA_RUNTIME = 8
    INSUFFICIENT_GPU_MEMORY = 16
    MALFORMED_ENGINE = 32
    CUDA_ERROR = 64


def nptype(trt_type):
    """The numpy type of a TensorRT DataType (TypeError for types numpy lacks, as TensorRT does)."""
    try:
        return _NUMPY[DataType(int(trt_type))]
    except (KeyError, ValueError):
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.") from None


class Logger:
    """trt.Logger: keeps what it is told at or above `min_severity` in `messages`."""

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING,
                                                    Severity.INFO, Severity.VERBOSE)

    def __init__(self, min_severity=Severity.WARNING):
        self.min_severity = Logger.Severity(int(min_severity))
        self.messages: list[tuple[Logger.Severity, str]] = []

    def log(self, severity, msg: str) -> None:
        if int(severity) <= self.min_severity:
            self.messages.append((Logger.Severity(int(severity)), msg))


# -- the fake plan --------------------------------------------------------------------------------

def _onnx_io(onnx_path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def _dims(shape) -> tuple:
    """An onnxruntime shape with -1 for every dynamic dimension (TensorRT's spelling)."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def write_fake_engine(path, onnx_path, profile: dict, *, device_memory_size: int = 4096,
                      version: str | None = None, flavour: str = "tensorrt", version_compatible: bool = False,
                      weights_size: int = 0, name: str | None = None, **extra) -> Path:
    """Write a fake plan for `onnx_path` and return its path. `profile` maps input names to
    (min, opt, max) shapes. Checked like a TensorRT build would: every dynamic input needs an entry,
    shapes must have the input's rank and static dimensions, and min <= opt <= max."""
    onnx_path = Path(onnx_path).resolve()
    sess = _onnx_io(onnx_path)
    inputs = {i.name: _dims(i.shape) for i in sess.get_inputs()}
    prof = {}
    for n, shapes in profile.items():
        if n not in inputs:
            raise ValueError(f"profile names {n!r}, which is not an input of {onnx_path.name}")
        lo, opt, hi = (tuple(int(d) for d in s) for s in shapes)
        for s in (lo, opt, hi):
            if len(s) != len(inputs[n]) or any(d >= 0 and d != x for d, x in zip(inputs[n], s)):
                raise ValueError(f"profile shape {s} of {n!r} does not match its dimensions {inputs[n]}")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise ValueError(f"profile of {n!r} needs min <= opt <= max, got {lo}, {opt}, {hi}")
        prof[n] = [list(lo), list(opt), list(hi)]
    missing = [n for n, d in inputs.items() if -1 in d and n not in prof]
    if missing:
        raise ValueError(f"dynamic inputs without a profile: {missing}")
    doc = {"fake_tensorrt_engine": 1, "onnx": str(onnx_path), "name": name or onnx_path.stem, "profile": prof,
           "device_memory_size": int(device_memory_size), "flavour": flavour, "tensorrt_version": version,
           "version_compatible": bool(version_compatible), "weights_size": int(weights_size),
           "validity": "VALID", "diagnostics": [], **extra}
    path = Path(path)
    path.write_bytes(json.dumps(doc, indent=1).encode())
    return path


def _parse_plan(data) -> dict | None:
    try:
        doc = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("fake_tensorrt_engine") == 1 else None


# -- version gating -------------------------------------------------------------------------------

class _Gated:
    """Attributes listed in `_absent` do not exist (AttributeError, so hasattr() is False): one set
    of classes serves TensorRT 8.6, 10.0, 10.1+ and TensorRT for RTX."""

    _absent: frozenset = frozenset()

    def __getattribute__(self, name):
        if name in object.__getattribute__(self, "_absent"):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}' "
                                 f"(not in this TensorRT version/flavour)")
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        if name in object.__getattribute__(self, "_absent"):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        object.__setattr__(self, name, value)


@dataclass(frozen=True)
class _Features:
    strategy: bool        # ExecutionContextAllocationStrategy, create_execution_context(strategy) (10.0+)
    v2: bool              # device_memory_size_v2, set_device_memory(memory, size) (10.1+)
    v1_memory: bool       # device_memory_size, create_execution_context_without_device_memory (not RTX)
    rtx: bool             # runtime config, get_engine_validity
    kv_cache: bool = False  # IKVCacheUpdateLayer (ONNX TensorScatter, in place): TensorRT 10.15+, RTX 1.7 has it
    attention: bool = False   # IAttention (the ONNX Attention operator): TensorRT 10.15+, RTX 1.7 has it
    weak_typing: bool = True  # BuilderFlag.FP16 / OBEY_PRECISION_CONSTRAINTS: TensorRT < 11 (never RTX)

    @classmethod
    def of(cls, flavour: str, version: str) -> _Features:
        rtx = flavour == "tensorrt_rtx"
        v = tuple(int(x) for x in version.split(".")[:2])
        new = (v >= (1, 7)) if rtx else v >= (10, 15)
        # TensorRT 11 removed the v1 device-memory API and every weak-typing builder flag
        return cls(rtx or v >= (10, 0), rtx or v >= (10, 1), not rtx and v < (11, 0), rtx, new, new,
                   not rtx and v < (11, 0))


# -- runtime, engine, context -----------------------------------------------------------------------

@dataclass
class ContextRecord:
    """What the fake remembers about one execution context (kept after the context is gone)."""

    id: int
    engine: str
    strategy: str
    calls: list = field(default_factory=list)
    _ref: Any = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self._ref is not None and self._ref() is not None


class Runtime(_Gated):
    """trt.Runtime(logger). Bound to its FakeTensorRT by subclassing (FakeTensorRT.Runtime)."""

    _trt: FakeTensorRT

    def __init__(self, logger):
        if not isinstance(logger, Logger):
            raise TypeError("Runtime(): incompatible constructor arguments (expected a tensorrt.ILogger)")
        trt = type(self)._trt
        object.__setattr__(self, "_absent", frozenset() if trt._features.rtx else frozenset({"get_engine_validity"}))
        self.logger = logger
        self.engine_host_code_allowed = False

    def _log(self, severity, msg: str) -> None:
        self.logger.log(severity, msg)
        type(self)._trt.messages.append((Logger.Severity(int(severity)), msg))

    def deserialize_cuda_engine(self, serialized_engine):
        trt = type(self)._trt
        if not isinstance(serialized_engine, (bytes, bytearray, memoryview)):
            raise TypeError("deserialize_cuda_engine(): incompatible function arguments")
        plan = _parse_plan(serialized_engine)
        if plan is None:
            self._log(Logger.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                    "(Serialization assertion failed: not a (fake) TensorRT plan)")
            return None
        if plan.get("flavour", "tensorrt").replace("-", "_") != trt.__name__:
            self._log(Logger.ERROR, f"plan built by {plan.get('flavour')}, this is {trt.__name__}")
            return None
        built = plan.get("tensorrt_version")
        if plan.get("version_compatible"):
            if not self.engine_host_code_allowed:
                self._log(Logger.ERROR, "Error Code 1: Serialization (a version-compatible plan needs "
                                        "IRuntime::setEngineHostCodeAllowed(true))")
                return None
        elif built is not None and built != trt.__version__:
            self._log(Logger.ERROR, f"Error Code 6: The engine plan file is not compatible with this version of "
                                    f"TensorRT, expecting library version {trt.__version__} got {built}")
            return None
        if plan.get("validity", "VALID") == "INVALID":
            self._log(Logger.ERROR, "the plan cannot run on this GPU")
            return None
        if not Path(plan["onnx"]).is_file():
            self._log(Logger.ERROR, f"fake plan: its ONNX graph {plan['onnx']} is gone")
            return None
        return trt.ICudaEngine(trt, plan)

    def get_engine_validity(self, buffer):
        """TensorRT for RTX: (EngineValidity, diagnostics bitmask) from the plan header."""
        plan = _parse_plan(buffer)
        if plan is None:
            return EngineValidity.INVALID, int(EngineInvalidityDiagnostics.MALFORMED_ENGINE)
        bits = 0
        for d in plan.get("diagnostics", []):
            bits |= int(EngineInvalidityDiagnostics[d])
        return EngineValidity[plan.get("validity", "VALID")], bits


@dataclass
class _Tensor:
    name: str
    mode: TensorIOMode
    dtype: DataType
    shape: tuple                       # -1 for dynamic dimensions
    profile: tuple | None = None    # inputs: (min, opt, max)


class ICudaEngine(_Gated):
    """A deserialized fake plan: the ONNX graph in an onnxruntime CPU session, plus its profile."""

    def __init__(self, trt: FakeTensorRT, plan: dict):
        f = trt._features
        absent = set()
        if not f.v2:
            absent |= {"device_memory_size_v2", "get_device_memory_size_for_profile_v2"}
        if not f.v1_memory:
            absent |= {"device_memory_size", "create_execution_context_without_device_memory"}
        if not f.rtx:
            absent |= {"create_runtime_config"}
        object.__setattr__(self, "_absent", frozenset(absent))
        self._trt, self._plan, self.name = trt, plan, plan.get("name", "engine")
        self._session = _onnx_io(plan["onnx"])
        self._tensors: list[_Tensor] = []
        for i in self._session.get_inputs():
            shape = _dims(i.shape)
            prof = plan["profile"].get(i.name)
            prof = tuple(tuple(s) for s in prof) if prof else (shape, shape, shape)
            self._tensors.append(_Tensor(i.name, TensorIOMode.INPUT, self._dtype(i), shape, prof))
        for o in self._session.get_outputs():
            self._tensors.append(_Tensor(o.name, TensorIOMode.OUTPUT, self._dtype(o), _dims(o.shape)))
        self._by_name = {t.name: t for t in self._tensors}
        # TensorScatter from a graph input to a graph output: TensorRT's KV-cache update layer, which
        # updates its cache in place: the output must be bound to the input's own address
        import onnx

        g = onnx.load(str(plan["onnx"]), load_external_data=False).graph
        ins, outs = {i.name for i in g.input}, {o.name for o in g.output}
        self._in_place = {n.output[0]: n.input[0] for n in g.node
                          if n.op_type == "TensorScatter" and n.input[0] in ins and n.output[0] in outs}
        self._memory_size = int(plan.get("device_memory_size", 0))
        weights = int(plan.get("weights_size", 0))
        if weights:   # device memory the engine holds while it lives
            ptr = trt.cudart.allocate_internal(weights, "device", f"{self.name} weights")
            weakref.finalize(self, trt.cudart.free_internal, ptr)

    @staticmethod
    def _dtype(io) -> DataType:
        if io.type not in _ONNX:
            raise ValueError(f"fake TensorRT: unsupported I/O type {io.type} of {io.name}")
        return _ONNX[io.type]

    def _tensor(self, name: str) -> _Tensor:
        t = self._by_name.get(name)
        if t is None:
            raise KeyError(f"no tensor named {name!r} in engine {self.name}")
        return t

    # -- introspection ----------------------------------------------------------------------------------
    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, index) -> str:
        return self._tensors[int(index)].name

    def get_tensor_mode(self, name) -> TensorIOMode:
        t = self._by_name.get(name)
        return t.mode if t else TensorIOMode.NONE

    def get_tensor_dtype(self, name) -> DataType:
        return self._tensor(name).dtype

    def get_tensor_shape(self, name) -> tuple:
        return self._tensor(name).shape

    def get_tensor_profile_shape(self, name, profile_index) -> list:
        t = self._tensor(name)
        if t.mode != TensorIOMode.INPUT or int(profile_index) != 0:
            raise ValueError(f"get_tensor_profile_shape({name!r}, {profile_index}): inputs of profile 0 only")
        return [tuple(s) for s in t.profile]

    @property
    def device_memory_size(self) -> int:
        return self._memory_size

    @property
    def device_memory_size_v2(self) -> int:
        return self._memory_size

    def get_device_memory_size_for_profile_v2(self, profile_index) -> int:
        if int(profile_index) != 0:
            raise ValueError(f"profile {profile_index}: the fake engine has one profile")
        return self._memory_size

    # -- contexts -------------------------------------------------------------------------------------
    def create_execution_context(self, *args, **kwargs):
        """8.x: no argument. 10.x: (strategy=STATIC). RTX: (strategy=STATIC) or (runtime_config=None)."""
        f, trt = self._trt._features, self._trt
        if len(args) + len(kwargs) > (1 if f.strategy else 0) or set(kwargs) - {"strategy", "runtime_config"}:
            raise TypeError("create_execution_context(): incompatible function arguments")
        arg = args[0] if args else next(iter(kwargs.values()), None)
        if "runtime_config" in kwargs and not f.rtx:
            raise TypeError("create_execution_context(): incompatible function arguments")
        if isinstance(arg, IRuntimeConfig) and f.rtx:
            return trt.IExecutionContext(self, arg.get_execution_context_allocation_strategy(), arg)
        if arg is None:
            return trt.IExecutionContext(self, ExecutionContextAllocationStrategy.STATIC)
        if not isinstance(arg, ExecutionContextAllocationStrategy):
            raise TypeError(f"create_execution_context(): incompatible function arguments ({type(arg).__name__})")
        return trt.IExecutionContext(self, arg)

    def create_execution_context_without_device_memory(self):
        return self._trt.IExecutionContext(self, ExecutionContextAllocationStrategy.USER_MANAGED)

    def create_runtime_config(self):
        return IRuntimeConfig()


class IRuntimeConfig:
    """TensorRT for RTX runtime configuration. A context created from it keeps only a weak reference
    (the fake's pessimistic model of "keep the config alive": once it is collected, execute fails)."""

    def __init__(self):
        self._strategy = ExecutionContextAllocationStrategy.STATIC
        self._graph_strategy = CudaGraphStrategy.DISABLED

    def set_execution_context_allocation_strategy(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        if not isinstance(strategy, ExecutionContextAllocationStrategy):
            raise TypeError("set_execution_context_allocation_strategy(): incompatible function arguments")
        self._strategy = strategy

    def get_execution_context_allocation_strategy(self):
        return self._strategy

    @property
    def cuda_graph_strategy(self):
        return self._graph_strategy

    @cuda_graph_strategy.setter
    def cuda_graph_strategy(self, value):
        if not isinstance(value, CudaGraphStrategy):
            raise TypeError("cuda_graph_strategy: incompatible value")
        self._graph_strategy = value


class IExecutionContext(_Gated):
    """Bindings (shapes, addresses, device memory) and execute_async_v3 on a FakeCudart stream."""

    def __init__(self, engine: ICudaEngine, strategy, runtime_config: IRuntimeConfig | None = None):
        trt = engine._trt
        f = trt._features
        absent = set()
        if not f.v2:
            absent.add("set_device_memory")
        if not f.v1_memory and not f.rtx:   # TensorRT 11: the device_memory property went with the v1 API
            absent.add("device_memory")
        if not f.rtx:   # is_stream_capturable: TensorRT for RTX 1.2+ (not modelled for plain TensorRT)
            absent |= {"get_runtime_config", "is_stream_capturable"}
        object.__setattr__(self, "_absent", frozenset(absent))
        self._trt, self.engine, self._strategy = trt, engine, ExecutionContextAllocationStrategy(strategy)
        self._config_ref = weakref.ref(runtime_config) if runtime_config is not None else None
        self._shapes: dict[str, tuple] = {}
        self._addresses: dict[str, int] = {}
        self._memory: tuple | None = None     # user-managed (ptr, size or None for the 8.x setter)
        self._own_memory: int | None = None   # STATIC / ON_PROFILE_CHANGE scratch
        self._version = 0
        self._shapes_dirty = True                # a shape change not yet followed by an uncaptured enqueue
        self._output_shapes: dict[tuple, dict] = {}
        self._record = ContextRecord(next(trt._ids), engine.name, self._strategy.name)
        self._record._ref = weakref.ref(self)
        trt.contexts.append(self._record)
        trt.log.append(("create_execution_context", self._record.id, engine.name, self._strategy.name))
        if self._strategy != ExecutionContextAllocationStrategy.USER_MANAGED and engine._memory_size:
            ptr = trt.cudart.allocate_internal(engine._memory_size, "device", f"{engine.name} context scratch")
            self._own_memory = ptr
            weakref.finalize(self, trt.cudart.free_internal, ptr)

    @property
    def name(self) -> str:
        return f"context {self._record.id} of {self.engine.name}"

    def _note(self, *entry) -> None:
        self._record.calls.append(entry)
        self._trt.log.append((entry[0], self._record.id, *entry[1:]))

    def _error(self, msg: str) -> None:
        self._trt.messages.append((Logger.ERROR, f"{self.name}: {msg}"))

    def _reconfigured(self, changed: bool) -> None:
        if changed or self._trt.strict_reconfigure:
            self._version += 1

    # -- bindings -------------------------------------------------------------------------------------
    def set_input_shape(self, name, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        ok, why = self._check_shape(name, shape)
        self._note("set_input_shape", name, shape, ok)
        if not ok:
            self._error(f"set_input_shape({name!r}, {shape}): {why}")
            return False
        changed = self._shapes.get(name) != shape
        self._shapes[name] = shape
        self._shapes_dirty = self._shapes_dirty or changed
        self._reconfigured(changed)
        return True

    def _check_shape(self, name, shape) -> tuple[bool, str]:
        t = self.engine._by_name.get(name)
        if t is None or t.mode != TensorIOMode.INPUT:
            return False, "not an input"
        if len(shape) != len(t.shape):
            return False, f"rank {len(shape)}, the input has rank {len(t.shape)}"
        lo, _, hi = t.profile
        for i, (d, static, a, b) in enumerate(zip(shape, t.shape, lo, hi)):
            if static >= 0 and d != static:
                return False, f"dimension {i} is static ({static})"
            if not a <= d <= b:
                return False, f"dimension {i} = {d} is outside the profile [{a}, {b}]"
        return True, ""

    def get_tensor_shape(self, name) -> tuple:
        """Inputs: the shape set (or -1s). Outputs: inferred by running the graph on zeros."""
        t = self.engine._tensor(name)
        if t.mode == TensorIOMode.INPUT:
            return self._shapes.get(name, t.shape)
        shapes = self._input_shapes()
        if shapes is None:
            return t.shape
        key = tuple(sorted(shapes.items()))
        if key not in self._output_shapes:
            feeds = {n: np.zeros(s, nptype(self.engine._by_name[n].dtype)) for n, s in shapes.items()}
            outs = self.engine._session.run(None, feeds)
            self._output_shapes[key] = {o.name: tuple(v.shape) for o, v in zip(self.engine._session.get_outputs(), outs)}
        return self._output_shapes[key][name]

    def _input_shapes(self) -> dict | None:
        out = {}
        for t in self.engine._tensors:
            if t.mode == TensorIOMode.INPUT:
                s = self._shapes.get(t.name, t.shape if -1 not in t.shape else None)
                if s is None:
                    return None
                out[t.name] = s
        return out

    def set_tensor_address(self, name, memory) -> bool:
        ptr = _as_int(memory, "memory")
        ok = name in self.engine._by_name
        self._note("set_tensor_address", name, ptr, ok)
        if not ok:
            self._error(f"set_tensor_address: no tensor named {name!r}")
            return False
        changed = self._addresses.get(name) != ptr
        self._addresses[name] = ptr
        self._reconfigured(changed)
        return True

    def get_tensor_address(self, name) -> int:
        return self._addresses.get(name, 0)

    def set_device_memory(self, memory, size) -> None:
        mem = (_as_int(memory, "memory"), _as_int(size, "size"))
        self._note("set_device_memory", *mem)
        changed = self._memory != mem
        self._memory = mem
        self._reconfigured(changed)

    @property
    def device_memory(self) -> int:
        return self._memory[0] if self._memory else 0

    @device_memory.setter
    def device_memory(self, memory) -> None:
        mem = (_as_int(memory, "memory"), None)
        self._note("device_memory", mem[0])
        changed = self._memory != mem
        self._memory = mem
        self._reconfigured(changed)

    def get_runtime_config(self):
        return self._config_ref() if self._config_ref else None

    def is_stream_capturable(self, stream) -> bool:
        """TensorRT for RTX: the fake's graphs have no data-dependent shapes, so always True."""
        _as_int(stream, "stream")
        return True

    # -- execution ------------------------------------------------------------------------------------
    def _problems(self) -> list[str]:
        """Why this context cannot be enqueued now (empty when it can)."""
        eng, cud, out = self.engine, self._trt.cudart, []
        if self._config_ref is not None and self._config_ref() is None:
            out.append("its IRuntimeConfig was garbage-collected (keep it alive as long as the context)")
        for t in eng._tensors:
            if t.mode == TensorIOMode.INPUT and -1 in t.shape and t.name not in self._shapes:
                out.append(f"input shape of {t.name!r} not set")
            if t.name not in self._addresses:
                out.append(f"address of {t.name!r} not set")
        if self._own_memory is None and eng._memory_size:
            if self._memory is None:
                out.append("no device memory: a USER_MANAGED context needs set_device_memory() first")
            else:
                ptr, size = self._memory
                if size is not None and size < eng._memory_size:
                    out.append(f"set_device_memory size {size} < device_memory_size_v2 {eng._memory_size}")
                if ptr % 256:
                    out.append(f"device memory 0x{ptr:x} is not 256-byte aligned")
                try:
                    cud.check_device_range(ptr, eng._memory_size, "TensorRT device memory")
                except FakeCudaError as e:
                    out.append(e.message)
        return out

    def execute_async_v3(self, stream_handle) -> bool:
        handle = _as_int(stream_handle, "stream_handle")
        cud = self._trt.cudart
        capturing = cud.stream_is_capturing(handle)
        problems = self._problems()
        if not problems and capturing and self._trt.capture_requires_warmup and self._shapes_dirty:
            problems = [("enqueue into a CUDA graph capture right after a shape change: TensorRT's deferred "
                        "shape-dependent work cannot be captured (run execute_async_v3 once before capturing)")]
            cud.invalidate_capture(handle, f"{self.name}: uncapturable TensorRT work")
        if handle in (0, 1, 2):
            self._trt.messages.append((Logger.WARNING, ("Using default stream in enqueueV3() may lead to performance "
                                                       "issues due to additional calls to cudaStreamSynchronize()")))
        if not problems:
            launch = _Launch(self)
            err = cud.enqueue(handle, launch.run, f"TensorRT {self.name}", replay_check=launch.replay_check)
            if err != cudaError_t.cudaSuccess:
                problems = [f"enqueue on stream 0x{handle:x} failed: {cudaError_t(err).name}"]
        ok = not problems
        self._note("execute_async_v3", handle, ok, capturing)
        for p in problems:
            self._error(f"execute_async_v3: {p}")
        if ok and not capturing:
            self._shapes_dirty = False
        return ok


class _Launch:
    """One enqueued execution: a snapshot of the context's bindings at enqueue (= capture) time."""

    REPLAY_STALE = ("graph replayed after its execution context was reconfigured (TensorRT: re-capture when "
                    "shapes change, or use one context per graph)")

    def __init__(self, ctx: IExecutionContext):
        self.ctx_ref = weakref.ref(ctx)
        self.engine, self.trt, self.ctx_id = ctx.engine, ctx._trt, ctx._record.id
        self.version = ctx._version
        self.shapes = ctx._input_shapes()
        self.addresses = dict(ctx._addresses)
        size = self.engine._memory_size
        mem = ctx._own_memory if ctx._own_memory is not None else (ctx._memory[0] if ctx._memory else 0)
        self.scratch = (mem, size) if size else None
        self._replay = False

    def replay_check(self) -> None:
        ctx = self.ctx_ref()
        if ctx is None:
            raise FakeCudaError(cudaError_t.cudaErrorIllegalAddress,
                                "graph replayed after its execution context was destroyed")
        if ctx._version != self.version:
            self.trt.log.append(("stale_replay", self.ctx_id))
            raise FakeCudaError(cudaError_t.cudaErrorIllegalAddress, self.REPLAY_STALE)
        self._replay = True

    def run(self) -> None:
        replay, self._replay = self._replay, False
        cud, eng = self.trt.cudart, self.engine
        if self.ctx_ref() is None:
            raise FakeCudaError(cudaError_t.cudaErrorIllegalAddress,
                                f"context {self.ctx_id} was destroyed before its enqueued work ran")
        ranges = []   # (name, ptr, nbytes, is_output)
        if self.scratch:
            cud.check_device_range(*self.scratch, f"context {self.ctx_id} device memory")
            ranges.append(("device memory", *self.scratch, True))
        feeds = {}
        for name, shape in self.shapes.items():
            dtype = np.dtype(nptype(eng._by_name[name].dtype))
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if n:
                cud.check_device_range(self.addresses[name], n, f"{eng.name} input {name!r} {shape}")
                ranges.append((f"input {name!r}", self.addresses[name], n, False))
            feeds[name] = cud.read(self.addresses[name], shape, dtype) if n else np.zeros(shape, dtype)
        try:
            outs = eng._session.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - any onnxruntime failure is a failed launch
            raise FakeCudaError(cudaError_t.cudaErrorLaunchFailure, f"{eng.name}: onnxruntime failed: {e}") from None
        results = []
        for o, value in zip(eng._session.get_outputs(), outs):
            value = np.ascontiguousarray(value)
            want = np.dtype(nptype(eng._by_name[o.name].dtype))
            if value.dtype != want:
                raise FakeCudaError(cudaError_t.cudaErrorLaunchFailure, f"output {o.name} is {value.dtype}, not {want}")
            if value.nbytes:
                cud.check_device_range(self.addresses[o.name], value.nbytes,
                                       f"{eng.name} output {o.name!r} {value.shape}")
                ranges.append((f"output {o.name!r}", self.addresses[o.name], value.nbytes, True))
            results.append((o.name, value))
        aliases = set()
        for out, src in eng._in_place.items():
            if self.addresses[out] != self.addresses[src]:
                raise FakeCudaError(cudaError_t.cudaErrorLaunchFailure,
                                    f"{eng.name}: KV-cache update {out!r} must be bound to the address of {src!r} "
                                    f"(IKVCacheUpdateLayer works in place)")
            aliases.add(frozenset((f"output {out!r}", f"input {src!r}")))
        for (a, pa, na, wa), (b, pb, nb, wb) in itertools.combinations(ranges, 2):
            if frozenset((a, b)) in aliases:   # the one aliasing TensorRT allows: the in-place cache update
                continue
            if (wa or wb) and pa < pb + nb and pb < pa + na:
                raise FakeCudaError(cudaError_t.cudaErrorLaunchFailure,
                                    f"{eng.name}: {a} overlaps {b} (TensorRT does not alias I/O or its device memory)")
        for name, value in results:
            cud.write(self.addresses[name], value)
        self.trt.log.append(("executed", self.ctx_id, replay, dict(self.shapes)))


# -- the fake module ----------------------------------------------------------------------------------

class FakeTensorRT:
    """An object usable like the `tensorrt` module (or `tensorrt_rtx`), running on `cudart`.

    - `version`: "10.3.0" (default); "8.6.1" gives the 8.x API (no allocation strategies, no *_v2,
      `device_memory` setter); "10.0.x" has strategies but no *_v2 / set_device_memory.
    - `flavour`: "tensorrt" or "tensorrt_rtx" ("tensorrt-rtx" too; then `version` defaults to "1.7.1.116").
    - `strict_reconfigure`: every binding call bumps the context version (default), or only changes.
    - `capture_requires_warmup`: see the module docstring.
    - `strongly_typed_flag`: False drops NetworkDefinitionCreationFlag.STRONGLY_TYPED (a TensorRT 11
      in which every network is strongly typed and the flag is gone).

    Records: `log` (tuples: create_execution_context, set_input_shape, set_tensor_address,
    set_device_memory, device_memory, execute_async_v3, executed, stale_replay, each with the context
    id second), `contexts` (ContextRecord per context, with its own `calls`), `messages` (severity,
    text) for what TensorRT would log, errors included.
    """

    def __init__(self, cudart: FakeCudart, version: str | None = None, flavour: str = "tensorrt", *,
                 strict_reconfigure: bool = True, capture_requires_warmup: bool = True,
                 strongly_typed_flag: bool = True):
        flavour = flavour.replace("-", "_")
        if flavour not in ("tensorrt", "tensorrt_rtx"):
            raise ValueError(f"flavour must be 'tensorrt' or 'tensorrt_rtx', not {flavour!r}")
        self.cudart = cudart
        self.__name__ = flavour
        self.__version__ = version or ("1.7.1.116" if flavour == "tensorrt_rtx" else "10.3.0")
        self._features = f = _Features.of(flavour, self.__version__)
        self.strict_reconfigure, self.capture_requires_warmup = strict_reconfigure, capture_requires_warmup
        self.log: list[tuple] = []
        self.contexts: list[ContextRecord] = []
        self.messages: list[tuple] = []
        self._ids = itertools.count(1)
        # The module's names.
        self.Logger, self.ILogger = Logger, Logger
        self.Runtime = type("Runtime", (Runtime,), {"_trt": self})
        self.ICudaEngine, self.IExecutionContext = ICudaEngine, IExecutionContext
        self.DataType, self.TensorIOMode, self.nptype = DataType, TensorIOMode, nptype
        self.float32, self.float16, self.int8 = DataType.FLOAT, DataType.HALF, DataType.INT8
        self.int32, self.int64, self.bool, self.uint8 = DataType.INT32, DataType.INT64, DataType.BOOL, DataType.UINT8
        if f.strategy:
            self.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
        if f.rtx:
            self.IRuntimeConfig, self.CudaGraphStrategy = IRuntimeConfig, CudaGraphStrategy
            self.EngineValidity, self.EngineInvalidityDiagnostics = EngineValidity, EngineInvalidityDiagnostics
        self.bfloat16 = DataType.BF16
        if f.kv_cache:
            self.IKVCacheUpdateLayer = type("IKVCacheUpdateLayer", (), {})
        if f.attention:
            self.IAttention = type("IAttention", (), {})
        # the builder side (see "the builder" below)
        self.Builder = type("Builder", (Builder,), {"_trt": self})
        self.OnnxParser = type("OnnxParser", (OnnxParser,), {"_trt": self})
        self.LayerType, self.MemoryPoolType = LayerType, MemoryPoolType
        self.HardwareCompatibilityLevel = HardwareCompatibilityLevel
        self.BuilderFlag = _builder_flags(f)
        self.NetworkDefinitionCreationFlag = _creation_flags(self.__version__, f, strongly_typed_flag)

    def __repr__(self) -> str:
        return f"<FakeTensorRT {self.__name__} {self.__version__}>"

    def context_calls(self, ctx_id: int) -> list:
        """The calls one context received, in order."""
        return next(r.calls for r in self.contexts if r.id == ctx_id)


# -- the builder ------------------------------------------------------------------------------------
#
# Enough of the build API for `vitac_deploy.runtimes.tensorrt.build.build_engine`: Builder, network
# creation flags, an ONNX parser that refuses what the modelled version cannot import, a builder
# config whose BuilderFlag members follow the version (TensorRT 11 and RTX: no FP16 or
# OBEY_PRECISION_CONSTRAINTS), optimization profiles, and build_serialized_network writing a fake
# plan the fake runtime runs. The network's layers are the ONNX nodes, one layer each (Attention: an
# input and an output layer), typed by a fixed table: they stand for what TensorRT would name, not
# for its layers (tests/test_tensorrt_rtx_build.py counts real layers with TensorRT for RTX's parser).
# Every build is recorded in `FakeTensorRT.log` as ("build", details).

class LayerType(enum.IntEnum):
    CONVOLUTION = 0
    ACTIVATION = 2
    ELEMENTWISE = 6
    SOFTMAX = 8
    CONCATENATION = 9
    UNARY = 11
    SHUFFLE = 13
    REDUCE = 15
    CONSTANT = 16
    MATRIX_MULTIPLY = 18
    GATHER = 19
    SLICE = 21
    SHAPE = 22
    IDENTITY = 24
    CAST = 25
    SCATTER = 30
    NORMALIZATION = 42
    KV_CACHE_UPDATE = 50
    ATTENTION_INPUT = 51
    ATTENTION_OUTPUT = 52


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class HardwareCompatibilityLevel(enum.IntEnum):
    NONE = 0
    AMPERE_PLUS = 1


_LAYER_OF = {"LayerNormalization": LayerType.NORMALIZATION, "MatMul": LayerType.MATRIX_MULTIPLY,
             "Softmax": LayerType.SOFTMAX, "Concat": LayerType.CONCATENATION, "Cast": LayerType.CAST,
             "Gather": LayerType.GATHER, "Slice": LayerType.SLICE, "Split": LayerType.SLICE,
             "Reshape": LayerType.SHUFFLE, "Transpose": LayerType.SHUFFLE, "Unsqueeze": LayerType.SHUFFLE,
             "Identity": LayerType.IDENTITY, "Erf": LayerType.UNARY, "Sqrt": LayerType.UNARY,
             "Gelu": LayerType.ACTIVATION, "Sigmoid": LayerType.ACTIVATION, "ReduceMean": LayerType.REDUCE,
             "TensorScatter": LayerType.KV_CACHE_UPDATE, "Expand": LayerType.SLICE, "Tile": LayerType.SLICE}


def _builder_flags(f: _Features):
    names = ["TF32", "VERSION_COMPATIBLE", "REFIT", "DEBUG"] + (["FP16", "OBEY_PRECISION_CONSTRAINTS", "INT8"]
                                                               if f.weak_typing else [])
    return enum.IntEnum("BuilderFlag", {n: i for i, n in enumerate(names)})


def _creation_flags(version: str, f: _Features, strongly_typed_flag: bool):
    members = {}
    if not f.rtx and int(version.split(".")[0]) < 11:
        members["EXPLICIT_BATCH"] = 0
    if strongly_typed_flag and (f.rtx or int(version.split(".")[0]) >= 9):
        members["STRONGLY_TYPED"] = 1
    return enum.IntEnum("NetworkDefinitionCreationFlag", members or {"_NONE": 31})


class _Layer:
    def __init__(self, name: str, type_: LayerType, num_outputs: int = 1):
        self.name, self.type, self.num_outputs = name, type_, num_outputs
        self.precision = None            # set: a precision constraint (weak typing)
        self.output_types: dict[int, Any] = {}

    def set_output_type(self, index, dtype) -> None:
        self.output_types[int(index)] = dtype


class _NetworkTensor:
    def __init__(self, name: str, dtype: DataType, shape: tuple):
        self.name, self.dtype, self.shape = name, dtype, shape


class INetworkDefinition:
    """The network a parser fills: layers, inputs and outputs (names, types settable)."""

    def __init__(self, trt: FakeTensorRT, flags: int):
        self._trt, self.flags = trt, flags
        typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        # TensorRT 11 builds strongly typed networks only, flag or not
        self.strongly_typed = (not trt._features.weak_typing) or (typed is not None and bool(flags >> int(typed) & 1))
        self._layers: list[_Layer] = []
        self._inputs: list[_NetworkTensor] = []
        self._outputs: list[_NetworkTensor] = []
        self.onnx_path: str | None = None

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def get_layer(self, index) -> _Layer:
        return self._layers[int(index)]

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index) -> _NetworkTensor:
        return self._inputs[int(index)]

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index) -> _NetworkTensor:
        return self._outputs[int(index)]


class OnnxParser:
    """trt.OnnxParser(network, logger): refuses the nodes the modelled version has no importer for
    (other domains, Attention before 10.15 or with more than one output, TensorScatter before 10.15)."""

    _trt: FakeTensorRT

    def __init__(self, network: INetworkDefinition, logger):
        self.network, self.logger, self._errors = network, logger, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index) -> str:
        return self._errors[int(index)]

    def parse_from_file(self, path) -> bool:
        import onnx

        f = type(self)._trt._features
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - the parser reports, it does not raise
            self._errors.append(f"ModelImporter: failed to parse the ONNX file: {e}")
            return False
        net = self.network
        for i, node in enumerate(model.graph.node):
            op = node.op_type
            where = f"In node {i} with name: {node.name} and operator: {op}"
            if node.domain not in ("", "ai.onnx") or (op == "TensorScatter" and not f.kv_cache) or \
                    (op == "Attention" and not f.attention):
                self._errors.append(f"{where} (checkFallbackPluginImporter): INVALID_NODE: creator && "
                                    f"\"Plugin not found, are the plugin name, version, and namespace correct?\" "
                                    f"(No importer registered for op: {op})")
                return False
            if op == "Attention":
                if len([o for o in node.output if o]) != 1:
                    self._errors.append(f"{where} (importAttention): INVALID_NODE: Assertion failed: "
                                        f"node.output().size() == 1: TensorRT only supports Attention nodes with "
                                        f"one output.")
                    return False
                net._layers += [_Layer(f"{node.name}_input", LayerType.ATTENTION_INPUT),
                                _Layer(f"{node.name}_output", LayerType.ATTENTION_OUTPUT)]
                continue
            net._layers.append(_Layer(node.name, _LAYER_OF.get(op, LayerType.ELEMENTWISE), len(node.output)))
        elem = {1: DataType.FLOAT, 10: DataType.HALF, 7: DataType.INT64, 6: DataType.INT32}
        for src, dst in ((model.graph.input, net._inputs), (model.graph.output, net._outputs)):
            for vi in src:
                t = vi.type.tensor_type
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
                dst.append(_NetworkTensor(vi.name, elem.get(t.elem_type, DataType.FLOAT), dims))
        net.onnx_path = str(Path(path).resolve())
        return True


class IOptimizationProfile:
    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, min, opt, max) -> None:  # noqa: A002 - TensorRT's parameter names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class IBuilderConfig:
    def __init__(self, trt: FakeTensorRT):
        self._trt = trt
        self.flags: set[str] = {"TF32"}          # TensorRT's default: TF32 allowed
        self.profiles: list[IOptimizationProfile] = []
        self.memory_pools: dict[int, int] = {}
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        self.progress_monitor = None

    def set_flag(self, flag) -> None:
        self.flags.add(self._trt.BuilderFlag(int(flag)).name)

    def clear_flag(self, flag) -> None:
        self.flags.discard(self._trt.BuilderFlag(int(flag)).name)

    def get_flag(self, flag) -> bool:
        return self._trt.BuilderFlag(int(flag)).name in self.flags

    def set_memory_pool_limit(self, pool, size) -> None:
        self.memory_pools[int(pool)] = int(size)

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    """trt.Builder(logger): networks, configs, profiles, and fake plans of the parsed ONNX graph."""

    _trt: FakeTensorRT

    def __init__(self, logger):
        if not isinstance(logger, Logger):
            raise TypeError("Builder(): incompatible constructor arguments (expected a tensorrt.ILogger)")
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        known = sum(1 << int(m) for m in type(self)._trt.NetworkDefinitionCreationFlag)
        if int(flags) & ~known:
            raise TypeError(f"create_network(): unknown flag bits {int(flags) & ~known:#x}")
        return INetworkDefinition(type(self)._trt, int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(type(self)._trt)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        trt = type(self)._trt
        if network.onnx_path is None:
            self.logger.log(Logger.ERROR, "build_serialized_network: empty network")
            return None
        if network.strongly_typed and {"FP16", "OBEY_PRECISION_CONSTRAINTS"} & config.flags:
            self.logger.log(Logger.ERROR, "precision flags are not allowed on a strongly typed network")
            return None
        if len(config.profiles) != 1:
            self.logger.log(Logger.ERROR, f"the fake builds one optimization profile, got {len(config.profiles)}")
            return None
        pinned = [layer.name for layer in network._layers if layer.precision is not None]
        trt.log.append(("build", {"onnx": network.onnx_path, "strongly_typed": network.strongly_typed,
                                  "flags": sorted(config.flags), "pinned_fp32": pinned,
                                  "io_types": {t.name: t.dtype.name for t in network._inputs + network._outputs},
                                  "layer_types": [layer.type.name for layer in network._layers]}))
        with_dynamic = {n: s for n, s in config.profiles[0].shapes.items()}
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:   # write_fake_engine checks the profile like a build would
            try:
                path = write_fake_engine(Path(tmp) / "plan", network.onnx_path, with_dynamic,
                                         version=trt.__version__, flavour=trt.__name__,
                                         version_compatible="VERSION_COMPATIBLE" in config.flags)
            except ValueError as e:
                self.logger.log(Logger.ERROR, f"build_serialized_network: {e}")
                return None
            return path.read_bytes()

"""`FakeCudart`: a strict, CPU-only stand-in for cuda-python's runtime module (`cuda.bindings.runtime`).

Use an instance exactly like the module: every CUDA function is a plain callable with the real
parameter names, returns `(err, *values)`, and the enums/constants carry the real values. The
"device" is host memory, so tests can look at it with numpy.

What is modelled, on purpose strictly (the point is to catch ordering and bookkeeping bugs):

Memory
    cudaMalloc / cudaMallocHost return real host addresses of zero-filled, 256-byte aligned ctypes
    buffers, tracked as live "device" or "pinned" allocations. Every copy checks its device side(s)
    lie inside ONE live device allocation and its host side does not touch device memory (a pinned
    host range must lie inside one live pinned allocation; other host pointers, e.g. numpy data,
    cannot be checked further). Violations return cudaErrorInvalidValue at the call and are recorded
    in `errors`. Freed buffers are kept alive in a graveyard, so their addresses are never reused and
    a use after free is always recognised (and never crashes the test process).
    cudaFree does NOT synchronize by default (the CUDA docs say it "may"): work still pending on
    freed memory faults with cudaErrorIllegalAddress when it runs. `free_synchronizes=True` flushes
    every stream first instead.

Streams (lazy queues)
    Nothing enqueued runs until something forces it: cudaStreamSynchronize (that stream and what it
    depends on), cudaDeviceSynchronize (all streams, newest stream first), a synchronous cudaMemcpy
    H2D/D2H/H2H (runs on the legacy stream, after flushing it), cudaEventSynchronize, or a flush of a
    stream that waits on an event. cudaMemcpy D2D only enqueues on the legacy stream (CUDA may return
    before it completes). A flush of stream A runs only A's queue and the work A depends on, never an
    unrelated stream B: a missing cross-stream dependency shows up as stale data.
    Legacy default stream (handles 0, cudaStreamLegacy=1 and, simplified, cudaStreamPerThread=2):
    an op on it first depends on everything already enqueued on blocking streams (flags 0); an op on
    a blocking stream first depends on everything already enqueued on the legacy stream.
    cudaStreamNonBlocking streams have no implicit dependency.
    Async copies from/to pageable host memory stay lazy too (CUDA "might" make them synchronous);
    they are listed in `warnings`.

Events
    cudaEventRecord marks the current end of the stream's queue (through a no-op marker op, so a
    record on the legacy stream also covers the blocking streams). cudaStreamWaitEvent enqueues a
    no-op that, when it runs, first flushes the event's stream up to the mark of the record that was
    current at the time of the wait call. Waiting on a never-recorded event is a no-op.
    Not modelled: cross-stream fork/join inside a capture. cudaEventRecord on a capturing stream
    returns cudaErrorStreamCaptureUnsupported, and cudaStreamWaitEvent on a capturing stream for an
    event recorded outside the capture returns cudaErrorStreamCaptureIsolation; both invalidate it.

Capture and graphs
    cudaStreamBeginCapture diverts what is enqueued on that stream into a capture list (the legacy
    stream cannot capture). A synchronous call that CUDA forbids while a Global/ThreadLocal capture is
    active (cudaMemcpy, cudaMalloc, cudaMallocHost, cudaFree, cudaFreeHost), cudaStreamSynchronize of a
    capturing stream (any mode) and cudaDeviceSynchronize (any mode) return
    cudaErrorStreamCaptureUnsupported and invalidate the capture(s); cudaStreamEndCapture then
    returns (cudaErrorStreamCaptureInvalidated, None). Enqueuing on the legacy stream while a blocking
    stream captures returns cudaErrorStreamCaptureImplicit. One thread is modelled: ThreadLocal behaves
    like Global.
    cudaGraphLaunch enqueues copies of the captured ops, which keep their capture-time arguments;
    a launch is ordered after the previous launch of the same exec. Ops may carry a `replay_check`
    that runs before each replay (the fake TensorRT uses it to refuse stale graphs).
    Destroyed or unknown handles return cudaErrorInvalidResourceHandle.

Faults
    An op that fails while it runs (FakeCudaError, e.g. a copy into freed memory) makes the error
    sticky, as cudaErrorIllegalAddress is in CUDA: the call that forced execution returns it and so
    does every later call (except cudaGetErrorString and cudaRuntimeGetVersion) until
    `clear_sticky_error()`.

Pinned memory is never device memory here (on a real GPU, unified addressing makes it
device-accessible): binding or copying it as device memory is reported as a bug.

Test helpers (not CUDA API): `calls` [(name, args)], `errors` [(name, err, why)], `warnings`,
`bytes_moved` {"h2d", "d2h", "d2d", "h2h"}, `reset_counters()`, `fail_next(name, err, times=1)`,
`sticky_error`, `clear_sticky_error()`, `enqueue(stream, fn, label, replay_check=None)`,
`view(ptr, shape, dtype)`, `read`, `write(ptr, array)`, `alloc_device_array(array)`,
`allocation_at(ptr)`, `live_allocations(kind)`, `stream_is_capturing(stream)`,
`invalidate_capture(stream, reason)`, and for other fakes `allocate_internal`, `free_internal`,
`check_device_range` (raises FakeCudaError(cudaErrorIllegalAddress)).
"""

from __future__ import annotations

import ctypes
import enum
import functools
import inspect
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = [
    "Allocation",
    "FakeCudaError",
    "FakeCudart",
    "cudaError_t",
    "cudaMemcpyKind",
    "cudaStreamCaptureMode",
    "cudaStreamCaptureStatus",
]


# -- enums and constants (values and messages of cuda-python 13.4) -----------------------------------

class cudaError_t(enum.IntEnum):
    """The error codes the fake can return. Like the real enum, an int subclass: `err == 0` and
    `int(err)` work, and a member is truthy exactly when it is an error."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidPitchValue = 12
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorNotReady = 600
    cudaErrorIllegalAddress = 700
    cudaErrorLaunchFailure = 719
    cudaErrorNotSupported = 801
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureMerge = 902
    cudaErrorStreamCaptureUnmatched = 903
    cudaErrorStreamCaptureUnjoined = 904
    cudaErrorStreamCaptureIsolation = 905
    cudaErrorStreamCaptureImplicit = 906
    cudaErrorCapturedEvent = 907
    cudaErrorStreamCaptureWrongThread = 908
    cudaErrorUnknown = 999


ERROR_STRINGS = {
    0: b"no error", 1: b"invalid argument", 2: b"out of memory", 12: b"invalid pitch argument",
    17: b"invalid device pointer", 21: b"invalid copy direction for memcpy",
    35: b"CUDA driver version is insufficient for CUDA runtime version",
    100: b"no CUDA-capable device is detected", 101: b"invalid device ordinal",
    400: b"invalid resource handle", 401: b"the operation cannot be performed in the present state",
    600: b"device not ready", 700: b"an illegal memory access was encountered",
    719: b"unspecified launch failure", 801: b"operation not supported",
    900: b"operation not permitted when stream is capturing",
    901: b"operation failed due to a previous error during capture",
    902: b"operation would result in a merge of separate capture sequences",
    903: b"capture was not ended in the same stream as it began",
    904: b"capturing stream has unjoined work",
    905: b"dependency created on uncaptured work in another stream",
    906: b"operation would make the legacy stream depend on a capturing blocking stream",
    907: b"operation not permitted on an event last recorded in a capturing stream",
    908: b"attempt to terminate a thread-local capture sequence from another thread",
    999: b"unknown error",
}


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(enum.IntEnum):
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


E = cudaError_t
_K = cudaMemcpyKind
_LEGACY_HANDLES = (0, 1, 2)   # NULL stream, cudaStreamLegacy, cudaStreamPerThread (treated as legacy)
_ALIGN = 256                  # cudaMalloc's alignment; TensorRT asks for 256-byte aligned memory


class FakeCudaError(Exception):
    """A failure while an enqueued op runs (the fake's "kernel fault"). It becomes a sticky error."""

    def __init__(self, err: cudaError_t, message: str):
        super().__init__(f"{err.name}: {message}")
        self.err, self.message = cudaError_t(err), message


class _ApiError(Exception):
    """Internal: abort an API call and return `err` (recorded with `message`)."""

    def __init__(self, err: cudaError_t, message: str):
        super().__init__(message)
        self.err, self.message = cudaError_t(err), message


# -- handles ------------------------------------------------------------------------------------------

class _Handle:
    """Opaque handle like cuda-python's cudaStream_t & co: `int()` gives the handle value."""

    def __init__(self, init_value: int = 0):
        self._value = int(init_value)

    def __int__(self) -> int:
        return self._value

    __index__ = __int__

    def getPtr(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Handle) and int(other) == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self._value:x}>"


class cudaStream_t(_Handle):
    pass


class cudaEvent_t(_Handle):
    pass


class cudaGraph_t(_Handle):
    pass


class cudaGraphExec_t(_Handle):
    pass


class cudaGraphNode_t(_Handle):
    pass


class cudaDeviceProp:
    """The fields of cudaDeviceProp that callers read; `name` is bytes, like cuda-python's."""

    def __init__(self, name: bytes = b"", major: int = 0, minor: int = 0, totalGlobalMem: int = 0,
                 multiProcessorCount: int = 0):
        self.name, self.major, self.minor = name, major, minor
        self.totalGlobalMem, self.multiProcessorCount = totalGlobalMem, multiProcessorCount

    def __repr__(self) -> str:
        return f"cudaDeviceProp(name={self.name!r}, cc={self.major}.{self.minor}, mem={self.totalGlobalMem})"


# -- internal state -----------------------------------------------------------------------------------

@dataclass
class Allocation:
    """One cudaMalloc / cudaMallocHost result. Freed allocations stay here (graveyard) with live=False."""

    ptr: int
    size: int
    kind: str              # "device" or "pinned"
    buffer: Any = field(repr=False)
    live: bool = True
    label: str = ""

    @property
    def end(self) -> int:
        return self.ptr + self.size

    def overlaps(self, ptr: int, n: int) -> bool:
        return ptr < self.end and self.ptr < ptr + n


@dataclass
class _Op:
    """One unit of stream work. `fn` runs it; `deps` are (stream, mark) pairs that must be flushed
    first; `replay_check`, when this op is a graph replay, runs before `fn`."""

    label: str
    fn: Callable[[], None]
    replay_check: Callable[[], None] | None = None
    replay: bool = False
    deps: list = field(default_factory=list)

    def replayed(self) -> _Op:
        return _Op(self.label, self.fn, self.replay_check, True)


@dataclass
class _Capture:
    mode: cudaStreamCaptureMode
    ops: list = field(default_factory=list)
    invalidated: str | None = None   # why, once invalidated


class _Stream:
    def __init__(self, handle: int, flags: int, legacy: bool = False):
        self.handle, self.flags, self.legacy = handle, flags, legacy
        self.blocking = legacy or flags == 0
        self.queue: deque = deque()
        self.enqueued = 0          # ops ever enqueued (a mark is a value of this counter)
        self.done = 0              # ops executed
        self.capture: _Capture | None = None
        self.destroyed = False

    def __repr__(self) -> str:
        return "legacy stream" if self.legacy else f"stream 0x{self.handle:x}"


@dataclass
class _Event:
    handle: int
    flags: int
    mark: tuple | None = None    # (stream, count) of the latest record
    destroyed: bool = False


@dataclass
class _Graph:
    handle: int
    ops: tuple
    destroyed: bool = False


@dataclass
class _GraphExec:
    handle: int
    ops: tuple
    destroyed: bool = False
    last_launch: tuple | None = None   # (stream, mark) after the previous launch


def _api(n_out: int = 0):
    """Mark a method as a CUDA API function returning `n_out` values after the error."""
    def mark(fn):
        fn._n_out = n_out
        return fn
    return mark


def _as_int(x, what: str) -> int:
    """cuda-python's conversion of a handle or pointer argument: None is 0, ints and objects with
    `__int__`/`__index__` (handles, numpy integers) are taken; anything else is a TypeError."""
    if x is None:
        return 0
    if isinstance(x, bool):
        raise TypeError(f"{what}: an integer is required")
    if isinstance(x, int):
        return x
    if isinstance(x, ctypes.c_void_p):
        return x.value or 0
    if isinstance(x, np.ndarray):          # buffer protocol objects are passed by address
        return int(x.__array_interface__["data"][0])
    if hasattr(x, "__index__") or hasattr(x, "__int__"):
        return int(x)
    raise TypeError(f"{what}: an integer is required (got {type(x).__name__})")


def _size(x, what: str) -> int:
    n = _as_int(x, what)
    if n < 0:
        raise OverflowError(f"{what}: can't convert negative value to size_t")
    return n


# -- the fake module ----------------------------------------------------------------------------------

class FakeCudart:
    """An object usable like `cuda.bindings.runtime` (api="13", default) or cuda-python 11.8's
    `cuda.cudart` (api="11.8": only cudaGraphInstantiate differs: (graph, pLogBuffer, bufferSize)
    returning (err, graphExec, errorNode)). See the module docstring for the semantics.

    Device identity is configurable: `name`, `major`, `minor`, `total_memory`, `runtime_version`.
    """

    # Enums and constants, as on the real module.
    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamCaptureStatus = cudaStreamCaptureStatus
    cudaStream_t, cudaEvent_t, cudaGraph_t = cudaStream_t, cudaEvent_t, cudaGraph_t
    cudaGraphExec_t, cudaGraphNode_t, cudaDeviceProp = cudaGraphExec_t, cudaGraphNode_t, cudaDeviceProp
    cudaStreamDefault, cudaStreamNonBlocking = 0, 1
    cudaStreamLegacy, cudaStreamPerThread = 1, 2
    cudaEventDefault, cudaEventBlockingSync, cudaEventDisableTiming = 0, 1, 2
    cudaEventWaitDefault, cudaEventWaitExternal = 0, 1
    cudaEventRecordDefault = 0

    # Calls that still answer after a sticky fault (they do in CUDA too).
    _NOT_STICKY = frozenset({"cudaGetErrorString", "cudaRuntimeGetVersion"})

    def __init__(self, api: str = "13", *, name: str = "Fake H100", major: int = 9, minor: int = 0,
                 total_memory: int = 80 << 30, runtime_version: int | None = None,
                 free_synchronizes: bool = False, malloc_fill: int | None = None):
        if api not in ("13", "12", "11.8"):
            raise ValueError(f"api must be '13', '12' or '11.8', not {api!r}")
        self.api = api
        self.__name__ = "cuda.bindings.runtime" if api != "11.8" else "cuda.cudart"
        self.props = cudaDeviceProp(name.encode(), major, minor, int(total_memory), 132)
        self.runtime_version = runtime_version or {"13": 13000, "12": 12090, "11.8": 11080}[api]
        self.free_synchronizes = free_synchronizes
        # cudaMalloc's memory is NOT zeroed on a GPU: malloc_fill=0xFF gives every new device byte 0xFF
        # (NaN as float16/float32), so code that reads memory it never wrote or zeroed shows it
        self.malloc_fill = malloc_fill
        # Records for assertions.
        self.calls: list[tuple[str, tuple]] = []
        self.errors: list[tuple[str, cudaError_t, str]] = []    # (function, error, why)
        self.warnings: list[str] = []
        self.bytes_moved = {"h2d": 0, "d2h": 0, "d2d": 0, "h2h": 0}
        self.sticky_error: cudaError_t | None = None
        # State.
        self._allocs: list[Allocation] = []
        self._next_handle = 0x1000
        self._legacy = _Stream(0, 0, legacy=True)
        self._streams: dict[int, _Stream] = {}            # live streams by handle
        self._all_streams: list[_Stream] = [self._legacy]  # including destroyed ones with pending work
        self._events: dict[int, _Event] = {}
        self._graphs: dict[int, _Graph] = {}
        self._execs: dict[int, _GraphExec] = {}
        self._faults: dict[str, list] = {}
        self._install_api()

    # -- API plumbing ---------------------------------------------------------------------------------
    def _install_api(self) -> None:
        """Bind every @_api method under its CUDA name, wrapped to record the call, honour
        `fail_next` and the sticky error, and turn _ApiError into an error return."""
        names = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr)
            if callable(fn) and hasattr(fn, "_n_out"):
                names[attr] = attr
        names.pop("_cudaGraphInstantiate_13", None)
        names.pop("_cudaGraphInstantiate_118", None)
        names["cudaGraphInstantiate"] = "_cudaGraphInstantiate_118" if self.api == "11.8" else "_cudaGraphInstantiate_13"
        for public, impl in names.items():
            setattr(self, public, self._wrap(public, getattr(self, impl)))

    def _wrap(self, name: str, method):
        sig = inspect.signature(method)
        n_out = method._n_out

        @functools.wraps(method)
        def call(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)     # a TypeError on a wrong call, like the real binding
            self.calls.append((name, tuple(bound.arguments.values())))
            failing = self._faults.get(name)
            if failing:
                err = failing.pop(0)
                self.errors.append((name, err, "injected by fail_next"))
                return (err,) + (None,) * n_out
            if self.sticky_error is not None and name not in self._NOT_STICKY:
                return (self.sticky_error,) + (None,) * n_out
            try:
                out = method(*bound.args, **bound.kwargs)
            except _ApiError as e:
                self.errors.append((name, e.err, e.message))
                return (e.err,) + (None,) * n_out
            except FakeCudaError as e:          # an op failed while this call forced execution
                self._fault(name, e)
                return (e.err,) + (None,) * n_out
            return (E.cudaSuccess,) + (out if isinstance(out, tuple) else ((out,) if n_out else ()))

        call.__name__ = call.__qualname__ = name
        return call

    def _fault(self, name: str, e: FakeCudaError) -> None:
        self.sticky_error = e.err
        self.errors.append((name, e.err, e.message))

    def _handle(self) -> int:
        self._next_handle += 0x10
        return self._next_handle

    # -- test helpers ---------------------------------------------------------------------------------
    def fail_next(self, name: str, err, times: int = 1) -> None:
        """The next `times` calls of CUDA function `name` return `err` (and do nothing else)."""
        if not hasattr(self, name):
            raise AttributeError(f"no CUDA function {name} on this fake")
        self._faults.setdefault(name, []).extend([cudaError_t(err)] * times)

    def reset_counters(self) -> None:
        """Forget recorded calls, errors, warnings and byte counts (state stays)."""
        self.calls.clear()
        self.errors.clear()
        self.warnings.clear()
        self.bytes_moved = dict.fromkeys(self.bytes_moved, 0)

    def clear_sticky_error(self) -> None:
        """Forget a sticky fault (a real process would have to exit) and drop the work still queued."""
        self.sticky_error = None
        for s in self._all_streams:
            s.done = s.enqueued
            s.queue.clear()

    def live_allocations(self, kind: str | None = None) -> list[Allocation]:
        return [a for a in self._allocs if a.live and (kind is None or a.kind == kind)]

    def allocation_at(self, ptr: int) -> Allocation | None:
        """The allocation (live or freed) whose range holds `ptr`, if any."""
        for a in self._allocs:
            if a.ptr <= ptr < a.end:
                return a
        return None

    def view(self, ptr: int, shape, dtype=np.float32) -> np.ndarray:
        """A numpy view of live device or pinned memory (no CUDA semantics: what is there now)."""
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        try:
            self._range(int(ptr), n, "view")
        except _ApiError as e:
            raise ValueError(e.message) from None
        return np.frombuffer((ctypes.c_ubyte * n).from_address(int(ptr)), dtype).reshape(shape)

    def read(self, ptr: int, shape, dtype=np.float32) -> np.ndarray:
        """A copy of what `view` shows."""
        return self.view(ptr, shape, dtype).copy()

    def write(self, ptr: int, array: np.ndarray) -> None:
        """Put `array`'s bytes at `ptr` now (a helper, not a CUDA copy: not counted, no ordering)."""
        array = np.ascontiguousarray(array)
        if array.nbytes:
            self.view(ptr, (array.nbytes,), np.uint8)[:] = array.view(np.uint8).ravel()

    def alloc_device_array(self, array: np.ndarray, label: str = "") -> int:
        """A new device allocation holding `array`'s bytes; returns its pointer."""
        array = np.ascontiguousarray(array)
        ptr = self._allocate(array.nbytes, "device", label).ptr
        self.write(ptr, array)
        return ptr

    def allocate_internal(self, size: int, kind: str = "device", label: str = "") -> int:
        """Allocate like cudaMalloc without recording a call (for other fakes, e.g. TensorRT scratch)."""
        return self._allocate(size, kind, label).ptr

    def free_internal(self, ptr: int) -> None:
        """Free an `allocate_internal` allocation (no call recorded, no synchronization)."""
        a = self.allocation_at(ptr)
        if a is not None and a.ptr == ptr:
            a.live = False

    def check_device_range(self, ptr: int, n: int, what: str) -> Allocation:
        """The live device allocation holding [ptr, ptr+n); raises FakeCudaError(cudaErrorIllegalAddress)
        otherwise. For ops (kernels) checking their operands when they run."""
        try:
            return self._device(ptr, n, what)
        except _ApiError as e:
            raise FakeCudaError(E.cudaErrorIllegalAddress, e.message) from None

    def stream_is_capturing(self, stream) -> bool:
        s = self._streams.get(_as_int(stream, "stream"))
        return bool(s and s.capture is not None)

    def invalidate_capture(self, stream, reason: str) -> None:
        """Invalidate the capture on `stream` (for other fakes doing something uncapturable)."""
        s = self._streams.get(_as_int(stream, "stream"))
        if s is not None and s.capture is not None and s.capture.invalidated is None:
            s.capture.invalidated = reason

    def enqueue(self, stream, fn: Callable[[], None], label: str,
                replay_check: Callable[[], None] | None = None) -> cudaError_t:
        """Put `fn` (a "kernel": any callable, run with no argument) on `stream`'s queue, or into its
        capture. `replay_check` runs before each graph replay of it and may raise FakeCudaError.
        Returns the cudaError_t the enqueue would give (sticky fault, bad stream, illegal capture)."""
        handle = _as_int(stream, "stream")
        self.calls.append(("enqueue", (handle, label)))
        if self.sticky_error is not None:
            return self.sticky_error
        try:
            self._enqueue(self._stream(handle), _Op(label, fn, replay_check))
        except _ApiError as e:
            self.errors.append(("enqueue", e.err, e.message))
            return e.err
        return E.cudaSuccess

    # -- memory internals -----------------------------------------------------------------------------
    def _allocate(self, size: int, kind: str, label: str = "") -> Allocation:
        buf = (ctypes.c_ubyte * (size + _ALIGN))()        # zero-filled
        base = ctypes.addressof(buf)
        ptr = (base + _ALIGN - 1) // _ALIGN * _ALIGN
        a = Allocation(ptr, size, kind, buf, True, label)
        self._allocs.append(a)
        return a

    def _range(self, ptr: int, n: int, what: str) -> Allocation | None:
        """The live allocation (device or pinned) holding [ptr, ptr+n), or _ApiError."""
        a = self.allocation_at(ptr)
        if a is None:
            raise _ApiError(E.cudaErrorInvalidValue, f"{what}: 0x{ptr:x} is not in any allocation of this fake")
        if not a.live:
            raise _ApiError(E.cudaErrorInvalidValue, f"{what}: 0x{ptr:x} is in freed {a.kind} memory (use after free)")
        if ptr + n > a.end:
            raise _ApiError(E.cudaErrorInvalidValue, f"{what}: [0x{ptr:x}, +{n}) runs {ptr + n - a.end} bytes past "
                                                     f"the end of its {a.size}-byte {a.kind} allocation")
        return a

    def _device(self, ptr: int, n: int, what: str) -> Allocation:
        """Check that [ptr, ptr+n) lies inside one live device allocation."""
        if ptr == 0:
            raise _ApiError(E.cudaErrorInvalidValue, f"{what}: null device pointer")
        a = self._range(ptr, n, what)
        if a.kind != "device":
            raise _ApiError(E.cudaErrorInvalidValue, f"{what}: 0x{ptr:x} is pinned host memory, not device memory")
        return a

    def _host(self, ptr: int, n: int, what: str) -> Allocation | None:
        """Check a host range: not null, no device memory; pinned must lie inside one live pinned
        allocation. Returns the pinned allocation, or None for other (pageable) host memory."""
        if ptr == 0:
            raise _ApiError(E.cudaErrorInvalidValue, f"{what}: null host pointer")
        for a in self._allocs:
            if not a.overlaps(ptr, n):
                continue
            if a.kind == "device":
                raise _ApiError(E.cudaErrorInvalidValue, f"{what}: host range [0x{ptr:x}, +{n}) lies in device memory "
                                                         f"(wrong cudaMemcpyKind?)")
            return self._range(ptr, n, what)
        return None

    def _is_device(self, ptr: int) -> bool:
        a = self.allocation_at(ptr)
        return a is not None and a.kind == "device"

    def _copy_op(self, dst: int, src: int, count: int, kind: cudaMemcpyKind, label: str,
                 rows: int = 1, dpitch: int = 0, spitch: int = 0) -> _Op:
        """Validate a (possibly 2D) copy now and build the op that re-validates and performs it later."""
        key = {_K.cudaMemcpyHostToDevice: "h2d", _K.cudaMemcpyDeviceToHost: "d2h",
               _K.cudaMemcpyDeviceToDevice: "d2d", _K.cudaMemcpyHostToHost: "h2h"}[kind]
        dspan = dpitch * (rows - 1) + count if rows > 1 else count
        sspan = spitch * (rows - 1) + count if rows > 1 else count
        dst_dev, src_dev = key in ("h2d", "d2d"), key in ("d2h", "d2d")

        def check(mk_error):
            try:
                pinned = []
                for ptr, span, dev, side in ((dst, dspan, dst_dev, "destination"), (src, sspan, src_dev, "source")):
                    if dev:
                        self._device(ptr, span, f"{label} {side}")
                    else:
                        pinned.append(self._host(ptr, span, f"{label} {side}"))
                return pinned
            except _ApiError as e:
                raise mk_error(e.err, e.message) from None

        pinned = check(_ApiError)
        if key in ("h2d", "d2h") and pinned == [None] and "Async" in label:
            self.warnings.append(f"{label}: pageable host memory (CUDA may make this copy synchronous; "
                                 f"the fake keeps it lazy)")

        def run():
            # Memory may have been freed since the call: the GPU would fault.
            check(lambda err, msg: FakeCudaError(E.cudaErrorIllegalAddress, msg + " (when the copy ran)"))
            for r in range(rows):
                ctypes.memmove(dst + r * dpitch, src + r * spitch, count)
            self.bytes_moved[key] += count * rows

        return _Op(f"{label} {key} {count * rows}B", run)

    def _kind(self, kind, dst: int, src: int) -> cudaMemcpyKind:
        try:
            k = cudaMemcpyKind(int(kind))
        except (ValueError, TypeError):
            raise _ApiError(E.cudaErrorInvalidMemcpyDirection, f"bad cudaMemcpyKind {kind!r}") from None
        if k == _K.cudaMemcpyDefault:   # inferred from the pointers, as with unified addressing
            d, s = self._is_device(dst), self._is_device(src)
            k = {(True, False): _K.cudaMemcpyHostToDevice, (False, True): _K.cudaMemcpyDeviceToHost,
                 (True, True): _K.cudaMemcpyDeviceToDevice, (False, False): _K.cudaMemcpyHostToHost}[(d, s)]
        return k

    # -- stream internals -----------------------------------------------------------------------------
    def _stream(self, handle: int) -> _Stream:
        if handle in _LEGACY_HANDLES:
            return self._legacy
        s = self._streams.get(handle)
        if s is None:
            raise _ApiError(E.cudaErrorInvalidResourceHandle, f"0x{handle:x} is not a live stream of this fake")
        return s

    def _capturing(self) -> list[_Stream]:
        return [s for s in self._streams.values() if s.capture is not None]

    def _forbid_during_capture(self, what: str, relaxed_ok: bool = True) -> None:
        """A synchronous call CUDA refuses while a (Global/ThreadLocal) capture is active: invalidate
        those captures and fail the call."""
        hit = [s for s in self._capturing()
               if not (relaxed_ok and s.capture.mode == cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed)]
        for s in hit:
            if s.capture.invalidated is None:
                s.capture.invalidated = f"{what} while {s!r} was capturing"
        if hit:
            raise _ApiError(E.cudaErrorStreamCaptureUnsupported, f"{what} is not permitted while {hit[0]!r} captures")

    def _enqueue(self, s: _Stream, op: _Op) -> None:
        if s.capture is not None:
            s.capture.ops.append(op)
            return
        if s.legacy:
            blocking_capture = [b for b in self._capturing() if b.blocking]
            if blocking_capture:
                b = blocking_capture[0]
                if b.capture.invalidated is None:
                    b.capture.invalidated = "legacy-stream work while a blocking stream captured"
                raise _ApiError(E.cudaErrorStreamCaptureImplicit, f"{op.label}: legacy stream used while blocking "
                                                                  f"{b!r} captures")
            # Implicit synchronization: legacy work waits for earlier work of every blocking stream.
            op.deps += [(b, b.enqueued) for b in self._all_streams if b.blocking and not b.legacy and b.enqueued]
        elif s.blocking and self._legacy.enqueued:
            op.deps.append((self._legacy, self._legacy.enqueued))
        s.queue.append(op)
        s.enqueued += 1

    def _flush(self, s: _Stream, upto: int | None = None) -> None:
        """Run `s`'s ops up to mark `upto` (all by default), each after the work it depends on."""
        target = s.enqueued if upto is None else upto
        while s.done < target:
            op = s.queue[0]
            for dep, mark in op.deps:       # marks always point at earlier work: no cycles
                self._flush(dep, mark)
            if s.done >= target or not s.queue or s.queue[0] is not op:
                continue                     # a dependency flush already ran it
            s.queue.popleft()
            s.done += 1
            if op.replay and op.replay_check is not None:
                op.replay_check()
            op.fn()

    def _flush_all(self) -> None:
        # Newest stream first: an unordered consumer created after its producer then runs first.
        for s in reversed(self._all_streams):
            self._flush(s)

    def _event(self, handle: int) -> _Event:
        ev = self._events.get(handle)
        if ev is None:
            raise _ApiError(E.cudaErrorInvalidResourceHandle, f"0x{handle:x} is not a live event of this fake")
        return ev

    # -- memory API -----------------------------------------------------------------------------------
    @_api(1)
    def cudaMalloc(self, size):
        size = _size(size, "size")
        self._forbid_during_capture("cudaMalloc")
        if size == 0:
            return 0
        used = sum(a.size for a in self.live_allocations("device"))
        if used + size > self.props.totalGlobalMem:
            raise _ApiError(E.cudaErrorMemoryAllocation, f"cudaMalloc({size}): {self.props.totalGlobalMem - used} free")
        a = self._allocate(size, "device")
        if self.malloc_fill is not None:
            ctypes.memset(a.ptr, self.malloc_fill, size)
        return a.ptr

    @_api()
    def cudaMemset(self, devPtr, value, count):
        """Asynchronous on the legacy stream, as in CUDA: a non-blocking stream sees it only after a
        synchronization."""
        ptr, n = _as_int(devPtr, "devPtr"), _size(count, "count")
        self._forbid_during_capture("cudaMemset")
        self._device(ptr, n, "cudaMemset")
        if n:
            self._enqueue(self._legacy, _Op(f"cudaMemset {n}B", lambda: ctypes.memset(ptr, int(value) & 0xFF, n)))

    @_api()
    def cudaFree(self, devPtr):
        ptr = _as_int(devPtr, "devPtr")
        self._forbid_during_capture("cudaFree")
        if ptr == 0:
            return
        a = self.allocation_at(ptr)
        if a is None or a.ptr != ptr or a.kind != "device":
            raise _ApiError(E.cudaErrorInvalidValue, f"cudaFree(0x{ptr:x}): not a pointer cudaMalloc returned")
        if not a.live:
            raise _ApiError(E.cudaErrorInvalidValue, f"cudaFree(0x{ptr:x}): already freed")
        if self.free_synchronizes:
            self._flush_all()
        a.live = False
        return

    @_api(1)
    def cudaMallocHost(self, size):
        size = _size(size, "size")
        self._forbid_during_capture("cudaMallocHost")
        return self._allocate(max(size, 1), "pinned").ptr

    @_api()
    def cudaFreeHost(self, ptr):
        p = _as_int(ptr, "ptr")
        self._forbid_during_capture("cudaFreeHost")
        a = self.allocation_at(p)
        if a is None or a.ptr != p or a.kind != "pinned":
            raise _ApiError(E.cudaErrorInvalidValue, f"cudaFreeHost(0x{p:x}): not a pointer cudaMallocHost returned")
        if not a.live:
            raise _ApiError(E.cudaErrorInvalidValue, f"cudaFreeHost(0x{p:x}): already freed")
        if self.free_synchronizes:
            self._flush_all()
        a.live = False

    @_api(2)
    def cudaMemGetInfo(self):
        total = self.props.totalGlobalMem
        return total - sum(a.size for a in self.live_allocations("device")), total

    # -- copies ---------------------------------------------------------------------------------------
    @_api()
    def cudaMemcpy(self, dst, src, count, kind):
        d, s_, n = _as_int(dst, "dst"), _as_int(src, "src"), _size(count, "count")
        k = self._kind(kind, d, s_)
        self._forbid_during_capture("cudaMemcpy")
        if n == 0:
            return
        op = self._copy_op(d, s_, n, k, "cudaMemcpy")
        self._enqueue(self._legacy, op)
        if k != _K.cudaMemcpyDeviceToDevice:   # D2D may return before the copy completes
            self._flush(self._legacy)
        return

    @_api()
    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        d, s_, n = _as_int(dst, "dst"), _as_int(src, "src"), _size(count, "count")
        st = self._stream(_as_int(stream, "stream"))
        k = self._kind(kind, d, s_)
        if n == 0:
            return
        self._enqueue(st, self._copy_op(d, s_, n, k, "cudaMemcpyAsync"))
        return

    @_api()
    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        d, s_ = _as_int(dst, "dst"), _as_int(src, "src")
        dp, sp, w, h = (_size(v, n) for v, n in ((dpitch, "dpitch"), (spitch, "spitch"), (width, "width"),
                                                 (height, "height")))
        st = self._stream(_as_int(stream, "stream"))
        k = self._kind(kind, d, s_)
        if w and h and (w > dp or w > sp):
            raise _ApiError(E.cudaErrorInvalidPitchValue, f"cudaMemcpy2DAsync: width {w} > pitch ({dp}, {sp})")
        if w == 0 or h == 0:
            return
        self._enqueue(st, self._copy_op(d, s_, w, k, "cudaMemcpy2DAsync", rows=h, dpitch=dp, spitch=sp))
        return

    # -- streams --------------------------------------------------------------------------------------
    @_api(1)
    def cudaStreamCreate(self):
        return self._new_stream(0)

    @_api(1)
    def cudaStreamCreateWithFlags(self, flags):
        f = _as_int(flags, "flags")
        if f not in (0, 1):
            raise _ApiError(E.cudaErrorInvalidValue, f"stream flags {f}")
        return self._new_stream(f)

    def _new_stream(self, flags: int) -> cudaStream_t:
        s = _Stream(self._handle(), flags)
        self._streams[s.handle] = s
        self._all_streams.append(s)
        return cudaStream_t(s.handle)

    @_api()
    def cudaStreamDestroy(self, stream):
        h = _as_int(stream, "stream")
        if h in _LEGACY_HANDLES:
            raise _ApiError(E.cudaErrorInvalidResourceHandle, "cannot destroy the default stream")
        s = self._stream(h)
        if s.capture is not None:
            raise _ApiError(E.cudaErrorIllegalState, f"cudaStreamDestroy of capturing {s!r}")
        # Pending work still runs (CUDA releases the stream once it is done): keep it in _all_streams.
        s.destroyed = True
        del self._streams[h]

    @_api()
    def cudaStreamSynchronize(self, stream):
        s = self._stream(_as_int(stream, "stream"))
        if s.capture is not None:
            s.capture.invalidated = s.capture.invalidated or "cudaStreamSynchronize of the capturing stream"
            raise _ApiError(E.cudaErrorStreamCaptureUnsupported, f"cudaStreamSynchronize of capturing {s!r}")
        if s.legacy and any(b.blocking for b in self._capturing()):
            for b in self._capturing():
                b.capture.invalidated = b.capture.invalidated or "legacy stream synchronized during capture"
            raise _ApiError(E.cudaErrorStreamCaptureImplicit, "cudaStreamSynchronize(legacy) while a blocking "
                                                              "stream captures")
        self._flush(s)

    @_api()
    def cudaDeviceSynchronize(self):
        self._forbid_during_capture("cudaDeviceSynchronize", relaxed_ok=False)
        self._flush_all()

    @_api(1)
    def cudaStreamIsCapturing(self, stream):
        s = self._stream(_as_int(stream, "stream"))
        if s.legacy and self._capturing():
            raise _ApiError(E.cudaErrorStreamCaptureImplicit, "legacy stream queried while a stream captures")
        if s.capture is None:
            return cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
        return (cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated if s.capture.invalidated
                else cudaStreamCaptureStatus.cudaStreamCaptureStatusActive)

    # -- events ---------------------------------------------------------------------------------------
    @_api(1)
    def cudaEventCreate(self):
        return self._new_event(0)

    @_api(1)
    def cudaEventCreateWithFlags(self, flags):
        return self._new_event(_as_int(flags, "flags"))

    def _new_event(self, flags: int) -> cudaEvent_t:
        ev = _Event(self._handle(), flags)
        self._events[ev.handle] = ev
        return cudaEvent_t(ev.handle)

    @_api()
    def cudaEventDestroy(self, event):
        ev = self._event(_as_int(event, "event"))
        ev.destroyed = True
        del self._events[ev.handle]

    @_api()
    def cudaEventRecord(self, event, stream):
        ev = self._event(_as_int(event, "event"))
        s = self._stream(_as_int(stream, "stream"))
        if s.capture is not None:
            # Not modelled: an event node / fork-join inside a capture.
            s.capture.invalidated = s.capture.invalidated or "cudaEventRecord in capture (not modelled by the fake)"
            raise _ApiError(E.cudaErrorStreamCaptureUnsupported, "cudaEventRecord on a capturing stream is not "
                                                                 "supported by the fake")
        self._enqueue(s, _Op("event record", lambda: None))
        ev.mark = (s, s.enqueued)

    @_api()
    def cudaStreamWaitEvent(self, stream, event, flags):
        s = self._stream(_as_int(stream, "stream"))
        ev = self._event(_as_int(event, "event"))
        if _as_int(flags, "flags") not in (0, 1):
            raise _ApiError(E.cudaErrorInvalidValue, f"cudaStreamWaitEvent flags {flags}")
        if ev.mark is None:
            return                       # never recorded: nothing to wait for
        if s.capture is not None:
            s.capture.invalidated = s.capture.invalidated or "wait on an event recorded outside the capture"
            raise _ApiError(E.cudaErrorStreamCaptureIsolation, "capturing stream waits on uncaptured work")
        dep_stream, mark = ev.mark
        op = _Op(f"wait event 0x{ev.handle:x}", lambda: None)
        op.deps.append((dep_stream, mark))
        self._enqueue(s, op)
        return

    @_api()
    def cudaEventSynchronize(self, event):
        ev = self._event(_as_int(event, "event"))
        if ev.mark is not None:
            self._flush(*ev.mark)

    # -- capture and graphs ---------------------------------------------------------------------------
    @_api()
    def cudaStreamBeginCapture(self, stream, mode):
        s = self._stream(_as_int(stream, "stream"))
        try:
            m = cudaStreamCaptureMode(int(mode))
        except (ValueError, TypeError):
            raise _ApiError(E.cudaErrorInvalidValue, f"capture mode {mode!r}") from None
        if s.legacy:
            raise _ApiError(E.cudaErrorStreamCaptureUnsupported, "the legacy stream cannot be captured")
        if s.capture is not None:
            raise _ApiError(E.cudaErrorIllegalState, f"{s!r} is already capturing")
        s.capture = _Capture(m)

    @_api(1)
    def cudaStreamEndCapture(self, stream):
        s = self._stream(_as_int(stream, "stream"))
        cap = s.capture
        if cap is None:
            raise _ApiError(E.cudaErrorIllegalState, f"{s!r} is not capturing")
        s.capture = None
        if cap.invalidated:
            raise _ApiError(E.cudaErrorStreamCaptureInvalidated, f"capture invalidated: {cap.invalidated}")
        g = _Graph(self._handle(), tuple(cap.ops))
        self._graphs[g.handle] = g
        return cudaGraph_t(g.handle)

    def _instantiate(self, graph) -> cudaGraphExec_t:
        g = self._graphs.get(_as_int(graph, "graph"))
        if g is None:
            raise _ApiError(E.cudaErrorInvalidResourceHandle, f"{graph!r} is not a live graph")
        x = _GraphExec(self._handle(), g.ops)
        self._execs[x.handle] = x
        return cudaGraphExec_t(x.handle)

    @_api(1)
    def _cudaGraphInstantiate_13(self, graph, flags):
        _as_int(flags, "flags")
        return self._instantiate(graph)

    @_api(2)
    def _cudaGraphInstantiate_118(self, graph, pLogBuffer, bufferSize):
        # cuda-python 11.8: returns (err, pGraphExec, pErrorNode).
        _size(bufferSize, "bufferSize")
        return self._instantiate(graph), cudaGraphNode_t(0)

    @_api(1)
    def cudaGraphInstantiateWithFlags(self, graph, flags):
        _as_int(flags, "flags")
        return self._instantiate(graph)

    @_api()
    def cudaGraphLaunch(self, graphExec, stream):
        x = self._execs.get(_as_int(graphExec, "graphExec"))
        if x is None:
            raise _ApiError(E.cudaErrorInvalidResourceHandle, f"{graphExec!r} is not a live graph exec")
        s = self._stream(_as_int(stream, "stream"))
        ops = [op.replayed() for op in x.ops] or [_Op("empty graph", lambda: None, replay=True)]
        if x.last_launch is not None and x.last_launch[0] is not s and s.capture is None:
            ops[0].deps.append(x.last_launch)   # ordered after the previous launch of this exec
        for op in ops:
            self._enqueue(s, op)
        if s.capture is None:
            x.last_launch = (s, s.enqueued)

    @_api()
    def cudaGraphExecDestroy(self, graphExec):
        h = _as_int(graphExec, "graphExec")
        x = self._execs.pop(h, None)
        if x is None:
            raise _ApiError(E.cudaErrorInvalidResourceHandle, f"{graphExec!r} is not a live graph exec")
        x.destroyed = True   # launches already enqueued still run (they hold copies of the ops)

    @_api()
    def cudaGraphDestroy(self, graph):
        g = self._graphs.pop(_as_int(graph, "graph"), None)
        if g is None:
            raise _ApiError(E.cudaErrorInvalidResourceHandle, f"{graph!r} is not a live graph")
        g.destroyed = True   # execs instantiated from it stay valid, as in CUDA

    # -- device ---------------------------------------------------------------------------------------
    @_api(1)
    def cudaGetDeviceProperties(self, device):
        if _as_int(device, "device") != 0:
            raise _ApiError(E.cudaErrorInvalidDevice, f"device {device}: the fake has one GPU")
        p = self.props
        return cudaDeviceProp(p.name, p.major, p.minor, p.totalGlobalMem, p.multiProcessorCount)

    @_api(1)
    def cudaRuntimeGetVersion(self):
        return self.runtime_version

    @_api(1)
    def cudaGetErrorString(self, error):
        return ERROR_STRINGS.get(_as_int(error, "error"), b"unrecognized error code")

"""The little CUDA the runtimes need, through cuda-python (no PyTorch): the GPU's identity, device
and pinned buffers, a non-blocking stream, async copies, waits on a producer's stream and CUDA-graph
capture. Every call is checked. Imported only by backends that run on CUDA (TensorRT, ONNX Runtime
on CUDA)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from ..errors import BackendUnavailable, VitacError, first_line
from .arrays import DeviceArray


def import_cudart():
    """`cuda.bindings.runtime` (cuda-python >= 12.6) or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError:
            raise BackendUnavailable("running on CUDA needs cuda-python for device memory and streams: "
                                     "pip install cuda-python (on a Jetson: the wheel matching JetPack's CUDA)") from None
    return cudart


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python `(err, *values)` tuple; raise one line naming the call on error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        cudart = import_cudart()
        _, msg = cudart.cudaGetErrorString(err)
        msg = msg.decode() if isinstance(msg, bytes) else str(msg)
        raise VitacError(f"CUDA error in {what}: {msg} ({int(err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def tile_copies(have: int, want: int) -> list[tuple[int, int]]:
    """(first destination row, rows) of the copies that repeat the first `have` rows of a buffer up
    to `want` rows, each copying from row 0 and doubling what is there: log2(want/have) copies."""
    copies = []
    while have < want:
        n = min(have, want - have)
        copies.append((have, n))
        have += n
    return copies


def gpu_info(required: bool = True) -> Optional[dict[str, Any]]:
    """Name, compute capability and CUDA runtime version of GPU 0 (cuda-python, else torch);
    None when there is no GPU and `required` is False."""
    try:
        cudart = import_cudart()
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            _, rt_ver = cudart.cudaRuntimeGetVersion()
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return {"name": name.strip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}",
                    "cuda_runtime": f"{rt_ver // 1000}.{rt_ver % 1000 // 10}",
                    "memory_mib": int(props.totalGlobalMem) >> 20}
    except BackendUnavailable:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                    "cuda_runtime": torch.version.cuda, "memory_mib": p.total_memory >> 20}
    except ImportError:
        pass
    if not required:
        return None
    raise BackendUnavailable("no CUDA GPU found (or neither cuda-python nor torch to query it): this needs an "
                             "NVIDIA GPU with its driver (TensorRT engines are built on the GPU that runs them)")


class DeviceBuffer:
    """`nbytes` of device memory, allocated once."""

    def __init__(self, cudart, nbytes: int, dtype=np.float32, zero: bool = False):
        self._cudart, self.nbytes, self.dtype = cudart, max(int(nbytes), 1), np.dtype(dtype)
        self.ptr = int(check(cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes >> 20} MiB)"))
        if zero:   # a static cache is read whole (masked): never-written memory must not hold NaN bit patterns
            check(cudart.cudaMemset(self.ptr, 0, self.nbytes), "cudaMemset")
            # cudaMemset runs on the legacy stream, which non-blocking streams do not wait for
            check(cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    def free(self) -> None:
        if self.ptr:
            self._cudart.cudaFree(self.ptr)
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory seen as a flat numpy array (async copies need it)."""

    def __init__(self, cudart, n: int, dtype=np.float32):
        self._cudart, self.dtype = cudart, np.dtype(dtype)
        nbytes = max(int(n), 1) * self.dtype.itemsize
        self.ptr = int(check(cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
        import ctypes

        self.array = np.frombuffer((ctypes.c_byte * nbytes).from_address(self.ptr), self.dtype)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            self._cudart.cudaFreeHost(self.ptr)
            self.ptr = 0


class Stream:
    """A non-blocking stream (capture needs one that is not the legacy default stream).

    Non-blocking means it does NOT wait for the legacy default stream: work a caller queued
    elsewhere (a PyTorch tensor being written) must be waited for explicitly (`wait_for`)."""

    _KINDS = {"h2d": "cudaMemcpyHostToDevice", "d2h": "cudaMemcpyDeviceToHost", "d2d": "cudaMemcpyDeviceToDevice"}

    def __init__(self, cudart):
        self._c = cudart
        self.handle = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreate")
        self._event = None     # made on first use of wait_for

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def _kind(self, kind: str):
        return getattr(self._c.cudaMemcpyKind, self._KINDS[kind])

    def copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        check(self._c.cudaMemcpyAsync(dst, src, nbytes, self._kind(kind), self.handle), f"cudaMemcpyAsync ({kind})")

    def copy_rows(self, dst: int, dst_pitch: int, src: int, src_pitch: int, row_bytes: int, rows: int,
                  kind: str) -> None:
        """Strided copy: `rows` rows of `row_bytes` (e.g. frame t of every batch row of a [B, C, ...] array)."""
        check(self._c.cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows, self._kind(kind), self.handle),
              "cudaMemcpy2DAsync")

    def tile(self, ptr: int, row_bytes: int, have: int, want: int) -> None:
        """Repeat the first `have` rows of a buffer up to `want` rows on this stream, doubling (log2 copies)."""
        for row, n in tile_copies(have, want):
            self.copy(ptr + row * row_bytes, ptr, n * row_bytes, "d2d")

    def wait_for(self, producer: Optional[int]) -> None:
        """Order this stream's next work after everything queued so far on `producer` (a stream
        handle as `__cuda_array_interface__` gives it: 1 legacy default, 2 per-thread default; None:
        nothing to wait for). An event, not a host synchronization: the host does not block."""
        if producer is None:
            return
        c = self._c
        if self._event is None:
            self._event = check(c.cudaEventCreateWithFlags(c.cudaEventDisableTiming), "cudaEventCreateWithFlags")
        check(c.cudaEventRecord(self._event, producer), "cudaEventRecord (producer stream)")
        check(c.cudaStreamWaitEvent(self.handle, self._event, 0), "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        check(self._c.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def capture(self, enqueue: Callable[[], bool]) -> Any:
        """Capture what `enqueue()` puts on this stream into an instantiated graph (cudaGraphExec_t).
        Raises VitacError for any failure; the capture is always ended, and an error of the capture
        itself never hides the error that caused it."""
        c = self._c
        check(c.cudaStreamBeginCapture(self.handle, c.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")
        failure: Optional[BaseException] = None
        try:
            if not enqueue():
                failure = VitacError("the enqueue returned False during stream capture")
        except Exception as e:  # noqa: BLE001 - ended below, then re-raised as the cause
            failure = e
        err, graph = c.cudaStreamEndCapture(self.handle)
        if failure is not None:
            if int(err) == 0 and graph is not None:
                c.cudaGraphDestroy(graph)
            raise VitacError(f"stream capture failed: {first_line(failure)}") from failure
        check((err, graph), "cudaStreamEndCapture")
        try:
            # cudaGraphInstantiate changed signature between cuda-python 11.x (graph, logBuffer,
            # bufferSize) and 12+ (graph, flags); WithFlags is (graph, flags) in both.
            return check(c.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
        finally:
            c.cudaGraphDestroy(graph)

    def launch(self, graph_exec) -> None:
        check(self._c.cudaGraphLaunch(graph_exec, self.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        if self._event is not None:
            self._c.cudaEventDestroy(self._event)
            self._event = None
        if self.handle is not None:
            self._c.cudaStreamDestroy(self.handle)
            self.handle = None


def device_to_host(stream: "Stream", array: DeviceArray) -> np.ndarray:
    """A (small) caller's device array on the host, read after its producer's work: conditioning
    arrays of a rollout given as CUDA tensors."""
    out = np.empty(array.shape, array.dtype)
    stream.wait_for(array.stream)
    stream.copy(out.ctypes.data, array.ptr, array.nbytes, "d2h")
    stream.synchronize()
    return out

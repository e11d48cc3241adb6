"""Where the ONNX Runtime backend keeps its buffers: host memory (CPU) or device memory (CUDA,
through cuda-python). Both offer the same few operations, and every copy moves only the bytes
asked for (never a whole arena through the host)."""

from __future__ import annotations

from typing import Optional

import numpy as np


class Buffer:
    """A flat allocation bound to ONNX Runtime by pointer, with any shape that fits."""

    def __init__(self, ptr: int, nbytes: int, dtype, host: Optional[np.ndarray] = None, device=None):
        self.ptr, self.nbytes, self.dtype = ptr, nbytes, np.dtype(dtype)
        self.host = host          # the numpy array on the CPU; None on CUDA
        self._device = device     # keeps the DeviceBuffer alive

    def free(self) -> None:
        if self._device is not None:
            self._device.free()
        self.host = None


class HostMemory:
    """Buffers in host memory: ONNX Runtime's CPU provider reads and writes them in place."""

    device = "cpu"

    def alloc(self, n: int, dtype) -> Buffer:
        host = np.zeros(max(int(n), 1), dtype)
        return Buffer(host.ctypes.data, host.nbytes, dtype, host=host)

    def upload(self, buf: Buffer, array: np.ndarray, offset: int = 0) -> None:
        a = np.ascontiguousarray(array, buf.dtype).ravel()
        buf.host[offset:offset + a.size] = a

    def download(self, buf: Buffer, shape) -> np.ndarray:
        n = int(np.prod(shape))
        return buf.host[:n].reshape(shape).copy()

    def tile(self, buf: Buffer, row_elems: int, have: int, want: int, offset: int = 0) -> None:
        """Repeat the first `have` rows (from element `offset`) up to `want` rows (the same doubling
        copies as on CUDA)."""
        from ..gpu import tile_copies

        flat = buf.host[offset:]
        for first, n in tile_copies(have, want):
            flat[first * row_elems:(first + n) * row_elems] = flat[:n * row_elems]

    def copy(self, dst: Buffer, dst_offset: int, src: Buffer, src_offset: int, n: int) -> None:
        """n elements from one buffer to another, both where the runtime computes."""
        dst.host[dst_offset:dst_offset + n] = src.host[src_offset:src_offset + n]

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


class CudaMemory:
    """Buffers in device memory (cuda-python): copies touch only the bytes that change, on one
    non-blocking stream. ONNX Runtime computes on a stream of its own, not ordered after ours, so
    every upload and download waits for itself, and callers of `tile` synchronize before the next
    run (`_broadcast_cache` does): no frame needs a synchronization of its own."""

    device = "cuda"

    def __init__(self):
        from ..gpu import Stream, import_cudart

        self._c = import_cudart()
        self.stream = Stream(self._c)

    def alloc(self, n: int, dtype) -> Buffer:
        from ..gpu import DeviceBuffer

        dtype = np.dtype(dtype)
        # zeroed like HostMemory's: the static contract reads (masked) cache slots not yet written
        d = DeviceBuffer(self._c, max(int(n), 1) * dtype.itemsize, dtype, zero=True)
        return Buffer(d.ptr, d.nbytes, dtype, device=d)

    def upload(self, buf: Buffer, array: np.ndarray, offset: int = 0) -> None:
        a = np.ascontiguousarray(array, buf.dtype)
        self.stream.copy(buf.ptr + offset * buf.dtype.itemsize, a.ctypes.data, a.nbytes, "h2d")
        self.stream.synchronize()   # `a` may be a temporary: the copy must be done before it goes

    def download(self, buf: Buffer, shape) -> np.ndarray:
        out = np.empty(shape, buf.dtype)
        self.stream.copy(out.ctypes.data, buf.ptr, out.nbytes, "d2h")
        self.stream.synchronize()
        return out

    def tile(self, buf: Buffer, row_elems: int, have: int, want: int, offset: int = 0) -> None:
        self.stream.tile(buf.ptr + offset * buf.dtype.itemsize, row_elems * buf.dtype.itemsize, have, want)

    def copy(self, dst: Buffer, dst_offset: int, src: Buffer, src_offset: int, n: int) -> None:
        e = dst.dtype.itemsize
        self.stream.copy(dst.ptr + dst_offset * e, src.ptr + src_offset * e, n * e, "d2d")

    def copy_from_device(self, dst: Buffer, dst_offset: int, array) -> None:
        """A caller's CUDA array (arrays.DeviceArray) into a buffer, ordered after its producer's stream."""
        self.stream.wait_for(array.stream)
        self.stream.copy(dst.ptr + dst_offset * dst.dtype.itemsize, array.ptr, array.nbytes, "d2d")

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.stream.destroy()

"""Arrays that live on the GPU (PyTorch, CuPy, Numba: anything with `__cuda_array_interface__`),
seen without importing their library, so a backend that runs on CUDA can take them without a host
round trip. numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from ..errors import VitacError


LEGACY_STREAM = 1   # __cuda_array_interface__ v3: 1 is the legacy default stream, 2 the per-thread one


@dataclass(frozen=True)
class DeviceArray:
    """A C-contiguous CUDA array: its device pointer, shape, dtype, and the stream its producer
    wrote it on (None: the producer says no synchronization is needed)."""

    ptr: int
    shape: Tuple[int, ...]
    dtype: np.dtype
    owner: Any = None          # keeps the producer's tensor alive while we hold its pointer
    stream: Optional[int] = LEGACY_STREAM

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


@dataclass(frozen=True)
class DeviceFrames:
    """Frame t of every row of a [B or 1, C, N, D] device array (rows strided by C frames);
    a batch-1 array is broadcast to `batch` rows."""

    array: DeviceArray
    t: int
    batch: int

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.array.shape[2:])) * self.array.dtype.itemsize


def as_device_array(x: Any, name: str = "array") -> Optional[DeviceArray]:
    """A DeviceArray view of `x` if it is a CUDA array, else None. Refuses strided arrays (the
    runtime binds by pointer) with a message saying how to fix it."""
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        return None
    shape = tuple(int(s) for s in cai["shape"])
    dtype = np.dtype(cai["typestr"])
    strides = cai.get("strides")
    if strides is not None:
        dense = tuple(int(np.prod(shape[i + 1:])) * dtype.itemsize for i in range(len(shape)))
        if tuple(int(s) for s in strides) != dense:
            raise VitacError(f"{name} is a strided CUDA array: pass a contiguous one (.contiguous())")
    # v3 producers (PyTorch, CuPy) name the stream the data is being written on; a consumer must
    # order its reads after it. Without the key (v2), the legacy default stream is the safe guess.
    stream = cai.get("stream", LEGACY_STREAM) if cai.get("version", 2) >= 3 else LEGACY_STREAM
    if stream == 0:
        raise VitacError(f"{name}: __cuda_array_interface__ stream 0 is not allowed (ambiguous default stream)")
    return DeviceArray(int(cai["data"][0]), shape, dtype, x, None if stream is None else int(stream))

"""Arrays that live on the GPU (PyTorch, CuPy, Numba: anything with `__cuda_array_interface__`),
seen without importing their library, so a backend that runs on CUDA can take them without a host
round trip. numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..errors import VitacError


@dataclass(frozen=True)
class DeviceArray:
    """A C-contiguous CUDA array: its device pointer, shape and dtype."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    owner: Any = None          # keeps the producer's tensor alive while we hold its pointer

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
    return DeviceArray(int(cai["data"][0]), shape, dtype, x)

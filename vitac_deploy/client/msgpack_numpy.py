"""openpi's wire format: msgpack in which numpy arrays are maps `{__ndarray__, data, dtype, shape}`
and numpy scalars `{__npgeneric__, data, dtype}` (as `openpi_client.msgpack_numpy` writes them).

numpy + msgpack only, Python 3.8+. Never pickle: object, void and complex dtypes are refused both
ways, and msgpack extension types are refused on reading (msgpack's own default would hand them
back as `ExtType`)."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

REFUSED_KINDS = "VOc"   # void (structured), object (pickled Python objects), complex


class WireError(ValueError):
    """A frame that is not a valid message of this protocol (the text says why, on one line)."""


def _pack_array(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in REFUSED_KINDS:
        raise WireError(f"unsupported dtype {obj.dtype} (object, void and complex arrays are refused)")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _dtype(code: Any) -> np.dtype:
    if isinstance(code, bytes):
        code = code.decode("ascii", "replace")
    if not isinstance(code, str):
        raise WireError(f"an array's dtype must be a string, got {type(code).__name__}")
    try:
        dt = np.dtype(code)
    except TypeError:
        raise WireError(f"unknown dtype {code!r}") from None
    if dt.kind in REFUSED_KINDS or dt.hasobject:
        raise WireError(f"unsupported dtype {dt} (object, void and complex arrays are refused)")
    return dt


def _get(obj: dict, key: str) -> Any:
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise WireError(f"an encoded array lacks its {key!r} field")


def _unpack_array(obj: dict) -> Any:
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        dt = _dtype(_get(obj, "dtype"))
        shape, data = _get(obj, "shape"), _get(obj, "data")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise WireError(f"an array's shape must be a list of integers >= 0, got {shape!r}")
        if not isinstance(data, bytes):
            raise WireError("an array's data must be bytes")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dt.itemsize != len(data):
            raise WireError(f"an array of shape {list(shape)} and dtype {dt} needs {count * dt.itemsize} bytes, "
                            f"got {len(data)}")
        return np.frombuffer(data, dtype=dt).reshape(shape)
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        dt = _dtype(_get(obj, "dtype"))
        try:
            return dt.type(_get(obj, "data"))
        except (TypeError, ValueError, OverflowError) as e:
            raise WireError(f"bad numpy scalar of dtype {dt}: {e}") from None
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not accepted")


def packb(obj: Any) -> bytes:
    """One message -> bytes (arrays and numpy scalars encoded as openpi encodes them)."""
    return msgpack.packb(obj, default=_pack_array, use_bin_type=True)


def unpackb(data: bytes, max_bytes: int | None = None) -> Any:
    """bytes -> one message; WireError (one line) on anything else: not msgpack, trailing data,
    extension types, refused dtypes, arrays whose data does not match their shape."""
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return msgpack.unpackb(data, object_hook=_unpack_array, ext_hook=_refuse_ext, raw=False,
                               strict_map_key=False)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:   # ExtraData, FormatError, StackError are here
        raise WireError(f"not a msgpack message ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") \
            from None

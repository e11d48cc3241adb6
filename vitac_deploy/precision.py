"""The precisions a graph, engine or runtime can be in, and what each one means everywhere.

One `Precision` per name: the dtype of its weights, of its compute, I/O and KV cache, the bytes per
element the memory model counts, the parity tolerance its artifacts are checked against, the
suffix of its files, and the backends that run it. Everything that used to spell `"fp16" if ...
else "float32"` asks this module, so that a new precision (int8, fp8) is one entry here plus the
graph and engine builders that make it; a precision not listed here is refused by name, never run
as another. Pure Python: imported by the CLI, the memory model and the runtimes alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Optional

from .errors import VitacError


@dataclass(frozen=True)
class Tolerance:
    """Per-frame limits against the float32 PyTorch reference (normalized features, |x| ~ 1)."""

    max_abs: float
    mean_abs: float
    cosine_min: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Precision:
    """What one precision name stands for."""

    name: str               # as the CLI, the manifests and the engines spell it
    weight_dtype: str       # numpy dtype name of the stored weights
    dtype: str              # numpy dtype name of compute, activations, I/O of the graph's body and the KV cache
    bytes: int              # bytes per element of the cache, weights and activations (the memory model)
    tolerance: Tolerance    # what its artifacts must reproduce of the float32 reference
    strongly_typed: bool    # its graphs carry their types (TensorRT builds them strongly typed)
    backends: tuple[str, ...]   # the runtime backends that run it

    @property
    def file_suffix(self) -> str:
        """'' for float32 (step.onnx), '.fp16' for half (step.fp16.onnx)."""
        return "" if self.name == REFERENCE_PRECISION else f".{self.name}"

    def torch_dtype(self, torch):
        """The torch dtype of compute and cache (torch is passed in: this module never imports it)."""
        return getattr(torch, self.dtype)


# fp32: rounding only. fp16: measured on the default model (see docs/export.md); a graph outside
# these limits is refused at export.
PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", "float32", "float32", 4, Tolerance(max_abs=1e-4, mean_abs=1e-5, cosine_min=0.999999),
                      strongly_typed=False, backends=("onnxruntime", "torch", "tensorrt")),
    "fp16": Precision("fp16", "float16", "float16", 2, Tolerance(max_abs=5e-2, mean_abs=5e-3, cosine_min=0.9995),
                      strongly_typed=True, backends=("onnxruntime", "torch", "tensorrt")),
}
REFERENCE_PRECISION = "fp32"   # the graph every artifact holds (weights, parity baseline); its files carry no suffix
TOLERANCES: dict[str, Tolerance] = {name: p.tolerance for name, p in PRECISIONS.items()}


def precision(name: str, what: str = "precision") -> Precision:
    """The precision called `name`; a one-line error naming the known ones otherwise."""
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        raise VitacError(f"{what} must be one of {', '.join(PRECISIONS)}, got {name!r}") from None


def default_precision(device: str) -> Precision:
    """fp16 on a GPU (what the engines and the fast paths are for), fp32 on the CPU (whose
    providers compute fp16 in fp32 anyway)."""
    return PRECISIONS["fp16" if device == "cuda" else "fp32"]


def resolve(name: Optional[str], device: str) -> Precision:
    """`name` checked, or the device's default when it is None."""
    return default_precision(device) if name is None else precision(name)


def parse_list(text: str | Iterable[str], flag: str = "--precision") -> tuple[str, ...]:
    """'fp32,fp16' (or a sequence of names) -> checked names, in order, without repeats."""
    names = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p) for p in text]
    names = [n for n in dict.fromkeys(names) if n]
    bad = [n for n in names if n not in PRECISIONS]
    if bad or not names:
        raise VitacError(f"{flag} takes a comma list of {', '.join(PRECISIONS)}, got {','.join(names) or 'nothing'}")
    return tuple(names)

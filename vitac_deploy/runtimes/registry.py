"""The runtime backends and what each can do.

Each backend is a folder of `vitac_deploy/runtimes/` whose `__init__.py` declares `BACKEND`, an
instance of a `Backend` subclass: its capabilities as attributes (devices, cache contracts, CUDA
graphs, memory layout, the kinds of artifact it opens) and two openers (predictor, encoder).
`open_runtime`, `open_encoder`, `bench`, `planning` and `info` read these attributes; nothing
outside a backend's folder compares its name. Adding a backend is one folder plus one entry in
`PACKAGES`. A backend's folder imports its library (onnxruntime, torch, tensorrt) only when it
opens something, so that this registry imports with the standard library alone.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import BackendUnavailable, VitacError
from ..precision import PRECISIONS

if TYPE_CHECKING:   # pragma: no cover - types only
    from .base import Runtime
    from .encoder_base import EncoderRuntime

# The backend folders, in the order "auto" prefers them among those installed (per device).
PACKAGES = ("onnxruntime", "torch", "tensorrt")

# What a backend opens: an artifact directory or an engine file, of the predictor or the encoder.
PREDICTOR, ENCODER, ENGINE, ENCODER_ENGINE = "predictor", "encoder", "engine", "encoder-engine"


@dataclass(frozen=True)
class MemoryLayout:
    """How a backend lays out a plan's memory beside the KV cache, as the memory model counts it
    (`planning.memory.plan_memory`)."""

    frame_buffers: int              # float32 [B, N, D] device buffers: prediction, two raw (+ input staging)
    pinned_staging: bool            # pinned host copies of the inputs (they count on unified memory: Jetson)
    weight_copies: tuple[int, ...]  # copies of the weights a build may hold (TensorRT: + a first-frame engine)
    default_weight_copies: int      # what the default build holds

    def check_weight_copies(self, n: int, backend: str) -> None:
        if n not in self.weight_copies:
            raise VitacError(f"engines must be {' or '.join(map(str, self.weight_copies))} for {backend}, got {n!r}")


class Backend:
    """A runtime backend's declaration. Subclasses set the attributes and implement the openers."""

    name: str = "?"
    library: str = "?"                       # the module whose presence makes it available
    opens: tuple[str, ...] = ()              # PREDICTOR, ENCODER, ENGINE, ENCODER_ENGINE
    devices: tuple[str, ...] = ("cpu",)
    cache_contracts: tuple[str, ...] = ()    # the ONNX cache contracts it drives (concat, static); () = its own
    cuda_graphs: bool = False                # can replay frames as CUDA graphs (`cuda_graphs=True`)
    memory_layout: Optional[MemoryLayout] = None
    runs_exported_graphs: bool = False       # runs the artifact's step graphs (a bench row per cache contract)
    needs_first_frame_graph: bool = False    # its default build reads first*.onnx
    graph_forms: tuple[str, ...] = ("portable",)   # the step-graph forms it runs (vitac_deploy.graph_forms)
    variants: dict[str, dict[str, Any]] = {}  # other names it answers to, with the options they imply

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions it runs (the precision model says which backends run each)."""
        return tuple(p.name for p in PRECISIONS.values() if self.name in p.backends)

    def has_cuda_graphs(self, options: dict[str, Any]) -> bool:
        """Whether it replays frames as CUDA graphs when opened with `options` (a variant's)."""
        return self.cuda_graphs

    def installed(self) -> bool:
        return importlib.util.find_spec(self.library) is not None

    def available(self, device: str) -> bool:
        """Installed, and able to run on `device` here (e.g. ONNX Runtime with its CUDA provider)."""
        return device in self.devices and self.installed()

    def check(self, device: str, precision: str, path: Any = None) -> None:
        """Refuse a device or precision this backend does not run, in one line."""
        if device not in self.devices:
            raise VitacError(f"the {self.name} backend runs on {' or '.join(self.devices)}, not {device!r}"
                             + (f" ({path})" if path is not None else ""))
        if precision not in self.precisions:
            raise VitacError(f"the {self.name} backend runs {', '.join(self.precisions)}, not {precision!r}")

    def open_predictor(self, path: Path, manifest: dict[str, Any], precision: str, device: str,
                       max_batch: Optional[int], max_frames: Optional[int], verify: bool,
                       **options: Any) -> "Runtime":
        raise VitacError(f"the {self.name} backend does not open predictor artifacts")

    def open_encoder(self, path: Path, manifest: dict[str, Any], precision: str, device: str,
                     max_batch: Optional[int], verify: bool, **options: Any) -> "EncoderRuntime":
        raise VitacError(f"the {self.name} backend has no encoder runtime")

    def prepare(self, artifact: Path, precision: str, max_batch: int, workdir: Path,
                say: Callable[[str], None]) -> Path:
        """What `bench` opens to time this backend on `artifact`: the artifact itself, or what the
        backend builds from it (TensorRT: an engine for batches up to `max_batch`, in `workdir`)."""
        return artifact

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


def lazy_classes(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for a backend folder: its runtime classes (name -> module) load
    with their module, when asked for, so that the folder imports without its library."""
    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__


def backends() -> dict[str, Backend]:
    """Every registered backend by name (the folders' declarations; their libraries not imported)."""
    out = {}
    for package in PACKAGES:
        backend = importlib.import_module(f"{__package__}.{package}").BACKEND
        out[backend.name] = backend
    return out


def names(with_variants: bool = True) -> list[str]:
    """Backend names a user may give (variants such as torch-compile included)."""
    out = []
    for b in backends().values():
        out.append(b.name)
        if with_variants:
            out.extend(b.variants)
    return out


def get(name: str) -> tuple[Backend, dict[str, Any]]:
    """The backend called `name` (or one of its variants) and the options the name implies."""
    for b in backends().values():
        if name == b.name:
            return b, {}
        if name in b.variants:
            return b, dict(b.variants[name])
    raise VitacError(f"unknown backend {name!r} (choose from {', '.join(names())})")


def available_backends(device: Optional[str] = None) -> list[str]:
    """Installed backends (and able to run on `device`, when given)."""
    return [b.name for b in backends().values() if (b.available(device) if device else b.installed())]


def choose(backend: str, kind: str, device: str) -> tuple[Backend, dict[str, Any]]:
    """The backend (and its options) that opens a `kind` on `device`: `backend` checked, or for
    "auto" the first registered one that opens it and is available there."""
    if backend != "auto":
        b, options = get(backend)
        if kind not in b.opens:
            openers = [x.name for x in backends().values() if kind in x.opens]
            what = {ENGINE: "a TensorRT engine", ENCODER_ENGINE: "an encoder engine"}.get(kind, f"a {kind} artifact")
            raise VitacError(f"the {b.name} backend does not open {what}: use {' or '.join(openers) or 'none'}")
        return b, options
    candidates = [b for b in backends().values() if kind in b.opens and device in b.devices]
    for b in candidates:
        if b.available(device):
            return b, {}
    if len(candidates) == 1:   # the only one that could: opening it says what is missing, in its words
        return candidates[0], {}
    installed = [b.name for b in candidates if b.installed()]
    if installed:
        raise BackendUnavailable(f"no backend for device {device}: {', '.join(installed)} cannot run there "
                                 f"(install onnxruntime-gpu, or torch with CUDA)")
    raise BackendUnavailable("no runtime backend installed: pip install 'vitac-deploy[onnxruntime]'")

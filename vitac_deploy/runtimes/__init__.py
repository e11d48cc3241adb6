"""Runtimes: roll the world model forward on a KV cache. Imports with numpy alone; each backend
imports its own library (onnxruntime, torch, tensorrt) only when opened."""

from __future__ import annotations

import importlib.util
import logging
import numbers
from pathlib import Path
from typing import Optional

from ..config import PredictorConfig
from ..errors import BackendUnavailable, VitacError
from ..manifest import cache_contract, graph_names, read_engine_manifest, read_manifest, verify_files
from .base import Runtime
from .staging import HostTraffic, StagedContext

__all__ = ["Runtime", "open_runtime", "available_backends", "BACKENDS", "StagedContext", "HostTraffic"]

log = logging.getLogger("vitac_deploy")
# torch: the fast path (runtimes/torch/fast.py); torch-compile: the same under torch.compile;
# torch-reference: the reference model itself, the parity baseline (runtimes/torch/backend.py)
BACKENDS = ("onnxruntime", "torch", "torch-compile", "torch-reference", "tensorrt")
_LIBRARY = {"onnxruntime": "onnxruntime", "torch": "torch", "torch-compile": "torch", "torch-reference": "torch",
            "tensorrt": "tensorrt"}
TORCH_BACKENDS = ("torch", "torch-compile", "torch-reference")


def available_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(_LIBRARY[b])]


def _auto_backend(device: str) -> str:
    have = available_backends()
    if device == "cuda":
        if "onnxruntime" in have:
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers():
                return "onnxruntime"
        if "torch" in have:
            return "torch"
        raise BackendUnavailable("no backend for device cuda: install onnxruntime-gpu or torch with CUDA")
    for b in ("onnxruntime", "torch"):
        if b in have:
            return b
    raise BackendUnavailable("no runtime backend installed: pip install 'vitac-deploy[onnxruntime]'")


def open_runtime(path: str | Path, backend: str = "auto", device: Optional[str] = None,
                 precision: Optional[str] = None, max_batch: Optional[int] = None,
                 max_frames: Optional[int] = None, verify: bool = True, **options) -> Runtime:
    """Open an export artifact directory (onnxruntime, torch) or a TensorRT engine (ENGINE.plan,
    with its ENGINE.plan.json) with a backend; "auto" picks the best one available and logs which.
    device defaults to cpu for artifacts and cuda for engines; precision to fp32 on cpu and fp16
    on cuda. `options` go to the backend (e.g. cuda_graphs=True, tf32=True; torch and torch-compile:
    compile=MODE, cuda_graphs=True). Backends: onnxruntime, torch (the fast PyTorch path),
    torch-compile (it under torch.compile, mode "default" unless compile= says), torch-reference (the
    reference model, the parity baseline; compile=True runs its blocks under torch.compile), tensorrt.

    The manifest's seal is always checked; with `verify` (the default) every file the runtime reads
    is hashed against the manifest first (cached in-process by file identity and change time, so a
    reopen costs a stat). verify=False skips the file hashes, for callers that checked them already."""
    p = Path(path)
    for name, value in (("max_batch", max_batch), ("max_frames", max_frames)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise VitacError(f"{name} must be a positive integer or None, got {value!r}")
    if p.suffix in (".plan", ".engine"):
        if not verify:
            options.setdefault("verify_files", False)
        return _open_engine(p, backend, device or "cuda", precision, max_batch, max_frames, **options)
    device = device or "cpu"
    manifest = read_manifest(p)
    cfg = PredictorConfig.from_dict(manifest["config"])
    if device not in ("cpu", "cuda"):
        raise VitacError(f"device must be cpu or cuda, got {device!r}")
    precision = precision or ("fp16" if device == "cuda" else "fp32")
    if precision not in ("fp32", "fp16"):
        raise VitacError(f"precision must be fp32 or fp16, got {precision!r}")
    if backend == "auto":
        backend = _auto_backend(device)
        log.info("runtime backend: %s", backend)
    if backend not in BACKENDS:
        raise VitacError(f"unknown backend {backend!r} (choose from auto, {', '.join(BACKENDS)})")
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRuntime
        from .onnxruntime.backend import energy_graph_path

        key = f"step.{precision}"
        if key not in manifest["graphs"]:
            raise VitacError(f"{p} has no {precision} step graph (exported: "
                             f"{', '.join(sorted(manifest['graphs']))})")
        cache = cache_contract(manifest, p)   # concat when the manifest predates the static contract
        if verify:
            verify_files(p, manifest, graph_names(manifest, (key, "energy")))
        return OnnxRuntimeRuntime(p / manifest["graphs"][key]["file"], cfg, precision, device,
                                  max_batch, max_frames, energy_graph=energy_graph_path(p, manifest), cache=cache,
                                  cache_frames=manifest["cache"]["frames"] if cache == "static" else None, **options)
    if backend in TORCH_BACKENDS:
        if verify:
            verify_files(p, manifest, graph_names(manifest, ("step.fp32",)))
        if backend == "torch-reference":
            from .torch import TorchRuntime

            return TorchRuntime.from_artifact(p, manifest, precision, device, max_batch, max_frames, **options)
        from .torch.fast import FastTorchRuntime

        if backend == "torch-compile":
            options = {**options, "compile": options.get("compile") or "default"}
        return FastTorchRuntime.from_artifact(p, manifest, precision, device, max_batch, max_frames, **options)
    raise VitacError(f"the tensorrt backend runs TensorRT engines: build one with `vitac-deploy build-engine "
                     f"{p} --out ENGINE.plan` and open ENGINE.plan")


def _open_engine(p: Path, backend: str, device: str, precision: Optional[str], max_batch: Optional[int],
                 max_frames: Optional[int], **options) -> Runtime:
    """A TensorRT engine: its manifest (ENGINE.plan.json) is read and checked before TensorRT is."""
    if backend not in ("auto", "tensorrt"):
        raise VitacError(f"{p} is a TensorRT engine: open it with backend tensorrt, not {backend}")
    if device != "cuda":
        raise VitacError(f"{p} is a TensorRT engine: it runs on device cuda, not {device}")
    manifest = read_engine_manifest(p)
    if manifest.get("kind") == "encoder":
        raise VitacError(f"{p} is an encoder engine: open it with vitac_deploy.runtimes.encoder.open_encoder "
                         f"(or pass it to `plan --encoder`)")
    if precision is not None and precision != manifest.get("precision"):
        raise VitacError(f"{p} was built {manifest.get('precision')}, not {precision}: rebuild with --precision {precision}")
    from .tensorrt.backend import TensorRTRuntime

    return TensorRTRuntime(p, manifest, max_batch, max_frames, **options)

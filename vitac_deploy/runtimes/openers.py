"""Opening what export and build-engine wrote: a predictor artifact or engine (`open_runtime`), an
encoder artifact or engine (`open_encoder`), or both as `plan` and `serve` use them (`open_models`).

The manifest is read and checked first (its seal always; with `verify`, the hashes of every file
the backend will read), then the backend the registry names opens it. numpy only: each backend
imports its library when it opens something.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from ..artifacts import (ENGINE_SUFFIXES, find_encoder, read_encoder_manifest, read_engine_manifest,
                         read_manifest)
from ..config import PredictorConfig
from ..errors import VitacError
from ..inputs import check_count
from ..precision import resolve as resolve_precision
from . import registry
from .base import Runtime
from .encoder_base import EncoderRuntime

log = logging.getLogger("vitac_deploy")


def _device(device: Optional[str], engine: bool) -> str:
    device = device or ("cuda" if engine else "cpu")
    if device not in ("cpu", "cuda"):
        raise VitacError(f"device must be cpu or cuda, got {device!r}")
    return device


def open_runtime(path: str | os.PathLike, backend: str = "auto", device: Optional[str] = None,
                 precision: Optional[str] = None, max_batch: Optional[int] = None,
                 max_frames: Optional[int] = None, verify: bool = True, **options: Any) -> Runtime:
    """Open an export artifact directory (onnxruntime, torch) or a TensorRT engine (ENGINE.plan,
    with its ENGINE.plan.json) with a backend; "auto" picks the first registered one that opens it
    and runs on the device here, and logs which. device defaults to cpu for artifacts and cuda for
    engines; precision to fp32 on cpu and fp16 on cuda (an engine's own otherwise). `options` go
    to the backend (e.g. cuda_graphs=True, tf32=True).

    The manifest's seal is always checked; with `verify` (the default) every file the runtime reads
    is hashed against the manifest first (cached in-process by file identity and change time, so a
    reopen costs a stat). verify=False skips the file hashes, for callers that checked them already."""
    p = Path(path)
    max_batch, max_frames = check_count(max_batch, "max_batch"), check_count(max_frames, "max_frames")
    if "threads" in options:
        options["threads"] = check_count(options["threads"], "threads")
    engine = p.suffix in ENGINE_SUFFIXES
    kind = registry.ENGINE if engine else registry.PREDICTOR
    device = _device(device, engine)
    openers = [b for b in registry.backends().values() if kind in b.opens]
    if backend != "auto" and kind not in registry.get(backend)[0].opens:
        if engine:
            raise VitacError(f"{p} is a TensorRT engine: open it with backend "
                             f"{' or '.join(b.name for b in openers)}, not {backend}")
        raise VitacError(f"the {backend} backend runs engines: build one with `vitac-deploy build-engine {p} "
                         f"--out ENGINE.plan` and open ENGINE.plan")
    if engine and not any(device in b.devices for b in openers):
        raise VitacError(f"{p} is a TensorRT engine: it runs on device "
                         f"{' or '.join(sorted({d for b in openers for d in b.devices}))}, not {device}")
    # read and checked before any backend library is imported
    manifest = read_engine_manifest(p) if engine else read_manifest(p)
    chosen, implied = registry.choose(backend, kind, device)
    if backend == "auto":
        log.info("runtime backend: %s", chosen.name)
    if not engine:   # an engine is in the precision it was built in
        precision = resolve_precision(precision, device).name
    if precision is not None:
        chosen.check(device, precision, p)
    return chosen.open_predictor(p, manifest, precision, device, max_batch, max_frames, verify,
                                 **{**implied, **options})


def open_encoder(path: str | os.PathLike, backend: str = "auto", device: Optional[str] = None,
                 precision: Optional[str] = None, max_batch: Optional[int] = None,
                 manifest: Optional[dict[str, Any]] = None, verify: bool = True, **options: Any) -> EncoderRuntime:
    """Open an encoder artifact directory (from `vitac-deploy export-encoder`) with a backend, or an
    encoder engine (ENCODER.plan from `build-engine`, TensorRT on cuda); precision defaults to fp32
    on cpu and fp16 on cuda; max_batch: frames encoded at once (default 16, an engine's profile).
    `manifest`: the manifest already read and checked by the caller."""
    p = Path(path)
    max_batch = check_count(max_batch, "max_batch")
    if "threads" in options:
        options["threads"] = check_count(options["threads"], "threads")
    engine = p.suffix in ENGINE_SUFFIXES
    device = _device(device, engine)
    kind = registry.ENCODER_ENGINE if engine else registry.ENCODER
    if engine and (backend not in ("auto",) and kind not in registry.get(backend)[0].opens or device != "cuda"):
        raise VitacError(f"{p} is a TensorRT engine: it runs with backend tensorrt on device cuda")
    m = manifest or (read_engine_manifest(p) if engine else read_encoder_manifest(p))
    if backend != "auto" and kind not in registry.get(backend)[0].opens:
        raise VitacError(f"unknown encoder backend {backend!r} (choose from auto, "
                         f"{', '.join(b.name for b in registry.backends().values() if registry.ENCODER in b.opens)})")
    chosen, implied = registry.choose(backend, kind, device)
    if not engine:
        precision = resolve_precision(precision, device).name
        chosen.check(device, precision, p)
    return chosen.open_encoder(p, m, precision, device, max_batch, verify, **{**implied, **options})


def open_models(artifact: str | os.PathLike, encoder: Optional[str | os.PathLike] = None, backend: str = "auto",
                device: Optional[str] = None, precision: Optional[str] = None, max_batch: Optional[int] = None,
                max_frames: Optional[int] = None) -> tuple[Runtime, EncoderRuntime, Path]:
    """The predictor runtime and the encoder that `plan` and `serve` use: (runtime, encoder, encoder
    path). The encoder is ARTIFACT/encoder unless `encoder` names it (an artifact directory or an
    engine); it runs with the predictor's backend where that backend has an encoder runtime (the
    automatic choice otherwise), on the same device and precision, and must fit the predictor."""
    rt = open_runtime(artifact, backend=backend, device=device, precision=precision, max_batch=max_batch,
                      max_frames=max_frames)
    enc_path = find_encoder(artifact, encoder)
    chosen = registry.get(backend)[0] if backend != "auto" else None
    enc_backend = chosen.name if chosen is not None and registry.ENCODER in chosen.opens else "auto"
    enc = open_encoder(enc_path, backend=enc_backend, device=rt.device, precision=rt.precision)
    if enc.cfg.embed_dim != rt.cfg.embed_dim:
        raise VitacError(f"the encoder at {enc_path} gives {enc.cfg.embed_dim}-dim features but the predictor "
                         f"takes {rt.cfg.embed_dim}")
    if enc.cfg.tokens_per_frame != rt.cfg.tokens_per_frame:
        raise VitacError(f"the encoder at {enc_path} gives {enc.cfg.tokens_per_frame} tokens per frame but the "
                         f"predictor takes {rt.cfg.tokens_per_frame}")
    return rt, enc, enc_path


def config_of(path: str | os.PathLike) -> PredictorConfig:
    """The predictor config an artifact or engine records (its manifest read and checked)."""
    p = Path(path)
    manifest = read_engine_manifest(p) if p.suffix in ENGINE_SUFFIXES else read_manifest(p)
    return PredictorConfig.from_dict(manifest["config"])

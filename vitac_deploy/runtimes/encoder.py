"""Encoder runtimes: camera frames -> the normalized features the predictor takes.

Imports with numpy alone; each backend imports its library (onnxruntime, torch) when opened.
Preprocessing is numpy (vitac_deploy.encoder.preprocess); the graph encodes single frames, so a
batch of observations is flattened to frames, encoded `max_batch` frames at a time, and put back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..encoder.config import EncoderConfig
from ..encoder.manifest import read_encoder_manifest
from ..encoder.preprocess import preprocess
from ..errors import BackendUnavailable, VitacError, first_line
from ..manifest import graph_names, verify_files

log = logging.getLogger("vitac_deploy")
ENCODER_BACKENDS = ("onnxruntime", "torch")


class EncoderRuntime:
    """Base: `encode(images)` on top of a backend's `_run(pixels [M, 3, S, S]) -> [M, N, D]`."""

    backend = "?"

    def __init__(self, cfg: EncoderConfig, precision: str, device: str, max_batch: int = 16):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise VitacError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.cfg, self.precision, self.device, self.max_batch = cfg, precision, device, max_batch

    def describe(self) -> str:
        return f"{self.backend} encoder ({self.device}, {self.precision})"

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed single frames [M, 3, S, S] float32 -> normalized features [M, N, D]."""
        S = self.cfg.img_size
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, S, S):
            raise VitacError(f"pixels must be a numpy array [M, 3, {S}, {S}], got "
                             f"{list(getattr(pixels, 'shape', [])) or type(pixels).__name__}")
        if pixels.shape[0] == 0:
            raise VitacError("pixels holds no frame")
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise VitacError("pixels contain NaN or Inf")
        out = [self._run(pixels[i:i + self.max_batch]) for i in range(0, pixels.shape[0], self.max_batch)]
        return np.concatenate(out) if len(out) > 1 else out[0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Camera frames uint8 [B, T, H, W, 3] (or [T, H, W, 3]) -> features [B, T*N, D] float32,
        layer-normed as the predictor and the planner take them."""
        px = preprocess(images, self.cfg.img_size)                      # [B, 3, T, S, S]
        B, _, T, S, _ = px.shape
        feats = self.encode_pixels(px.transpose(0, 2, 1, 3, 4).reshape(B * T, 3, S, S))
        return feats.reshape(B, T * self.cfg.tokens_per_frame, self.cfg.embed_dim)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class OnnxRuntimeEncoder(EncoderRuntime):
    backend = "onnxruntime"

    def __init__(self, graph: Path, cfg: EncoderConfig, precision: str, device: str = "cpu", max_batch: int = 16,
                 threads: Optional[int] = None):
        super().__init__(cfg, precision, device, max_batch)
        from .onnxruntime.backend import _import_ort, check_providers, cuda_provider_failure, cuda_provider_options

        ort = _import_ort()
        providers: list[Any] = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime has no CUDAExecutionProvider here: install onnxruntime-gpu "
                                         "and run on a machine with an NVIDIA GPU")
            if hasattr(ort, "preload_dlls"):
                try:
                    ort.preload_dlls()
                except Exception as e:  # noqa: BLE001 - shows up as a missing provider below
                    log.debug("onnxruntime.preload_dlls: %s", first_line(e))
            providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(False, False)))
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(graph), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises plain exceptions
            raise VitacError(f"onnxruntime cannot load {graph}: {first_line(e)}") from None
        check_providers(device == "cuda", self.session.get_providers(),
                        cuda_provider_failure(ort) if device == "cuda" else "")
        if [i.name for i in self.session.get_inputs()] != ["pixels"]:
            raise VitacError(f"{graph} is not an encoder graph (input 'pixels'): re-export it")

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(["features"], {"pixels": pixels})[0]


class TorchEncoder(EncoderRuntime):
    """The reference encoder itself (weights read back from the fp32 graph), on cpu or cuda."""

    backend = "torch"

    def __init__(self, model, precision: str, device: str = "cpu", max_batch: int = 16):
        super().__init__(model.cfg, precision, device, max_batch)
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch has no CUDA device here")
        self._torch = torch
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self._features(pixels).cpu().numpy()

    def _features(self, pixels: np.ndarray):
        torch = self._torch
        with torch.no_grad():
            x = torch.from_numpy(pixels).to(self.device, self.dtype)
            clips = x[:, :, None].repeat(1, 1, self.cfg.tubelet_size, 1, 1)
            raw = self.model(clips).float()
            if self.cfg.normalize_reps:
                raw = torch.nn.functional.layer_norm(raw, (raw.shape[-1],), eps=self.cfg.feature_norm_eps)
            return raw

    def encode_pixels_on_device(self, pixels: np.ndarray):
        """As `encode_pixels`, but the features stay where the encoder runs: a float32 tensor
        [M, N, D] on its device. A torch predictor runtime on the same device takes them as the
        planner's current and goal features (`planning.plan`) without a host round trip."""
        S = self.cfg.img_size
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, S, S) \
                or pixels.shape[0] == 0:
            raise VitacError(f"pixels must be a numpy array [M, 3, {S}, {S}] with M >= 1, got "
                             f"{list(getattr(pixels, 'shape', [])) or type(pixels).__name__}")
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise VitacError("pixels contain NaN or Inf")
        out = [self._features(pixels[i:i + self.max_batch]) for i in range(0, pixels.shape[0], self.max_batch)]
        return self._torch.cat(out) if len(out) > 1 else out[0]


def open_encoder(path: str | os.PathLike, backend: str = "auto", device: str = "cpu",
                 precision: Optional[str] = None, max_batch: Optional[int] = None,
                 manifest: Optional[dict[str, Any]] = None, **options) -> EncoderRuntime:
    """Open an encoder artifact directory (from `vitac-deploy export-encoder`) with a backend, or an
    encoder engine (ENCODER.plan from `build-engine`, TensorRT on cuda); precision defaults to fp32
    on cpu and fp16 on cuda; max_batch: frames encoded at once (default 16, an engine's profile)."""
    p = Path(path)
    if p.suffix in (".plan", ".engine"):
        from ..manifest import read_engine_manifest

        if backend not in ("auto", "tensorrt") or device != "cuda":
            raise VitacError(f"{p} is a TensorRT engine: it runs with backend tensorrt on device cuda")
        from .tensorrt.encoder import TensorRTEncoder

        m = manifest or read_engine_manifest(p)
        if precision is not None and precision != m.get("precision"):
            raise VitacError(f"{p} was built {m.get('precision')}, not {precision}: rebuild with --precision {precision}")
        return TensorRTEncoder(p, m, max_batch, verify_files=options.pop("verify", True), **options)
    manifest = manifest or read_encoder_manifest(p)
    cfg = EncoderConfig.from_dict(manifest["config"])
    verify = options.pop("verify", True)
    if device not in ("cpu", "cuda"):
        raise VitacError(f"device must be cpu or cuda, got {device!r}")
    precision = precision or ("fp16" if device == "cuda" else "fp32")
    if precision not in ("fp32", "fp16"):
        raise VitacError(f"precision must be fp32 or fp16, got {precision!r}")
    if backend == "auto":
        import importlib.util

        backend = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"
    if backend not in ENCODER_BACKENDS:
        raise VitacError(f"unknown encoder backend {backend!r} (choose from auto, {', '.join(ENCODER_BACKENDS)})")
    if backend == "onnxruntime":
        key = f"encoder.{precision}"
        if key not in manifest["graphs"]:
            raise VitacError(f"{p} has no {precision} encoder graph (exported: {', '.join(sorted(manifest['graphs']))})")
        if verify:   # what ONNX Runtime reads is what the manifest's hashes vouch for
            verify_files(p, manifest, graph_names(manifest, (key,)))
        return OnnxRuntimeEncoder(p / manifest["graphs"][key]["file"], cfg, precision, device, max_batch or 16,
                                  **options)
    if "encoder.fp32" not in manifest["graphs"]:
        raise VitacError(f"{p} has no fp32 encoder graph: the torch backend reads its weights from it")
    if verify:
        verify_files(p, manifest, graph_names(manifest, ("encoder.fp32",)))
    return TorchEncoder(encoder_from_graph(p / manifest["graphs"]["encoder.fp32"]["file"], cfg), precision, device,
                        max_batch or 16)


def encoder_from_graph(graph: Path, cfg: EncoderConfig):
    """The reference encoder with the weights of an fp32 encoder graph (needs torch and onnx)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from ..reference.encoder import Encoder, encoder_param_shapes

    model = onnx.load(str(graph))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    sd = {}
    for key, shape in encoder_param_shapes(cfg).items():
        if key == "patch_embed.proj.weight":
            # the graph holds the tubelet-folded kernel; an even split gives back a Conv3d kernel that
            # computes the same on a repeated frame (the only way the planner encodes)
            folded = inits[f"{key}.folded:float32"]
            sd[key] = np.repeat(folded[:, :, None] / cfg.tubelet_size, cfg.tubelet_size, axis=2)
            continue
        name = f"{key}.T:float32" if f"{key}.T:float32" in inits else f"{key}:float32"
        a = inits[name].T if name.endswith(".T:float32") else inits[name]
        sd[key] = a.reshape(shape)
    m = Encoder(cfg)
    m.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()})
    return m.eval()

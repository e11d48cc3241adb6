"""The reference model behind the `Runtime` interface (backend `torch-reference`): the parity
baseline on CPU and CUDA.

Its cache is preallocated like the other backends' (per block [max batch, heads, max tokens,
head_dim] for keys and values, each frame written in place), but the reference attention
concatenates past and new keys into a temporary every frame: this backend is the parity
baseline, not the fast path (that is `fast.py`, backend `torch`). A staged context is uploaded
once and broadcast on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...config import PredictorConfig
from ...errors import BackendUnavailable, VitacError
from ...precision import precision as get_precision
from ..base import Runtime
from . import BACKEND
from ..staging import StagedFrames
from .features import device_tensor, raw_equivalent


def _import_torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("the torch backend needs PyTorch: pip install 'vitac-deploy[export]'") from None
    return torch


class TorchRuntime(Runtime):
    backend = "torch-reference"
    memory_layout = BACKEND.memory_layout
    cache = "reference"   # its own preallocated cache, written in place; no ONNX contract

    def __init__(self, model, precision: str = "fp32", device: str = "cpu",
                 max_batch: Optional[int] = None, max_frames: Optional[int] = None, compile: bool = False):
        torch = self._torch = _import_torch()
        super().__init__(model.cfg, precision, device, max_batch, max_frames)
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch has no CUDA device here")
        self.dtype = get_precision(precision).torch_dtype(torch)
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.compiled = compile
        if compile:
            # the blocks only (rope tables and the frame index stay eager); dynamic: the cache
            # length changes every frame, and one graph (two with the empty first cache) serves all
            self.model.run_blocks = torch.compile(self.model.run_blocks, dynamic=True)
            self.backend = "torch-reference-compile"
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    @classmethod
    def from_artifact(cls, path: Path, manifest: dict[str, Any], precision: str, device: str,
                      max_batch: Optional[int], max_frames: Optional[int], compile: bool = False) -> "TorchRuntime":
        """The reference model with the weights of the artifact's float32 graph."""
        return cls(reference_from_artifact(path, manifest), precision, device, max_batch, max_frames, compile)

    def _allocate(self, batch: int) -> None:
        torch, cfg = self._torch, self.cfg
        shape = (batch, cfg.num_heads, self.max_frames * cfg.tokens_per_step, cfg.head_dim)
        self._k = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(cfg.depth)]
        self._v = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(cfg.depth)]
        self._last = None
        self._last_raw = None

    def _upload(self, a: np.ndarray, dtype=None):
        """A host array on the device (counted)."""
        self._sent(a.nbytes)
        return self._torch.tensor(a, device=self.device, dtype=dtype)

    def _run(self, features: Optional[np.ndarray], cond: dict[str, np.ndarray]) -> None:
        torch, cfg, B = self._torch, self.cfg, self.batch
        P, L = self.frames * cfg.tokens_per_step, cfg.tokens_per_step
        t = lambda a: self._upload(a, self.dtype)[:, None]  # noqa: E731
        with torch.no_grad():
            if features is None:
                h = self.model.normalize(self._last_raw.float()).to(self.dtype)
            elif isinstance(features, StagedFrames):   # normalized at batch 1, broadcast on the device
                rows = [self.model.normalize(self._context[r:r + 1, features.t]).to(self.dtype).expand(hi - lo, -1, -1)
                        for lo, hi, r in features.groups]
                h = rows[0] if len(rows) == 1 else torch.cat(rows)
            else:
                h = self.model.normalize(self._upload(features)).to(self.dtype)
            cache = [(k[:B, :, :P], v[:B, :, :P]) for k, v in zip(self._k, self._v)] if P else None
            out, new = self.model.forward_frames(h[:, None], t(cond["action"]), t(cond["state"]),
                                                 t(cond["extrinsics"]) if "extrinsics" in cond else None,
                                                 cache, start=self.frames)
            for i, (k, v) in enumerate(new):
                self._k[i][:B, :, P:P + L] = k[:, :, P:]
                self._v[i][:B, :, P:P + L] = v[:, :, P:]
            self._last_raw = out[:, 0].float()
            self._last = self.model.normalize(self._last_raw)

    def _broadcast_cache(self, batch: int) -> None:
        P = self.frames * self.cfg.tokens_per_step
        for buf in self._k + self._v:
            buf[1:batch, :, :P] = buf[:1, :, :P]
        self._last_raw = self._last_raw.expand(batch, *self._last_raw.shape[1:]).contiguous()
        self._last = self._last.expand(batch, *self._last.shape[1:]).contiguous()

    @property
    def cache_bytes(self) -> int:
        """Bytes of the preallocated cache (one buffer per layer, written in place)."""
        return sum(b.numel() * b.element_size() for b in self._k + self._v) if hasattr(self, "_k") else 0

    def device_memory(self) -> Optional[dict[str, float]]:
        """Peak CUDA memory PyTorch allocated since the runtime opened (MiB); None on cpu."""
        if self.device != "cuda":
            return None
        torch = self._torch
        return {"peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                "cache_and_io_buffers_mib": sum(b.numel() * b.element_size() for b in self._k + self._v) / 2**20
                if hasattr(self, "_k") else 0.0}

    def _prediction(self) -> np.ndarray:
        out = self._last.detach().cpu().numpy().astype(np.float32, copy=True)
        self._received(out.nbytes)
        return out

    def _stage_goal(self, goal: np.ndarray) -> None:
        self._goal = self._upload(goal)

    def _device_input(self, name: str, x):
        return device_tensor(self._torch, x, self.device, name)

    def _stage_goal_device(self, goal) -> None:
        self._goal = goal.reshape(goal.shape[-2:])

    def _stage_host(self, context: np.ndarray) -> None:
        self._context = self._upload(context)

    def _stage_device(self, contexts: list, normalized: bool) -> bool:
        ctx = self._torch.cat(contexts)
        self._context = raw_equivalent(self._torch, ctx, self.cfg.feature_norm_eps) if normalized else ctx
        return True

    def _energy(self) -> np.ndarray:
        """On the runtime's device, float32 (the prediction is kept float32 whatever the precision)."""
        with self._torch.no_grad():
            e = (self._last - self._goal).abs().mean(dim=(1, 2))
        out = e.cpu().numpy().astype(np.float32)
        self._received(out.nbytes)
        return out


def reference_from_artifact(path: Path, manifest: dict[str, Any]):
    """The reference model (float32, eval) with the weights of the artifact's float32 graph."""
    _import_torch()
    from ...reference import predictor_from_graph

    cfg = PredictorConfig.from_dict(manifest["config"])
    graph = manifest["graphs"].get("step.fp32")
    if graph is None:
        raise VitacError(f"{path}: the torch backends read the weights of step.onnx (fp32), which is missing")
    cache = manifest.get("cache") or {}   # the weights are the same in every contract; the inputs are not
    _check_graph_contract(path / graph["file"], cfg, cache.get("contract", "concat"), cache.get("frames"))
    try:
        model = predictor_from_graph(path / graph["file"], cfg)
    except (KeyError, RuntimeError, ValueError) as e:   # a config that does not describe the graph
        raise VitacError(f"{path / graph['file']}: its weights do not fit the manifest's config "
                         f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}): "
                         f"the manifest was edited, re-export the artifact") from None
    return model.eval()


def _check_graph_contract(graph_path: Path, cfg: PredictorConfig, cache: str = "concat",
                          cache_frames: Optional[int] = None) -> None:
    """The fp32 step graph's inputs must be the ones `cfg` implies (names, fixed sizes): the weights
    alone do not fix the grid, so a config edited after export would run a different model."""
    import onnx

    from ...contract import step_io

    model = onnx.load(str(graph_path), load_external_data=False)
    got = {v.name: tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim)
           for v in model.graph.input}
    want = {s.name: s.shape for s in step_io(cfg, "float32", cache=cache, cache_frames=cache_frames)[0]}
    bad = sorted(set(want) ^ set(got)) or sorted(
        n for n in want if len(want[n]) != len(got[n]) or any(
            isinstance(w, int) and isinstance(g, int) and w != g for w, g in zip(want[n], got[n])))
    if bad:
        raise VitacError(f"{graph_path} does not take the inputs its manifest's config implies "
                         f"({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}): the manifest was edited, "
                         f"re-export the artifact")

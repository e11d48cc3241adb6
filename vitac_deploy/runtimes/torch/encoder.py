"""The reference encoder behind the encoder runtime interface (weights read back from the artifact's
fp32 graph): the parity baseline, on cpu or cuda. Needs torch and onnx."""

from __future__ import annotations


import numpy as np

from ...errors import BackendUnavailable
from ...precision import precision as get_precision
from ..encoder_base import EncoderRuntime
from . import BACKEND


class TorchEncoder(EncoderRuntime):
    """The reference encoder itself (weights read back from the fp32 graph), on cpu or cuda."""

    backend = BACKEND.name

    def __init__(self, model, precision: str, device: str = "cpu", max_batch: int = 16):
        super().__init__(model.cfg, precision, device, max_batch)
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch has no CUDA device here")
        self._torch = torch
        self.dtype = get_precision(precision).torch_dtype(torch)
        self.model = model.to(device=device, dtype=self.dtype).eval()

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            x = torch.from_numpy(pixels).to(self.device, self.dtype)
            clips = x[:, :, None].repeat(1, 1, self.cfg.tubelet_size, 1, 1)
            raw = self.model(clips).float()
            if self.cfg.normalize_reps:
                raw = torch.nn.functional.layer_norm(raw, (raw.shape[-1],), eps=self.cfg.feature_norm_eps)
            return raw.cpu().numpy()

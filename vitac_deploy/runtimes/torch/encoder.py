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
        pixels = self.checked_pixels(pixels)
        out = [self._features(pixels[i:i + self.max_batch]) for i in range(0, pixels.shape[0], self.max_batch)]
        return self._torch.cat(out) if len(out) > 1 else out[0]

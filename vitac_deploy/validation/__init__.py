"""Validation: does an artifact, engine or runtime reproduce the PyTorch reference?

- `metrics`: per-frame errors and the tolerances of each precision (numpy only).
- `parity`: a runtime's rollout and teacher forcing against the reference recomputing the whole
  sequence (upstream's way); run by `export` on every graph and by `validate`.
- `encoder`: the same for an encoder runtime, on camera-like frames.
- `polygraphy`: the checked steps saved for `polygraphy run` (the `polygraphy` extra).
- `layerwise`: `debug-precision`, the fp32 and fp16 graphs compared layer by layer.
"""

from .encoder import encoder_parity, validation_images
from .metrics import TOLERANCES, Tolerance, frame_errors, within
from .parity import ParityInputs, ParityReport, check_parity, reference_rollout

__all__ = ["TOLERANCES", "Tolerance", "frame_errors", "within", "ParityInputs", "ParityReport", "check_parity",
           "reference_rollout", "encoder_parity", "validation_images"]

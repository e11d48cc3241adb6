"""`EncoderConfig`: the V-JEPA 2 video encoder (a ViT over tubelets with 3-D RoPE), its presets
and JSON forms, beside `PredictorConfig` (config.py).

numpy-free and torch-free on purpose: the runtime side reads configs from manifests.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from ..errors import VitacError

# Upstream `VisionTransformer` arguments that only matter for training or other variants we do not
# export; accepted and ignored where harmless.
_UPSTREAM_IGNORED = {
    "drop_rate", "attn_drop_rate", "drop_path_rate", "init_std", "uniform_power", "norm_layer",
    "use_activation_checkpointing", "use_sdpa", "in_chans", "out_layers", "handle_nonsquare_inputs",
}
_UPSTREAM_KEYS = {"img_size", "patch_size", "num_frames", "tubelet_size", "embed_dim", "depth", "num_heads",
                  "mlp_ratio", "qkv_bias", "qk_scale", "use_rope", "use_silu", "wide_silu"}


@dataclass(frozen=True)
class EncoderConfig:
    """Shape and options of the V-JEPA 2 encoder as the planner runs it (eval, no masking)."""

    img_size: int = 256           # crop side S of the preprocessing, pixels
    patch_size: int = 16
    tubelet_size: int = 2         # frames per latent frame
    embed_dim: int = 1024         # D: the feature width the predictor takes (`PredictorConfig.embed_dim`)
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6  # LayerNorms inside the encoder (affine)
    normalize_reps: bool = True   # features out are layer-normed (no affine), as the planner uses them
    feature_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "tubelet_size", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise VitacError(f"encoder config field '{name}' must be a positive integer, got {value!r}")
        for name in ("mlp_ratio", "layer_norm_eps", "feature_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise VitacError(f"encoder config field '{name}' must be a positive number, got {value!r}")
        for name in ("qkv_bias", "normalize_reps"):
            if not isinstance(getattr(self, name), bool):
                raise VitacError(f"encoder config field '{name}' must be true or false, got {getattr(self, name)!r}")
        if self.img_size % self.patch_size:
            raise VitacError(f"encoder config: img_size {self.img_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise VitacError(f"encoder config field 'embed_dim' ({self.embed_dim}) must be divisible by "
                             f"'num_heads' ({self.num_heads})")
        if self.rope_dim < 2 or self.head_dim % 2:
            raise VitacError(f"encoder config: head_dim {self.head_dim} must be even and >= 6 for the 3-D RoPE")

    # -- derived sizes ---------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def rope_dim(self) -> int:
        """Dims rotated per axis (time, row, col): 2 * ((head_dim // 3) // 2); the rest are last."""
        return 2 * ((self.head_dim // 3) // 2)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        """N: tokens of one latent frame."""
        return self.grid * self.grid

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def num_parameters(self) -> int:
        D, h, p, t = self.embed_dim, self.mlp_hidden, self.patch_size, self.tubelet_size
        block = 4 * D + (D * 3 * D + (3 * D if self.qkv_bias else 0)) + (D * D + D) + (D * h + h + h * D + D)
        return (3 * t * p * p * D + D) + self.depth * block + 2 * D

    def frame_flops(self) -> int:
        """FLOPs (2 x multiply-adds) to encode one frame the planner's way (one latent frame)."""
        N, D, h, p = self.tokens_per_frame, self.embed_dim, self.mlp_hidden, self.patch_size
        per_block = N * (3 * D * D + D * D + 2 * D * h) + 2 * N * N * D
        return 2 * (N * 3 * p * p * D + self.depth * per_block)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "EncoderConfig":
        """A named encoder: see `ENCODER_PRESETS`."""
        try:
            return ENCODER_PRESETS[name]
        except KeyError:
            raise VitacError(f"unknown encoder preset '{name}' (known: {', '.join(sorted(ENCODER_PRESETS))})") from None

    @classmethod
    def resolve(cls, config: Optional[str | os.PathLike] = None, preset: Optional[str] = None) -> "EncoderConfig":
        """A config JSON (ours, upstream kwargs, or a golden file's `encoder_kwargs`) wins over a
        preset; vit-l otherwise."""
        return cls.from_json(config) if config is not None else cls.preset(preset or DEFAULT_ENCODER)

    @classmethod
    def from_upstream(cls, kwargs: Mapping[str, Any]) -> "EncoderConfig":
        """Map upstream `VisionTransformer(**kwargs)` arguments (the golden files' `encoder_kwargs`)."""
        kw = dict(kwargs)
        unknown = set(kw) - _UPSTREAM_KEYS - _UPSTREAM_IGNORED
        if unknown:
            raise VitacError(f"unknown upstream encoder argument(s): {', '.join(sorted(unknown))}")
        if not kw.get("use_rope", True):
            raise VitacError("upstream encoder argument 'use_rope' = false is not supported (V-JEPA 2 uses RoPE)")
        if kw.get("use_silu", False):
            raise VitacError("upstream encoder argument 'use_silu' = true is not supported (V-JEPA 2 encoders use GELU)")
        if kw.get("qk_scale") is not None:
            raise VitacError("upstream encoder argument 'qk_scale' is not supported (the scale is head_dim ** -0.5)")
        img = kw.get("img_size", 224)
        if not isinstance(img, int):
            if len(img) != 2 or img[0] != img[1]:
                raise VitacError(f"upstream encoder 'img_size' {img!r}: only square crops are supported")
            img = img[0]
        return cls(img_size=img, patch_size=kw.get("patch_size", 16), tubelet_size=kw.get("tubelet_size", 2),
                   embed_dim=kw.get("embed_dim", 768), depth=kw.get("depth", 12), num_heads=kw.get("num_heads", 12),
                   mlp_ratio=float(kw.get("mlp_ratio", 4.0)), qkv_bias=kw.get("qkv_bias", True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EncoderConfig":
        """From its own JSON form, upstream kwargs, or a golden file (`encoder_kwargs`)."""
        if not isinstance(data, Mapping):
            raise VitacError("an encoder config must be a JSON object")
        if "encoder_kwargs" in data:
            return cls.from_upstream(data["encoder_kwargs"])
        own = {f.name for f in fields(cls)}
        if set(data) <= own:
            return cls(**data)
        if set(data) <= _UPSTREAM_KEYS | _UPSTREAM_IGNORED:
            return cls.from_upstream(data)
        raise VitacError(f"unknown encoder config field(s): {', '.join(sorted(set(data) - own))}")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "EncoderConfig":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise VitacError(f"encoder config file not found: {path}") from None
        except (OSError, json.JSONDecodeError) as e:
            raise VitacError(f"cannot read encoder config {path}: {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ENCODER_PRESETS: dict[str, EncoderConfig] = {
    # The published V-JEPA 2 encoders at 256 px (patch 16, tubelet 2).
    "vit-l": EncoderConfig(embed_dim=1024, depth=24, num_heads=16),
    "vit-g": EncoderConfig(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
    # The built-in demo encoder: the default predictor's feature width (1024), fewer blocks so the
    # whole camera-to-action pipeline runs in about two minutes on two CPU cores. Random weights.
    "vit-l-demo": EncoderConfig(embed_dim=1024, depth=4, num_heads=16),
    # The encoder of the `franka-small` predictor (feature width 256): 256 px, patch 16, head_dim
    # 64 as ViT-g's (RoPE 20/20/20 + 4 unrotated). Random weights; seconds per frame pair on a CPU.
    "vit-small": EncoderConfig(embed_dim=256, depth=4, num_heads=4),
}
# which encoder preset goes with a predictor preset (same feature width)
DEFAULT_ENCODER = "vit-l"
ENCODER_FOR_PREDICTOR = {"vitac-l384": "vit-l", "vjepa2-ac-vitg": "vit-g", "franka-small": "vit-small"}

"""`PredictorConfig`: every option of the upstream ViT-AC predictor, its presets and JSON forms.

numpy-free and torch-free on purpose: the runtime side reads configs from manifests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from .errors import VitacError

# Upstream constructor arguments that only matter for training; accepted and ignored.
_UPSTREAM_TRAINING_ONLY = {
    "drop_rate", "attn_drop_rate", "drop_path_rate", "init_std", "uniform_power",
    "use_activation_checkpointing", "norm_layer", "use_sdpa",
}


@dataclass(frozen=True)
class PredictorConfig:
    """Shape and options of the action-conditioned ViT predictor (V-JEPA 2 "ViT-AC")."""

    embed_dim: int = 1024            # encoder feature dim (input and output of the predictor)
    predictor_embed_dim: int = 384   # width of the predictor blocks
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    action_dim: int = 2              # upstream `action_embed_dim`: actions and states share it
    grid_height: int = 16
    grid_width: int = 16
    max_frames: int = 8              # latent frames the upstream mask was built for
    use_extrinsics: bool = False
    use_silu: bool = False           # SwiGLU MLP instead of GELU
    wide_silu: bool = True
    layer_norm_eps: float = 1e-6     # LayerNorms inside the predictor
    normalize_reps: bool = True      # layer-norm (no affine) features in and predictions out
    feature_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("embed_dim", "predictor_embed_dim", "depth", "num_heads", "action_dim",
                     "grid_height", "grid_width", "max_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise VitacError(f"config field '{name}' must be a positive integer, got {value!r}")
        for name in ("mlp_ratio", "layer_norm_eps", "feature_norm_eps"):
            value = getattr(self, name)
            # finite too: 1e400 parses as inf, and a manifest cannot hold it as JSON
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value <= 0:
                raise VitacError(f"config field '{name}' must be a positive finite number, got {value!r}")
        for name in ("qkv_bias", "use_extrinsics", "use_silu", "wide_silu", "normalize_reps"):
            if not isinstance(getattr(self, name), bool):
                raise VitacError(f"config field '{name}' must be true or false, got {getattr(self, name)!r}")
        if self.predictor_embed_dim % self.num_heads:
            raise VitacError(
                f"config field 'predictor_embed_dim' ({self.predictor_embed_dim}) must be divisible by "
                f"'num_heads' ({self.num_heads})")
        if self.rope_dim < 2:
            raise VitacError(
                f"config field 'num_heads': head_dim {self.head_dim} is too small for the 3-D RoPE "
                f"(needs head_dim >= 6 so that each of time/row/col gets 2 dims)")
        if self.head_dim % 2:
            raise VitacError(f"config field 'num_heads': head_dim {self.head_dim} must be even")
        if self.use_extrinsics and self.action_dim < 2:
            raise VitacError("config field 'action_dim' must be >= 2 with use_extrinsics (extrinsics are action_dim-1)")

    # -- derived sizes ---------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.predictor_embed_dim // self.num_heads

    @property
    def rope_dim(self) -> int:
        """Dims rotated per axis (time, row, col): 2 * ((head_dim // 3) // 2)."""
        return 2 * ((self.head_dim // 3) // 2)

    @property
    def tokens_per_frame(self) -> int:
        """N: patch tokens per latent frame."""
        return self.grid_height * self.grid_width

    @property
    def cond_tokens(self) -> int:
        """K: conditioning tokens per frame (action, state[, extrinsics]), placed first."""
        return 3 if self.use_extrinsics else 2

    @property
    def tokens_per_step(self) -> int:
        """K + N: tokens one frame adds to the KV cache."""
        return self.cond_tokens + self.tokens_per_frame

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.predictor_embed_dim * self.mlp_ratio)
        if self.use_silu and self.wide_silu:
            hidden = (int(2 * hidden / 3) + 7) // 8 * 8
        return hidden

    def num_parameters(self) -> int:
        d, D, A, h = self.predictor_embed_dim, self.embed_dim, self.action_dim, self.mlp_hidden
        mlp = (2 * (d * h + h) + h * d + d) if self.use_silu else (d * h + h + h * d + d)
        block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + mlp
        return (D * d + d) + 2 * (A * d + d) + ((A - 1) * d + d) + self.depth * block + 2 * d + (d * D + D)

    def kv_bytes_per_frame(self, bytes_per_element: int) -> int:
        """KV-cache bytes one frame adds for one batch element (keys and values, every block)."""
        return 2 * self.depth * self.tokens_per_step * self.predictor_embed_dim * bytes_per_element

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "PredictorConfig":
        """A named configuration: see `PRESETS`."""
        try:
            return PRESETS[name]
        except KeyError:
            raise VitacError(f"unknown preset '{name}' (known: {', '.join(sorted(PRESETS))})") from None

    @classmethod
    def resolve(cls, config: Optional[str | os.PathLike] = None, preset: Optional[str] = None) -> "PredictorConfig":
        """A config JSON (ours or upstream kwargs) wins over a preset; the default preset otherwise."""
        return cls.from_json(config) if config is not None else cls.preset(preset or DEFAULT_PRESET)

    @classmethod
    def from_upstream(cls, kwargs: Mapping[str, Any]) -> "PredictorConfig":
        """Map upstream `VisionTransformerPredictorAC(**kwargs)` arguments to a config."""
        kw = dict(kwargs)
        unknown = set(kw) - _UPSTREAM_KEYS - _UPSTREAM_TRAINING_ONLY
        if unknown:
            raise VitacError(f"unknown upstream predictor argument(s): {', '.join(sorted(unknown))}")
        if not kw.get("use_rope", True):
            raise VitacError("upstream argument 'use_rope' = false is not supported (the ViT-AC predictor uses RoPE)")
        if not kw.get("is_frame_causal", True):
            raise VitacError("upstream argument 'is_frame_causal' = false is not supported (no KV cache without it)")
        if kw.get("qk_scale") is not None:
            raise VitacError("upstream argument 'qk_scale' is not supported (the scale is head_dim ** -0.5)")
        def positive_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        img = kw.get("img_size", 224)
        img_hw = (img, img) if positive_int(img) else tuple(img) if isinstance(img, (list, tuple)) else ()
        if len(img_hw) != 2 or not all(positive_int(v) for v in img_hw):
            raise VitacError(f"upstream 'img_size' must be a positive integer or [height, width], got {img!r}")
        img_h, img_w = img_hw
        patch = kw.get("patch_size", 16)
        if not positive_int(patch) or img_h % patch or img_w % patch:
            raise VitacError(f"upstream 'img_size' {img!r} is not a multiple of 'patch_size' {patch!r}")
        num_frames, tubelet = kw.get("num_frames", 1), kw.get("tubelet_size", 2)
        for name, value in (("num_frames", num_frames), ("tubelet_size", tubelet)):
            if not positive_int(value):
                raise VitacError(f"upstream '{name}' must be a positive integer, got {value!r}")
        if num_frames < tubelet:
            raise VitacError(f"upstream 'num_frames' {num_frames} is less than one tubelet ({tubelet})")
        mlp_ratio = kw.get("mlp_ratio", 4.0)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)):
            raise VitacError(f"upstream 'mlp_ratio' must be a number, got {mlp_ratio!r}")
        return cls(
            embed_dim=kw.get("embed_dim", 768),
            predictor_embed_dim=kw.get("predictor_embed_dim", 1024),
            depth=kw.get("depth", 24),
            num_heads=kw.get("num_heads", 16),
            mlp_ratio=float(mlp_ratio),
            qkv_bias=kw.get("qkv_bias", True),
            action_dim=kw.get("action_embed_dim", 7),
            grid_height=img_h // patch,
            grid_width=img_w // patch,
            max_frames=num_frames // tubelet,
            use_extrinsics=kw.get("use_extrinsics", False),
            use_silu=kw.get("use_silu", False),
            wide_silu=kw.get("wide_silu", True),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PredictorConfig":
        """A config from its own JSON form, or from upstream kwargs (told apart by their keys)."""
        if not isinstance(data, Mapping):
            raise VitacError("a config must be a JSON object")
        if "upstream_kwargs" in data:  # a golden-style file
            if not isinstance(data["upstream_kwargs"], Mapping):
                raise VitacError("'upstream_kwargs' must be a JSON object")
            return cls.from_upstream(data["upstream_kwargs"])
        own = {f.name for f in fields(cls)}
        if set(data) <= own:
            return cls(**data)
        if set(data) & {"img_size", "patch_size", "predictor_embed_dim", "action_embed_dim"} and not set(data) & {"grid_height", "action_dim"}:
            return cls.from_upstream(data)
        raise VitacError(f"unknown config field(s): {', '.join(sorted(set(data) - own))}")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "PredictorConfig":
        """Read a `PredictorConfig` JSON or a JSON of upstream constructor kwargs."""
        def no_constant(name: str) -> Any:
            raise ValueError(f"{name} is not a JSON number")

        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f, parse_constant=no_constant)
        except FileNotFoundError:
            raise VitacError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise VitacError(f"cannot read config {path}: it is a directory") from None
        # ValueError: bad JSON, not UTF-8, NaN/Infinity; RecursionError: absurdly deep nesting
        except (OSError, ValueError, RecursionError) as e:
            raise VitacError(f"cannot read config {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


_UPSTREAM_KEYS = {
    "img_size", "patch_size", "num_frames", "tubelet_size", "embed_dim", "predictor_embed_dim",
    "depth", "num_heads", "mlp_ratio", "qkv_bias", "qk_scale", "action_embed_dim", "use_extrinsics",
    "use_silu", "wide_silu", "use_rope", "is_frame_causal",
}

PRESETS: dict[str, PredictorConfig] = {
    # The project's default: ViT-L features (1024) -> 384-wide predictor, 16x16 grid, 2-D actions.
    "vitac-l384": PredictorConfig(),
    # The published V-JEPA 2-AC predictor (ViT-g encoder, 256 px, patch 16, 64 frames / tubelet 2).
    "vjepa2-ac-vitg": PredictorConfig(
        embed_dim=1408, predictor_embed_dim=1024, depth=24, num_heads=16, action_dim=7,
        grid_height=16, grid_width=16, max_frames=32),
    # The published model's shape rules at a size a laptop CPU plans with in seconds: the Franka
    # action space (7: xyz, extrinsic xyz Euler angles, gripper), 256 px crops (16 x 16 tokens per
    # frame), head_dim 32 (RoPE 10/10/10 + 2 unrotated, as head_dim 64 leaves 4). Its encoder
    # preset is `vit-small` (encoder/config.py). For the quick start, the demo and the examples.
    "franka-small": PredictorConfig(
        embed_dim=256, predictor_embed_dim=128, depth=4, num_heads=4, action_dim=7,
        grid_height=16, grid_width=16, max_frames=8),
}
DEFAULT_PRESET = "vitac-l384"

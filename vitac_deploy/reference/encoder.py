"""The V-JEPA 2 video encoder in one file: a ViT over tubelets with 3-D RoPE, inference only.

Parameter names are the upstream ones (`patch_embed.proj`, `blocks.{i}.*`, `norm`), so the
`"encoder"` entry of a published checkpoint loads as it is. `forward` runs a clip (consecutive
frames as tubelets); `encode_frames` is how the planner encodes observations: every frame
repeated into its own tubelet, one latent frame each (docs/planner.md section 2).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoder.config import EncoderConfig
from ..errors import VitacError
from ..rope import encoder_tables
from .init import recipe_state_dict
from .model import apply_rope, normalize_features


class PatchEmbed(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        k = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)   # [B, D, T', g, g] -> [B, T'*g*g, D]


class Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        D = cfg.embed_dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(D, 3 * D, bias=cfg.qkv_bias)
        self.proj = nn.Linear(D, D)

    def forward(self, x, cos, sin):
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)       # full attention, no mask
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(cfg.embed_dim, cfg.mlp_hidden), nn.Linear(cfg.mlp_hidden, cfg.embed_dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))                 # exact (erf) GELU, as upstream


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        D, eps = cfg.embed_dim, cfg.layer_norm_eps
        self.norm1, self.norm2 = nn.LayerNorm(D, eps=eps), nn.LayerNorm(D, eps=eps)
        self.attn, self.mlp = Attention(cfg), MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """Upstream `VisionTransformer` (video, RoPE), inference only."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, T, S, S] (preprocessed) -> raw features [B, (T // tubelet) * N, D]."""
        cfg = self.cfg
        if pixels.dim() != 5 or pixels.shape[1] != 3 or tuple(pixels.shape[3:]) != (cfg.img_size, cfg.img_size):
            raise VitacError(f"pixels must be [B, 3, T, {cfg.img_size}, {cfg.img_size}], got {list(pixels.shape)}")
        T = pixels.shape[2] // cfg.tubelet_size * cfg.tubelet_size   # an odd last frame is dropped
        if T == 0:
            raise VitacError(f"a clip needs at least {cfg.tubelet_size} frames, got {pixels.shape[2]}")
        x = self.patch_embed(pixels[:, :, :T])
        cos, sin = (torch.from_numpy(a).to(x.device, x.dtype) for a in encoder_tables(cfg, T // cfg.tubelet_size))
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.norm(x)

    @torch.no_grad()
    def encode_frames(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The planner's way: pixels [B, 3, T, S, S] -> features [B, T*N, D], each frame repeated
        into a tubelet of its own; layer-normed (no affine) when `normalize` and the config says so."""
        B, _, T, S, _ = pixels.shape
        clips = pixels.permute(0, 2, 1, 3, 4).reshape(B * T, 3, 1, S, S).repeat(1, 1, self.cfg.tubelet_size, 1, 1)
        out = self(clips).reshape(B, T * self.cfg.tokens_per_frame, self.cfg.embed_dim)
        if normalize and self.cfg.normalize_reps:
            out = normalize_features(out, self.cfg.feature_norm_eps)
        return out


def encoder_param_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every upstream state_dict key of the encoder with its shape."""
    D, h, p, t = cfg.embed_dim, cfg.mlp_hidden, cfg.patch_size, cfg.tubelet_size
    shapes: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (D, 3, t, p, p), "patch_embed.proj.bias": (D,)}
    for i in range(cfg.depth):
        b = f"blocks.{i}"
        shapes.update({f"{b}.norm1.weight": (D,), f"{b}.norm1.bias": (D,), f"{b}.attn.qkv.weight": (3 * D, D),
                       f"{b}.attn.proj.weight": (D, D), f"{b}.attn.proj.bias": (D,), f"{b}.norm2.weight": (D,),
                       f"{b}.norm2.bias": (D,), f"{b}.mlp.fc1.weight": (h, D), f"{b}.mlp.fc1.bias": (h,),
                       f"{b}.mlp.fc2.weight": (D, h), f"{b}.mlp.fc2.bias": (D,)})
        if cfg.qkv_bias:
            shapes[f"{b}.attn.qkv.bias"] = (3 * D,)
    shapes.update({"norm.weight": (D,), "norm.bias": (D,)})
    return shapes


def random_encoder(cfg: EncoderConfig, seed: int = 0) -> Encoder:
    """An encoder with seeded random weights (the golden recipe), eval mode, float32."""
    model = Encoder(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in
                           recipe_state_dict(encoder_param_shapes(cfg), seed).items()})
    model.weights_source = {"checkpoint": None, "random_init_seed": seed}   # export records it in the manifest
    return model.eval()

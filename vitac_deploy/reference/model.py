"""The ViT-AC predictor of V-JEPA 2 in one file, with a per-frame KV cache.

Parameter names are the upstream ones, so published checkpoints load as they are.
Every path (full sequence, cached step, rollout) goes through `forward_frames`, which runs
T new frames on top of an optional cache of the frames before them; the block-causal mask
makes that exactly equal to recomputing the whole sequence (see docs/model.md).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import PredictorConfig
from ..errors import VitacError
from ..rope import frame_tables

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per block: keys, values [B, heads, L, head_dim]


def normalize_features(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Layer norm over the feature axis without affine: how upstream feeds and compares features."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    y = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)  # adjacent pairs
    return x * cos + y * sin


class Attention(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        d = cfg.predictor_embed_dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.qkv_bias)
        self.proj = nn.Linear(d, d)

    def forward(self, x, cos, sin, mask, past):
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, C)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        d, h = cfg.predictor_embed_dim, cfg.mlp_hidden
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        d, h = cfg.predictor_embed_dim, cfg.mlp_hidden
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))


class Block(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        d, eps = cfg.predictor_embed_dim, cfg.layer_norm_eps
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.attn = Attention(cfg)
        self.mlp = SwiGLU(cfg) if cfg.use_silu else MLP(cfg)

    def forward(self, x, cos, sin, mask, past):
        a, kv = self.attn(self.norm1(x), cos, sin, mask, past)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


class Predictor(nn.Module):
    """`VisionTransformerPredictorAC`, inference only."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        D, d, A = cfg.embed_dim, cfg.predictor_embed_dim, cfg.action_dim
        self.predictor_embed = nn.Linear(D, d)
        self.action_encoder = nn.Linear(A, d)
        self.state_encoder = nn.Linear(A, d)
        self.extrinsics_encoder = nn.Linear(A - 1, d)  # always in upstream checkpoints
        self.predictor_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.predictor_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.predictor_proj = nn.Linear(d, D)

    # -- the one code path ------------------------------------------------------------------------
    def _rope(self, start: int, frames: int, ref: torch.Tensor):
        """cos, sin [frames*(K+N), head_dim]; built in float64, then cast, for exactness."""
        cos, sin = zip(*(frame_tables(self.cfg, t) for t in range(start, start + frames)))
        return (torch.from_numpy(np.concatenate(cos)).to(ref.device, ref.dtype),
                torch.from_numpy(np.concatenate(sin)).to(ref.device, ref.dtype))

    def forward_frames(self, h: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                       extrinsics: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None,
                       start: int = 0) -> tuple[torch.Tensor, KVCache]:
        """Run frames start..start+T-1 given the cache of frames 0..start-1.

        h: normalized features [B, T, N, embed_dim]; actions/states [B, T, A]; extrinsics [B, T, A-1].
        Returns the raw predictions [B, T, N, embed_dim] (frame t predicts t+1) and the grown cache.
        """
        cfg = self.cfg
        B, T, N, _ = h.shape
        if start + T > cfg.max_frames:
            raise VitacError(
                f"{start + T} latent frames exceed the configured max_frames={cfg.max_frames} "
                f"(the upstream attention mask covers only that many)")
        x = self.predictor_embed(h)
        cond = [self.action_encoder(actions), self.state_encoder(states)]
        if cfg.use_extrinsics:
            if extrinsics is None:
                raise VitacError("this config uses extrinsics: pass extrinsics [B, T, action_dim-1]")
            cond.append(self.extrinsics_encoder(extrinsics))
        x = torch.cat([c.unsqueeze(2) for c in cond] + [x], dim=2).flatten(1, 2)  # [B, T*(K+N), d]

        cos, sin = self._rope(start, T, x)
        mask = None
        if T > 1:  # block-causal among the new frames; all cached frames are earlier, so visible
            L = cfg.tokens_per_step
            q_frame = torch.arange(start, start + T, device=x.device).repeat_interleave(L)
            k_frame = torch.arange(start + T, device=x.device).repeat_interleave(L)
            mask = k_frame[None, :] <= q_frame[:, None]
        x, new_cache = self.run_blocks(x, cos, sin, mask, cache)
        x = x.view(B, T, cfg.tokens_per_step, -1)[:, :, cfg.cond_tokens:]
        return self.predictor_proj(self.predictor_norm(x)), new_cache

    def run_blocks(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Optional[torch.Tensor],
                   cache: Optional[KVCache]) -> tuple[torch.Tensor, KVCache]:
        """The transformer blocks alone: tensors in, tensors out (what torch.compile wraps; the
        frame index stays outside, so one graph serves every cache length)."""
        new_cache: KVCache = []
        for i, blk in enumerate(self.predictor_blocks):
            x, kv = blk(x, cos, sin, mask, None if cache is None else cache[i])
            new_cache.append(kv)
        return x, new_cache

    # -- upstream semantics -----------------------------------------------------------------------
    def forward(self, features: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                extrinsics: Optional[torch.Tensor] = None) -> torch.Tensor:
        """features [B, T*N, embed_dim] (normalized), actions/states [B, T, A] -> raw [B, T*N, embed_dim]."""
        cfg = self.cfg
        B, TN, D = features.shape
        N = cfg.tokens_per_frame
        if TN % N or D != cfg.embed_dim:
            raise VitacError(f"features must be [B, T*{N}, {cfg.embed_dim}], got {list(features.shape)}")
        T = TN // N
        _check_cond(cfg, actions, states, extrinsics, B, T)
        out, _ = self.forward_frames(features.view(B, T, N, D), actions[:, :T], states[:, :T],
                                     None if extrinsics is None else extrinsics[:, :T])
        return out.flatten(1, 2)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_features(x, self.cfg.feature_norm_eps) if self.cfg.normalize_reps else x

    @torch.no_grad()
    def rollout(self, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor, horizon: int,
                extrinsics: Optional[torch.Tensor] = None, use_cache: bool = True) -> torch.Tensor:
        """Autoregressive rollout from RAW context features [B, C, N, D].

        actions/states [B, C+horizon-1, A] (entry t goes with frame t). Returns the normalized
        predictions of frames C..C+horizon-1, [B, horizon, N, D]. `use_cache=False` recomputes the
        whole sequence every step, as upstream does.
        """
        cfg = self.cfg
        if context.dim() != 4 or tuple(context.shape[2:]) != (cfg.tokens_per_frame, cfg.embed_dim):
            raise VitacError(f"context must be [B, C, {cfg.tokens_per_frame}, {cfg.embed_dim}], "
                             f"got {list(context.shape)}")
        if horizon < 1:
            raise VitacError(f"horizon must be >= 1, got {horizon}")
        B, C = context.shape[:2]
        frames = C + horizon - 1
        if frames > cfg.max_frames:
            raise VitacError(f"context {C} + horizon {horizon} - 1 = {frames} latent frames exceed "
                             f"max_frames={cfg.max_frames}")
        _check_cond(cfg, actions, states, extrinsics, B, frames)
        e = (lambda a, b: None) if extrinsics is None else (lambda a, b: extrinsics[:, a:b])
        seq = self.normalize(context)
        preds = []
        if use_cache:
            out, cache = self.forward_frames(seq, actions[:, :C], states[:, :C], e(0, C))
            for f in range(C, C + horizon):
                preds.append(self.normalize(out[:, -1]))
                if f < C + horizon - 1:
                    out, cache = self.forward_frames(preds[-1][:, None], actions[:, f:f + 1],
                                                     states[:, f:f + 1], e(f, f + 1), cache, start=f)
        else:
            for f in range(C, C + horizon):
                out, _ = self.forward_frames(seq, actions[:, :f], states[:, :f], e(0, f))
                preds.append(self.normalize(out[:, -1]))
                seq = torch.cat([seq, preds[-1][:, None]], dim=1)
        return torch.stack(preds, dim=1)


def _check_cond(cfg: PredictorConfig, actions, states, extrinsics, B: int, T: int) -> None:
    A = cfg.action_dim
    for name, t, width in (("actions", actions, A), ("states", states, A)) + (
            (("extrinsics", extrinsics, A - 1),) if cfg.use_extrinsics else ()):
        if t is None or t.dim() != 3 or t.shape[0] != B or t.shape[1] < T or t.shape[2] != width:
            got = None if t is None else list(t.shape)
            raise VitacError(f"{name} must be [{B}, >={T}, {width}], got {got}")

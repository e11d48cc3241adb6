"""The encoder's ONNX graph, emitted node by node like the predictor's step graph (step_graph.py).

It encodes the planner's way: a batch of single frames, each the encoder's clip of that frame
repeated into one tubelet. Two identical frames under a Conv3d of temporal kernel 2 are one
Conv2d with the two temporal slices of the kernel summed (exact up to float rounding), so the
graph takes `pixels` [batch, 3, S, S] and its patch embedding is a Conv. Every frame is latent
frame 0, so the RoPE tables are constants. Output: `features` [batch, N, D], layer-normed
without affine as the predictor takes them (`features_raw` beside it, before that norm).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..encoder.config import EncoderConfig
from ..rope import encoder_tables
from .step_graph import _NP, DEFAULT_OPSET, StepGraphBuilder

BATCH = "batch"


def encoder_io(cfg: EncoderConfig) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """(name, shape) of the encoder graph's inputs and outputs: its ONNX contract, float32 at both ends."""
    S, N, D = cfg.img_size, cfg.tokens_per_frame, cfg.embed_dim
    return [("pixels", [BATCH, 3, S, S])], [("features", [BATCH, N, D]), ("features_raw", [BATCH, N, D])]


class EncoderGraphBuilder(StepGraphBuilder):
    """Emit the per-frame encoder graph of `cfg` with `weights` (upstream key names).

    "fp16": float16 weights, matmuls and residual stream; float32 pixels in, LayerNorm statistics
    and features out (the same float32 islands as the predictor's graph)."""

    def __init__(self, cfg: EncoderConfig, weights: Mapping[str, np.ndarray], precision: str = "fp32",
                 opset: int = DEFAULT_OPSET):
        super().__init__(cfg, weights, precision, first_frame=True, opset=opset)   # cfg: duck-typed

    def block_norm(self, x: str, prefix: str) -> str:
        return self._to_cd(self.layer_norm(self._to_f32(x), prefix, self.cfg.layer_norm_eps,
                                           self.cfg.embed_dim, prefix))

    def patch_embed(self) -> str:
        cfg, g = self.cfg, self.g
        w = np.asarray(self.w["patch_embed.proj.weight"], dtype=np.float64).sum(axis=2)   # fold the tubelet
        kernel = g.const(f"patch_embed.proj.weight.folded:{self.cd}", w.astype(_NP[self.cd]))
        bias = self._w("patch_embed.proj.bias")
        y = g.one("Conv", [self._to_cd("pixels"), kernel, bias], "patch_embed.proj",
                  kernel_shape=[cfg.patch_size] * 2, strides=[cfg.patch_size] * 2)       # [B, D, g, g]
        y = g.one("Reshape", [y, self._ints(0, cfg.embed_dim, cfg.tokens_per_frame)], "patch_embed.flatten")
        return g.one("Transpose", [y], "patch_embed.tokens", perm=[0, 2, 1])               # [B, N, D]

    def attention(self, x: str, i: int, cos: str, sin: str) -> str:
        cfg, p = self.cfg, f"blocks.{i}.attn"
        q, k, v = self.qkv_heads(x, p, cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim, cos, sin)
        return self.attend(q, k, v, p, cfg.tokens_per_frame, cfg.embed_dim)   # full attention, no mask

    def mlp(self, x: str, i: int) -> str:
        p = f"blocks.{i}.mlp"
        return self.linear(self.gelu(self.linear(x, f"{p}.fc1"), f"{p}.gelu"), f"{p}.fc2")

    def build(self) -> onnx.ModelProto:
        cfg, g = self.cfg, self.g
        x = self.patch_embed()
        cos, sin = encoder_tables(cfg, 1)
        cos = g.const("rope_cos", cos[None, None].astype(_NP[self.cd]))   # [1, 1, N, hd]: every head
        sin = g.const("rope_sin", sin[None, None].astype(_NP[self.cd]))
        for i in range(cfg.depth):
            b = f"blocks.{i}"
            x = g.one("Add", [x, self.attention(self.block_norm(x, f"{b}.norm1"), i, cos, sin)], f"{b}.residual1")
            x = g.one("Add", [x, self.mlp(self.block_norm(x, f"{b}.norm2"), i)], f"{b}.residual2")
        x = self.layer_norm(self._to_f32(x), "norm", cfg.layer_norm_eps, cfg.embed_dim, "norm")
        g.op("Identity", [x], out_names=["features_raw"])
        if cfg.normalize_reps:
            x = self.layer_norm(x, None, cfg.feature_norm_eps, cfg.embed_dim, "normalize_features")
        g.op("Identity", [x], out_names=["features"])
        inputs, outputs = encoder_io(cfg)
        graph = helper.make_graph(
            g.nodes, f"vitac_encoder_{self.precision}",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            initializer=list(g.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="vitac-deploy")
        model.ir_version = min(model.ir_version, 8 if self.opset <= 17 else 9)
        return model


def build_encoder_graph(cfg: EncoderConfig, weights: Mapping[str, np.ndarray], precision: str = "fp32",
                        opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The per-frame encoder graph of `cfg` as an in-memory ONNX model."""
    return EncoderGraphBuilder(cfg, weights, precision, opset).build()

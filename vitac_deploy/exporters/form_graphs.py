"""The step graph in the forms runtimes fuse (`vitac_deploy.graph_forms`): same IO contract, same
computation, other operators. Each builder reuses `StepGraphBuilder` for everything but the
transformer blocks (embedding, RoPE tables, output head and normalization are shared), and every
graph is validated against the PyTorch reference at export like the portable one.

RoPE stays elementwise in every form: upstream's quirk (cos/sin halves repeated while ADJACENT
pairs are rotated: see the reference, `reference/model.py`) is no stock rotary operator, and the portable form's
`x @ R` is a GEMM with K = head_dim. Here `y` (y_2i = -x_2i+1, y_2i+1 = x_2i) is a Gather that swaps
adjacent pairs, the sign folded into the sine once per graph: `x*cos + Gather(x)*(sign*sin)` gives
exactly the products `x @ R` gives (one nonzero term per column), so the form changes no value.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import onnx
from onnx import helper

from ..config import PredictorConfig
from ..graph_forms import ORT_FUSED, PORTABLE, TRT_ATTENTION, check_graph_form
from ..rope import frame_tables
from .step_graph import _NP, DEFAULT_OPSET, StepGraphBuilder

MS_DOMAIN = "com.microsoft"


def pair_swap(head_dim: int, heads: int = 1) -> np.ndarray:
    """Gather indices that swap adjacent elements within each head of `heads` x `head_dim`
    (an odd head_dim's last element stays: its sine is 0, it is never rotated)."""
    local = np.arange(head_dim)
    partner = local ^ 1
    partner[partner >= head_dim] = local[partner >= head_dim]
    return (np.arange(heads)[:, None] * head_dim + partner[None, :]).reshape(-1).astype(np.int64)


def pair_sign(head_dim: int) -> np.ndarray:
    """The sign of the swapped element in the rotation: -1 at even positions (y_2i = -x_2i+1)."""
    return np.where(np.arange(head_dim) % 2 == 0, -1.0, 1.0)


class _ElementwiseRope(StepGraphBuilder):
    """RoPE tables for the elementwise form: cos as given, the sine with the pair sign folded in."""

    def _rope_tables(self) -> tuple[str, str]:
        cfg, g = self.cfg, self.g
        if self.first_frame:   # frame 0's tables are constants: fold the sign in numpy (exact: a sign flip)
            c, s = frame_tables(cfg, 0)
            return (g.const("rope_cos_frame0", c[None].astype(_NP[self.cd])),
                    g.const("rope_sin_signed_frame0", (s * pair_sign(cfg.head_dim))[None].astype(_NP[self.cd])))
        cos, sin = super()._rope_tables()
        sign = g.const(f"rope_pair_sign:{self.cd}", pair_sign(cfg.head_dim).astype(_NP[self.cd]))
        return cos, g.one("Mul", [sin, sign], "rope_sin_signed")

    def rope(self, t: str, cos: str, sin_signed: str, swap: str, axis: int, name: str) -> str:
        """t * cos + swap(t) * sin_signed, elementwise (cos/sin broadcast against t)."""
        g = self.g
        swapped = g.one("Gather", [t, swap], f"{name}.swap", axis=axis)
        return g.one("Add", [g.one("Mul", [t, cos], f"{name}.cos"), g.one("Mul", [swapped, sin_signed], f"{name}.sin")],
                     f"{name}.rope")


class OrtFusedStepGraphBuilder(_ElementwiseRope):
    """The `ort-fused` form (concat cache): per block

        SkipLayerNormalization (residual + previous bias + norm1, or LayerNormalization in block 0)
        MatMul q|k -> Add bias -> RoPE (Gather, Mul, Mul, Add) -> Split q, k;  MatMul v
        MultiHeadAttention(q, k, v, bias = [0, 0, b_v], past_key, past_value) -> present
        MatMul proj -> SkipLayerNormalization (residual1 + proj bias + norm2)
        MatMul fc1 -> BiasGelu -> MatMul fc2 (its bias goes to the next SkipLayerNormalization)

    RoPE runs on a [B, L, 2 * heads, head_dim] view of q|k, so the frame's [1, L, 1, head_dim] tables
    broadcast over the heads: one node per graph (the sine's pair sign), no tiling. The last block's
    SkipLayerNormalization writes no residual sum (nothing reads it), and the outputs are named at the
    nodes that compute them (no Identity: ONNX Runtime runs the one whose input has another reader as a
    copy of [B, N, D] float32).

    LayerNorms run on the compute dtype directly, scale and bias in it too: ONNX Runtime computes
    their statistics in float32 (LayerNormalization: its CUDA and CPU kernels; SkipLayerNormalization
    on CUDA: in `enable_skip_layer_norm_strict_mode`, which the runtime sets for this form). The
    q/k/v weight stays ONE initializer, split by constant nodes that ONNX Runtime folds at load, so
    the float32 graph still carries every upstream weight under its name.

    Why not fewer nodes: see docs/benchmarks.md ("Graph forms and the graph cost model"). Every other
    spelling measured there either moves more bytes as ONNX Runtime's CUDA provider runs it (a Gemm
    broadcasts its bias with a second GEMM; ReduceSum over a middle axis zeroes its output first) or
    needs an operator the CPU provider lacks (packed QKV / KV in MultiHeadAttention)."""

    form = ORT_FUSED

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cache != "concat":
            raise ValueError("the ort-fused form has the concat cache contract only (MultiHeadAttention "
                             "concatenates past and new keys itself)")
        if self.opset < 17:
            raise ValueError(f"the ort-fused form needs opset >= 17 (LayerNormalization), got {self.opset}")

    def opset_imports(self) -> list[onnx.OperatorSetIdProto]:
        return super().opset_imports() + [helper.make_opsetid(MS_DOMAIN, 1)]

    def _norm_params(self, prefix: str) -> tuple[str, str]:
        return self._w(f"{prefix}.weight"), self._w(f"{prefix}.bias")

    def build(self) -> onnx.ModelProto:
        return outputs_at_producers(super().build())

    def _skip_norm(self, x: str, y: str, bias: str, norm: str, name: str, keep_sum: bool = True) -> tuple[str, str]:
        """(LayerNorm(x + y + bias), x + y + bias) in one node; the sum is not written if not `keep_sum`."""
        scale, beta = self._norm_params(norm)
        outs = [f"{name}.normed", "", "", f"{name}.sum" if keep_sum else ""]
        self.g.op("SkipLayerNormalization", [y, x, scale, beta, bias], name, out_names=outs, domain=MS_DOMAIN,
                  epsilon=float(self.cfg.layer_norm_eps))
        return outs[0], outs[3]

    def _rope_heads(self, cos: str, sin_signed: str) -> tuple[str, str]:
        """The frame's tables as [1, L, 1, head_dim] views: they broadcast over q|k's 2 * heads."""
        shape = self._ints(1, self.cfg.tokens_per_step, 1, self.cfg.head_dim)
        return (self.g.one("Reshape", [cos, shape], "rope_cos_heads"),
                self.g.one("Reshape", [sin_signed, shape], "rope_sin_heads"))

    def attention_fused(self, h: str, i: int, cos: str, sin: str, swap: str) -> str:
        """Attention of block i on the normed tokens `h` [B, L, d], before the proj bias."""
        cfg, g, p = self.cfg, self.g, f"predictor_blocks.{i}.attn"
        d = cfg.predictor_embed_dim
        w_qk, w_v = g.op("Split", [self._w(f"{p}.qkv.weight", transpose=True), self._ints(2 * d, d)],
                         f"{p}.qkv.weight_split", outputs=2, axis=1)
        b_qk, b_v = g.op("Split", [self._w(f"{p}.qkv.bias"), self._ints(2 * d, d)], f"{p}.qkv.bias_split",
                         outputs=2, axis=0)
        qk = g.one("Add", [g.one("MatMul", [h, w_qk], f"{p}.qk.matmul"), b_qk], f"{p}.qk.add")
        H, hd, L = cfg.num_heads, cfg.head_dim, cfg.tokens_per_step
        qk = g.one("Reshape", [qk, self._ints(0, L, 2 * H, hd)], f"{p}.qk.heads")   # a view
        qk = self.rope(qk, cos, sin, swap, 3, f"{p}.qk")
        q, k = g.op("Split", [qk, self._ints(H, H)], f"{p}.qk.split", outputs=2, axis=2)
        tokens = self._ints(0, L, d)
        q, k = (g.one("Reshape", [t, tokens], f"{p}.{n}.tokens") for t, n in ((q, "q"), (k, "k")))
        v = g.one("MatMul", [h, w_v], f"{p}.v.matmul")
        zeros = g.const(f"zeros_{2 * d}:{self.cd}", np.zeros(2 * d, _NP[self.cd]))
        bias = g.one("Concat", [zeros, b_v], f"{p}.mha_bias", axis=0)   # q, k biases went in before RoPE
        out = f"{p}.mha"
        past = [] if self.first_frame else ["", "", f"past_key.{i}", f"past_value.{i}"]
        g.op("MultiHeadAttention", [q, k, v, bias, *past], out, out_names=[out, f"present_key.{i}", f"present_value.{i}"], domain=MS_DOMAIN,
             num_heads=cfg.num_heads, scale=float(cfg.head_dim ** -0.5))
        return g.one("MatMul", [out, self._w(f"{p}.proj.weight", transpose=True)], f"{p}.proj.matmul")

    def mlp_fused(self, h: str, i: int) -> tuple[str, str]:
        """The MLP of block i before its last bias: (output, that bias)."""
        p, g = f"predictor_blocks.{i}.mlp", self.g
        if self.cfg.use_silu:
            x1, x2 = self.linear(h, f"{p}.fc1"), self.linear(h, f"{p}.fc2")
            silu = g.one("Mul", [x1, g.one("Sigmoid", [x1], f"{p}.sigmoid")], f"{p}.silu")
            last, hidden = "fc3", g.one("Mul", [silu, x2], f"{p}.gate")
        else:
            fc1 = g.one("MatMul", [h, self._w(f"{p}.fc1.weight", transpose=True)], f"{p}.fc1.matmul")
            last, hidden = "fc2", g.one("BiasGelu", [fc1, self._w(f"{p}.fc1.bias")], f"{p}.gelu", domain=MS_DOMAIN)
        out = g.one("MatMul", [hidden, self._w(f"{p}.{last}.weight", transpose=True)], f"{p}.{last}.matmul")
        return out, self._w(f"{p}.{last}.bias")

    def transformer(self, x: str, cos: str, sin: str) -> str:
        cfg, g = self.cfg, self.g
        cos, sin = self._rope_heads(cos, sin)
        swap = g.const("rope_pair_swap", pair_swap(cfg.head_dim))
        scale, beta = self._norm_params("predictor_blocks.0.norm1")
        h = g.one("LayerNormalization", [x, scale, beta], "predictor_blocks.0.norm1", axis=-1,
                  epsilon=float(cfg.layer_norm_eps))
        for i in range(cfg.depth):
            b = f"predictor_blocks.{i}"
            a = self.attention_fused(h, i, cos, sin, swap)
            h, x = self._skip_norm(x, a, self._w(f"{b}.attn.proj.bias"), f"{b}.norm2", f"{b}.residual1")
            m, m_bias = self.mlp_fused(h, i)
            last = i + 1 == cfg.depth
            norm = "predictor_norm" if last else f"predictor_blocks.{i + 1}.norm1"
            h, x = self._skip_norm(x, m, m_bias, norm, f"{b}.residual2", keep_sum=not last)
        # the final norm ran on every token (one fused node); the output is the patch tokens
        return g.one("Slice", [h, self._ints(cfg.cond_tokens), self._ints(cfg.tokens_per_step), self._ints(1)],
                     "patch_tokens")


class AttentionStepGraphBuilder(_ElementwiseRope):
    """The `trt-attention` form: the portable blocks with attention as the ONNX `Attention` operator
    (opset 23, one output, 4-D [B, heads, tokens, head_dim]), fed by the cache's Concat or
    TensorScatter, and elementwise RoPE. The static contract's mask row is expanded to the frame's
    queries once per graph ([1, 1, K+N, max_len]: ONNX Runtime's CPU kernel does not broadcast the
    query axis)."""

    form = TRT_ATTENTION

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.opset < 23:
            raise ValueError(f"the trt-attention form needs opset >= 23 (Attention), got {self.opset}")
        self._tables: Optional[tuple[str, Optional[str]]] = None

    def attention(self, x: str, i: int, cos: str, sin: str) -> str:
        cfg, g, p = self.cfg, self.g, f"predictor_blocks.{i}.attn"
        L, d, H, hd = cfg.tokens_per_step, cfg.predictor_embed_dim, cfg.num_heads, cfg.head_dim
        if self._tables is None:   # once per graph: every block reads the same tables
            mask = None
            if self.cache == "static":
                mask = g.one("Expand", ["attn_bias", self._ints(1, 1, L, int(self._static_len()))], "attn_bias_rows")
            self._tables = (g.const("rope_pair_swap", pair_swap(hd)), mask)
        swap, mask = self._tables
        qkv = self.linear(x, f"{p}.qkv")
        q, k, v = g.op("Split", [qkv, self._ints(d, d, d)], f"{p}.split", outputs=3, axis=-1)
        shape = self._ints(0, L, H, hd)

        def heads(t: str, name: str) -> str:
            return g.one("Transpose", [g.one("Reshape", [t, shape], f"{p}.{name}.reshape")], f"{p}.{name}.heads",
                         perm=[0, 2, 1, 3])

        q = self.rope(heads(q, "q"), cos, sin, swap, 3, f"{p}.q")
        k = self.rope(heads(k, "k"), cos, sin, swap, 3, f"{p}.k")
        v = heads(v, "v")
        k, v = self.cache_update(k, v, i)
        out = g.one("Attention", [q, k, v] + ([mask] if mask else []), f"{p}.attention", scale=float(hd ** -0.5))
        out = g.one("Reshape", [g.one("Transpose", [out], f"{p}.merge", perm=[0, 2, 1, 3]), self._ints(0, L, d)],
                    f"{p}.merged")
        return self.linear(out, f"{p}.proj")

    def _static_len(self) -> int:
        from ..contract import static_max_len

        return static_max_len(self.cfg, self.cache_frames)


def outputs_at_producers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop each Identity that only renames a tensor computed in the graph into a graph output: the
    node computing it writes the output under its name instead (ONNX Runtime runs such an Identity as
    a copy when the tensor has another reader). Values are unchanged."""
    g = model.graph
    outputs = {o.name for o in g.output}
    computed = {o for n in g.node if n.op_type != "Identity" for o in n.output}
    for node in [n for n in g.node if n.op_type == "Identity"]:
        src, dst = node.input[0], node.output[0]
        if dst in outputs and src in computed and src not in outputs:
            g.node.remove(node)
            for n in g.node:
                for names in (n.input, n.output):
                    for j, name in enumerate(names):
                        if name == src:
                            names[j] = dst
    return model


_BUILDERS = {PORTABLE: StepGraphBuilder, ORT_FUSED: OrtFusedStepGraphBuilder, TRT_ATTENTION: AttentionStepGraphBuilder}


def build_form_graph(cfg: PredictorConfig, weights: Mapping[str, np.ndarray], precision: str = "fp32",
                     first_frame: bool = False, opset: int = DEFAULT_OPSET, cache: str = "concat",
                     cache_frames: Optional[int] = None, form: str = PORTABLE) -> onnx.ModelProto:
    """The step (or first-frame) graph of `cfg` in graph form `form` ("portable" is exactly
    `build_step_graph`)."""
    builder = _BUILDERS[check_graph_form(form)]
    return builder(cfg, weights, precision, first_frame, opset, cache, cache_frames).build()

"""The per-step ONNX graph, emitted node by node from the reference model's weights.

Why not `torch.onnx.export`: the float16 artifact must be strongly typed (every tensor's type
explicit, float32 exactly where float16 breaks), attention must stay in the MatMul-Softmax-MatMul
form TensorRT fuses, and the RoPE rows of the frame come in as inputs (no shape arithmetic in the graph). Writing the
graph directly keeps all three under our control, and the export's validation compares it with the independent
PyTorch reference, so a mistake here cannot hide.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..config import PredictorConfig
from ..contract import ROPE_INPUTS, TensorSpec, check_cache, step_io
from ..precision import precision as get_precision
from ..rope import frame_tables, pair_rotation_matrix

_DTYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64}
_NP = {"float32": np.float32, "float16": np.float16}
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 21, 17
STATIC_OPSET = 24   # TensorScatter (the in-place KV-cache update) exists from opset 24


class _Graph:
    """A tiny builder: named nodes, typed constants, unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._n = 0

    def const(self, name: str, array: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def op(self, op_type: str, inputs: list[str], name: Optional[str] = None, outputs: int = 1,
           out_names: Optional[list[str]] = None, **attrs) -> list[str]:
        self._n += 1
        base = name or f"{op_type.lower()}_{self._n}"
        outs = out_names or ([base] if outputs == 1 else [f"{base}_{i}" for i in range(outputs)])
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"n{self._n}_{base}", **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], name: Optional[str] = None, **attrs) -> str:
        return self.op(op_type, inputs, name, **attrs)[0]


class StepGraphBuilder:
    """Emit the step (or first-frame) graph of `cfg` with `weights` (upstream key names).

    precision "fp32": everything float32. "fp16": float16 weights, matmuls, residual stream and
    KV cache; float32 for the feature normalization, LayerNorm statistics and the output.
    """

    def __init__(self, cfg: PredictorConfig, weights: Mapping[str, np.ndarray], precision: str = "fp32",
                 first_frame: bool = False, opset: int = DEFAULT_OPSET, cache: str = "concat",
                 cache_frames: Optional[int] = None):
        prec = get_precision(precision)
        if check_cache(cache) == "static" and opset < STATIC_OPSET:
            raise ValueError(f"the static cache contract needs opset >= {STATIC_OPSET} (TensorScatter), got {opset}")
        self.cfg, self.w, self.first_frame, self.opset = cfg, weights, first_frame, opset
        self.cache, self.cache_frames = cache, cache_frames
        self.cd = prec.dtype   # compute + cache dtype
        self.precision = precision
        self.g = _Graph()

    # -- helpers -------------------------------------------------------------------------------------
    def _w(self, key: str, transpose: bool = False, dtype: Optional[str] = None) -> str:
        a = np.asarray(self.w[key], dtype=np.float64)
        if transpose:
            a = a.T
        dt = dtype or self.cd
        return self.g.const(f"{key}{'.T' if transpose else ''}:{dt}", a.astype(_NP[dt]))

    def _cast(self, x: str, dtype: str) -> str:
        return self.g.one("Cast", [x], f"{x}_to_{dtype}", to=_DTYPE[dtype])

    def _to_cd(self, x: str) -> str:
        return x if self.cd == "float32" else self._cast(x, self.cd)

    def _to_f32(self, x: str) -> str:
        return x if self.cd == "float32" else self._cast(x, "float32")

    def _scalar(self, value: float, dtype: Optional[str] = None) -> str:
        dt = dtype or self.cd
        return self.g.const(f"scalar_{value!r}:{dt}", np.array(value, dtype=_NP[dt]))

    def _ints(self, *values: int) -> str:
        return self.g.const("ints_" + "_".join(map(str, values)), np.array(values, dtype=np.int64))

    def linear(self, x: str, prefix: str) -> str:
        y = self.g.one("MatMul", [x, self._w(f"{prefix}.weight", transpose=True)], f"{prefix}.matmul")
        if f"{prefix}.bias" in self.w:
            y = self.g.one("Add", [y, self._w(f"{prefix}.bias")], f"{prefix}.add")
        return y

    def layer_norm(self, x: str, prefix: Optional[str], eps: float, dim: int, name: str) -> str:
        """LayerNorm in float32 (statistics in float16 overflow or lose precision); x is float32."""
        scale = (self._w(f"{prefix}.weight", dtype="float32") if prefix
                 else self.g.const(f"ones_{dim}", np.ones(dim, np.float32)))
        bias = self._w(f"{prefix}.bias", dtype="float32") if prefix else None
        if self.opset >= 17:
            ins = [x, scale] + ([bias] if bias else [])
            return self.g.one("LayerNormalization", ins, name, axis=-1, epsilon=float(eps))
        g = self.g
        mean = g.one("ReduceMean", [x], f"{name}.mean", axes=[-1], keepdims=1)
        xc = g.one("Sub", [x, mean], f"{name}.center")
        var = g.one("ReduceMean", [g.one("Mul", [xc, xc], f"{name}.sq")], f"{name}.var", axes=[-1], keepdims=1)
        std = g.one("Sqrt", [g.one("Add", [var, self._scalar(eps, "float32")], f"{name}.vareps")], f"{name}.std")
        y = g.one("Mul", [g.one("Div", [xc, std], f"{name}.norm"), scale], f"{name}.scale")
        return g.one("Add", [y, bias], f"{name}.bias") if bias else y

    def block_norm(self, x: str, prefix: str) -> str:
        return self._to_cd(self.layer_norm(self._to_f32(x), prefix, self.cfg.layer_norm_eps,
                                           self.cfg.predictor_embed_dim, prefix))

    def gelu(self, x: str, name: str) -> str:
        if self.opset >= 20:
            return self.g.one("Gelu", [x], name)
        g = self.g
        erf = g.one("Erf", [g.one("Mul", [x, self._scalar(1 / math.sqrt(2))], f"{name}.div")], f"{name}.erf")
        half = g.one("Mul", [x, self._scalar(0.5)], f"{name}.half")
        return g.one("Mul", [half, g.one("Add", [erf, self._scalar(1.0)], f"{name}.one")], name)

    # -- the model -----------------------------------------------------------------------------------
    def _rope_tables(self) -> tuple[str, str]:
        """cos, sin for this frame's tokens, [1, K+N, head_dim]: inputs of the step graph (the
        runtime binds the frame's row; see contract.py), constants of frame 0 in the first-frame graph."""
        cfg, g = self.cfg, self.g
        if self.first_frame:
            cos, sin = frame_tables(cfg, 0)
            return (g.const("rope_cos_frame0", cos[None].astype(_NP[self.cd])),
                    g.const("rope_sin_frame0", sin[None].astype(_NP[self.cd])))
        return ROPE_INPUTS

    def qkv_heads(self, x: str, p: str, tokens: int, heads: int, head_dim: int, cos: str,
                  sin: str) -> tuple[str, str, str]:
        """q (rotated, scaled), k (rotated) and v of `x` [B, tokens, heads * head_dim], each
        [B, heads, tokens, head_dim]: the attention front shared by the predictor and the encoder."""
        g, d = self.g, heads * head_dim
        qkv = self.linear(x, f"{p}.qkv")
        q, k, v = g.op("Split", [qkv, self._ints(d, d, d)], f"{p}.split", outputs=3, axis=-1)
        shape = self._ints(0, tokens, heads, head_dim)

        def split_heads(t: str, name: str) -> str:
            return g.one("Transpose", [g.one("Reshape", [t, shape], f"{p}.{name}.reshape")],
                         f"{p}.{name}.heads", perm=[0, 2, 1, 3])

        R = g.const(f"rope_pair_rotation:{self.cd}", pair_rotation_matrix(head_dim).astype(_NP[self.cd]))

        def rope(t: str, name: str) -> str:
            rot = g.one("MatMul", [t, R], f"{p}.{name}.pairs")
            return g.one("Add", [g.one("Mul", [t, cos], f"{p}.{name}.cos"),
                                 g.one("Mul", [rot, sin], f"{p}.{name}.sin")], f"{p}.{name}.rope")

        q = g.one("Mul", [rope(split_heads(q, "q"), "q"), self._scalar(head_dim ** -0.5)], f"{p}.q.scaled")
        return q, rope(split_heads(k, "k"), "k"), split_heads(v, "v")

    def attend(self, q: str, k: str, v: str, p: str, tokens: int, width: int, bias: Optional[str] = None) -> str:
        """MatMul -> (Add bias) -> Softmax -> MatMul (the pattern TensorRT fuses), heads merged, `proj`."""
        g = self.g
        scores = g.one("MatMul", [q, g.one("Transpose", [k], f"{p}.kT", perm=[0, 1, 3, 2])], f"{p}.scores")
        if bias is not None:
            scores = g.one("Add", [scores, bias], f"{p}.masked")
        probs = g.one("Softmax", [scores], f"{p}.softmax", axis=-1)
        out = g.one("MatMul", [probs, v], f"{p}.context")
        out = g.one("Reshape", [g.one("Transpose", [out], f"{p}.merge", perm=[0, 2, 1, 3]),
                                self._ints(0, tokens, width)], f"{p}.merged")
        return self.linear(out, f"{p}.proj")

    def cache_update(self, k: str, v: str, i: int) -> tuple[str, str]:
        """present_key.i / present_value.i: this frame's keys and values written as the cache
        contract says (alone on the first frame, appended, or scattered into the static buffer)."""
        g = self.g
        if self.first_frame:
            return (g.one("Identity", [k], out_names=[f"present_key.{i}"]),
                    g.one("Identity", [v], out_names=[f"present_value.{i}"]))
        if self.cache == "static":
            # written in place when the runtime binds present to past's buffer: only this frame moves
            return (g.one("TensorScatter", [f"past_key.{i}", k, "write_index"], out_names=[f"present_key.{i}"], axis=2),
                    g.one("TensorScatter", [f"past_value.{i}", v, "write_index"], out_names=[f"present_value.{i}"],
                          axis=2))
        return (g.one("Concat", [f"past_key.{i}", k], out_names=[f"present_key.{i}"], axis=2),
                g.one("Concat", [f"past_value.{i}", v], out_names=[f"present_value.{i}"], axis=2))

    def attention(self, x: str, i: int, cos: str, sin: str) -> str:
        cfg, p = self.cfg, f"predictor_blocks.{i}.attn"
        L, d = cfg.tokens_per_step, cfg.predictor_embed_dim
        q, k, v = self.qkv_heads(x, p, L, cfg.num_heads, cfg.head_dim, cos, sin)
        k, v = self.cache_update(k, v, i)
        # static: the whole buffer is attended, the frames not yet written masked out
        return self.attend(q, k, v, p, L, d, "attn_bias" if self.cache == "static" else None)

    def mlp(self, x: str, i: int) -> str:
        p, g = f"predictor_blocks.{i}.mlp", self.g
        if self.cfg.use_silu:
            x1, x2 = self.linear(x, f"{p}.fc1"), self.linear(x, f"{p}.fc2")
            silu = g.one("Mul", [x1, g.one("Sigmoid", [x1], f"{p}.sigmoid")], f"{p}.silu")
            return self.linear(g.one("Mul", [silu, x2], f"{p}.gate"), f"{p}.fc3")
        return self.linear(self.gelu(self.linear(x, f"{p}.fc1"), f"{p}.gelu"), f"{p}.fc2")

    def transformer(self, x: str, cos: str, sin: str) -> str:
        """The blocks over the frame's tokens `x` [B, K+N, d], then the patch tokens normed
        (`predictor_norm`), [B, N, d] in the compute dtype. Graph forms override it."""
        cfg, g = self.cfg, self.g
        for i in range(cfg.depth):
            b = f"predictor_blocks.{i}"
            x = g.one("Add", [x, self.attention(self.block_norm(x, f"{b}.norm1"), i, cos, sin)], f"{b}.residual1")
            x = g.one("Add", [x, self.mlp(self.block_norm(x, f"{b}.norm2"), i)], f"{b}.residual2")
        L = cfg.tokens_per_step
        x = g.one("Slice", [x, self._ints(cfg.cond_tokens), self._ints(L), self._ints(1)], "patch_tokens")
        return self.block_norm(x, "predictor_norm")

    def opset_imports(self) -> list[onnx.OperatorSetIdProto]:
        """The operator sets the graph uses (graph forms add the ONNX Runtime contrib domain)."""
        return [helper.make_opsetid("", self.opset)]

    def build(self) -> onnx.ModelProto:
        cfg, g = self.cfg, self.g
        feats = "features"
        if cfg.normalize_reps:  # float32 always: a raw 1024-dim token's sum of squares overflows float16
            feats = self.layer_norm(feats, None, cfg.feature_norm_eps, cfg.embed_dim, "normalize_features")
        x = self.linear(self._to_cd(feats), "predictor_embed")
        cond = [("action", "action_encoder"), ("state", "state_encoder")]
        if cfg.use_extrinsics:
            cond.append(("extrinsics", "extrinsics_encoder"))
        tokens = [g.one("Unsqueeze", [self.linear(self._to_cd(name), enc), self._ints(1)], f"{name}_token")
                  for name, enc in cond]
        x = g.one("Concat", tokens + [x], "frame_tokens", axis=1)        # [B, K+N, d]: conditioning first
        x = self.linear(self.transformer(x, *self._rope_tables()), "predictor_proj")
        x = self._to_f32(x)
        if cfg.normalize_reps:
            g.op("Identity", [x], out_names=["next_features_raw"])
            x = self.layer_norm(x, None, cfg.feature_norm_eps, cfg.embed_dim, "normalize_prediction")
        g.op("Identity", [x], out_names=["next_features"])

        inputs, outputs = step_io(cfg, self.cd, self.first_frame, self.cache, self.cache_frames)
        graph = helper.make_graph(
            g.nodes, f"vitac_{'first' if self.first_frame else 'step'}_{self.precision}"
                     + ("_static" if self.cache == "static" else ""),
            [_value_info(s) for s in inputs], [_value_info(s) for s in outputs],
            initializer=list(g.initializers.values()))
        model = helper.make_model(graph, opset_imports=self.opset_imports(), producer_name="vitac-deploy")
        # readable by older runtimes (IR 10 for opset 24: ONNX Runtime 1.32 and TensorRT's parser take it)
        model.ir_version = min(model.ir_version, 8 if self.opset <= 17 else 9 if self.opset <= 21 else 10)
        return model


def _value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(spec.name, _DTYPE[spec.dtype], list(spec.shape))


def build_step_graph(cfg: PredictorConfig, weights: Mapping[str, np.ndarray], precision: str = "fp32",
                     first_frame: bool = False, opset: int = DEFAULT_OPSET, cache: str = "concat",
                     cache_frames: Optional[int] = None) -> onnx.ModelProto:
    """The step (or first-frame) graph of `cfg` as an in-memory ONNX model, with the concat or the
    static (in-place, opset 24) cache contract."""
    return StepGraphBuilder(cfg, weights, precision, first_frame, opset, cache, cache_frames).build()

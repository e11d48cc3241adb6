#!/usr/bin/env python3
"""Other spellings of the ort-fused step graph's q/k/RoPE stage, side by side with the shipped one:
kernels per frame (graph nodes, and after ONNX Runtime's optimizer), bytes and FLOP per plan, the
roofline of the graph cost model (`vitac_deploy/exporters/cost.py`), and the same roofline with the
traffic ONNX Runtime's CUDA provider adds to two of the operators these spellings use:

- a Gemm with a bias vector C: `Gemm::ComputeDefault` (core/providers/cuda/math/gemm.cc) first writes
  C broadcast into Y with a rank-1 cuBLAS GEMM, then runs the GEMM with beta = 1: Y is written once more
  and read back (+2 |Y|, two cuBLAS calls);
- a ReduceSum over a middle axis (not a leading- or trailing-axes matrix reduction):
  `ReduceComputeCore` (core/providers/cuda/reduction/reduction_ops.cc) zeroes Y with cudaMemsetAsync
  before cuDNN accumulates into it (+|Y|).

Spellings (each exact: --validate checks every one against the PyTorch reference):
  shipped       MatMul q|k -> Add bias -> Gather (pair swap) -> Mul, Mul -> Add -> Split; MatMul v
  pairs-reduce  MatMul [W | W swapped and signed] (4d wide) -> Mul [cos | sin] -> ReduceSum over the pair
                axis -> Add the per-token rotated bias -> Split; MatMul v   (13 nodes per block)
  pairs-gemm    the same with the bias in a 2-D Gemm ([b | b swapped and signed]), and predictor_embed /
                predictor_proj as Gemm                                       (12 nodes per block)

    python scripts/ort_fused_alternatives.py                       # default model, fp16, 400 x 2 x 10
    python scripts/ort_fused_alternatives.py --preset vjepa2-ac-vitg --validate

Needs the export extra (torch, onnx) and onnxruntime. Runs no GPU kernel: these are counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from vitac_deploy.config import PRESETS, PredictorConfig
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.exporters import cost as cm
from vitac_deploy.exporters import form_graphs as fg
from vitac_deploy.exporters.step_graph import _NP
from vitac_deploy.reference import random_predictor
from vitac_deploy.roofline import ROOFLINE_DEVICES, kernel_seconds


class _Pairs(fg.OrtFusedStepGraphBuilder):
    """q|k as one GEMM of [W | W[:, swap] * sign]: x and its rotation partner y side by side, so RoPE is
    x * cos + y * sin = ReduceSum([x, y] * [cos, sin]) over the pair axis (step graphs only)."""

    bias_in_gemm = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.first_frame:
            raise ValueError("the alternative spellings are written for the step graph only")

    def _pairs(self, i: int) -> tuple[str, str, str, str]:
        cfg, p = self.cfg, f"predictor_blocks.{i}.attn"
        d, H, hd = cfg.predictor_embed_dim, cfg.num_heads, cfg.head_dim
        swap, sign = fg.pair_swap(hd, 2 * H), np.tile(fg.pair_sign(hd), 2 * H)
        w = np.asarray(self.w[f"{p}.qkv.weight"], np.float64).T            # [d, 3d]
        b = np.asarray(self.w[f"{p}.qkv.bias"], np.float64)
        w4 = np.concatenate([w[:, :2 * d], w[:, :2 * d][:, swap] * sign], axis=1)
        b4 = np.concatenate([b[:2 * d], b[:2 * d][swap] * sign])
        c = lambda name, a: self.g.const(f"{p}.{name}:{self.cd}", a.astype(_NP[self.cd]))
        return c("qk.weight_pairs", w4), c("qk.bias_pairs", b4), c("v.weight", w[:, 2 * d:]), c("v.bias", b[2 * d:])

    def _table(self) -> str:
        """[1, L, 2, 2d]: cos over q|k's heads, then sin (the pair sign is in the weights)."""
        cfg, g = self.cfg, self.g
        H, L, d = cfg.num_heads, cfg.tokens_per_step, cfg.predictor_embed_dim
        flat = g.one("Concat", ["rope_cos"] * (2 * H) + ["rope_sin"] * (2 * H), "rope_table_flat", axis=2)
        return g.one("Reshape", [flat, self._ints(1, L, 2, 2 * d)], "rope_table")

    def _rotated_biases(self, table: str) -> list[str]:
        """RoPE(b_qk) per token for every block, [1, L, 2d] each: one Mul, ReduceSum and Split per graph."""
        cfg, g = self.cfg, self.g
        d, H, hd = cfg.predictor_embed_dim, cfg.num_heads, cfg.head_dim
        swap, sign = fg.pair_swap(hd, 2 * H), np.tile(fg.pair_sign(hd), 2 * H)
        pairs = []
        for i in range(cfg.depth):
            b = np.asarray(self.w[f"predictor_blocks.{i}.attn.qkv.bias"], np.float64)[:2 * d]
            pairs.append(np.stack([b, b[swap] * sign]))
        biases = g.const(f"qk_bias_pairs:{self.cd}", np.stack(pairs)[:, None].astype(_NP[self.cd]))
        rb = g.one("ReduceSum", [g.one("Mul", [biases, table], "qk_bias_table"), self._ints(2)], "qk_bias_rope",
                   keepdims=0)
        return g.op("Split", [rb, self._ints(*([1] * cfg.depth))], "qk_bias_rope_split", outputs=cfg.depth, axis=0)

    def attention_fused(self, h, i, table, rotated_biases, swap):
        cfg, g, p = self.cfg, self.g, f"predictor_blocks.{i}.attn"
        d, L = cfg.predictor_embed_dim, cfg.tokens_per_step
        w4, b4, w_v, b_v = self._pairs(i)
        if self.bias_in_gemm:
            z = g.one("Gemm", [g.one("Reshape", [h, self._ints(-1, d)], f"{p}.rows"), w4, b4], f"{p}.qk.gemm")
            z = g.one("Reshape", [z, self._ints(-1, L, 2, 2 * d)], f"{p}.qk.pairs")
        else:
            z = g.one("Reshape", [g.one("MatMul", [h, w4], f"{p}.qk.matmul"), self._ints(0, L, 2, 2 * d)],
                      f"{p}.qk.pairs")
        r = g.one("ReduceSum", [g.one("Mul", [z, table], f"{p}.qk.table"), self._ints(2)], f"{p}.qk.rope", keepdims=0)
        if not self.bias_in_gemm:
            r = g.one("Add", [r, rotated_biases[i]], f"{p}.qk.rope_bias")
        q, k = g.op("Split", [r, self._ints(d, d)], f"{p}.qk.split", outputs=2, axis=2)
        v = g.one("MatMul", [h, w_v], f"{p}.v.matmul")
        bias = g.one("Concat", [g.const(f"zeros_{2 * d}:{self.cd}", np.zeros(2 * d, _NP[self.cd])), b_v],
                     f"{p}.mha_bias", axis=0)
        out = f"{p}.mha"
        g.op("MultiHeadAttention", [q, k, v, bias, "", "", f"past_key.{i}", f"past_value.{i}"], out,
             out_names=[out, f"present_key.{i}", f"present_value.{i}"], domain=fg.MS_DOMAIN,
             num_heads=cfg.num_heads, scale=float(cfg.head_dim ** -0.5))
        return g.one("MatMul", [out, self._w(f"{p}.proj.weight", transpose=True)], f"{p}.proj.matmul")

    def linear(self, x: str, prefix: str) -> str:
        tokens = self.cfg.grid_height * self.cfg.grid_width
        if not self.bias_in_gemm or prefix not in ("predictor_embed", "predictor_proj"):
            return super().linear(x, prefix)
        g, (n_out, n_in) = self.g, np.asarray(self.w[f"{prefix}.weight"]).shape
        y = g.one("Gemm", [g.one("Reshape", [x, self._ints(-1, n_in)], f"{prefix}.rows"),
                           self._w(f"{prefix}.weight", transpose=True), self._w(f"{prefix}.bias")], f"{prefix}.gemm")
        return g.one("Reshape", [y, self._ints(-1, tokens, n_out)], f"{prefix}.tokens")

    def _rope_heads(self, cos, sin):
        """What the blocks get instead of the broadcast tables: the pair table, the rotated biases."""
        table = self._table()
        return table, (None if self.bias_in_gemm else self._rotated_biases(table))

    def _rope_tables(self):
        return ("rope_cos", "rope_sin")


class _PairsGemm(_Pairs):
    bias_in_gemm = True


SPELLINGS = {"shipped": fg.OrtFusedStepGraphBuilder, "pairs-reduce": _Pairs, "pairs-gemm": _PairsGemm}


def as_ort_cuda_runs_it(model, cfg, plan: cm.PlanCost, device) -> float:
    """The plan's roofline with the extra traffic of ONNX Runtime CUDA's Gemm (bias vector) and
    middle-axis ReduceSum added (see the module docstring)."""
    import onnx

    total = 0.0
    for t, frame in plan.frames.items():
        s = cm._Shapes(model, cm.frame_dims(cfg, plan.samples, t))
        for node, nc in zip(model.graph.node, frame.nodes):
            shapes, _ = cm._infer(node, s, 17)
            for name, shape in zip(node.output, shapes):
                if name:
                    s.shape[name] = shape
                    s.dtype[name] = (cm._attr(node, "to") if node.op_type == "Cast"
                                     else s.dtype.get(node.input[0], onnx.TensorProto.FLOAT))
            if not nc.kernel:
                continue
            out = sum(s.nbytes(o) for o in node.output if o)
            extra = 0
            if node.op_type == "Gemm" and len(node.input) > 2 and len(s.shape[node.input[2]]) == 1:
                extra = 2 * out
            elif node.op_type == "ReduceSum":
                axes = [a % len(s.shape[node.input[0]]) for a in s.const_ints(node.input[1])]
                if 0 not in axes and len(s.shape[node.input[0]]) - 1 not in axes:
                    extra = out
            total += kernel_seconds(nc.flops, nc.nbytes + extra, device, plan.precision)
    energy = plan.energy.roofline_s(device) if plan.energy else 0.0
    return (total + energy) * plan.rollouts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vitac-l384", choices=sorted(PRESETS))
    ap.add_argument("--config", type=Path, help="A predictor config JSON instead of --preset.")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--horizon", type=int, default=2)
    ap.add_argument("--cem-steps", type=int, default=10)
    ap.add_argument("--device", default="h100", choices=sorted(ROOFLINE_DEVICES))
    ap.add_argument("--validate", action="store_true",
                    help="Also check each spelling against the PyTorch reference (export's validation, fp32 and fp16).")
    args = ap.parse_args()
    import onnx

    cfg = PredictorConfig.from_json(args.config) if args.config else PRESETS[args.preset]
    model = random_predictor(cfg, 0)
    device = ROOFLINE_DEVICES[args.device]
    builders = dict(fg._BUILDERS)
    print(f"{args.config or args.preset}, fp16 step graph, plan of {args.samples} samples x horizon {args.horizon} x "
          f"{args.cem_steps} CEM steps; roofline on {device.name}")
    print(f"{'spelling':13s} {'graph':>5s} {'ORT fp32':>8s} {'ORT fp16':>8s} {'GB/plan':>8s} {'TFLOP':>6s} "
          f"{'roofline':>9s} {'as ORT CUDA runs it':>20s}  validation (max abs fp32 / fp16)")
    try:
        with tempfile.TemporaryDirectory(prefix="vitac-alternatives-") as tmp:
            for name, builder in SPELLINGS.items():
                fg._BUILDERS[fg.ORT_FUSED] = builder
                art = Path(tmp) / name
                manifest = export_artifact(model, art, ExportOptions(validate=args.validate, first_frame_graph=False,
                                                                     graph_form=fg.ORT_FUSED))
                plan = cm.plan_cost(art, "fp16", args.samples, args.horizon, args.cem_steps)
                o32, o16 = (cm.ort_optimized(art / f) for f in ("step.onnx", "step.fp16.onnx"))
                graph = onnx.load(str(art / "step.fp16.onnx"), load_external_data=False)
                real = as_ort_cuda_runs_it(graph, cfg, plan, device)
                v = manifest["validation"]
                check = (f"{v['fp32']['worst_max_abs']:.1e} / {v['fp16']['worst_max_abs']:.1e}"
                         if args.validate else "-")
                print(f"{name:13s} {plan.kernels_per_frame[min(1, args.horizon - 1)]:5d} {o32.kernels:8d} "
                      f"{o16.kernels:8d} {plan.nbytes / 1e9:8.4g} {plan.flops / 1e12:6.4g} "
                      f"{plan.roofline_s(device):8.4g}s {real:19.4g}s  {check}")
    finally:
        fg._BUILDERS.clear()
        fg._BUILDERS.update(builders)
    return 0


if __name__ == "__main__":
    sys.exit(main())

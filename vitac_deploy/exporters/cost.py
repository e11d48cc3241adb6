"""The cost of a step graph read from the graph itself: bytes moved and FLOP per node, per frame and
per plan, kernels per frame, and the roofline time on named devices (`vitac_deploy.roofline`).

Every node is taken as one kernel that reads each of its inputs once (weights included) and writes
each output once, at the shapes the frame gives it (batch, cached frames): what a runtime that
launches one kernel per node moves at least. Not kernels, and free: nodes whose inputs are all
constants (a runtime folds them when it loads the graph) and reshapes (Reshape, Unsqueeze,
Squeeze, Flatten: views of their input). A fused operator (MultiHeadAttention, Attention,
SkipLayerNormalization) is one kernel moving its inputs and outputs, a lower bound: ONNX Runtime's
MultiHeadAttention also transposes q, k and v to [batch, heads, tokens, head_dim] internally.

FLOP: 2 x multiply-adds of matrix products (MatMul, Gemm, attention's q k^T and p v), the
tensor-core work; elementwise arithmetic is not counted (it is memory-bound on every device here),
so the portable form's FLOP exceed `planning.memory.frame_flops` by its RoPE matrix products alone.

Kernels per frame after ONNX Runtime's own optimizer: `ort_optimized` saves the graph ONNX
Runtime's CPU provider optimized (ORT_ENABLE_ALL) and counts its nodes. The CPU provider applies
the same Level-2 fusions as CUDA (Gelu, LayerNorm, SkipLayerNorm, BiasGelu, MatMul scale fusion),
but not GroupQueryAttentionFusion or BiasDropoutFusion (CUDA only); GemmActivationFusion and the
NCHWc layout transforms are CPU only (none matches these graphs).
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ..config import PredictorConfig
from ..contract import BATCH, PAST, PRESENT
from ..errors import VitacError
from ..roofline import ROOFLINE_DEVICES, RooflineDevice, kernel_seconds, roofline_device

_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.INT64: 8,
             onnx.TensorProto.INT32: 4, onnx.TensorProto.BOOL: 1, onnx.TensorProto.DOUBLE: 8,
             onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT8: 1}
_VIEWS = {"Reshape", "Unsqueeze", "Squeeze", "Flatten"}
_SAME_SHAPE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Neg", "Sigmoid", "Relu", "Tanh", "Gelu", "Cast",
               "Identity", "Softmax", "Exp", "Abs", "Where", "BiasGelu", "FastGelu", "Max", "Min", "Sum"}


@dataclass(frozen=True)
class NodeCost:
    """One node: what it moves and computes, and whether it is a kernel at all."""

    name: str
    op: str
    flops: float
    nbytes: float
    kernel: bool


@dataclass
class GraphCost:
    """The cost of one run of a graph (one frame of a step graph)."""

    nodes: list[NodeCost]
    precision: str

    @property
    def flops(self) -> float:
        return float(sum(n.flops for n in self.nodes))

    @property
    def nbytes(self) -> float:
        return float(sum(n.nbytes for n in self.nodes))

    @property
    def kernels(self) -> int:
        return sum(n.kernel for n in self.nodes)

    def by_op(self) -> dict[str, dict[str, float]]:
        """Kernels, bytes and FLOP summed per operator type."""
        out: dict[str, dict[str, float]] = {}
        for n in self.nodes:
            if n.kernel:
                row = out.setdefault(n.op, {"kernels": 0, "bytes": 0.0, "flops": 0.0})
                row["kernels"] += 1
                row["bytes"] += n.nbytes
                row["flops"] += n.flops
        return out

    def roofline_s(self, device: RooflineDevice) -> Optional[float]:
        """Sum over kernels of max(bytes / bandwidth, FLOP / peak); None without a rate for the precision."""
        total = 0.0
        for n in self.nodes:
            if n.kernel:
                t = kernel_seconds(n.flops, n.nbytes, device, self.precision)
                if t is None:
                    return None
                total += t
        return total


# -- shapes ------------------------------------------------------------------------------------------
def _broadcast(*shapes: tuple) -> tuple:
    return tuple(np.broadcast_shapes(*shapes))


class _Shapes:
    """Shapes, element types and constant values of a graph's tensors at concrete dimensions."""

    def __init__(self, model: onnx.ModelProto, dims: Mapping[str, int]):
        g = model.graph
        self.shape: dict[str, tuple] = {}
        self.dtype: dict[str, int] = {}
        self.value: dict[str, np.ndarray] = {}
        self.constant: set[str] = set()
        for t in g.initializer:
            self.shape[t.name], self.dtype[t.name] = tuple(t.dims), t.data_type
            self.constant.add(t.name)
            if t.HasField("raw_data") or t.int64_data or t.float_data or t.int32_data:
                if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
                    self.value[t.name] = numpy_helper.to_array(t)
        for vi in g.input:
            if vi.name in self.shape:
                continue
            tt = vi.type.tensor_type
            shape = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    shape.append(d.dim_value)
                elif d.dim_param in dims:
                    shape.append(int(dims[d.dim_param]))
                else:
                    raise VitacError(f"the cost model needs a value for dimension {d.dim_param!r} of {vi.name}")
            self.shape[vi.name], self.dtype[vi.name] = tuple(shape), tt.elem_type
        self.shape[""] = ()

    def const_ints(self, name: str) -> list[int]:
        if name not in self.value:
            raise VitacError(f"the cost model needs the constant value of {name!r} (an initializer)")
        return [int(x) for x in np.asarray(self.value[name]).reshape(-1)]

    def nbytes(self, name: str) -> int:
        return int(np.prod(self.shape[name], dtype=np.int64)) * _ITEMSIZE.get(self.dtype.get(name, 1), 4)


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _infer(node: onnx.NodeProto, s: _Shapes, opset: int) -> tuple[list[tuple], float]:
    """Output shapes of `node` and its FLOP."""
    op, ins = node.op_type, [s.shape[i] for i in node.input]
    if op in _SAME_SHAPE:
        out = _broadcast(*ins) if len(ins) > 1 and op not in ("Cast", "BiasGelu") else ins[0]
        return [out] * len(node.output), 0.0
    if op == "MatMul":
        a, b = ins
        batch = _broadcast(a[:-2], b[:-2])
        out = batch + (a[-2], b[-1])
        return [out], 2.0 * np.prod(batch, dtype=np.float64) * a[-2] * a[-1] * b[-1]
    if op == "Gemm":
        a, b = ins[0], ins[1]
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else a
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return [(m, n)], 2.0 * m * k * n
    if op in ("LayerNormalization", "SkipLayerNormalization"):
        return [ins[0]] * len(node.output), 0.0
    if op == "Transpose":
        perm = _attr(node, "perm") or list(reversed(range(len(ins[0]))))
        return [tuple(ins[0][p] for p in perm)], 0.0
    if op == "Reshape":
        target = s.const_ints(node.input[1])
        out = [ins[0][i] if v == 0 else v for i, v in enumerate(target)]
        if -1 in out:
            known = int(np.prod([v for v in out if v != -1]))
            out[out.index(-1)] = int(np.prod(ins[0])) // known
        return [tuple(out)], 0.0
    if op in ("Unsqueeze", "Squeeze"):
        axes = _attr(node, "axes") if opset < 13 or len(node.input) < 2 else s.const_ints(node.input[1])
        shape = list(ins[0])
        if op == "Unsqueeze":
            rank = len(shape) + len(axes)
            for a in sorted(x % rank for x in axes):
                shape.insert(a, 1)
        else:
            keep = {x % len(shape) for x in axes} if axes else {i for i, v in enumerate(shape) if v == 1}
            shape = [v for i, v in enumerate(shape) if i not in keep]
        return [tuple(shape)], 0.0
    if op == "Concat":
        axis = _attr(node, "axis") % len(ins[0])
        out = list(ins[0])
        out[axis] = sum(x[axis] for x in ins)
        return [tuple(out)], 0.0
    if op == "Split":
        axis = _attr(node, "axis", 0) % len(ins[0])
        sizes = (s.const_ints(node.input[1]) if len(node.input) > 1 and node.input[1] else
                 _attr(node, "split") or [ins[0][axis] // len(node.output)] * len(node.output))
        return [tuple(v if i != axis else n for i, v in enumerate(ins[0])) for n in sizes], 0.0
    if op == "Slice":
        starts, ends = s.const_ints(node.input[1]), s.const_ints(node.input[2])
        axes = s.const_ints(node.input[3]) if len(node.input) > 3 else list(range(len(starts)))
        steps = s.const_ints(node.input[4]) if len(node.input) > 4 else [1] * len(starts)
        out = list(ins[0])
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            out[ax] = len(range(*slice(st, en, sp).indices(ins[0][ax])))
        return [tuple(out)], 0.0
    if op == "Gather":
        axis = _attr(node, "axis", 0) % len(ins[0])
        return [ins[0][:axis] + ins[1] + ins[0][axis + 1:]], 0.0
    if op == "Tile":
        return [tuple(a * r for a, r in zip(ins[0], s.const_ints(node.input[1])))], 0.0
    if op == "Expand":
        return [_broadcast(ins[0], tuple(s.const_ints(node.input[1])))], 0.0
    if op in ("ReduceMean", "ReduceSum"):   # ReduceSum takes its axes as an input from opset 13, ReduceMean from 18
        axes = _attr(node, "axes") if opset < (13 if op == "ReduceSum" else 18) else s.const_ints(node.input[1])
        keep = _attr(node, "keepdims", 1)
        ax = {a % len(ins[0]) for a in axes}
        out = [1 if i in ax else v for i, v in enumerate(ins[0])] if keep else \
            [v for i, v in enumerate(ins[0]) if i not in ax]
        return [tuple(out)], 0.0
    if op == "TensorScatter":
        return [ins[0]], 0.0
    if op == "MultiHeadAttention":
        q, k, v = ins[0], ins[1], ins[2]
        heads = int(_attr(node, "num_heads"))
        hd, hv = q[2] // heads, v[2] // heads
        past = ins[6][2] if len(ins) > 6 and node.input[6] else 0
        total = past + k[1]
        outs = [(q[0], q[1], v[2]), (q[0], heads, total, hd), (q[0], heads, total, hv)][:len(node.output)]
        return outs, 2.0 * q[0] * heads * q[1] * total * (hd + hv)
    if op == "Attention":   # ONNX opset 23, 4-D [batch, heads, tokens, head_dim]
        q, k, v = ins[0], ins[1], ins[2]
        past = ins[4][2] if len(ins) > 4 and node.input[4] else 0
        total = past + k[2]
        outs = [(q[0], q[1], q[2], v[3]), (k[0], k[1], total, k[3]), (v[0], v[1], total, v[3])][:len(node.output)]
        return outs, 2.0 * q[0] * q[1] * q[2] * total * (q[3] + v[3])
    raise VitacError(f"the cost model does not know operator {op} (node {node.name})")


def graph_cost(model: onnx.ModelProto, dims: Mapping[str, int], precision: str = "fp16") -> GraphCost:
    """The cost of one run of `model` with its symbolic dimensions set by `dims` (e.g. batch,
    past_len, present_len for a step graph). Weights need not be loaded: shapes come from the
    initializers' headers, values only from the small integer constants the graph holds inline."""
    s = _Shapes(model, dims)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    nodes = []
    for node in model.graph.node:
        shapes, flops = _infer(node, s, opset)
        folded = all(i in s.constant or not i for i in node.input)
        for name, shape in zip(node.output, shapes):
            if name:
                s.shape[name] = shape
                s.dtype[name] = (_attr(node, "to") if node.op_type == "Cast"
                                 else s.dtype.get(node.input[0], onnx.TensorProto.FLOAT))
                if folded:
                    s.constant.add(name)
        if folded or node.op_type in _VIEWS:
            nodes.append(NodeCost(node.name, node.op_type, 0.0, 0.0, False))
            continue
        moved = sum(s.nbytes(i) for i in node.input if i) + sum(s.nbytes(o) for o in node.output if o)
        nodes.append(NodeCost(node.name, node.op_type, float(flops), float(moved), True))
    return GraphCost(nodes, precision)


# -- artifacts: frames and plans -------------------------------------------------------------------
def _step_graph(artifact: Path, manifest: Mapping[str, Any], precision: str) -> onnx.ModelProto:
    key = f"step.{precision}"
    if key not in manifest["graphs"]:
        raise VitacError(f"{artifact} has no {precision} step graph (exported: {', '.join(sorted(manifest['graphs']))})")
    return onnx.load(str(artifact / manifest["graphs"][key]["file"]), load_external_data=False)


def frame_dims(cfg: PredictorConfig, batch: int, cached_frames: int) -> dict[str, int]:
    """The step graph's symbolic dimensions for a frame on top of `cached_frames` frames."""
    L = cfg.tokens_per_step
    return {BATCH: batch, PAST: cached_frames * L, PRESENT: (cached_frames + 1) * L}


@dataclass
class PlanCost:
    """The cost of one plan: per frame (cached frames -> cost at the plan's batch) and in total."""

    precision: str
    samples: int
    horizon: int
    cem_steps: int
    frames: dict[int, GraphCost] = field(default_factory=dict)   # cached frames -> one frame at the plan batch
    energy: Optional[GraphCost] = None
    rollouts: int = 0                                            # runtime calls per plan (cem steps x chunks)

    def _sum(self, attr: str) -> float:
        total = sum(getattr(c, attr) for c in self.frames.values()) * self.rollouts
        return float(total + (getattr(self.energy, attr) * self.rollouts if self.energy else 0))

    @property
    def flops(self) -> float:
        return self._sum("flops")

    @property
    def nbytes(self) -> float:
        return self._sum("nbytes")

    @property
    def kernels_per_frame(self) -> dict[int, int]:
        return {t: c.kernels for t, c in self.frames.items()}

    def roofline_s(self, device: RooflineDevice) -> Optional[float]:
        parts = [c.roofline_s(device) for c in self.frames.values()]
        if self.energy is not None:
            parts.append(self.energy.roofline_s(device))
        if any(p is None for p in parts):
            return None
        return float(sum(parts) * self.rollouts)


def plan_cost(artifact: str | Path, precision: str = "fp16", samples: int = 400, horizon: int = 2,
              cem_steps: int = 10, chunk: Optional[int] = None) -> PlanCost:
    """The cost of one plan of the upstream planner (one observation, `horizon` predicted frames,
    `samples` per CEM step in calls of `chunk`) on the artifact's step and energy graphs: frames
    t = 0 .. horizon-1 on t cached frames, each at the call's batch, and one energy per call."""
    from ..artifacts import cache_contract, read_manifest

    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    cfg = PredictorConfig.from_dict(manifest["config"])
    if horizon < 1 or horizon > cfg.max_frames:
        raise VitacError(f"horizon must be in 1..{cfg.max_frames}, got {horizon}")
    chunk = chunk or samples
    calls = math.ceil(samples / chunk)
    model = _step_graph(artifact, manifest, precision)
    static = cache_contract(manifest, artifact) == "static"
    out = PlanCost(precision, samples, horizon, cem_steps, rollouts=cem_steps * calls)
    # chunks of equal size but the last: cost at the chunk size, times the calls (an upper bound)
    for t in range(horizon):
        dims = {BATCH: chunk} if static else frame_dims(cfg, chunk, t)   # static: every shape but batch fixed
        out.frames[t] = graph_cost(model, dims, precision)
    energy = manifest["graphs"].get("energy")
    if energy:
        out.energy = graph_cost(onnx.load(str(artifact / energy["file"]), load_external_data=False),
                                {BATCH: chunk}, "fp32")
    return out


def rollout_cost(artifact: str | Path, precision: str = "fp16", batch: int = 1, frames: int = 8) -> PlanCost:
    """The cost of one rollout of `frames` frames at `batch` (frame t on t cached frames; no energy)."""
    from ..artifacts import cache_contract, read_manifest

    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    cfg = PredictorConfig.from_dict(manifest["config"])
    model = _step_graph(artifact, manifest, precision)
    static = cache_contract(manifest, artifact) == "static"
    out = PlanCost(precision, batch, frames, 1, rollouts=1)
    for t in range(frames):
        out.frames[t] = graph_cost(model, {BATCH: batch} if static else frame_dims(cfg, batch, t), precision)
    return out


def roofline_table(cost: PlanCost, devices: Iterable[str] = tuple(ROOFLINE_DEVICES)) -> dict[str, Optional[float]]:
    """Roofline seconds of a plan per named device (a key or an alias of `vitac_deploy.devices`)."""
    return {d: cost.roofline_s(roofline_device(d)) for d in devices}


@dataclass(frozen=True)
class OrtOptimized:
    """The graph ONNX Runtime's CPU provider runs after its optimizer: operator counts, with the
    Casts that provider inserts around operators it has no float16 kernel for kept apart (the CUDA
    provider has those kernels and inserts none)."""

    ops: Counter
    cpu_inserted_casts: int

    @property
    def kernels(self) -> int:
        """Nodes that launch a kernel: views (Reshape and friends) excluded, CPU-only Casts excluded."""
        return sum(n for op, n in self.ops.items() if op not in _VIEWS)


def ort_optimized(onnx_path: str | Path) -> OrtOptimized:
    """Save the graph ONNX Runtime's CPU provider optimized (ORT_ENABLE_ALL, through
    SessionOptions.optimized_model_filepath) and count its nodes."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="vitac-ort-opt-") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.bin")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        model = onnx.load(so.optimized_model_filepath, load_external_data=False)
    inserted = [n for n in model.graph.node if n.op_type == "Cast" and n.name.startswith("InsertedPrecisionFreeCast")]
    kept = Counter(n.op_type for n in model.graph.node) - Counter(n.op_type for n in inserted)
    return OrtOptimized(kept, len(inserted))


def plan_summary(cost: PlanCost, devices: Iterable[str] = tuple(ROOFLINE_DEVICES)) -> dict[str, Any]:
    """A JSON-ready summary of a plan's cost: totals, per frame, and the roofline per device."""
    return {
        "precision": cost.precision, "samples": cost.samples, "horizon": cost.horizon, "cem_steps": cost.cem_steps,
        "runtime_calls": cost.rollouts, "plan_bytes": cost.nbytes, "plan_flops": cost.flops,
        "frames": {str(t): {"bytes": c.nbytes, "flops": c.flops, "kernels": c.kernels} for t, c in cost.frames.items()},
        "roofline_s": roofline_table(cost, devices),
    }

"""The planner's energy as a graph: mean over every N x D entry of |prediction - goal| per sample
(docs/planner.md section 3). Runtimes run it where the predictions are (ONNX Runtime on the CUDA arena,
a TensorRT engine on the device), so a CEM step moves [batch] floats to the host, not [batch, N, D]."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..config import PredictorConfig
from ..contract import energy_io


def build_energy_graph(cfg: PredictorConfig, opset: int) -> onnx.ModelProto:
    """prediction [B, N, D] float32, goal [1, N, D] float32 -> energy [B] float32 (float32 throughout:
    energies of the elites differ in the 4th digit, float16 would blur them)."""
    nodes = [helper.make_node("Sub", ["prediction", "goal"], ["diff"], name="energy.diff"),
             helper.make_node("Abs", ["diff"], ["abs_diff"], name="energy.abs")]
    inits = []
    if opset >= 18:   # axes became an input in opset 18
        inits.append(helper.make_tensor("energy_axes", TensorProto.INT64, [2], [1, 2]))
        nodes.append(helper.make_node("ReduceMean", ["abs_diff", "energy_axes"], ["energy"], name="energy.mean",
                                      keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", ["abs_diff"], ["energy"], name="energy.mean", axes=[1, 2],
                                      keepdims=0))
    ins, outs = energy_io(cfg)
    graph = helper.make_graph(
        nodes, "vitac_energy",
        [helper.make_tensor_value_info(s.name, TensorProto.FLOAT, list(s.shape)) for s in ins],
        [helper.make_tensor_value_info(s.name, TensorProto.FLOAT, list(s.shape)) for s in outs],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="vitac-deploy")
    model.ir_version = min(model.ir_version, 8 if opset <= 17 else 9)
    return model

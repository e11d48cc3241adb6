"""The graph cost model (vitac_deploy.exporters.cost) against what can be counted by hand: the FLOP
of every form against the analytic model of planning.memory, bytes of small graphs element by
element, constant-folded and view nodes free, the roofline's max(bytes/bandwidth, FLOP/peak), the
kernels ONNX Runtime's optimizer leaves, and the `info --artifact` and `bench` outputs."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR
from vitac_deploy import VitacError
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.exporters.cost import graph_cost, ort_optimized, plan_cost, rollout_cost
from vitac_deploy.planning.memory import frame_flops, plan_flops
from vitac_deploy.reference import random_predictor
from vitac_deploy.roofline import ROOFLINE_DEVICES, RooflineDevice, device_for_gpu, kernel_seconds


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """SMALL_SWIGLU_EXTR (extrinsics, SwiGLU, head_dim 16) in every form, both precisions."""
    model = random_predictor(SMALL_SWIGLU_EXTR, 0)
    root = tmp_path_factory.mktemp("cost")
    arts = {}
    for form, cache in (("portable", "concat"), ("ort-fused", "concat"), ("trt-attention", "concat"),
                        ("portable", "static"), ("trt-attention", "static")):
        arts[form, cache] = root / f"{form}-{cache}"
        export_artifact(model, arts[form, cache], ExportOptions(validate=False, graph_form=form, cache=cache,
                                                                first_frame_graph=False,
                                                                cache_frames=2 if cache == "static" else None))
    return arts


def _rope_flops(cfg, batch):
    """The portable form's x @ R for q and k in every block."""
    return cfg.depth * 2 * 2.0 * batch * cfg.num_heads * cfg.tokens_per_step * cfg.head_dim ** 2


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_flops_read_from_the_graph_are_the_analytic_model(forms, precision):
    """Fused forms: exactly planning.memory.frame_flops per frame and plan_flops per plan; the
    portable form adds its RoPE matrix products and nothing else."""
    cfg = SMALL_SWIGLU_EXTR
    for key in (("ort-fused", "concat"), ("trt-attention", "concat"), ("portable", "concat")):
        cost = plan_cost(forms[key], precision, samples=5, horizon=3, cem_steps=2)
        extra = _rope_flops(cfg, 5) if key[0] == "portable" else 0.0
        for t, c in cost.frames.items():
            assert c.flops == pytest.approx(5 * frame_flops(cfg, t) + extra, rel=1e-12), (key, t)
        if key[0] != "portable":
            assert cost.flops == pytest.approx(plan_flops(cfg, 5, 3, 2), rel=1e-12)


def test_static_contract_attends_the_whole_buffer(forms):
    """Static: every frame's attention reads all max_len keys, so frame 0 costs what frame 1 does."""
    cost = plan_cost(forms["trt-attention", "static"], "fp16", samples=3, horizon=2, cem_steps=1)
    assert cost.frames[0].flops == cost.frames[1].flops == pytest.approx(3 * frame_flops(SMALL_SWIGLU_EXTR, 1))


def _tiny(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_bytes_views_and_folded_constants_counted_by_hand():
    w = numpy_helper.from_array(np.ones((8, 4), np.float16), "w")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    scale = numpy_helper.from_array(np.ones((12,), np.float16), "scale")
    m = _tiny([helper.make_node("Mul", ["w", "w"], ["w2"], name="folded"),          # constants only: folded
               helper.make_node("MatMul", ["x", "w2"], ["y"], name="mm"),
               helper.make_node("Reshape", ["y", "shape"], ["y2"], name="view"),
               helper.make_node("Mul", ["y2", "scale"], ["z"], name="scale")],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, 8])],
              [helper.make_tensor_value_info("z", TensorProto.FLOAT16, None)], [w, shape, scale])
    c = graph_cost(m, {"batch": 5})
    by = {n.name: n for n in c.nodes}
    assert not by["folded"].kernel and not by["view"].kernel and c.kernels == 2
    assert by["mm"].flops == 2 * 5 * 3 * 8 * 4
    assert by["mm"].nbytes == 2 * (5 * 3 * 8 + 8 * 4 + 5 * 3 * 4)            # x, w2, y in float16
    assert by["scale"].nbytes == 2 * (5 * 12 + 12 + 5 * 12) and by["scale"].flops == 0
    with pytest.raises(VitacError, match="needs a value for dimension 'batch'"):
        graph_cost(m, {})


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_sum_counted_by_hand(keepdims):
    """ReduceSum (axes an input from opset 13): its output shape, and the bytes it reads and writes."""
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    m = _tiny([helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum", keepdims=keepdims)],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, 2, 8])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)], [axes])
    node = graph_cost(m, {"batch": 5}).nodes[0]
    assert node.kernel and node.flops == 0 and node.nbytes == 2 * (5 * 3 * 2 * 8 + 5 * 3 * 8) + 8


def test_an_unknown_operator_is_named():
    m = _tiny([helper.make_node("Conv", ["x", "x"], ["y"], name="c")],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(VitacError, match="does not know operator Conv"):
        graph_cost(m, {})


def test_roofline_is_the_larger_of_memory_and_compute():
    dev = RooflineDevice("test", bandwidth_tb_s=1.0, fp16_dense_tflops=100.0, fp32_tflops=None, source="-")
    assert kernel_seconds(0, 2e12, dev, "fp16") == pytest.approx(2.0)            # a copy: memory only
    assert kernel_seconds(1e15, 1e9, dev, "fp16") == pytest.approx(10.0)         # compute-bound
    assert kernel_seconds(1e12, 1e12, dev, "fp32") is None                       # no fp32 rate known
    assert kernel_seconds(0, 1e12, dev, "fp32") == pytest.approx(1.0)
    for name, key in (("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                      ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("Orin (nvgpu)", "agx-orin"), ("NVIDIA Thor", "thor"),
                      ("NVIDIA A100-SXM4-80GB", None), (None, None)):
        assert device_for_gpu(name) == key
    h100 = ROOFLINE_DEVICES["h100"]
    assert (h100.bandwidth_tb_s, h100.fp16_dense_tflops) == (3.35, 989.4)


def test_fused_forms_move_fewer_bytes_and_launch_fewer_kernels(forms):
    """The same plan on each form: ort-fused moves the fewest bytes and has the fewest kernels, and
    its roofline on every named device is below the portable form's."""
    costs = {k: plan_cost(v, "fp16", samples=8, horizon=2, cem_steps=1) for k, v in forms.items()
             if k[1] == "concat"}
    portable, fused, attention = (costs["portable", "concat"], costs["ort-fused", "concat"],
                                  costs["trt-attention", "concat"])
    assert fused.nbytes < attention.nbytes < portable.nbytes
    assert fused.kernels_per_frame[1] < attention.kernels_per_frame[1] < portable.kernels_per_frame[1]
    for dev in ROOFLINE_DEVICES.values():
        assert fused.roofline_s(dev) < portable.roofline_s(dev)
    roll = rollout_cost(forms["ort-fused", "concat"], "fp16", batch=8, frames=2)
    assert roll.flops == pytest.approx(sum(c.flops for c in fused.frames.values()))


def test_onnxruntime_optimizer_keeps_the_fused_form_small(forms):
    """After ONNX Runtime's optimizer (CPU provider): ort-fused needs fewer kernels than portable;
    its fp16 and fp32 graphs run the same kernels once the Casts are set apart (the CPU provider's own,
    and the float16 graph's cast of its output, which writes a graph output the provider keeps)."""
    f32, f16 = (ort_optimized(forms["ort-fused", "concat"] / name) for name in ("step.onnx", "step.fp16.onnx"))
    portable = ort_optimized(forms["portable", "concat"] / "step.onnx")
    assert f32.kernels == f16.kernels - f16.ops["Cast"] < portable.kernels and f16.ops["Cast"] == 1
    assert f32.cpu_inserted_casts == 0 and f16.cpu_inserted_casts > 0
    assert f32.ops["MultiHeadAttention"] == SMALL_SWIGLU_EXTR.depth and f32.ops["Softmax"] == 0


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True)


def test_info_artifact_prints_the_cost_model(forms):
    p = _cli("info", "--artifact", forms["ort-fused", "concat"], "--samples", "8", "--cem-steps", "2")
    assert p.returncode == 0, p.stderr
    assert "ort-fused form" in p.stdout and "roofline on H100 SXM" in p.stdout and "kernels per frame" in p.stdout
    bad = _cli("info", "--artifact", forms["ort-fused", "concat"], "--preset", "vitac-l384")
    assert bad.returncode == 2 and "give --artifact or --preset/--config" in bad.stderr


def test_bench_rows_per_graph_form_with_their_roofline(tmp_path):
    cfg_path = tmp_path / "small.json"
    cfg_path.write_text(json.dumps(SMALL.to_dict()))
    out = tmp_path / "b.json"
    p = _cli("bench", "--config", cfg_path, "--plan", "--samples", "4", "--topk", "2", "--cem-steps", "1",
             "--backend", "onnxruntime", "--graph-form", "portable,ort-fused", "--roofline-device", "h200",
             "--baseline", "none", "--json", out)
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    rows = {e["backend"]: e for e in data["entries"]}
    assert set(rows) == {"onnxruntime", "onnxruntime ort-fused"}
    assert rows["onnxruntime ort-fused"]["graph_form"] == "ort-fused"
    assert all(e["roofline_device"] == "h200" and e["roofline_s"] > 0 for e in rows.values())
    assert rows["onnxruntime ort-fused"]["roofline_s"] < rows["onnxruntime"]["roofline_s"]
    assert "roofline (h200)" in p.stdout
    bad = _cli("bench", "--config", cfg_path, "--graph-form", "fused")
    assert bad.returncode == 2 and "--graph-form takes a comma list" in bad.stderr

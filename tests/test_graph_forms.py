"""Graph forms (vitac_deploy.graph_forms): every form reproduces the golden cases on ONNX Runtime CPU
(fp32 within 1e-4, fp16 within the fp16 tolerance, the golden plan within 1e-5), holds the
operators it exists for and none of those it replaces, and is refused where it cannot run; the
portable form is byte for byte what `build_step_graph` writes."""

import importlib.util
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR, load_golden, load_mpc_golden
from vitac_deploy import VitacError
from vitac_deploy.exporters import ExportOptions, build_step_graph, export_artifact
from vitac_deploy.exporters.form_graphs import build_form_graph, pair_sign, pair_swap
from vitac_deploy.graph_forms import GRAPH_FORMS, graph_form
from vitac_deploy.reference import random_predictor
from vitac_deploy.rope import pair_rotation_matrix
from vitac_deploy.runtimes import open_runtime

FORMS = [("ort-fused", "concat"), ("trt-attention", "concat"), ("trt-attention", "static")]


def _weights(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def test_pair_swap_with_signs_is_the_rotation_matrix():
    """Gather(x, pair_swap) * pair_sign == x @ R, exactly, for even and odd head sizes."""
    rng = np.random.default_rng(0)
    for hd in (24, 64, 7):
        x = rng.standard_normal((5, hd))
        np.testing.assert_array_equal(x[:, pair_swap(hd)] * pair_sign(hd) * (np.arange(hd) < hd - hd % 2),
                                      x @ pair_rotation_matrix(hd))
    assert list(pair_swap(4, heads=2)) == [1, 0, 3, 2, 5, 4, 7, 6]


@pytest.mark.parametrize("cache, opset", [("concat", 17), ("concat", 13), ("static", 24)])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_portable_form_is_the_step_graph_byte_for_byte(cache, opset, precision):
    w = _weights(random_predictor(SMALL, 0))
    for first in ((False, True) if cache == "concat" else (False,)):
        want = build_step_graph(SMALL, w, precision, first, opset, cache).SerializeToString()
        assert build_form_graph(SMALL, w, precision, first, opset, cache, form="portable").SerializeToString() == want


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ort_fused_form_holds_the_fused_operators(precision):
    cfg = SMALL
    g = build_form_graph(cfg, _weights(random_predictor(cfg, 0)), precision, form="ort-fused")
    ops = _ops(g)
    D = cfg.depth
    assert ops["MultiHeadAttention"] == D and ops["SkipLayerNormalization"] == 2 * D and ops["BiasGelu"] == D
    assert ops["Softmax"] == 0 and ops["Erf"] == 0 and ops["Gather"] == D   # RoPE: one pair swap per block
    # no MatMul with the RoPE matrix: only the linear layers (q|k, v, proj, fc1, fc2 per block; embed,
    # 2 conditioning encoders, output projection)
    assert ops["MatMul"] == 5 * D + 4
    assert not any(t.name.startswith("rope_pair_rotation") for t in g.graph.initializer)
    # LayerNorm without Casts: the only Casts take the float32 inputs (features, action, state) in
    # and the prediction out to its float32 normalization (the portable form has 2 more per norm)
    assert ops["Cast"] == (0 if precision == "fp32" else 4)
    portable = _ops(build_step_graph(cfg, _weights(random_predictor(cfg, 0)), precision))
    assert portable["Cast"] == (0 if precision == "fp32" else 4 + 2 * (2 * D + 1))
    assert {o.domain for o in g.opset_import} == {"", "com.microsoft"}
    mha = next(n for n in g.graph.node if n.op_type == "MultiHeadAttention")
    assert list(mha.input[-2:]) == ["past_key.0", "past_value.0"] and list(mha.output[1:]) == ["present_key.0",
                                                                                               "present_value.0"]


def test_ort_fused_form_writes_its_outputs_where_they_are_computed():
    """No output is an Identity copy, the last block's SkipLayerNormalization writes no residual sum
    (nothing reads it), the frame's RoPE tables take one node (the sine's pair sign) and broadcast over
    the q|k heads untiled; and the values are the ones the same graph gives with its Identities
    (ONNX Runtime CPU, float32, bit for bit, over a 3-frame rollout)."""
    import onnxruntime as ort

    from vitac_deploy.exporters.form_graphs import OrtFusedStepGraphBuilder
    from vitac_deploy.exporters.step_graph import StepGraphBuilder
    from vitac_deploy.validation import ParityInputs
    from vitac_deploy.validation.polygraphy import reference_steps

    cfg, model = SMALL_SWIGLU_EXTR, random_predictor(SMALL_SWIGLU_EXTR, 0)
    w = _weights(model)
    g = OrtFusedStepGraphBuilder(cfg, w).build()
    with_identities = StepGraphBuilder.build(OrtFusedStepGraphBuilder(cfg, w))   # the form before its output pass
    assert _ops(with_identities)["Identity"] == 2 and _ops(g)["Identity"] == 0
    producer = {o: n for n in g.graph.node for o in n.output}
    assert all(producer[o.name].op_type not in ("Identity", "Reshape") for o in g.graph.output)
    sums = [list(n.output) for n in g.graph.node if n.op_type == "SkipLayerNormalization"]
    assert all(o[3] for o in sums[:-1]) and sums[-1][3] == "" and sums[-1][0]
    tables = [n for n in g.graph.node if set(n.input) & {"rope_cos", "rope_sin"} and n.op_type != "Reshape"]
    assert [n.op_type for n in tables] == ["Mul"] and _ops(g)["Tile"] == 0
    gather = [n for n in g.graph.node if n.op_type == "Gather"]
    inits = {t.name: t for t in g.graph.initializer}
    assert all(onnx.helper.get_attribute_value(n.attribute[0]) == 3 for n in gather)
    assert all(list(onnx.numpy_helper.to_array(inits[n.input[1]])) == list(pair_swap(cfg.head_dim)) for n in gather)

    feeds, _ = reference_steps(model, ParityInputs.make(cfg, 2, 3, seed=1))
    runs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            for m in (g, with_identities)]
    for feed in feeds:
        a, b = (dict(zip([o.name for o in s.get_outputs()], s.run(None, feed))) for s in runs)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_ort_fused_default_model_meets_the_roofline_goal(tmp_path):
    """The default model's fp16 plan (400 samples x horizon 2 x 10 CEM steps) on the graph cost model:
    within 0.8 s on an H100; after ONNX Runtime's optimizer 15 kernels per block and 12 around them
    (the float16 graph one more: its output Cast, which the CPU provider can no longer merge away)."""
    from vitac_deploy.config import PRESETS
    from vitac_deploy.exporters.cost import ort_optimized, plan_cost
    from vitac_deploy.roofline import ROOFLINE_DEVICES

    cfg = PRESETS["vitac-l384"]
    export_artifact(random_predictor(cfg, 0), tmp_path / "a", ExportOptions(validate=False, first_frame_graph=False,
                                                                            graph_form="ort-fused"))
    assert plan_cost(tmp_path / "a", "fp16").roofline_s(ROOFLINE_DEVICES["h100"]) <= 0.8
    f32, f16 = (ort_optimized(tmp_path / "a" / name) for name in ("step.onnx", "step.fp16.onnx"))
    assert f32.kernels == 15 * cfg.depth + 12 and f16.kernels == f32.kernels + 1 and f16.ops["Cast"] == 1


def test_alternative_spellings_script_measures_every_spelling_exact(tmp_path):
    """scripts/ort_fused_alternatives.py (the evidence in docs/benchmarks.md) on a small config: every
    spelling passes the export's validation, and the counts order as documented (pairs-gemm < pairs-reduce
    < shipped in kernels; the Gemm and ReduceSum traffic the CUDA provider adds only to the alternatives)."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "ort_fused_alternatives.py"
    p = subprocess.run([sys.executable, str(script), "--config", _small_config(tmp_path), "--samples", "8",
                        "--cem-steps", "1", "--validate"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = {line.split()[0]: line.split() for line in p.stdout.splitlines()
            if line.split() and line.split()[0] in ("shipped", "pairs-reduce", "pairs-gemm")}
    assert set(rows) == {"shipped", "pairs-reduce", "pairs-gemm"}
    kernels = {k: int(r[2]) for k, r in rows.items()}                       # after ONNX Runtime, fp32
    assert kernels["pairs-gemm"] < kernels["pairs-reduce"] < kernels["shipped"]
    roofline = {k: (float(r[6].rstrip("s")), float(r[7].rstrip("s"))) for k, r in rows.items()}
    assert roofline["shipped"][0] == roofline["shipped"][1]
    assert all(model < as_run for k, (model, as_run) in roofline.items() if k != "shipped")
    for r in rows.values():   # validation max abs fp32 / fp16 within the export's tolerances
        assert float(r[8]) < 1e-4 and float(r[10]) < 5e-2


@pytest.mark.parametrize("cache", ["concat", "static"])
def test_trt_attention_form_holds_one_attention_per_block(cache):
    cfg = SMALL
    g = build_form_graph(cfg, _weights(random_predictor(cfg, 0)), "fp16", opset=23 if cache == "concat" else 24,
                         cache=cache, form="trt-attention")
    ops = _ops(g)
    assert ops["Attention"] == cfg.depth and ops["Softmax"] == 0 and ops["MatMul"] == 4 * cfg.depth + 4
    assert all(len(n.output) == 1 for n in g.graph.node if n.op_type == "Attention")   # TensorRT takes one
    assert ops["TensorScatter" if cache == "static" else "Concat"] >= 2 * cfg.depth
    assert ops["Gelu"] == cfg.depth   # opset 23: the Gelu operator


@pytest.mark.golden
@pytest.mark.parametrize("form, cache", FORMS)
def test_forms_reproduce_the_golden_rollouts(tmp_path, form, cache):
    """Both predictor golden cases, fp32 and fp16, through ONNX Runtime CPU (the static artifact is
    sized to the rollout)."""
    for case in ("seed_l384", "swiglu_extr_h64"):
        g = load_golden(case)
        art = tmp_path / case
        frames = g.steps + 1
        export_artifact(g.model, art, ExportOptions(validate=False, first_frame_graph=False, graph_form=form,
                                                    cache=cache, cache_frames=frames if cache == "static" else None))
        ext = g.extrinsics()
        for precision, tol in (("fp32", 1e-4), ("fp16", 5e-2)):
            rt = open_runtime(art, backend="onnxruntime", precision=precision)
            assert form in rt.describe()
            out = rt.rollout(g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps,
                             None if ext is None else ext[:, :2])
            err = float(np.abs(out - g.z_ar()).max())
            assert err < tol, (case, precision, err)


@pytest.mark.golden
@pytest.mark.parametrize("form, cache", FORMS)
def test_forms_reproduce_the_golden_plan(tmp_path, form, cache):
    from vitac_deploy.planning import CEMOptions, plan

    mpc = load_mpc_golden()
    art = tmp_path / "a"
    export_artifact(mpc.model, art, ExportOptions(precisions=["fp32"], first_frame_graph=False, graph_form=form,
                                                  cache=cache, cache_frames=2 if cache == "static" else None))
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["graph_form"] == form and manifest["validation"]["fp32"]["passed"]
    opts = CEMOptions(**{k: v for k, v in mpc.meta["mpc_args"].items() if k != "verbose"})
    rt = open_runtime(art, backend="onnxruntime", precision="fp32", max_frames=2 if cache == "static" else None)
    res = plan(rt, mpc.current, mpc.goal, mpc.pose, opts, noise=mpc.arrays["cem_noise"])
    assert np.abs(res.energies - mpc.arrays["cem_energies"]).max() < 1e-5
    assert np.abs(res.actions - mpc.arrays["cem_action"]).max() < 1e-5


@pytest.mark.parametrize("form, cache", FORMS)
def test_export_validates_every_form_and_its_first_frame_graph(tmp_path, form, cache):
    m = export_artifact(random_predictor(SMALL_SWIGLU_EXTR, 1), tmp_path / "a",
                        ExportOptions(graph_form=form, cache=cache))
    v = m["validation"]
    assert m["graph_form"] == form and v["fp32"]["passed"] and v["fp16"]["passed"], v
    if cache == "concat":
        assert v["fp32"]["first_frame_graph_max_abs"] == 0.0 and v["fp16"]["first_frame_graph_max_abs"] == 0.0
        # the torch backend reads the upstream weights from the fp32 graph of any form (it refuses static
        # artifacts whatever their form: the contract check it makes is the concat one)
        from vitac_deploy.reference import state_dict_from_graph

        want = _weights(random_predictor(SMALL_SWIGLU_EXTR, 1))
        got = state_dict_from_graph(tmp_path / "a" / "step.onnx", SMALL_SWIGLU_EXTR)
        assert all(np.array_equal(got[k], want[k]) for k in want)
        assert open_runtime(tmp_path / "a", backend="torch").describe().startswith("torch")


def test_manifest_form_is_read_and_checked():
    assert graph_form({}) == "portable"   # artifacts written before graph forms
    assert all(graph_form({"graph_form": f}) == f for f in GRAPH_FORMS)
    with pytest.raises(VitacError, match="unknown graph form 'fused'.*upgrade vitac-deploy"):
        graph_form({"graph_form": "fused"})


def test_onnxruntime_cuda_runs_skip_layer_norm_strict_for_ort_fused():
    from vitac_deploy.runtimes.onnxruntime.backend import cuda_provider_options

    assert cuda_provider_options(False, False, strict_skip_norm=True)["enable_skip_layer_norm_strict_mode"] == "1"
    assert "enable_skip_layer_norm_strict_mode" not in cuda_provider_options(False, False)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("args, msg", [
    (["--graph-form", "fused"], "--graph-form must be one of portable, ort-fused, trt-attention"),
    (["--graph-form", "ort-fused", "--cache", "static"], "--graph-form ort-fused has the concat cache contract"),
    (["--graph-form", "trt-attention", "--opset", "17"], "--graph-form trt-attention writes opset 23..24"),
    (["--graph-form", "ort-fused", "--opset", "16"], "--graph-form ort-fused writes opset 17..21"),
])
def test_bad_graph_form_options_are_one_line_exit_2(tmp_path, args, msg):
    p = _cli("export", "--config", _small_config(tmp_path), "--random-init", "--out", tmp_path / "a", "--no-validate",
             *args)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and msg in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and not (tmp_path / "a").exists()


def _small_config(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL.to_dict()))
    return path


def test_cli_exports_a_form_and_inspect_names_it(tmp_path):
    p = _cli("export", "--config", _small_config(tmp_path), "--random-init", "--out", tmp_path / "a",
             "--graph-form", "ort-fused")
    assert p.returncode == 0, p.stderr
    shown = _cli("inspect", tmp_path / "a")
    assert shown.returncode == 0 and "ort-fused graphs" in shown.stdout


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                    reason="tensorrt_rtx not installed (pip install tensorrt-rtx-cu13)")
@pytest.mark.parametrize("cfg", [SMALL, SMALL_SWIGLU_EXTR], ids=["small", "swiglu_extr"])
def test_tensorrt_parser_makes_one_attention_layer_per_block(tmp_path, cfg):
    """TensorRT for RTX's real ONNX parser (no GPU needed): the trt-attention form becomes one
    IAttention per block (attention input and output layers), no Softmax and no attention or RoPE
    matrix multiply; the static contract's TensorScatter becomes KV_CACHE_UPDATE layers; the portable
    form stays MatMul/Softmax/MatMul; ort-fused is refused by the parser."""
    import tensorrt_rtx as trt

    from vitac_deploy.runtimes.tensorrt.layers import parsed_layer_types

    model = random_predictor(cfg, 0)
    D = cfg.depth
    linear = 4 * D + 4 + (D if cfg.use_silu else 0) + (1 if cfg.use_extrinsics else 0)
    census = {}
    for form, cache in [("portable", "concat")] + FORMS:
        art = tmp_path / f"{form}-{cache}"
        export_artifact(model, art, ExportOptions(validate=False, graph_form=form, cache=cache, precisions=["fp16"],
                                                  first_frame_graph=False))
        if form != "ort-fused":
            census[form, cache] = parsed_layer_types(trt, art / "step.fp16.onnx")
    portable = census["portable", "concat"]
    assert portable["SOFTMAX"] == D and portable["ATTENTION_INPUT"] == 0
    assert portable["MATRIX_MULTIPLY"] == linear + 4 * D   # QK^T, PV, and the RoPE matrix for q and k
    for cache in ("concat", "static"):
        c = census["trt-attention", cache]
        assert c["ATTENTION_INPUT"] == D and c["ATTENTION_OUTPUT"] == D and c["SOFTMAX"] == 0
        assert c["MATRIX_MULTIPLY"] == linear
        assert c["KV_CACHE_UPDATE"] == (2 * D if cache == "static" else 0)
    # RTX 1.7 imports com.microsoft.MultiHeadAttention, but only without present outputs (no KV cache)
    with pytest.raises(VitacError, match="cannot parse .*MultiHeadAttention"):
        parsed_layer_types(trt, tmp_path / "ort-fused-concat" / "step.fp16.onnx")

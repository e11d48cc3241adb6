"""The per-step ONNX graphs: golden parity through ONNX Runtime, dynamic axes, fp16, refusals."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR
from vitac_deploy import ValidationError, VitacError
from vitac_deploy.contract import dummy_inputs, past_names, rope_rows, step_io
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.validation import TOLERANCES
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime


@pytest.fixture(scope="module")
def golden_artifacts(tmp_path_factory):
    """Both golden cases exported once (validation on)."""
    from tests.conftest import GOLDEN_CASES, load_golden

    out = {}
    for name in GOLDEN_CASES:
        g = load_golden(name)
        d = tmp_path_factory.mktemp(name) / "artifact"
        export_artifact(g.model, d, ExportOptions(validation_frames=3))
        out[name] = (g, d)
    return out


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feeds(g, t, feats):
    a = g.arrays
    d = {"features": np.ascontiguousarray(feats, np.float32), "action": a["actions"][:, t], "state": a["states"][:, t]}
    if g.extrinsics() is not None:
        d["extrinsics"] = g.extrinsics()[:, t]
    return d


def _rope(cfg, t, dtype="float32"):
    """The RoPE rows a runtime binds for the frame after t cached frames."""
    cos, sin = rope_rows(cfg, dtype)
    return {"rope_cos": cos[t], "rope_sin": sin[t]}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", ["seed_l384", "swiglu_extr_h64"])
def test_golden_rollout_and_teacher_forcing_through_graphs(golden_artifacts, case, precision):
    """Drive step*.onnx by hand from past_len = 0: golden z_ar and layer_norm(z_tf_raw)."""
    g, art = golden_artifacts[case]
    suffix = "" if precision == "fp32" else ".fp16"
    sess = _session(art / f"step{suffix}.onnx")
    cdt = np.float16 if precision == "fp16" else np.float32
    empty = {n: np.zeros((g.B, g.cfg.num_heads, 0, g.cfg.head_dim), cdt) for n in past_names(g.cfg)}
    tol = TOLERANCES[precision].max_abs

    def run(t, feats, cache):
        outs = sess.run(None, {**_feeds(g, t, feats), **_rope(g.cfg, t, np.dtype(cdt).name), **cache})
        names = [o.name for o in sess.get_outputs()]
        res = dict(zip(names, outs))
        return res, {p: res[p.replace("past", "present")] for p in past_names(g.cfg)}

    # closed loop, feeding back the raw prediction
    res, cache = run(0, g.frames()[:, 0], empty)
    preds = [res["next_features"]]
    for t in range(1, g.steps):
        res, cache = run(t, res["next_features_raw"], cache)
        preds.append(res["next_features"])
    err = np.abs(np.stack(preds, 1) - g.z_ar()).max()
    assert err < tol, err
    # teacher forcing on the true frames
    cache, tf = empty, []
    for t in range(g.T - 1):
        res, cache = run(t, g.frames()[:, t], cache)
        tf.append(res["next_features"])
        assert res["present_key.0"].shape[2] == (t + 1) * g.cfg.tokens_per_step
    err = np.abs(np.stack(tf, 1) - g.tf_normalized()).max()
    assert err < tol, err


def test_golden_first_frame_graph(golden_artifacts):
    g, art = golden_artifacts["swiglu_extr_h64"]
    first = _session(art / "first.onnx").run(["next_features"], _feeds(g, 0, g.frames()[:, 0]))[0]
    assert np.abs(first - g.z_ar()[:, 0]).max() < 1e-4


def test_manifest_states_contract_hashes_and_measurements(golden_artifacts):
    g, art = golden_artifacts["swiglu_extr_h64"]
    m = json.loads((art / "manifest.json").read_text())
    assert m["config"] == g.cfg.to_dict()
    assert set(m["graphs"]) == {"step.fp32", "first.fp32", "step.fp16", "first.fp16", "energy"}
    assert m["validation"]["energy"]["passed"] and m["validation"]["energy"]["max_abs"] < 1e-5
    ins, outs = step_io(g.cfg, "float16")
    assert m["graphs"]["step.fp16"]["inputs"] == [s.to_dict() for s in ins]
    assert m["graphs"]["step.fp16"]["outputs"] == [s.to_dict() for s in outs]
    assert set(m["files"]) == {p.name for p in art.iterdir()} - {"manifest.json"}
    for p in ("fp32", "fp16"):
        v = m["validation"][p]
        assert v["passed"] and v["worst_max_abs"] <= m["tolerances"][p]["max_abs"]
        assert len(v["rollout"]) >= 3
    assert m["validation"]["inputs"]["raw_max_abs"] > 30  # realistic magnitudes


def test_step_graph_has_no_shape_arithmetic(golden_artifacts):
    """No Shape/Gather/Div on the cache length: ONNX Runtime would run them on the host, insert
    copies, and refuse CUDA-graph capture. The RoPE rows come in as inputs instead."""
    g, art = golden_artifacts["seed_l384"]
    for name in ("step.onnx", "step.fp16.onnx"):
        model = onnx.load(str(art / name), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"Shape", "Gather", "Div", "Size", "ConstantOfShape", "Range"}, ops
        inputs = {i.name for i in model.graph.input}
        assert {"rope_cos", "rope_sin"} <= inputs


def test_energy_graph_is_the_planner_energy(golden_artifacts):
    g, art = golden_artifacts["seed_l384"]
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((4, g.N, g.cfg.embed_dim)).astype(np.float32)
    goal = rng.standard_normal((1, g.N, g.cfg.embed_dim)).astype(np.float32)
    got = _session(art / "energy.onnx").run(["energy"], {"prediction": pred, "goal": goal})[0]
    want = np.abs(pred.astype(np.float64) - goal).mean(axis=(1, 2))
    assert got.shape == (4,) and np.abs(got - want).max() < 1e-5


def test_fp16_graph_is_strongly_typed(golden_artifacts):
    g, art = golden_artifacts["seed_l384"]
    model = onnx.load(str(art / "step.fp16.onnx"), load_external_data=False)
    io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert io["features"] == io["action"] == io["next_features"] == F32
    assert io["past_key.0"] == io["present_value.23"] == F16
    mm_weights = [i for i in model.graph.initializer if i.name.endswith(".weight.T:float16")]
    assert len(mm_weights) > 24 and all(i.data_type == F16 for i in mm_weights)
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(ln) == 2 * 24 + 3
    # every LayerNorm runs in float32: its input comes from a Cast to float32 or a float32 tensor
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update(io)
    assert all(types[n.input[0]] == F32 for n in ln)
    # attention in the fusable form: MatMul -> Softmax -> MatMul, no mask input
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = {i: n for n in model.graph.node for i in n.input}
    assert len(softmax) == 24
    assert all(producers[s.input[0]].op_type == "MatMul" and consumers[s.output[0]].op_type == "MatMul" for s in softmax)


def test_fp16_huge_raw_inputs_stay_finite(golden_artifacts):
    g, art = golden_artifacts["seed_l384"]
    rt = open_runtime(art, backend="onnxruntime", precision="fp16")
    rng = np.random.default_rng(0)
    ctx = (rng.uniform(-1e3, 1e3, (1, 1, g.N, g.cfg.embed_dim))).astype(np.float32)
    out = rt.rollout(ctx, np.zeros((1, 3, 2), np.float32), np.zeros((1, 3, 2), np.float32), 3)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("cfg", [SMALL, SMALL_SWIGLU_EXTR], ids=["gelu", "swiglu_extr"])
@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_and_past_len(tmp_path, cfg, batch):
    """Every past_len from 0 to max_frames-1 frames, batch 1 and 3, against the reference cache."""
    import torch

    model = random_predictor(cfg, 1)
    art = tmp_path / "a"
    export_artifact(model, art, ExportOptions(precisions=["fp32"], validate=False))
    sess = _session(art / "step.onnx")
    rng = np.random.default_rng(batch)
    F = cfg.max_frames
    feats = (10 * rng.standard_normal((batch, F, cfg.tokens_per_frame, cfg.embed_dim))).astype(np.float32)
    acts, states = (rng.standard_normal((batch, F, cfg.action_dim)).astype(np.float32) for _ in range(2))
    ext = rng.standard_normal((batch, F, cfg.action_dim - 1)).astype(np.float32) if cfg.use_extrinsics else None
    with torch.no_grad():
        ref, _ = model.forward_frames(model.normalize(torch.from_numpy(feats)), torch.from_numpy(acts),
                                      torch.from_numpy(states), None if ext is None else torch.from_numpy(ext))
    ref = model.normalize(ref).numpy()
    cache = {n: np.zeros((batch, cfg.num_heads, 0, cfg.head_dim), np.float32) for n in past_names(cfg)}
    for t in range(F):
        feeds = {"features": feats[:, t], "action": acts[:, t], "state": states[:, t], **_rope(cfg, t), **cache}
        if ext is not None:
            feeds["extrinsics"] = ext[:, t]
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        assert np.abs(outs["next_features"] - ref[:, t]).max() < 1e-4
        cache = {p: outs[p.replace("past", "present")] for p in past_names(cfg)}


def test_opset_13_decomposed_layernorm(tmp_path):
    model = random_predictor(SMALL, 2)
    m = export_artifact(model, tmp_path / "a", ExportOptions(opset=13, validation_frames=3))
    assert m["validation"]["fp32"]["passed"] and m["validation"]["fp16"]["passed"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "a" / "step.onnx"), load_external_data=False).graph.node}
    assert "LayerNormalization" not in ops and "ReduceMean" in ops


def test_corrupted_graph_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    """A graph that does not match the reference fails the export, atomically."""
    from vitac_deploy.exporters import step_graph

    real = step_graph.StepGraphBuilder.build

    def corrupt(self):
        model = real(self)
        for t in model.graph.initializer:
            if t.name.startswith("predictor_blocks.1.mlp.fc2.weight.T"):
                arr = onnx.numpy_helper.to_array(t).copy()
                arr[0, 0] += 0.5
                t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
        return model

    monkeypatch.setattr(step_graph.StepGraphBuilder, "build", corrupt)
    out = tmp_path / "bad"
    with pytest.raises(ValidationError, match="does not match the reference"):
        export_artifact(random_predictor(SMALL, 0), out, ExportOptions(precisions=["fp32"]))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_output_dir_errors(tmp_path):
    model = random_predictor(SMALL, 0)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("keep me")
    with pytest.raises(VitacError, match="not empty"):
        export_artifact(model, occupied, ExportOptions(validate=False))
    assert (occupied / "x").read_text() == "keep me"
    with pytest.raises(VitacError, match="does not exist"):
        export_artifact(model, tmp_path / "no" / "such" / "dir", ExportOptions(validate=False))
    with pytest.raises(VitacError, match="--precision"):
        export_artifact(model, tmp_path / "p", ExportOptions(precisions=["int8"]))
    with pytest.raises(VitacError, match="--opset"):
        export_artifact(model, tmp_path / "o", ExportOptions(opset=9))


def test_dummy_inputs_follow_contract():
    d = dummy_inputs(SMALL_SWIGLU_EXTR, batch=2, past_frames=3, cache_dtype="float16")
    assert d["past_key.0"].shape == (2, 4, 3 * SMALL_SWIGLU_EXTR.tokens_per_step, 16)
    assert d["past_key.0"].dtype == np.float16 and d["extrinsics"].shape == (2, 3)

"""The static (in-place) KV cache contract: exactness against the golden files and against the
concat contract, the in-place update really in place, half the cache bytes, manifests old and new."""

import json

import numpy as np
import onnx
import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR, load_golden
from vitac_deploy import VitacError
from vitac_deploy.contract import static_max_len, static_rows
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime

NOT_IN_PLACE = "in-place optimization not activated"   # ONNX Runtime's TensorScatter, when it copies


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """One model exported with each contract (fp32 and fp16, validated by the export itself)."""
    model = random_predictor(SMALL_SWIGLU_EXTR, 3)
    root = tmp_path_factory.mktemp("pair")
    arts = {c: root / c for c in ("concat", "static")}
    for cache, d in arts.items():
        export_artifact(model, d, ExportOptions(cache=cache))
    return model, arts


def _inputs(cfg, B, F, C=1, seed=0):
    rng = np.random.default_rng(seed)
    ctx = (12 * rng.standard_normal((B, C, cfg.tokens_per_frame, cfg.embed_dim))).astype(np.float32)
    acts, states = (rng.standard_normal((B, F, cfg.action_dim)).astype(np.float32) for _ in range(2))
    ext = rng.standard_normal((B, F, cfg.action_dim - 1)).astype(np.float32) if cfg.use_extrinsics else None
    return ctx, acts, states, ext


@pytest.mark.golden
@pytest.mark.parametrize("cache", ["concat", "static"])
def test_golden_rollout_through_both_contracts(tmp_path, cache):
    """fp32 within 1e-4 of upstream's z_ar through either contract, on both golden models; the
    static cache sized to the rollout (context + horizon - 1 frames), as a planner would export it."""
    for name in ("swiglu_extr_h64", "seed_l384"):
        g = load_golden(name)
        art = tmp_path / name
        frames = 1 + g.steps - 1
        export_artifact(g.model, art, ExportOptions(precisions=["fp32"], validate=False, first_frame_graph=False,
                                                    cache=cache, cache_frames=frames if cache == "static" else None))
        rt = open_runtime(art, backend="onnxruntime")
        assert rt.cache == cache
        ext = g.extrinsics()
        out = rt.rollout(g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps,
                         None if ext is None else ext[:, :2])
        assert np.abs(out - g.z_ar()).max() < 1e-4, name


def test_export_validates_static_and_records_it(small_pair):
    _, arts = small_pair
    m = json.loads((arts["static"] / "manifest.json").read_text())
    assert m["format_version"] == 3 and m["opset"] == 24
    assert m["cache"] == {**m["cache"], "contract": "static", "frames": SMALL_SWIGLU_EXTR.max_frames,
                          "max_len": static_max_len(SMALL_SWIGLU_EXTR)}
    assert m["validation"]["fp32"]["passed"] and m["validation"]["fp16"]["passed"]
    assert "first.fp32" not in m["graphs"]        # the static step graph runs frame 0 itself
    c = json.loads((arts["concat"] / "manifest.json").read_text())
    assert c["format_version"] == 2 and c["cache"] == {"contract": "concat"} and "first.fp32" in c["graphs"]


def test_static_graph_form(small_pair):
    """TensorScatter into past (no Concat of the cache), the mask added between the scores MatMul and
    the Softmax, q scaled before it, no shape arithmetic; the onnx checker takes opset 24."""
    _, arts = small_pair
    path = arts["static"] / "step.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    g = onnx.load(str(path), load_external_data=False).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("TensorScatter") == 2 * SMALL_SWIGLU_EXTR.depth
    assert not set(ops) & {"Shape", "Gather", "Div", "Size", "ConstantOfShape", "Range"}
    by_out = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type == "TensorScatter":
            assert n.input[0].startswith("past_") and n.input[2] == "write_index"
            assert n.output[0] == n.input[0].replace("past_", "present_")
        if n.op_type == "Softmax":
            add = by_out[n.input[0]]
            assert add.op_type == "Add" and add.input[1] == "attn_bias"
            matmul = by_out[add.input[0]]
            assert matmul.op_type == "MatMul" and by_out[matmul.input[0]].op_type == "Mul"   # q * scale
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    M = static_max_len(SMALL_SWIGLU_EXTR)
    assert dims["past_key.0"] == ["batch", SMALL_SWIGLU_EXTR.num_heads, M, SMALL_SWIGLU_EXTR.head_dim]
    assert dims["attn_bias"] == [1, 1, 1, M] and dims["write_index"] == ["batch"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_static_equals_concat(small_pair, precision):
    """Rollouts (shared context broadcast, a batch below the allocated one, a shorter rollout after a
    longer one, so that stale slots sit behind the mask) and streaming give what concat gives."""
    model, arts = small_pair
    cfg = model.cfg
    rts = {c: open_runtime(a, backend="onnxruntime", precision=precision, max_batch=5) for c, a in arts.items()}
    ctx, acts, states, ext = _inputs(cfg, 4, 5, C=2, seed=1)
    shared_ctx = ctx[:1]
    for a in (acts, states, ext):   # the observed history is the same in every row: broadcast path
        a[:, :2] = a[:1, :2]
    outs = {c: [rt.rollout(shared_ctx, acts, states, 4, ext),
                rt.rollout(ctx[:2], acts[:2, :3], states[:2, :3], 2, ext[:2, :3]),
                rt.rollout(ctx[:, :1], acts, states, 5, ext)] for c, rt in rts.items()}
    tol = 1e-5 if precision == "fp32" else 1e-2
    for a, b in zip(outs["concat"], outs["static"]):
        assert np.abs(a - b).max() <= tol
    streamed = {}
    for c, rt in rts.items():
        rt.reset(2)
        x = rt.append(ctx[:2, 0], acts[:2, 0], states[:2, 0], ext[:2, 0])
        for t in range(1, 5):
            x = rt.append(x, acts[:2, t], states[:2, t], ext[:2, t])
        streamed[c] = x
        with pytest.raises(VitacError, match="max 5 frames"):
            rt.append(x, acts[:2, 0], states[:2, 0], ext[:2, 0])
    assert np.abs(streamed["concat"] - streamed["static"]).max() <= tol


def test_in_place_update_does_not_copy(small_pair, capfd):
    """The static runtime has one arena per layer and each frame lands in it, where past is read
    from; ONNX Runtime logs that TensorScatter copied when present is not bound to past's buffer:
    the control below shows this ONNX Runtime does log it, and the runtime's rollout must not."""
    import onnxruntime as ort

    model, arts = small_pair
    cfg = model.cfg
    path = str(arts["static"] / "step.onnx")
    # control: present bound elsewhere than past, so TensorScatter must copy, and says so
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    from vitac_deploy.contract import dummy_inputs

    feeds = dummy_inputs(cfg, 1, 0, cache="static")
    capfd.readouterr()
    sess.run(None, feeds)
    if NOT_IN_PLACE not in capfd.readouterr().err:
        # from 1.25 it does, unless something in this process silenced ONNX Runtime's default logger
        # (a library must set severity per session, never globally): that fails, not skips
        assert tuple(int(x) for x in ort.__version__.split(".")[:2]) < (1, 25), \
            "ONNX Runtime logged no TensorScatter copy: its default logger was silenced in this process"
        pytest.skip(f"onnxruntime {ort.__version__} does not report TensorScatter copies (needs >= 1.25)")
    rt = open_runtime(arts["static"], backend="onnxruntime")
    ctx, acts, states, ext = _inputs(cfg, 3, 4, seed=2)
    rt.rollout(ctx, acts, states, 4, ext)
    assert NOT_IN_PLACE not in capfd.readouterr().err
    # one arena per layer, and it is what past_* reads and present_* writes: frame t fills slot t
    assert len(rt._arenas) == 1
    L, M, H, hd = cfg.tokens_per_step, static_max_len(cfg), cfg.num_heads, cfg.head_dim
    rt.reset(2)
    key0 = rt._arenas[0]["past_key.0"].host.reshape(-1, H, M, hd)   # capacity rows (3)
    key0[:] = 0
    x = rt.append(ctx[:2, 0], acts[:2, 0], states[:2, 0], ext[:2, 0])
    assert np.abs(key0[:2, :, :L]).max() > 0
    assert not key0[:2, :, L:].any()
    before = key0[:2, :, :L].copy()
    rt.append(x, acts[:2, 1], states[:2, 1], ext[:2, 1])
    assert np.abs(key0[:2, :, L:2 * L]).max() > 0 and np.array_equal(key0[:2, :, :L], before)
    assert NOT_IN_PLACE not in capfd.readouterr().err


def test_cache_bytes_halved(small_pair):
    model, arts = small_pair
    cfg = model.cfg
    got = {}
    for cache, art in arts.items():
        rt = open_runtime(art, backend="onnxruntime", max_batch=3)
        assert rt.cache_bytes == 0
        rt.reset(3)
        got[cache] = rt.cache_bytes
    one = 2 * cfg.depth * 3 * cfg.num_heads * cfg.max_frames * cfg.tokens_per_step * cfg.head_dim * 4
    assert got == {"static": one, "concat": 2 * one}
    torch_rt = open_runtime(arts["concat"], backend="torch", max_batch=3)
    torch_rt.reset(3)
    assert torch_rt.cache_bytes == one


def test_cache_frames_size_the_buffer(tmp_path):
    """--cache-frames sizes max_len to the rollout; a longer rollout is refused with the fix."""
    model = random_predictor(SMALL, 1)
    art = tmp_path / "a"
    m = export_artifact(model, art, ExportOptions(precisions=["fp32"], cache="static", cache_frames=2))
    assert m["cache"]["max_len"] == 2 * SMALL.tokens_per_step and m["validation"]["fp32"]["passed"]
    rt = open_runtime(art, backend="onnxruntime")
    assert rt.max_frames == 2
    ctx, acts, states, _ = _inputs(SMALL, 1, 3)
    assert rt.rollout(ctx, acts[:, :2], states[:, :2], 2).shape[1] == 2
    with pytest.raises(VitacError, match="exceed max_frames=2"):
        rt.rollout(ctx, acts, states, 3)
    with pytest.raises(VitacError, match="--cache-frames 3"):
        open_runtime(art, backend="onnxruntime", max_frames=3)
    write, bias = static_rows(SMALL, 2, "float32", 4)
    assert write.tolist() == [[0] * 4, [SMALL.tokens_per_step] * 4]
    assert (bias[0, 0, 0, 0, :SMALL.tokens_per_step] == 0).all() and (bias[0, ..., SMALL.tokens_per_step:] < -1e30).all()


def test_export_option_refusals(tmp_path):
    model = random_predictor(SMALL, 1)
    for opts, msg in ((ExportOptions(cache="static", opset=17), "opset 24"),
                      (ExportOptions(cache="concat", cache_frames=2), "static only"),
                      (ExportOptions(cache="ring"), "--cache must be"),
                      (ExportOptions(cache="static", cache_frames=9), "--cache-frames")):
        with pytest.raises(VitacError, match=msg):
            export_artifact(model, tmp_path / "x", opts)
    assert not (tmp_path / "x").exists()


def test_older_and_odd_manifests(small_pair, tmp_path):
    """A format-2 manifest (no `cache` entry) opens as concat; an unknown contract, or a manifest
    whose contract disagrees with its graph, is refused in one line."""
    import shutil

    _, arts = small_pair
    old = tmp_path / "old"
    shutil.copytree(arts["concat"], old)
    from vitac_deploy.artifacts import seal

    m = json.loads((old / "manifest.json").read_text())
    del m["cache"]
    (old / "manifest.json").write_text(json.dumps(seal(m)))   # resealed: the checks below are the subject
    rt = open_runtime(old, backend="onnxruntime")
    assert rt.cache == "concat"
    m["cache"] = {"contract": "ring"}
    (old / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(VitacError, match="unknown cache contract 'ring'"):
        open_runtime(old, backend="onnxruntime")
    m["cache"] = {"contract": "static", "frames": 5}
    (old / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(VitacError, match="does not have the static cache contract"):
        open_runtime(old, backend="onnxruntime")


@pytest.mark.golden
def test_golden_plan_through_static_contract(tmp_path):
    """The upstream planner's golden plan (mpc_franka) through a static artifact sized to the planning
    horizon, whole and chunked; a memory budget fits more samples per chunk than with concat."""
    from tests.conftest import load_mpc_golden
    from vitac_deploy.planning import CEMOptions, plan
    from vitac_deploy.planning.memory import plan_memory

    mpc = load_mpc_golden()
    opts = CEMOptions(**{k: v for k, v in mpc.meta["mpc_args"].items() if k != "verbose"})
    art = tmp_path / "static"
    export_artifact(mpc.model, art, ExportOptions(precisions=["fp32"], cache="static", cache_frames=opts.rollout))
    noise = mpc.arrays["cem_noise"]
    res = plan(open_runtime(art, backend="onnxruntime"), mpc.current, mpc.goal, mpc.pose, opts, noise=noise)
    assert np.abs(res.energies - mpc.arrays["cem_energies"]).max() < 1e-5
    assert np.abs(res.actions - mpc.arrays["cem_action"]).max() < 1e-5
    part = plan(open_runtime(art, backend="onnxruntime"), mpc.current, mpc.goal, mpc.pose, opts, noise=noise, chunk=7)
    np.testing.assert_array_equal(part.actions, res.actions)
    budget = plan_memory(mpc.cfg, 9, opts.rollout, precision="fp32", backend="onnxruntime").device_total
    fitted = plan(open_runtime(art, backend="onnxruntime"), mpc.current, mpc.goal, mpc.pose, opts, noise=noise,
                  memory_budget=budget)
    assert fitted.chunk > 9 and np.array_equal(fitted.actions, res.actions)


def test_cli_export_static_and_inspect(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    art = tmp_path / "a"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True)

    p = cli("export", "--random-init", "--config", cfg, "--out", art, "--precision", "fp32", "--cache", "static",
            "--cache-frames", "2")
    assert p.returncode == 0, p.stderr
    assert "first" not in p.stdout and "ok" in p.stdout
    p = cli("inspect", art)
    assert p.returncode == 0 and f"static cache (2 frames, max_len {2 * SMALL.tokens_per_step})" in p.stdout
    assert "write_index" in p.stdout and "attn_bias" in p.stdout
    bad = cli("export", "--random-init", "--config", cfg, "--out", tmp_path / "b", "--cache", "static", "--opset", "17")
    assert bad.returncode == 2 and "opset 24" in bad.stderr


def test_static_runtime_imports_without_torch_or_onnx(small_pair):
    """The runtime side of the static contract needs numpy and onnxruntime only."""
    import subprocess
    import sys

    _, arts = small_pair
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx', 'safetensors'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
from vitac_deploy.runtimes import open_runtime
rt = open_runtime({str(arts["static"])!r}, backend='onnxruntime')
cfg = rt.cfg
out = rt.rollout(np.ones((2, 1, cfg.tokens_per_frame, cfg.embed_dim), np.float32),
                 np.zeros((2, 3, cfg.action_dim), np.float32), np.zeros((2, 3, cfg.action_dim), np.float32), 3,
                 np.zeros((2, 3, cfg.action_dim - 1), np.float32))
assert rt.cache == 'static' and out.shape[1] == 3 and np.isfinite(out).all()
print('ok')
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_reference_steps_feed_the_static_graph(small_pair):
    """The Polygraphy feeds (`export --save-polygraphy`) follow the artifact's contract: the static
    step graph run on them step by step gives the reference's predictions."""
    import onnxruntime as ort

    from vitac_deploy.validation.polygraphy import COMPARED_OUTPUT, reference_steps
    from vitac_deploy.validation import ParityInputs

    model, arts = small_pair
    inputs = ParityInputs.make(model.cfg, 2, 4, seed=1)
    feeds, outputs = reference_steps(model, inputs, "float32", "static", model.cfg.max_frames)
    sess = ort.InferenceSession(str(arts["static"] / "step.onnx"), providers=["CPUExecutionProvider"])
    for feed, want in zip(feeds, outputs):
        got = sess.run([COMPARED_OUTPUT], feed)[0]
        assert np.abs(got - want[COMPARED_OUTPUT]).max() < 1e-4

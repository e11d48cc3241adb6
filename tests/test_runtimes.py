"""Runtimes: golden rollouts through open_runtime, streaming, delta states, shared context, refusals."""

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR
from vitac_deploy import VitacError
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime

CPU_BACKENDS = ["onnxruntime", "torch"]


@pytest.fixture(scope="module")
def golden_extr_artifact(tmp_path_factory):
    from tests.conftest import load_golden

    g = load_golden("swiglu_extr_h64")
    d = tmp_path_factory.mktemp("g") / "a"
    export_artifact(g.model, d, ExportOptions(validate=False))
    return g, d


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    model = random_predictor(SMALL_SWIGLU_EXTR, 5)
    d = tmp_path_factory.mktemp("s") / "a"
    export_artifact(model, d, ExportOptions(precisions=["fp32"], validate=False))
    return model, d


def _inputs(cfg, B, F, C=1, seed=0):
    rng = np.random.default_rng(seed)
    ctx = (12 * rng.standard_normal((B, C, cfg.tokens_per_frame, cfg.embed_dim))).astype(np.float32)
    acts, states = (rng.standard_normal((B, F, cfg.action_dim)).astype(np.float32) for _ in range(2))
    ext = rng.standard_normal((B, F, cfg.action_dim - 1)).astype(np.float32) if cfg.use_extrinsics else None
    return ctx, acts, states, ext


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_golden_rollout_through_runtime(golden_extr_artifact, backend):
    g, art = golden_extr_artifact
    rt = open_runtime(art, backend=backend)
    out = rt.rollout(g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps, g.extrinsics()[:, :2])
    assert np.abs(out - g.z_ar()).max() < 1e-4


def test_golden_rollout_through_torch_compile(golden_extr_artifact):
    """The torch.compile variant (a GPU benchmark row) reproduces upstream too; one dynamic graph
    serves every cache length."""
    g, art = golden_extr_artifact
    rt = open_runtime(art, backend="torch-compile")
    assert rt.describe().startswith("torch-compile")
    for _ in range(2):
        out = rt.rollout(g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps,
                         g.extrinsics()[:, :2])
        assert np.abs(out - g.z_ar()).max() < 1e-4


@pytest.mark.golden
def test_golden_default_model_through_runtime_fp32_and_fp16(tmp_path):
    from tests.conftest import load_golden

    g = load_golden("seed_l384")
    art = tmp_path / "a"
    export_artifact(g.model, art, ExportOptions(validate=False, first_frame_graph=False))
    for precision, tol in (("fp32", 1e-4), ("fp16", 5e-2)):
        rt = open_runtime(art, backend="onnxruntime", precision=precision)
        out = rt.rollout(g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps)
        assert np.abs(out - g.z_ar()).max() < tol, precision


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("B", [1, 5])
def test_streaming_equals_rollout_and_reference(small_artifact, backend, B):
    import torch

    model, art = small_artifact
    cfg = model.cfg
    ctx, acts, states, ext = _inputs(cfg, B, 4, C=2, seed=B)
    rt = open_runtime(art, backend=backend)
    out = rt.rollout(ctx, acts, states, 3, ext)
    with torch.no_grad():
        ref = model.rollout(*(torch.from_numpy(a) for a in (ctx, acts, states)), 3, torch.from_numpy(ext),
                            use_cache=False).numpy()
    assert np.abs(out - ref).max() < 1e-4
    # streaming: append context frames, then feed predictions back
    rt.reset(B)
    rt.append(ctx[:, 0], acts[:, 0], states[:, 0], ext[:, 0])
    streamed = [rt.append(ctx[:, 1], acts[:, 1], states[:, 1], ext[:, 1])]
    for t in (2, 3):
        streamed.append(rt.append(streamed[-1], acts[:, t], states[:, t], ext[:, t]))
    assert rt.frames == 4
    # normalized predictions fed back are normalized once more: equal within LayerNorm's eps effect
    assert np.abs(np.stack(streamed, 1) - out).max() < 1e-3


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_delta_state_update(small_artifact, backend):
    model, art = small_artifact
    ctx, acts, states, ext = _inputs(model.cfg, 2, 4)
    full = states.copy()
    for t in range(3):
        full[:, t + 1] = full[:, t] + acts[:, t]
    rt = open_runtime(art, backend=backend)
    a = rt.rollout(ctx, acts, full, 4, ext)
    b = rt.rollout(ctx, acts, states[:, :1], 4, ext, state_update="delta")
    c = rt.rollout(ctx, acts, states[:, :1], 4, ext, state_update=lambda s, u: s + u)
    assert np.array_equal(a, b) and np.array_equal(a, c)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_shared_context_broadcast_equals_per_sample(small_artifact, backend):
    model, art = small_artifact
    B, C = 4, 2
    ctx, acts, states, ext = _inputs(model.cfg, B, 4, C=1)
    ctx2, _, _, _ = _inputs(model.cfg, 1, 4, C=C, seed=9)
    for a in (acts, states, ext):  # the observed history (frame 0) is the same in every row
        a[:, 0] = a[0, 0]
    rt = open_runtime(art, backend=backend)
    shared = rt.rollout(ctx2, acts, states, 3, ext)
    per_sample = rt.rollout(np.repeat(ctx2, B, 0), acts, states, 3, ext)
    assert np.abs(shared - per_sample).max() < 1e-5


def test_bad_inputs_leave_the_cache_unchanged(small_artifact):
    model, art = small_artifact
    cfg = model.cfg
    rt = open_runtime(art, backend="onnxruntime", max_batch=2)
    ctx, acts, states, ext = _inputs(cfg, 2, 4)
    rt.reset(2)
    p0 = rt.append(ctx[:, 0], acts[:, 0], states[:, 0], ext[:, 0])
    bad_cases = [
        (dict(features=ctx[:, 0, :-1]), "features must have shape"),
        (dict(features=ctx[:, 0].astype(np.int32)), "float array"),
        (dict(features=np.where(ctx[:, 0] > 30, np.nan, ctx[:, 0])), "NaN"),
        (dict(action=acts[:, 0, :1]), "action must have shape"),
        (dict(extrinsics=None), "extrinsics"),
    ]
    for change, msg in bad_cases:
        kw = dict(features=p0, action=acts[:, 1], state=states[:, 1], extrinsics=ext[:, 1])
        kw.update(change)
        with pytest.raises(VitacError, match=msg):
            rt.append(**kw)
        assert rt.frames == 1
    # after the refusals the cache is what it was: the next frame matches a clean run
    good = rt.append(p0, acts[:, 1], states[:, 1], ext[:, 1])
    rt2 = open_runtime(art, backend="onnxruntime")
    rt2.reset(2)
    rt2.append(ctx[:, 0], acts[:, 0], states[:, 0], ext[:, 0])
    assert np.array_equal(good, rt2.append(p0, acts[:, 1], states[:, 1], ext[:, 1]))
    with pytest.raises(VitacError, match="max_batch=2"):
        rt.reset(3)
    rt.reset(1)
    for t in range(cfg.max_frames):
        rt.append(ctx[:1, 0], acts[:1, 0], states[:1, 0], ext[:1, 0])
    with pytest.raises(VitacError, match="max 5 frames"):
        rt.append(ctx[:1, 0], acts[:1, 0], states[:1, 0], ext[:1, 0])
    with pytest.raises(VitacError, match="exceed max_frames"):
        rt.rollout(ctx, acts[:, :4], states[:, :4], 6, ext)


def test_open_runtime_errors(tmp_path, small_artifact):
    _, art = small_artifact
    with pytest.raises(VitacError, match="not found"):
        open_runtime(tmp_path / "nothing")
    with pytest.raises(VitacError, match="no manifest"):
        open_runtime(tmp_path)
    with pytest.raises(VitacError, match="no fp16 step graph"):
        open_runtime(art, backend="onnxruntime", precision="fp16")
    with pytest.raises(VitacError, match="unknown backend"):
        open_runtime(art, backend="jax")
    with pytest.raises(VitacError, match="engine not found"):
        open_runtime(tmp_path / "x.plan")
    (tmp_path / "x.plan").write_bytes(b"plan")
    with pytest.raises(VitacError, match="x.plan.json is missing"):
        open_runtime(tmp_path / "x.plan")
    with pytest.raises(VitacError, match="runs on device cuda, not cpu"):
        open_runtime(tmp_path / "x.plan", device="cpu")
    with pytest.raises(VitacError, match="build-engine"):
        open_runtime(art, backend="tensorrt")
    with pytest.raises(VitacError, match="cuda_graphs needs device cuda"):
        open_runtime(art, backend="onnxruntime", cuda_graphs=True)


def test_cuda_arrays_are_refused_by_host_backends(small_artifact):
    """Anything with __cuda_array_interface__ is seen as device memory without importing its
    library; host backends say how to pass it instead of crashing in np.asarray."""
    _, art = small_artifact
    rt = open_runtime(art)
    rt.reset(1)

    class CudaLike:  # the protocol PyTorch and CuPy implement
        __cuda_array_interface__ = {"shape": (1, 16, 32), "typestr": "<f4", "data": (1234, False), "version": 3}

    with pytest.raises(VitacError, match="features is a CUDA array.*host arrays"):
        rt.append(CudaLike(), np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32))
    from vitac_deploy.runtimes.arrays import as_device_array

    d = as_device_array(CudaLike())
    assert d.ptr == 1234 and d.shape == (1, 16, 32) and d.nbytes == 16 * 32 * 4
    strided = CudaLike()
    strided.__cuda_array_interface__ = {**CudaLike.__cuda_array_interface__, "strides": (4, 4 * 32, 4)}
    with pytest.raises(VitacError, match="strided CUDA array"):
        as_device_array(strided, "features")
    assert as_device_array(np.zeros(3)) is None


def test_runtime_side_imports_without_torch_or_onnx(small_artifact):
    """A Jetson may have numpy and its backend only: block torch and onnx, then roll out."""
    _, art = small_artifact
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx', 'safetensors'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
from vitac_deploy.runtimes import open_runtime
rt = open_runtime({str(art)!r}, backend='onnxruntime')
cfg = rt.cfg
B, F = 1, 3
out = rt.rollout(np.ones((B, 1, cfg.tokens_per_frame, cfg.embed_dim), np.float32),
                 np.zeros((B, F, cfg.action_dim), np.float32), np.zeros((B, F, cfg.action_dim), np.float32), F,
                 np.zeros((B, F, cfg.action_dim - 1), np.float32))
assert out.shape == (B, F, cfg.tokens_per_frame, cfg.embed_dim)
assert not any(m.split('.')[0] in ('torch', 'onnx') for m in sys.modules)
print('ok')
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rollout_without_normalize_reps(tmp_path, backend):
    """normalize_reps off: no next_features_raw output; the prediction itself is fed back."""
    import dataclasses

    import torch

    cfg = dataclasses.replace(SMALL, normalize_reps=False)
    model = random_predictor(cfg, 4)
    art = tmp_path / "a"
    export_artifact(model, art, ExportOptions(precisions=["fp32"], validation_frames=3))
    ctx, acts, states, _ = _inputs(cfg, 2, 4)
    out = open_runtime(art, backend=backend).rollout(ctx, acts, states, 4)
    with torch.no_grad():
        ref = model.rollout(*(torch.from_numpy(a) for a in (ctx, acts, states)), 4, use_cache=False).numpy()
    assert np.abs(out - ref).max() < 1e-4


def test_energy_graph_missing_or_replaced_is_refused(tmp_path):
    """A missing energy.onnx would make planning copy every prediction to the host without a word;
    a graph that is not the energy graph would fail deep inside ONNX Runtime. Both are refused when
    the runtime opens."""
    import shutil

    model = random_predictor(SMALL, 0)
    art = tmp_path / "a"
    export_artifact(model, art, ExportOptions(precisions=["fp32"], validate=False, first_frame_graph=False))
    shutil.copy(art / "step.onnx", tmp_path / "step.onnx")
    (art / "energy.onnx").unlink()
    with pytest.raises(VitacError, match="energy graph energy.onnx that is missing"):
        open_runtime(art, backend="onnxruntime")
    shutil.copy(tmp_path / "step.onnx", art / "energy.onnx")
    with pytest.raises(VitacError, match="is not an energy graph"):
        open_runtime(art, backend="onnxruntime")

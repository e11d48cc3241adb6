"""ONNX Runtime's CUDA execution provider and torch on CUDA, for real (marked `gpu`; skipped with
the reason where there is no GPU or no onnxruntime-gpu). Run by scripts/gpu_check.sh."""

import importlib.util

import numpy as np
import pytest

from tests.conftest import SMALL, load_golden, load_mpc_golden
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime


def _cuda_ep() -> bool:
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _gpu() -> bool:
    try:
        from vitac_deploy.runtimes.gpu import gpu_info

        return gpu_info(required=False) is not None
    except Exception:  # noqa: BLE001 - no cuda-python and no torch: no GPU for us
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU")]
needs_ort = pytest.mark.skipif(not _cuda_ep(), reason="needs onnxruntime-gpu (CUDAExecutionProvider)")


@pytest.fixture(scope="module")
def golden_art(tmp_path_factory):
    g = load_golden("seed_l384")
    art = tmp_path_factory.mktemp("g") / "a"
    export_artifact(g.model, art, ExportOptions(validate=False, first_frame_graph=False))
    return g, art


@needs_ort
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("fp16", 5e-2)])
def test_onnxruntime_cuda_reproduces_golden(golden_art, precision, tol):
    """fp32 within 1e-4 needs TF32 off (ONNX Runtime's default is on)."""
    g, art = golden_art
    rt = open_runtime(art, backend="onnxruntime", device="cuda", precision=precision)
    assert rt.session.get_providers()[0] == "CUDAExecutionProvider"
    out = rt.rollout(g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps)
    assert np.abs(out - g.z_ar()).max() < tol


@pytest.fixture(scope="module")
def golden_form_arts(tmp_path_factory):
    """seed_l384 in each non-portable graph form (concat cache)."""
    g = load_golden("seed_l384")
    arts = {}
    for form in ("ort-fused", "trt-attention"):
        arts[form] = tmp_path_factory.mktemp("forms") / form
        export_artifact(g.model, arts[form], ExportOptions(validate=False, first_frame_graph=False, graph_form=form))
    return g, arts


@needs_ort
@pytest.mark.parametrize("form", ["ort-fused", "trt-attention"])
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("fp16", 5e-2)])
def test_graph_forms_reproduce_golden_on_onnxruntime_cuda(golden_form_arts, form, precision, tol):
    """The fused forms on the CUDA provider (MultiHeadAttention / Attention kernels, SkipLayerNorm
    strict): the golden rollout within the tolerance of the precision, and CUDA graphs engage."""
    g, arts = golden_form_arts
    args = (g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps)
    rt = open_runtime(arts[form], backend="onnxruntime", device="cuda", precision=precision)
    assert rt.session.get_providers()[0] == "CUDAExecutionProvider"
    out = rt.rollout(*args)
    assert np.abs(out - g.z_ar()).max() < tol
    if precision == "fp16":
        graphs = open_runtime(arts[form], backend="onnxruntime", device="cuda", precision=precision, cuda_graphs=True)
        assert graphs.graphs_in_use, f"onnxruntime refused CUDA graphs for the {form} step graph"
        for _ in range(3):
            assert np.abs(graphs.rollout(*args) - out).max() < 1e-3


@needs_ort
def test_onnxruntime_cuda_graphs_engage_and_replay_what_eager_computes(golden_art):
    g, art = golden_art
    args = (g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps)
    eager = open_runtime(art, backend="onnxruntime", device="cuda", precision="fp16").rollout(*args)
    rt = open_runtime(art, backend="onnxruntime", device="cuda", precision="fp16", cuda_graphs=True)
    assert rt.graphs_in_use, "onnxruntime refused CUDA graphs for the step graph"
    for _ in range(4):    # ONNX Runtime captures after warm-up runs, then replays
        out = rt.rollout(*args)
        assert np.abs(out - eager).max() < 1e-3


@needs_ort
def test_onnxruntime_cuda_shared_context_broadcast(tmp_path):
    model = random_predictor(SMALL, 0)
    art = tmp_path / "a"
    export_artifact(model, art, ExportOptions(precisions=["fp32"], validate=False, first_frame_graph=False))
    rng = np.random.default_rng(0)
    N, D, A = SMALL.tokens_per_frame, SMALL.embed_dim, SMALL.action_dim
    ctx = (12 * rng.standard_normal((1, 2, N, D))).astype(np.float32)
    acts = rng.standard_normal((5, 3, A)).astype(np.float32)
    acts[:, 0] = acts[0, 0]
    states = np.broadcast_to(rng.standard_normal((1, 3, A)), (5, 3, A)).astype(np.float32)
    cpu = open_runtime(art, backend="onnxruntime").rollout(ctx, acts, states, 2)
    gpu = open_runtime(art, backend="onnxruntime", device="cuda", precision="fp32").rollout(ctx, acts, states, 2)
    assert np.abs(gpu - cpu).max() < 1e-4


@needs_ort
@pytest.mark.golden
def test_upstream_plan_on_onnxruntime_cuda(tmp_path):
    """The golden plan through ONNX Runtime CUDA (fp32), energies on the device."""
    from vitac_deploy.planning import CEMOptions, plan

    g = load_mpc_golden()
    art = tmp_path / "a"
    export_artifact(g.model, art, ExportOptions(precisions=["fp32"], validate=False, first_frame_graph=False))
    rt = open_runtime(art, backend="onnxruntime", device="cuda", precision="fp32")
    rt._prediction = lambda: pytest.fail("prediction copied to the host while planning")
    opts = CEMOptions(**{k: v for k, v in g.meta["mpc_args"].items() if k != "verbose"})
    res = plan(rt, g.current, g.goal, g.pose, opts, noise=g.arrays["cem_noise"])
    assert np.abs(res.energies - g.arrays["cem_energies"]).max() < 1e-5
    assert np.abs(res.actions - g.arrays["cem_action"]).max() < 1e-5


def test_torch_cuda_reproduces_golden(golden_art):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    g, art = golden_art
    rt = open_runtime(art, backend="torch", device="cuda", precision="fp32")
    out = rt.rollout(g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps)
    assert np.abs(out - g.z_ar()).max() < 1e-4


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


@pytest.mark.parametrize("backend, options", [("torch-reference", {}), ("torch", {}), ("torch", {"cuda_graphs": True})],
                         ids=["reference", "fast", "fast-graphs"])
def test_torch_cuda_golden_rollouts_fp32_and_fp16(golden_art, backend, options):
    """Both torch paths on CUDA: upstream's rollouts in fp32 (TF32 off, torch's default) within 1e-4
    and fp16 within 0.05; CUDA graphs replay (the second rollout) what eager computes."""
    _torch_cuda()
    g, art = golden_art
    args = (g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :2], g.steps)
    for precision, tol in (("fp32", 1e-4), ("fp16", 5e-2)):
        rt = open_runtime(art, backend=backend, device="cuda", precision=precision, **options)
        first, second = rt.rollout(*args), rt.rollout(*args)
        assert np.abs(first - g.z_ar()).max() < tol and np.abs(second - first).max() < 1e-6, precision


@pytest.mark.golden
@pytest.mark.parametrize("options", [{}, {"cuda_graphs": True}, {"compile": "default"}],
                         ids=["eager", "graphs", "compiled"])
def test_upstream_plan_on_the_fast_torch_path_cuda(options, tmp_path):
    """The golden plan on the fast torch path on CUDA (fp32): energies and plan within 1e-5, the
    observation staged once, per CEM step only the conditioning in and the energies out."""
    _torch_cuda()
    from vitac_deploy.planning import CEMOptions, plan

    g = load_mpc_golden()
    art = tmp_path / "mpc"
    export_artifact(g.model, art, ExportOptions(precisions=["fp32"], first_frame_graph=False, validate=False))
    rt = open_runtime(art, backend="torch", device="cuda", precision="fp32", max_frames=2, **options)
    opts = CEMOptions(**{k: v for k, v in g.meta["mpc_args"].items() if k != "verbose"})
    marks = []
    res = plan(rt, g.current, g.goal, g.pose, opts, noise=g.arrays["cem_noise"],
               on_step=lambda *a: marks.append(rt.host_traffic))
    assert np.abs(res.energies - g.arrays["cem_energies"]).max() < 1e-5
    assert np.abs(res.actions - g.arrays["cem_action"]).max() < 1e-5
    A, S = g.cfg.action_dim, opts.samples
    for a, b in zip(marks, marks[1:]):
        assert (b - a).to_device == S * opts.rollout * 2 * A * 4 and (b - a).to_host == S * 4


def test_cuda_features_stay_on_the_device_into_the_predictor(golden_art):
    """A CUDA tensor as the observation and goal (an encoder's output kept on the GPU): the same
    plan as from host arrays, and neither crosses to the host."""
    torch = _torch_cuda()
    from vitac_deploy.planning import CEMOptions, plan, planning_problem

    g, art = golden_art
    rt = open_runtime(art, backend="torch", device="cuda", precision="fp32", max_frames=2)
    current, goal, pose = planning_problem(g.cfg, 0)
    opts = CEMOptions(samples=16, topk=4, cem_steps=2)
    host = plan(rt, current, goal, pose, opts, seed=1)
    before = rt.host_traffic
    dev = plan(rt, torch.from_numpy(current).cuda(), torch.from_numpy(goal).cuda(), pose, opts, seed=1)
    assert (rt.host_traffic - before).to_device == opts.cem_steps * opts.samples * 2 * 2 * g.cfg.action_dim * 4
    assert np.abs(dev.energies - host.energies).max() < 1e-5

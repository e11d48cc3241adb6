"""The fast PyTorch path (backend `torch`): exact against the golden rollouts and the reference, its
in-place cache, the write it skips, staged contexts, device-resident features, options. The golden
plan runs on it in tests/test_planning.py; what crosses the host in tests/test_host_traffic.py."""

import numpy as np
import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR, load_golden
from vitac_deploy import VitacError
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime
from vitac_deploy.runtimes.torch import FastTorchRuntime, TorchRuntime

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = random_predictor(SMALL_SWIGLU_EXTR, 7)
    d = tmp_path_factory.mktemp("fast") / "a"
    export_artifact(model, d, ExportOptions(precisions=["fp32"], validate=False))
    return model, d


def _inputs(cfg, B, F, C=1, seed=0, shared=False):
    rng = np.random.default_rng(seed)
    ctx = (12 * rng.standard_normal((1 if shared else B, C, cfg.tokens_per_frame, cfg.embed_dim))).astype(np.float32)
    acts, states = (rng.standard_normal((B, F, cfg.action_dim)).astype(np.float32) for _ in range(2))
    ext = rng.standard_normal((B, F, cfg.action_dim - 1)).astype(np.float32) if cfg.use_extrinsics else None
    if shared:   # the context frames' conditioning the same in every row: they run once, at batch 1
        acts[:, :C - 1], states[:, :C - 1] = acts[:1, :C - 1], states[:1, :C - 1]
        if ext is not None:
            ext[:, :C - 1] = ext[:1, :C - 1]
    return ctx, acts, states, ext


@pytest.mark.golden
@pytest.mark.parametrize("name", ["swiglu_extr_h64", "seed_l384"])
def test_golden_rollouts_fp32_and_fp16(tmp_path, name):
    """Upstream's rollouts: fp32 within 1e-4, fp16 within 0.05 (the tolerances of every backend),
    and fp32 within 1e-5 of the reference runtime."""
    g = load_golden(name)
    art = tmp_path / "a"
    export_artifact(g.model, art, ExportOptions(precisions=["fp32"], validate=False, first_frame_graph=False))
    F = 1 + g.steps - 1
    ext = g.extrinsics()[:, :F] if g.extrinsics() is not None else None
    args = (g.frames()[:, :1], g.arrays["actions"], g.arrays["states"][:, :F], g.steps, ext)
    ref = open_runtime(art, backend="torch-reference").rollout(*args)
    for precision, tol in (("fp32", 1e-4), ("fp16", 5e-2)):
        rt = open_runtime(art, backend="torch", precision=precision)
        assert isinstance(rt, FastTorchRuntime) and rt.describe().startswith("torch (cpu")
        out = rt.rollout(*args)
        assert np.abs(out - g.z_ar()).max() < tol, precision
        if precision == "fp32":
            assert np.abs(out - ref).max() < 1e-5


@pytest.mark.parametrize("B", [1, 3])
def test_streaming_rollout_and_the_cache_in_place(small, B):
    """append frame by frame == rollout == the reference runtime; each frame's K/V sit in their
    slot of the one preallocated buffer per block (written in place, nothing concatenated)."""
    model, art = small
    cfg = model.cfg
    ctx, acts, states, ext = _inputs(cfg, B, 4)
    fast, ref = open_runtime(art, backend="torch", max_frames=4), TorchRuntime(model, max_frames=4)
    out = fast.rollout(ctx, acts, states, 4, ext)
    assert np.abs(out - ref.rollout(ctx, acts, states, 4, ext)).max() < 1e-5
    k0 = fast.fast.k0
    ptr = k0.data_ptr()
    fast.reset(B)
    stream = [fast.append(ctx[:, 0], acts[:, 0], states[:, 0], ext[:, 0])]
    for t in range(1, 4):
        stream.append(fast.append(stream[-1] * 12, acts[:, t], states[:, t], ext[:, t]))
    assert fast.fast.k0.data_ptr() == ptr and fast.cache_bytes == 2 * cfg.depth * k0.numel() * 4
    L = cfg.tokens_per_step
    assert all(fast.fast.k0[:B, :, t * L:(t + 1) * L].abs().sum() > 0 for t in range(4))   # every slot written
    want = ref
    want.reset(B)
    exp = [want.append(ctx[:, 0], acts[:, 0], states[:, 0], ext[:, 0])]
    for t in range(1, 4):
        exp.append(want.append(exp[-1] * 12, acts[:, t], states[:, t], ext[:, t]))
    assert np.abs(np.stack(stream) - np.stack(exp)).max() < 1e-5


def test_a_lone_last_frame_writes_no_cache(small):
    """A one-frame rollout (the energy landscape's) attends over its own K/V and leaves the cache
    as it was; appending after it is refused rather than read from an unwritten slot."""
    model, art = small
    ctx, acts, states, ext = _inputs(model.cfg, 2, 1)
    rt = open_runtime(art, backend="torch", max_frames=2)
    out = rt.rollout(ctx, acts, states, 1, ext)
    assert np.abs(out - TorchRuntime(model).rollout(ctx, acts, states, 1, ext)).max() < 1e-5
    assert all(getattr(rt.fast, f"{kv}{i}").abs().sum() == 0 for kv in "kv" for i in range(model.cfg.depth))
    with pytest.raises(VitacError, match="reset before appending"):
        rt.append(out[:, 0], acts[:, 0], states[:, 0], ext[:, 0])
    rt.reset(2)
    rt.append(ctx[:, 0], acts[:, 0], states[:, 0], ext[:, 0])   # streaming writes every frame's K/V
    assert rt.fast.k0.abs().sum() > 0
    rt.rollout(ctx, acts, states, 1, ext)    # slot 0 holds the stream's frame, not this rollout's
    with pytest.raises(VitacError, match="reset before appending"):
        rt.append(out[:, 0], acts[:, 0], states[:, 0], ext[:, 0])


def test_shared_context_runs_once_and_is_broadcast(small):
    """Context frames whose conditioning is the same in every row run once at batch 1 and their
    cache is broadcast in place; the result is the reference's."""
    model, art = small
    ctx, acts, states, ext = _inputs(model.cfg, 3, 4, C=2, shared=True)
    rt = open_runtime(art, backend="torch")
    got = rt.rollout(ctx, acts, states, 3, ext)
    assert np.abs(got - TorchRuntime(model).rollout(ctx, acts, states, 3, ext)).max() < 1e-5
    staged = rt.stage_context(ctx)
    assert np.abs(rt.rollout(staged, acts, states, 3, ext) - got).max() < 1e-6


def test_staged_contexts_by_group_of_rows(small):
    """Two contexts staged at once, rows 0:2 reading one and 2:3 the other: each row is the
    rollout from its own context; a staged context of another runtime, or replaced, is refused."""
    model, art = small
    cfg = model.cfg
    ctx, acts, states, ext = _inputs(cfg, 3, 3, seed=4)
    two = ctx[[0, 2]]
    want = np.concatenate([ctx[[0, 0]], ctx[[2]]])
    rt = open_runtime(art, backend="torch")
    staged = rt.stage_context([two[:1], two[1:]])
    got = rt.rollout(staged.for_groups([(0, 2, 0), (2, 3, 1)]), acts, states, 3, ext)
    assert np.abs(got - TorchRuntime(model).rollout(want, acts, states, 3, ext)).max() < 1e-5
    other = open_runtime(art, backend="torch")
    with pytest.raises(VitacError, match="staged on another runtime"):
        other.rollout(staged, acts, states, 3, ext)
    rt.stage_context(two)
    with pytest.raises(VitacError, match="replaced by a later stage_context"):
        rt.rollout(staged, acts, states, 3, ext)
    with pytest.raises(VitacError, match="must cover rows"):
        rt.rollout(rt.stage_context(two).for_groups([(0, 1, 0), (2, 3, 1)]), acts, states, 3, ext)


def test_torch_compile_equals_eager(small):
    """torch.compile of the frame function (one graph per frame index) computes what eager does."""
    model, art = small
    ctx, acts, states, ext = _inputs(model.cfg, 2, 3)
    eager = open_runtime(art, backend="torch").rollout(ctx, acts, states, 3, ext)
    rt = open_runtime(art, backend="torch-compile")
    assert rt.describe().startswith("torch-compile (cpu, fp32, in-place cache, torch.compile default")
    for _ in range(2):   # the second run reuses the compiled graphs
        assert np.abs(rt.rollout(ctx, acts, states, 3, ext) - eager).max() < 1e-5


@pytest.mark.parametrize("backend", ["torch", "torch-reference"])
def test_device_features_stay_tensors(tmp_path, backend):
    """Features that are already tensors on the runtime's device (a torch encoder's output) are
    staged and scored as they are: the plan equals the one from host arrays, and neither the
    observation nor the goal crosses the host boundary."""
    from vitac_deploy.planning import CEMOptions, plan, planning_problem

    model = random_predictor(SMALL, 2)
    export_artifact(model, tmp_path / "a", ExportOptions(precisions=["fp32"], validate=False))
    current, goal, pose = planning_problem(model.cfg, 1)
    opts = CEMOptions(samples=6, topk=2, cem_steps=2)
    rt = open_runtime(tmp_path / "a", backend=backend)
    host = plan(rt, current, goal, pose, opts, seed=3)
    before = rt.host_traffic
    dev = plan(rt, torch.from_numpy(current), torch.from_numpy(goal), pose, opts, seed=3)
    sent = (rt.host_traffic - before).to_device
    cfg = model.cfg
    cond = 2 * 2 * cfg.action_dim * 4   # F = 2 frames of action and state
    assert sent == opts.cem_steps * opts.samples * cond
    assert np.abs(dev.actions - host.actions).max() < 1e-6 and np.abs(dev.energies - host.energies).max() < 1e-6
    with pytest.raises(VitacError, match="must be normalized features"):
        plan(rt, torch.from_numpy(current) * 10, torch.from_numpy(goal), pose, opts)


def test_options_are_checked(small):
    _, art = small
    with pytest.raises(VitacError, match="cuda_graphs needs device cuda"):
        open_runtime(art, backend="torch", cuda_graphs=True)
    with pytest.raises(VitacError, match="compile mode must be one of"):
        open_runtime(art, backend="torch", compile="fastest")
    with pytest.raises(VitacError, match="unknown backend 'torch-fast'"):
        open_runtime(art, backend="torch-fast")
    assert open_runtime(art, backend="torch-reference").describe().startswith("torch-reference (cpu")


def test_the_callers_model_is_left_as_it_was():
    """An fp16 fast runtime converts a copy: the float32 model (e.g. a shared reference) stays."""
    model = random_predictor(SMALL, 1)
    FastTorchRuntime(model, precision="fp16")
    assert next(model.parameters()).dtype == torch.float32


def test_the_cli_reaches_both_torch_paths(tmp_path):
    """validate, plan and rollout take --backend torch, torch-reference (and torch-compile through
    the same registry); plans from the two paths agree."""
    import json
    import subprocess
    import sys

    from vitac_deploy.benchmarks.serving import tiny_artifact

    art = tiny_artifact(tmp_path / "a")
    rng = np.random.default_rng(0)
    for name in ("obs", "goal"):
        np.savez(tmp_path / f"{name}.npz", images=rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8))
    cli = lambda *a: subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True)
    plans = {}
    for backend in ("torch", "torch-reference"):
        p = cli("validate", art, "--random-init", "--backend", backend, "--precision", "fp32")
        assert p.returncode == 0 and "pass" in p.stdout.lower(), (backend, p.stdout[-800:], p.stderr[-800:])
        out = tmp_path / f"{backend}.json"
        p = cli("plan", art, "--observation", tmp_path / "obs.npz", "--goal", tmp_path / "goal.npz",
                "--pose", "0.5,0,0.3,0,0,0,0.5", "--backend", backend, "--samples", 8, "--topk", 2, "--cem-steps", 2,
                "--json", out)
        assert p.returncode == 0, (backend, p.stderr[-800:])
        plans[backend] = np.array(json.loads(out.read_text())["actions"])
    assert np.abs(plans["torch"] - plans["torch-reference"]).max() < 1e-5
    bad = cli("validate", art, "--random-init", "--backend", "torch-fast")
    assert bad.returncode == 2 and "unknown backend 'torch-fast'" in bad.stderr

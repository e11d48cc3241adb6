"""The upstream planner, exact: golden energies and plan (mpc_franka) through the reference, the
upstream way (full recompute) and the exported artifact on ONNX Runtime; chunking; no host copies
of predictions; option errors."""

import numpy as np
import pytest

from tests.conftest import SMALL, load_mpc_golden
from vitac_deploy import VitacError
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.planning import ActionSpace, CEMOptions, energies, plan, raw_equivalent
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime
from vitac_deploy.runtimes.torch import TorchRuntime
from vitac_deploy.runtimes.torch.full_recompute import FullRecompute

RUNTIMES = ["reference", "upstream-way", "onnxruntime", "torch"]


@pytest.fixture(scope="module")
def mpc():
    return load_mpc_golden()


@pytest.fixture(scope="module")
def mpc_artifact(mpc, tmp_path_factory):
    art = tmp_path_factory.mktemp("mpc") / "a"
    export_artifact(mpc.model, art, ExportOptions(precisions=["fp32"], first_frame_graph=False))
    return art


def _runtime(kind, mpc, art, max_batch=None):
    if kind == "reference":
        return TorchRuntime(mpc.model, max_batch=max_batch)
    if kind == "upstream-way":
        return FullRecompute(mpc.model, max_batch=max_batch)
    return open_runtime(art, backend=kind, precision="fp32", max_batch=max_batch)


def _options(mpc) -> CEMOptions:
    args = {k: v for k, v in mpc.meta["mpc_args"].items() if k != "verbose"}
    return CEMOptions(**args)


@pytest.mark.parametrize("kind", RUNTIMES)
def test_golden_energy_landscape(mpc, mpc_artifact, kind):
    """upstream's energy landscape: one predicted frame per action of a 5x5x5 grid."""
    rt = _runtime(kind, mpc, mpc_artifact)
    e = energies(rt, mpc.current, mpc.goal, mpc.pose, mpc.arrays["grid_actions"][:, None])
    assert e.shape == (125,)
    assert np.abs(e - mpc.arrays["grid_energy"]).max() < 1e-5


@pytest.mark.parametrize("kind", RUNTIMES)
def test_golden_cem_plan_replayed(mpc, mpc_artifact, kind):
    """Fed upstream's draws, the planner returns upstream's plan and every energy of every step."""
    rt = _runtime(kind, mpc, mpc_artifact)
    res = plan(rt, mpc.current, mpc.goal, mpc.pose, _options(mpc), noise=mpc.arrays["cem_noise"])
    assert np.abs(res.energies - mpc.arrays["cem_energies"]).max() < 1e-5
    assert np.abs(res.actions - mpc.arrays["cem_action"]).max() < 1e-5
    assert res.actions[1, 6] == 0.0 and res.actions[0, 6] != 0.0   # the gripper threshold, both ways


def test_chunked_plan_is_the_unchunked_plan(mpc, mpc_artifact):
    opts, noise = _options(mpc), mpc.arrays["cem_noise"]
    whole = plan(_runtime("onnxruntime", mpc, mpc_artifact), mpc.current, mpc.goal, mpc.pose, opts, noise=noise)
    for chunk, max_batch in ((7, None), (None, 4), (1, None)):
        rt = _runtime("onnxruntime", mpc, mpc_artifact, max_batch)
        part = plan(rt, mpc.current, mpc.goal, mpc.pose, opts, noise=noise, chunk=chunk)
        assert part.chunk == (chunk or max_batch)
        np.testing.assert_array_equal(part.actions, whole.actions)
        assert np.abs(part.energies - whole.energies).max() < 1e-6

def test_a_memory_budget_picks_the_chunk_for_the_runtime_as_it_allocates(mpc, mpc_artifact):
    """The memory model sizes the chunk for the runtime's own max_frames (a runtime opened for the
    model's 8 frames holds 4x the cache of one opened for the horizon's 2) and refuses a runtime
    whose max_batch alone exceeds the budget."""
    from vitac_deploy.planning.memory import plan_memory

    opts, noise = _options(mpc), mpc.arrays["cem_noise"]
    whole = plan(_runtime("onnxruntime", mpc, mpc_artifact), mpc.current, mpc.goal, mpc.pose, opts, noise=noise)
    budget = plan_memory(mpc.cfg, 9, 2, precision="fp32", backend="onnxruntime").device_total
    rt = open_runtime(mpc_artifact, backend="onnxruntime", max_frames=2)
    part = plan(rt, mpc.current, mpc.goal, mpc.pose, opts, noise=noise, memory_budget=budget)
    assert part.chunk == 9 and np.array_equal(part.actions, whole.actions)
    wide = open_runtime(mpc_artifact, backend="onnxruntime")            # max_frames 8: a smaller chunk
    assert plan(wide, mpc.current, mpc.goal, mpc.pose, opts, noise=noise, memory_budget=budget).chunk < 9
    with pytest.raises(VitacError, match="allocates for max_batch 25.*max_frames=2 and max_batch=9"):
        plan(_runtime("onnxruntime", mpc, mpc_artifact, 25), mpc.current, mpc.goal, mpc.pose, opts,
             memory_budget=budget)
    with pytest.raises(VitacError, match="not even one sample fits a budget of 1000 bytes"):
        plan(rt, mpc.current, mpc.goal, mpc.pose, opts, noise=noise, memory_budget=1000)
    for bad in (-1, float("nan"), "8GiB"):
        with pytest.raises(VitacError, match="memory_budget"):
            plan(rt, mpc.current, mpc.goal, mpc.pose, opts, memory_budget=bad)


def test_one_runtime_plans_for_several_threads_one_at_a_time(mpc, mpc_artifact):
    """A runtime's buffers and goal are shared: concurrent plans are serialized, each one exact."""
    import threading

    rt = _runtime("onnxruntime", mpc, mpc_artifact)
    opts, noise = _options(mpc), mpc.arrays["cem_noise"]
    flipped = (mpc.goal[:, ::-1]).copy()
    want = {g: plan(rt, mpc.current, goal, mpc.pose, opts, noise=noise).actions
            for g, goal in (("goal", mpc.goal), ("flipped", flipped))}
    got, errors = [], []

    def worker(name, goal):
        try:
            got.append((name, plan(rt, mpc.current, goal, mpc.pose, opts, noise=noise).actions))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(("goal", mpc.goal), ("flipped", flipped))[i % 2])
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 6
    assert all(np.array_equal(a, want[name]) for name, a in got)


def test_non_finite_energies_are_refused(mpc, mpc_artifact, monkeypatch):
    rt = _runtime("onnxruntime", mpc, mpc_artifact)
    monkeypatch.setattr(rt, "rollout_energy", lambda *a, **k: np.full(a[1].shape[0], np.nan, np.float32))
    with pytest.raises(VitacError, match="25 of 25 energies are NaN or inf"):
        plan(rt, mpc.current, mpc.goal, mpc.pose, _options(mpc))


@pytest.mark.parametrize("kind", ["reference", "onnxruntime", "torch"])
def test_planning_never_copies_predictions_to_the_host(mpc, mpc_artifact, kind, monkeypatch):
    """The energy is computed where the rollout runs: `_prediction` (the host copy of a
    [B, N, D] frame) is never called while planning."""
    rt = _runtime(kind, mpc, mpc_artifact)
    calls = []
    monkeypatch.setattr(rt, "_prediction", lambda: calls.append(1) or pytest.fail("prediction copied to the host"))
    plan(rt, mpc.current, mpc.goal, mpc.pose, _options(mpc), noise=mpc.arrays["cem_noise"])
    energies(rt, mpc.current, mpc.goal, mpc.pose, mpc.arrays["grid_actions"][:4, None])
    assert calls == []


def test_seeded_plan_is_reproducible_and_moves_towards_low_energy(mpc, mpc_artifact):
    rt = _runtime("onnxruntime", mpc, mpc_artifact)
    opts = CEMOptions(rollout=2, samples=32, topk=4, cem_steps=3, maxnorm=0.075)
    a = plan(rt, mpc.current, mpc.goal, mpc.pose, opts, seed=3)
    b = plan(rt, mpc.current, mpc.goal, mpc.pose, opts, seed=3)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.energies.shape == (3, 32) and len(a.step_seconds) == 3
    assert a.energies[-1].mean() < a.energies[0].mean()   # the distribution moved towards the elites
    assert np.all(np.abs(a.actions[:, :3]) <= 0.075) and np.all(a.actions[:, 3:6] == 0)


def test_close_gripper_fixes_the_gripper_from_that_step(mpc, mpc_artifact):
    rt = _runtime("onnxruntime", mpc, mpc_artifact)
    opts = CEMOptions(rollout=2, samples=8, topk=3, cem_steps=1, close_gripper=1)
    res = plan(rt, mpc.current, mpc.goal, mpc.pose, opts, seed=0)
    # every elite's gripper at step 1 is 1.0: mean (1 - 0.15) * 1 + 0.15 * 0, std (1 - 0.15) * 0 + 0.15 * 1
    assert res.actions[1, 6] == pytest.approx(0.85) and res.std[1, 3] == pytest.approx(0.15)
    assert abs(res.actions[0, 6]) < 0.75


def test_plan_for_a_model_without_a_gripper(tmp_path):
    """The default 2-dim model: every entry sampled like xyz, poses move by the action; the same
    algorithm (one copy of it) plans."""
    model = random_predictor(SMALL, 0)
    art = tmp_path / "a"
    export_artifact(model, art, ExportOptions(precisions=["fp32"], validate=False, first_frame_graph=False))
    rt = open_runtime(art, max_batch=6)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, SMALL.tokens_per_frame, SMALL.embed_dim))
    feats = ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)).astype(np.float32)
    opts = CEMOptions(rollout=3, samples=10, topk=3, cem_steps=2)
    res = plan(rt, feats[:1], feats[1:], np.zeros((1, SMALL.action_dim), np.float32), opts)
    assert res.actions.shape == (3, SMALL.action_dim) and res.chunk == 6
    ref = plan(TorchRuntime(model), feats[:1], feats[1:], np.zeros((1, SMALL.action_dim), np.float32), opts)
    assert np.abs(res.energies - ref.energies).max() < 1e-5
    with pytest.raises(VitacError, match="close_gripper needs"):
        plan(rt, feats[:1], feats[1:], np.zeros((1, 3), np.float32), CEMOptions(samples=4, topk=2, close_gripper=0))
    with pytest.raises(VitacError, match="7-dim"):
        plan(rt, feats[:1], feats[1:], np.zeros((1, 3), np.float32), space=ActionSpace.franka())


@pytest.mark.parametrize("variance", [1e-3, 1.0, 1e2, 1e4, 1e7])
def test_raw_equivalent_undoes_the_graph_normalization(variance):
    """LayerNorm is not idempotent: normalized features fed to a graph that normalizes would move
    by up to eps/2 relative. The raw equivalent comes back to them to float32 rounding."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    raw = np.sqrt(variance) * rng.standard_normal((4, 64)) + 3.0
    x = F.layer_norm(torch.from_numpy(raw), (64,), eps=1e-5).float()
    again = F.layer_norm(torch.from_numpy(raw_equivalent(x.numpy(), 1e-5)), (64,), eps=1e-5)
    assert (again - x).abs().max().item() < 1e-6
    naive = F.layer_norm(x, (64,), eps=1e-5)   # what feeding them as they are would do
    assert (naive - x).abs().max().item() > 1e-6 or variance < 1e2


@pytest.mark.parametrize("opts, msg", [
    (CEMOptions(topk=1), "topk"),
    (CEMOptions(samples=4, topk=5), "topk"),
    (CEMOptions(rollout=0), "rollout"),
    (CEMOptions(rollout=True), "rollout"),
    (CEMOptions(momentum_std=1.5), "momentum_std"),
    (CEMOptions(momentum_mean="0.1"), "momentum_mean"),
    (CEMOptions(maxnorm=0), "maxnorm"),
    (CEMOptions(maxnorm=float("inf")), "maxnorm"),
    (CEMOptions(close_gripper=1.5), "close_gripper"),
    (CEMOptions(close_gripper=True), "close_gripper"),
])
def test_option_errors(mpc, mpc_artifact, opts, msg):
    rt = _runtime("onnxruntime", mpc, mpc_artifact)
    with pytest.raises(VitacError, match=msg):
        plan(rt, mpc.current, mpc.goal, mpc.pose, opts)


def test_input_errors(mpc, mpc_artifact):
    rt = _runtime("onnxruntime", mpc, mpc_artifact)
    opts = CEMOptions(samples=4, topk=2, cem_steps=1)
    with pytest.raises(VitacError, match="noise must be a real array of shape"):
        plan(rt, mpc.current, mpc.goal, mpc.pose, opts, noise=np.zeros((2, 4, 3)))
    with pytest.raises(VitacError, match="noise contains NaN"):
        plan(rt, mpc.current, mpc.goal, mpc.pose, opts, noise=np.full((2, 4, 4), np.nan))
    with pytest.raises(VitacError, match="seed"):
        plan(rt, mpc.current, mpc.goal, mpc.pose, opts, seed=-1)
    for chunk in (0, True, 2.5):
        with pytest.raises(VitacError, match="chunk must be a positive integer"):
            plan(rt, mpc.current, mpc.goal, mpc.pose, opts, chunk=chunk)
    with pytest.raises(VitacError, match="goal must be normalized"):
        plan(rt, mpc.current, 3 * mpc.goal + 1, mpc.pose, opts)
    with pytest.raises(VitacError, match="pose contains NaN"):
        plan(rt, mpc.current, mpc.goal, np.full_like(mpc.pose, np.nan), opts)
    with pytest.raises(VitacError, match="gripper_clip"):
        plan(rt, mpc.current, mpc.goal, mpc.pose, opts, space=ActionSpace(7, (0, 1, 2, 6), 6, gripper_clip=-1))
    with pytest.raises(VitacError, match="pose must be a real array of shape"):
        plan(rt, mpc.current, mpc.goal, mpc.pose[:, :6], opts)
    with pytest.raises(VitacError, match="current must be float features"):
        plan(rt, mpc.current[:, :3], mpc.goal, mpc.pose, opts)
    with pytest.raises(VitacError, match="normalized features"):
        plan(rt, 30 * mpc.current + 5, mpc.goal, mpc.pose, opts)
    with pytest.raises(VitacError, match="NaN"):
        plan(rt, mpc.current, np.full_like(mpc.goal, np.nan), mpc.pose, opts)
    with pytest.raises(VitacError, match="actions must be a real array of shape"):
        energies(rt, mpc.current, mpc.goal, mpc.pose, np.zeros((4, 7)))


@pytest.mark.parametrize("kind", ["onnxruntime", "torch"])
@pytest.mark.parametrize("max_batch", [None, 5])
def test_plan_many_is_each_robot_alone(mpc, mpc_artifact, max_batch, kind):
    """Several robots in one batch (chunks that span robots when max_batch is 5): each robot's plan,
    energies and distribution are the ones `plan` gives it alone; `noise` and `seed` robots mixed."""
    from vitac_deploy.planning import PlanRequest, plan_many

    opts = CEMOptions(samples=6, topk=3, cem_steps=2)
    rng = np.random.default_rng(3)
    feats = [mpc.current, mpc.goal]
    reqs = []
    for r in range(3):
        pose = mpc.pose + np.float32(0.01 * r) * np.ones_like(mpc.pose)
        noise = rng.standard_normal((4, 6, 4)) if r == 1 else None
        reqs.append(PlanRequest(feats[r % 2], feats[(r + 1) % 2], pose, seed=10 + r, noise=noise))
    rt = _runtime(kind, mpc, mpc_artifact, max_batch=max_batch)
    many = plan_many(rt, reqs, opts)
    for req, got in zip(reqs, many):
        alone = plan(_runtime(kind, mpc, mpc_artifact), req.current, req.goal, req.pose, opts,
                     noise=req.noise, seed=req.seed)
        assert np.abs(got.actions - alone.actions).max() <= 1e-6
        assert np.abs(got.energies - alone.energies).max() <= 1e-6
    assert not np.allclose(many[0].actions, many[2].actions)   # the robots did plan differently


def test_plan_many_on_a_runtime_without_groups(mpc, mpc_artifact):
    """The upstream way (no per-row goals): chunks never span robots, the plans are the same."""
    from vitac_deploy.planning import PlanRequest, plan_many

    opts = CEMOptions(samples=4, topk=2, cem_steps=1)
    reqs = [PlanRequest(mpc.current, mpc.goal, mpc.pose, seed=1), PlanRequest(mpc.goal, mpc.current, mpc.pose, seed=2)]
    many = plan_many(FullRecompute(mpc.model, max_batch=3), reqs, opts)
    for req, got in zip(reqs, many):
        alone = plan(FullRecompute(mpc.model), req.current, req.goal, req.pose, opts, seed=req.seed)
        assert np.abs(got.actions - alone.actions).max() <= 1e-6
    with pytest.raises(VitacError, match="at least one"):
        plan_many(FullRecompute(mpc.model), [], opts)

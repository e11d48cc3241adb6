"""What crosses a runtime's host boundary while planning, counted by the runtime (`host_traffic`):
per CEM step the samples' conditioning in (their actions and the poses those lead to: F x 2A
floats a sample) and their energies out (one float a sample), nothing proportional to tokens or
width; the observation and the goal cross once per plan. The TensorRT runtime's count is checked
against the fake CUDA's own in tests/test_tensorrt_fake_runtime.py."""

import numpy as np
import pytest

from tests.conftest import SMALL
from vitac_deploy.config import PredictorConfig
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.planning import CEMOptions, PlanRequest, plan, plan_many, planning_problem
from vitac_deploy.planning.energy import default_pose_update, graph_context, rollout_energies
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime

pytest.importorskip("torch")
BACKENDS = ["onnxruntime", "torch", "torch-reference"]
# two shapes with the same action width and different tokens x width: the per-step bytes must agree
WIDE = PredictorConfig.from_dict({**SMALL.to_dict(), "grid_height": 6, "grid_width": 6, "embed_dim": 64})


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = {}
    for name, cfg in (("small", SMALL), ("wide", WIDE)):
        d = tmp_path_factory.mktemp(name) / "a"
        export_artifact(random_predictor(cfg, 3), d, ExportOptions(precisions=["fp32"], validate=False))
        out[name] = (cfg, d)
    return out


def _per_step(rt, run) -> list:
    """HostTraffic of each CEM step after the first (which also stages the observation and goal)."""
    marks = []
    run(lambda step, steps, best: marks.append(rt.host_traffic))
    return [b - a for a, b in zip(marks, marks[1:])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [None, 3])
def test_a_cem_step_moves_the_conditioning_in_and_the_energies_out(artifacts, backend, chunk):
    S, H = 8, 2
    opts = CEMOptions(samples=S, topk=2, cem_steps=3, rollout=H)
    per_step = {}
    for name, (cfg, art) in artifacts.items():
        rt = open_runtime(art, backend=backend)
        current, goal, pose = planning_problem(cfg, 0)
        steps = _per_step(rt, lambda cb: plan(rt, current, goal, pose, opts, seed=1, chunk=chunk, on_step=cb))
        F, A = 1 + H - 1, cfg.action_dim
        for s in steps:
            assert s.to_device == S * F * 2 * A * 4, (name, s)   # actions and poses, float32
            assert s.to_host == S * 4, (name, s)                 # one energy a sample
        per_step[name] = steps[0]
        # the observation and the goal crossed once, in the first step (with the runtime's tables)
        first = rt.host_traffic
        assert first.to_device >= steps[0].to_device + 2 * cfg.tokens_per_frame * cfg.embed_dim * 4
    assert per_step["small"] == per_step["wide"]   # nothing x tokens x width


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_host_broadcast_the_staging_replaces_is_counted(artifacts, backend):
    """The control: a rollout given the observation as a host array (the way before staging)
    moves it to the batch on every call, S x N x D floats; staged, it moves nothing of it."""
    cfg, art = artifacts["small"]
    rt = open_runtime(art, backend=backend)
    current, goal, pose = planning_problem(cfg, 0)
    rt.set_goal(goal)
    S, N, D, A = 8, cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
    actions = np.random.default_rng(0).uniform(-0.05, 0.05, (S, 2, A)).astype(np.float32)
    ctx = graph_context(current, cfg)
    staged = rt.stage_context(ctx)
    rollout_energies(rt, staged, pose, actions, default_pose_update(A), S)   # allocates (tables, goal)
    cond = S * 2 * 2 * A * 4
    for context, extra in ((ctx, S * N * D * 4), (staged, 0)):
        before = rt.host_traffic
        rollout_energies(rt, context, pose, actions, default_pose_update(A), S)
        assert (rt.host_traffic - before).to_device == cond + extra


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_several_robots_move_their_conditioning_and_goals(artifacts, backend):
    """plan_many: per step the conditioning of every robot's samples, and each robot's goal once per
    chunk that holds its rows (the energy is scored against one staged goal at a time, over the
    chunk's rows, so energies come out once per robot in the chunk); the observations were staged
    once for the plan. Per robot, not per sample: a constant of the step."""
    cfg, art = artifacts["small"]
    rt = open_runtime(art, backend=backend)
    reqs = []
    for r in range(2):
        current, goal, pose = planning_problem(cfg, r)
        reqs.append(PlanRequest(current, goal, pose, seed=r))
    S, H, A = 6, 2, cfg.action_dim
    opts = CEMOptions(samples=S, topk=2, cem_steps=3, rollout=H)
    steps = _per_step(rt, lambda cb: plan_many(rt, reqs, opts, on_step=cb))
    goal_bytes = cfg.tokens_per_frame * cfg.embed_dim * 4
    for s in steps:
        assert s.to_device == 2 * S * H * 2 * A * 4 + 2 * goal_bytes and s.to_host == 2 * (2 * S * 4)

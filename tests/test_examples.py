import importlib.util
from pathlib import Path

import numpy as np

from tests.conftest import SMALL
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime


def test_plan_cem_runs_and_improves(tmp_path):
    spec = importlib.util.spec_from_file_location("plan_cem", Path(__file__).parents[1] / "examples" / "plan_cem.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(precisions=["fp32"], validate=False))
    rt = open_runtime(art, max_batch=32)
    cfg = rt.cfg
    rng = np.random.default_rng(0)
    ctx = (12 * rng.standard_normal((1, 2, cfg.tokens_per_frame, cfg.embed_dim))).astype(np.float32)
    goal = rng.standard_normal((cfg.tokens_per_frame, cfg.embed_dim)).astype(np.float32)
    state0 = np.zeros((1, 2, cfg.action_dim), np.float32)
    hist = np.zeros((1, 1, cfg.action_dim), np.float32)
    actions, score = mod.plan(rt, ctx, goal, state0, hist, samples=32, elites=4, iterations=3, horizon=3,
                              verbose=False)
    assert actions.shape == (3, cfg.action_dim) and np.isfinite(score)
    # the planned sequence scores as reported when rolled out alone
    pred = rt.rollout(ctx, np.concatenate([hist, actions[None]], 1), state0, 3, state_update="delta")
    assert abs(np.abs(pred[0, -1] - goal).mean() - score) < 1e-5

from pathlib import Path

import numpy as np

from tests.conftest import SMALL
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime


def test_cem_plan_scores_what_it_reports(tmp_path):
    from vitac_deploy.planning import CEMOptions, cem_plan, planning_problem

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(precisions=["fp32"], validate=False))
    rt = open_runtime(art, max_batch=32)
    ctx, goal, state0, hist = planning_problem(rt.cfg, context=2, seed=0)
    seen = []
    res = cem_plan(rt, ctx, goal, state0, hist, CEMOptions(samples=32, elites=4, iterations=3, horizon=3),
                   on_iteration=lambda i, n, s: seen.append((i, n)))
    assert res.actions.shape == (3, rt.cfg.action_dim) and np.isfinite(res.score)
    assert seen == [(1, 3), (2, 3), (3, 3)] and len(res.iteration_seconds) == 3
    assert res.score == min(res.scores)
    # the planned sequence scores as reported when rolled out alone
    pred = rt.rollout(ctx, np.concatenate([hist, res.actions[None]], 1), state0, 3, state_update="delta")
    assert abs(np.abs(pred[0, -1] - goal).mean() - res.score) < 1e-5


def test_plan_cem_example_runs(tmp_path):
    import subprocess
    import sys

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(precisions=["fp32"], validate=False))
    p = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "examples" / "plan_cem.py"), "--artifact", str(art),
                        "--samples", "8", "--elites", "2", "--iterations", "2", "--horizon", "3"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "iteration  2/2" in p.stdout and "plan time" in p.stdout

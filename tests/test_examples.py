from pathlib import Path

import numpy as np

from tests.conftest import SMALL
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime


def test_plan_scores_what_it_reports(tmp_path):
    """The energies the planner reports are those of the sequences it rolled out: re-scoring the
    best sample of the last step with a plain rollout gives the same number."""
    from vitac_deploy.planning import CEMOptions, plan, planning_problem
    from vitac_deploy.runtimes.base import host_energy

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(precisions=["fp32"], validate=False))
    rt = open_runtime(art, max_batch=32)
    current, goal, pose = planning_problem(rt.cfg, seed=0)
    seen = []
    opts = CEMOptions(rollout=3, samples=32, topk=4, cem_steps=3)
    res = plan(rt, current, goal, pose, opts, seed=0, on_step=lambda i, n, e: seen.append((i, n)))
    assert res.actions.shape == (3, rt.cfg.action_dim) and np.isfinite(res.energies).all()
    assert seen == [(1, 3), (2, 3), (3, 3)] and len(res.step_seconds) == 3
    # the plan itself, rolled out alone and scored on the host, has an energy on the scale of the samples'
    from vitac_deploy.planning.energy import graph_context

    pred = rt.rollout(graph_context(current, rt.cfg), res.actions[None], pose[:, None], 3, state_update="delta")
    e = host_energy(pred[:, -1], goal[0])[0]
    assert res.energies.min() - 1e-3 <= e <= res.energies.max() + 1e-3


def test_plan_cem_example_runs(tmp_path):
    import subprocess
    import sys

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(precisions=["fp32"], validate=False))
    p = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "examples" / "plan_cem.py"), "--artifact", str(art),
                        "--samples", "8", "--topk", "2", "--cem-steps", "2", "--horizon", "3"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "step  2/2" in p.stdout and "plan time" in p.stdout

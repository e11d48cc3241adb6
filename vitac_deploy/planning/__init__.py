"""Planning with the world model, as V-JEPA 2-AC plans (numpy only: runs on a robot without PyTorch).

- `pose`: the upstream pose update (`compute_new_pose`: xyz, extrinsic-xyz Euler, gripper).
- `energy`: the energy of action sequences through any runtime, computed where the rollout runs.
- `cem`: the upstream CEM planner (`plan`, `plan_many` for several robots in one batch, `CEMOptions`,
  `ActionSpace`).
- `memory`: what a plan costs in memory and FLOPs, and the largest chunk that fits a budget.
- `problem`: a seeded planning problem for benchmarks and examples.
"""

from .cem import ActionSpace, CEMOptions, PlanRequest, PlanResult, plan, plan_many
from .energy import energies, raw_equivalent
from .pose import compute_new_pose
from .problem import planning_problem

__all__ = ["ActionSpace", "CEMOptions", "PlanRequest", "PlanResult", "plan", "plan_many", "energies", "raw_equivalent", "compute_new_pose",
           "planning_problem"]

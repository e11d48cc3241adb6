"""The options the commands share, declared once: one name, one default and one help text per
setting across every command. Each mirrors a Python argument of the library (noted beside it).
A renamed flag keeps its old name for one release as a hidden alias (`alias`)."""

from __future__ import annotations

from typing import Any, Optional

import typer

from ..errors import VitacError
from ..inputs import check_seed
from ..planning.cem import CEMOptions

_CEM = CEMOptions()


def backend(default: Optional[str] = "auto", what: str = "") -> Any:
    """--backend (open_runtime's `backend`): a registered backend, or auto."""
    return typer.Option(default, "--backend",
                        help=what or "auto, onnxruntime, torch (the fast PyTorch path), torch-compile, torch-reference "
                                     "(the reference model); an ENGINE.plan runs on tensorrt.")


DEVICE = typer.Option(None, "--device", help="cpu or cuda (default: cpu; cuda for engines).")            # device
PRECISION = typer.Option(None, "--precision",
                         help="fp32 or fp16 (default: fp32 on cpu, fp16 on cuda; an engine's own).")     # precision
ENCODER = typer.Option(None, "--encoder", help="Encoder artifact or engine (default ARTIFACT/encoder).")
OBSERVATION = typer.Option(..., "--observation",
                           help="Current camera frame: PNG/JPEG, or .npz/.npy of uint8 [T, H, W, 3] "
                                "(the last frame is planned from). Repeatable.")
GOAL = typer.Option(..., "--goal", help="Goal image (same forms). Repeatable; the last frame is the goal.")
POSE = typer.Option(..., "--pose", help="Current pose (state), comma list: x,y,z,rx,ry,rz,g for 7-dim models.")
JSON_OUT = typer.Option(None, "--json", help="Write the results as JSON here.")
REPORT = typer.Option(None, "--report", help="Write the JSON report here.")

# the model's source (export, validate, export-encoder, info)
CHECKPOINT = typer.Option(None, "--checkpoint", help="Weights (.pt/.pth/.safetensors), read without running pickled code.")
CONFIG = typer.Option(None, "--config", help="Config JSON (ours, or upstream constructor kwargs).")
RANDOM_INIT = typer.Option(False, "--random-init", help="Seeded random weights instead of a checkpoint.")
def _seed(value: Optional[int]) -> Optional[int]:
    """--seed by the rule every entry point shares (inputs.check_seed: 0..2**63-1, the server's)."""
    if value is None:
        return value
    try:
        return check_seed(value, "--seed")
    except VitacError as e:
        raise typer.BadParameter(str(e)) from None


def seed(help: str, default: Optional[int] = 0) -> Any:
    """--seed, checked as every entry point checks a seed (`default` None: the command decides)."""
    return typer.Option(default, "--seed", help=help, callback=_seed)


WEIGHT_SEED = seed("Seed for --random-init.")

# the upstream CEM planner (plan, serve, bench --plan, demo): CEMOptions, upstream names and defaults
HORIZON = typer.Option(_CEM.rollout, "--horizon", help="Actions planned (and frames predicted) per sample "
                                                       "(upstream's `rollout`).")
SAMPLES = typer.Option(_CEM.samples, "--samples", help="Action sequences per CEM step.")
TOPK = typer.Option(_CEM.topk, "--topk", help="Elites per CEM step.")
CEM_STEPS = typer.Option(_CEM.cem_steps, "--cem-steps", help="CEM steps.")
MOMENTUM_MEAN = typer.Option(_CEM.momentum_mean, "--momentum-mean")
MOMENTUM_MEAN_GRIPPER = typer.Option(_CEM.momentum_mean_gripper, "--momentum-mean-gripper")
MOMENTUM_STD = typer.Option(_CEM.momentum_std, "--momentum-std")
MOMENTUM_STD_GRIPPER = typer.Option(_CEM.momentum_std_gripper, "--momentum-std-gripper")
MAXNORM = typer.Option(_CEM.maxnorm, "--maxnorm", help="Bound (and initial std) of the xyz entries.")
CLOSE_GRIPPER = typer.Option(None, "--close-gripper", help="Gripper closed from this step on.")


def hidden(flag: str, default: Any = None) -> Any:
    """An old flag name kept for one release: accepted, not shown in --help (see `alias`)."""
    return typer.Option(default, flag, hidden=True)


def alias(value: Any, old: Any, flag: str, old_flag: str, default: Any = None, ctx: Any = None) -> Any:
    """The value of a renamed flag: the new one, or the old (hidden) one where only that was given.
    With the command's `typer.Context`, a new flag given at its default value counts as given."""
    if old is None:
        return value
    if _given(ctx, flag, value, default):
        raise VitacError(f"give {flag} ({old_flag} is its old name), not both")
    return old


def _given(ctx: Any, flag: str, value: Any, default: Any) -> bool:
    """Whether `flag` was given: where the context records its source (command line, environment,
    default), from that; otherwise, whether its value differs from the default."""
    source = ctx.get_parameter_source(flag.lstrip("-").replace("-", "_")) if ctx is not None else None
    if source is None:
        return value != default
    return source.name not in ("DEFAULT", "DEFAULT_MAP")


def cem_options(horizon: int, samples: int, topk: int, cem_steps: int, momentum_mean: float,
                momentum_mean_gripper: float, momentum_std: float, momentum_std_gripper: float, maxnorm: float,
                close_gripper: Optional[int]) -> CEMOptions:
    """The CEM flags as `CEMOptions`, checked (one line on a bad value, before any work)."""
    opts = CEMOptions(rollout=horizon, samples=samples, topk=topk, cem_steps=cem_steps, momentum_mean=momentum_mean,
                      momentum_mean_gripper=momentum_mean_gripper, momentum_std=momentum_std,
                      momentum_std_gripper=momentum_std_gripper, maxnorm=maxnorm, close_gripper=close_gripper)
    opts.check()
    return opts


def artifact_argument(what: str = "Predictor artifact directory (with its encoder in ARTIFACT/encoder), or an "
                                  "ENGINE.plan.") -> Any:
    return typer.Argument(..., help=what)



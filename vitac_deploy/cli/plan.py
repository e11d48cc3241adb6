"""`vitac-deploy plan` and `vitac-deploy energy-landscape`: camera frames and a pose in, an action
(or the energy of a grid of actions) out, through the exported encoder and predictor. No PyTorch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.table import Table

from ..errors import VitacError, first_line
from ._common import check_output, cli_errors, stderr_console, stdout_console


@dataclass
class Scene:
    """What both commands start from: runtimes, the encoded observation and goal, the pose."""

    runtime: Any
    encoder: Any
    current: np.ndarray     # [1, N, D] normalized
    goal: np.ndarray        # [1, N, D] normalized
    pose: np.ndarray        # [1, A]
    encode_s: float
    encoder_path: Path


def parse_pose(text: str, action_dim: int) -> np.ndarray:
    """'x,y,z,rx,ry,rz,g' (action_dim numbers) -> [1, action_dim] float32."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise VitacError(f"--pose must be {action_dim} comma-separated numbers, got {text!r}") from None
    if len(values) != action_dim:
        raise VitacError(f"--pose must have {action_dim} numbers (the model's state dim), got {len(values)}")
    if not np.isfinite(values).all():
        raise VitacError(f"--pose must be finite numbers, got {text!r}")
    return np.array([values], np.float32)


def open_models(artifact: Path, encoder: Optional[Path], backend: str, device: str, precision: Optional[str],
                max_batch: Optional[int] = None, max_frames: Optional[int] = None) -> tuple:
    """The predictor runtime and the encoder that `plan` and `serve` use: (runtime, encoder, encoder path).
    The encoder is ARTIFACT/encoder (or what the artifact points to) unless `encoder` names it."""
    from ..encoder.manifest import find_encoder
    from ..runtimes import open_runtime
    from ..runtimes.encoder import open_encoder

    rt = open_runtime(artifact, backend=backend, device=device, precision=precision, max_batch=max_batch,
                      max_frames=max_frames)
    enc_path = find_encoder(artifact, encoder)
    # the torch predictor backends go with the torch encoder (one library, one device)
    enc_backend = {"onnxruntime": "onnxruntime", "torch": "torch", "torch-compile": "torch",
                   "torch-reference": "torch"}.get(backend, "auto")
    enc = open_encoder(enc_path, backend=enc_backend, device=device, precision=rt.precision)
    if enc.cfg.embed_dim != rt.cfg.embed_dim:
        raise VitacError(f"the encoder at {enc_path} gives {enc.cfg.embed_dim}-dim features but the predictor "
                         f"takes {rt.cfg.embed_dim}")
    if enc.cfg.tokens_per_frame != rt.cfg.tokens_per_frame:
        raise VitacError(f"the encoder at {enc_path} gives {enc.cfg.tokens_per_frame} tokens per frame but the "
                         f"predictor takes {rt.cfg.tokens_per_frame}")
    return rt, enc, enc_path


def open_scene(artifact: Path, observation: list[Path], goal: list[Path], pose: str, encoder: Optional[Path],
               backend: str, device: str, precision: Optional[str], max_batch: Optional[int] = None) -> Scene:
    from ..encoder import read_images

    rt, enc, enc_path = open_models(artifact, encoder, backend, device, precision, max_batch)
    obs, target = read_images(observation), read_images(goal)
    t0 = time.perf_counter()
    # the last frame of each is the one planned from / towards (upstream plans from one frame);
    # one batch of two frames when the cameras agree in size
    if obs.shape[1:] == target.shape[1:]:
        feats = enc.encode(np.stack([obs[-1:], target[-1:]]))          # [2, N, D]
        current, goal_f = feats[0:1], feats[1:2]
    else:
        current, goal_f = enc.encode(obs[-1:]), enc.encode(target[-1:])
    encode_s = time.perf_counter() - t0
    N = rt.cfg.tokens_per_frame
    return Scene(rt, enc, current.reshape(1, N, -1), goal_f.reshape(1, N, -1), parse_pose(pose, rt.cfg.action_dim),
                 encode_s, enc_path)


def read_noise(path: Path) -> np.ndarray:
    """Standard normal draws to replay (an .npz with `cem_noise`, or its only array; or an .npy)."""
    if not path.is_file():
        raise VitacError(f"--noise file not found: {path}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            key = "cem_noise" if "cem_noise" in z.files else (z.files[0] if len(z.files) == 1 else None)
            if key is None:
                raise VitacError(f"{path}: expected an array named cem_noise (or a single array)")
            return z[key]
    except VitacError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VitacError(f"cannot read --noise {path}: {first_line(e)}") from None


_OBS = typer.Option(..., "--observation", help="Current camera frame: PNG/JPEG, or .npz/.npy of uint8 [T, H, W, 3] "
                                                "(the last frame is planned from). Repeatable.")
_GOAL = typer.Option(..., "--goal", help="Goal image (same forms). Repeatable; the last frame is the goal.")
_POSE = typer.Option(..., "--pose", help="Current pose (state), comma list: x,y,z,rx,ry,rz,g for 7-dim models.")
_ENC = typer.Option(None, "--encoder", help="Encoder artifact (default ARTIFACT/encoder).")
_BACKEND = typer.Option("auto", "--backend", help="auto, onnxruntime, torch (the fast PyTorch path), torch-compile or "
                                                  "torch-reference (the reference model); or an ENGINE.plan as ARTIFACT.")
_DEVICE = typer.Option("cpu", "--device", help="cpu or cuda.")
_PREC = typer.Option(None, "--precision", help="fp32 or fp16 (default fp32 on cpu, fp16 on cuda).")


@cli_errors
def plan(
    artifact: Path = typer.Argument(..., help="Predictor artifact directory (with its encoder in ARTIFACT/encoder)."),
    observation: list[Path] = _OBS, goal: list[Path] = _GOAL, pose: str = _POSE, encoder: Optional[Path] = _ENC,
    backend: str = _BACKEND, device: str = _DEVICE, precision: Optional[str] = _PREC,
    horizon: int = typer.Option(2, "--horizon", help="rollout: actions planned (and frames predicted)."),
    samples: int = typer.Option(400, "--samples", help="Action sequences per CEM step."),
    topk: int = typer.Option(10, "--topk", help="Elites per CEM step."),
    cem_steps: int = typer.Option(10, "--cem-steps", help="CEM steps."),
    momentum_mean: float = typer.Option(0.15, "--momentum-mean"),
    momentum_mean_gripper: float = typer.Option(0.15, "--momentum-mean-gripper"),
    momentum_std: float = typer.Option(0.15, "--momentum-std"),
    momentum_std_gripper: float = typer.Option(0.15, "--momentum-std-gripper"),
    maxnorm: float = typer.Option(0.05, "--maxnorm", help="Bound (and initial std) of the xyz entries."),
    close_gripper: Optional[int] = typer.Option(None, "--close-gripper", help="Gripper closed from this step on."),
    seed: int = typer.Option(0, "--seed", help="Seed of the CEM draws."),
    noise: Optional[Path] = typer.Option(None, "--noise", help="Replay these draws (.npz cem_noise) instead of --seed."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Samples rolled out at once (default: all)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the plan and its figures here."),
) -> None:
    """Plan the next actions from a camera frame and pose towards a goal image (the upstream CEM)."""
    from ..manifest import now_iso, write_json_atomic
    from ..planning import CEMOptions, plan as cem_plan

    opts = CEMOptions(rollout=horizon, samples=samples, topk=topk, cem_steps=cem_steps, momentum_mean=momentum_mean,
                      momentum_mean_gripper=momentum_mean_gripper, momentum_std=momentum_std,
                      momentum_std_gripper=momentum_std_gripper, maxnorm=maxnorm, close_gripper=close_gripper)
    opts.check()   # before opening anything
    draws = read_noise(noise) if noise is not None else None
    if json_out is not None:
        check_output(json_out, "--json")
    err = stderr_console()
    err.print("opening the predictor and encoder, encoding the observation and goal")
    sc = open_scene(artifact, observation, goal, pose, encoder, backend, device, precision,
                    max_batch=chunk or samples)
    with err.status("planning") as status:
        res = cem_plan(sc.runtime, sc.current, sc.goal, sc.pose, opts, noise=draws, seed=seed, chunk=chunk,
                       on_step=lambda i, n, e: status.update(f"CEM step {i}/{n}: best energy {e:.5f}"))
    best = [float(e.min()) for e in res.energies]
    console = stdout_console()
    table = Table(title=f"plan: {opts.samples} samples x top {opts.topk} x {opts.cem_steps} CEM steps, horizon "
                        f"{opts.rollout} ({sc.runtime.describe()})", header_style="bold")
    table.add_column("step")
    for i in range(res.actions.shape[1]):
        table.add_column(f"a[{i}]", justify="right")
    for h, row in enumerate(res.actions):
        table.add_row(str(h), *(f"{v:+.5f}" for v in row))
    console.print(table)
    console.print(f"the robot executes step 0: {np.array2string(res.actions[0], precision=5, separator=', ')}")
    console.print(f"best energy per CEM step: {', '.join(f'{e:.5f}' for e in best)}")
    console.print(f"encode {sc.encode_s * 1e3:.0f} ms (2 frames), plan {res.seconds:.2f} s "
                  f"({np.median(res.step_seconds) * 1e3:.0f} ms per CEM step, chunk {res.chunk})")
    if json_out is not None:
        write_json_atomic(json_out, {
            "date": now_iso(), "artifact": str(artifact), "encoder": str(sc.encoder_path),
            "observation": [str(p) for p in observation], "goal": [str(p) for p in goal],
            "pose": sc.pose[0].tolist(), "runtime": sc.runtime.describe(), "encoder_runtime": sc.encoder.describe(),
            "options": dict(opts.__dict__), "seed": None if draws is not None else seed,
            "noise": str(noise) if noise is not None else None,
            "actions": res.actions.tolist(), "action": res.actions[0].tolist(),
            "best_energy_per_step": best, "energies": res.energies.tolist(),
            "timings": {"encode_s": sc.encode_s, "plan_s": res.seconds, "step_s": list(res.step_seconds)},
        })


@cli_errors
def energy_landscape(
    artifact: Path = typer.Argument(..., help="Predictor artifact directory (with its encoder in ARTIFACT/encoder)."),
    observation: list[Path] = _OBS, goal: list[Path] = _GOAL, pose: str = _POSE, encoder: Optional[Path] = _ENC,
    backend: str = _BACKEND, device: str = _DEVICE, precision: Optional[str] = _PREC,
    grid: int = typer.Option(5, "--grid", help="Values per axis (x, y, z)."),
    size: float = typer.Option(0.075, "--size", help="Grid half-width: actions in [-size, size]."),
    plot: Path = typer.Option(..., "--plot", help="Heatmap PNG to write."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the grid and its energies here."),
) -> None:
    """The upstream energy-landscape example: the energy of one predicted frame per grid action."""
    from ..manifest import now_iso, write_json_atomic
    from ..planning.landscape import action_grid, energy_landscape as landscape, plot_landscape

    for flag, target in (("--plot", plot), ("--json", json_out)):
        if target is not None:
            check_output(target, flag)
    err = stderr_console()
    err.print("opening the predictor and encoder, encoding the observation and goal")
    sc = open_scene(artifact, observation, goal, pose, encoder, backend, device, precision)
    action_grid(sc.runtime.cfg.action_dim, grid, size)   # option errors before the work
    t0 = time.perf_counter()
    actions, energy = landscape(sc.runtime, sc.current, sc.goal, sc.pose, grid, size)
    seconds = time.perf_counter() - t0
    i = int(np.argmin(energy))
    stdout_console().print(f"{len(energy)} actions in {seconds:.2f} s; lowest energy {energy[i]:.5f} at action "
                    f"{np.array2string(actions[i], precision=4, separator=', ')}")
    plot_landscape(actions, energy, grid, plot, title=f"energy landscape: {artifact.name}, {sc.runtime.describe()}")
    err.print(f"wrote {plot}")
    if json_out is not None:
        write_json_atomic(json_out, {"date": now_iso(), "artifact": str(artifact), "pose": sc.pose[0].tolist(),
                                     "grid": grid, "size": size, "actions": actions.tolist(),
                                     "energies": energy.tolist(), "best": actions[i].tolist(), "seconds": seconds})

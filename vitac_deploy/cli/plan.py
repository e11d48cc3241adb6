"""`vitac-deploy plan` and `vitac-deploy energy-landscape`: camera frames and a pose in, an action
(or the energy of a grid of actions) out, through the exported encoder and predictor. No PyTorch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from . import options as o
from ._common import (action_legend, cli_errors, format_action, live_status, progress_enabled, stderr_console,
                      stdout_console)


@cli_errors
def plan(
    artifact: Path = o.artifact_argument(),
    observation: list[Path] = o.OBSERVATION, goal: list[Path] = o.GOAL, pose: str = o.POSE,
    encoder: Optional[Path] = o.ENCODER, backend: str = o.backend(), device: Optional[str] = o.DEVICE,
    precision: Optional[str] = o.PRECISION,
    horizon: int = o.HORIZON, samples: int = o.SAMPLES, topk: int = o.TOPK, cem_steps: int = o.CEM_STEPS,
    momentum_mean: float = o.MOMENTUM_MEAN, momentum_mean_gripper: float = o.MOMENTUM_MEAN_GRIPPER,
    momentum_std: float = o.MOMENTUM_STD, momentum_std_gripper: float = o.MOMENTUM_STD_GRIPPER,
    maxnorm: float = o.MAXNORM, close_gripper: Optional[int] = o.CLOSE_GRIPPER,
    seed: int = o.seed("Seed of the CEM draws."),
    noise: Optional[Path] = typer.Option(None, "--noise", help="Replay these draws (.npz cem_noise) instead of --seed."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Samples rolled out at once (default: all)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the plan and its figures here."),
) -> None:
    """Plan the next actions from a camera frame and pose towards a goal image (the upstream CEM)."""
    from ..artifacts import check_output, now_iso, write_json_atomic
    from ..inputs import read_noise
    from ..planning import plan as cem_plan
    from ..planning.scene import open_scene

    opts = o.cem_options(horizon, samples, topk, cem_steps, momentum_mean, momentum_mean_gripper, momentum_std,
                         momentum_std_gripper, maxnorm, close_gripper)   # before opening anything
    draws = read_noise(noise) if noise is not None else None
    if json_out is not None:
        check_output(json_out, "--json")
    err = stderr_console()
    with live_status(err, "opening the predictor and encoder, encoding the observation and goal"):
        sc = open_scene(artifact, observation, goal, pose, encoder, backend, device, precision,
                        max_batch=chunk or samples)
    say_estimate(err, sc.runtime, sc.current, sc.goal, sc.pose, opts, chunk)
    with step_progress(err, opts.cem_steps) as on_step:
        res = cem_plan(sc.runtime, sc.current, sc.goal, sc.pose, opts, noise=draws, seed=seed, chunk=chunk,
                       on_step=on_step)
    best = [float(e.min()) for e in res.energies]
    console = stdout_console()
    from rich import box

    # no vertical rules and 4 decimals: 7 action columns fit an 80-column terminal without cutting a number
    table = Table(title=f"plan: {opts.samples} samples x top {opts.topk} x {opts.cem_steps} CEM steps, horizon "
                        f"{opts.rollout} ({sc.runtime.describe()})", header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("step")
    for name in action_names(res.actions.shape[1]):
        table.add_column(name, justify="right", no_wrap=True)
    for h, row in enumerate(res.actions):
        table.add_row(str(h), *(f"{v:+.4f}" for v in row))
    console.print(table)
    console.print(f"the robot executes step 0: {format_action(res.actions[0])}{action_legend(res.actions.shape[1])}")
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


FRANKA_NAMES = ("dx", "dy", "dz", "rot x", "rot y", "rot z", "gripper")
QUICKER_THAN_S = 30.0   # an estimate above this comes with smaller options that fit it


def action_names(action_dim: int) -> tuple:
    """Column names of an action: the Franka space's for 7-dim models, a[i] otherwise."""
    return FRANKA_NAMES if action_dim == 7 else tuple(f"a[{i}]" for i in range(action_dim))


def say_estimate(err, runtime, current, goal, pose, opts, chunk: Optional[int]) -> None:
    """Before a plan large enough to take a while: its FLOPs, its time on this runtime (a probe of a
    few samples), and smaller options where that is long."""
    from ..planning.estimate import estimate_plan, format_seconds, quicker_options, worth_probing

    if not worth_probing(runtime.cfg, opts, chunk):
        return
    with live_status(err, "estimating the plan's time (a few samples through the runtime)"):
        est = estimate_plan(runtime, current, goal, pose, opts, chunk)
    err.print(f"this plan: {est.flops / 1e12:.3g} TFLOP, about {format_seconds(est.seconds)} on {runtime.describe()} "
              f"({est.flops_per_second / 1e9:.1f} GFLOP/s measured on {est.probe_samples} samples)")
    if est.seconds > QUICKER_THAN_S:
        q = quicker_options(runtime.cfg, opts, est, QUICKER_THAN_S)
        hint = "" if str(runtime.device).startswith("cuda") else "; or a GPU (--device cuda, or an ENGINE.plan)"
        if q != opts:
            err.print(f"quicker: --samples {q.samples} --topk {q.topk} --cem-steps {q.cem_steps} (about "
                      f"{format_seconds(est.seconds_for(runtime.cfg, q, chunk))}){hint}")


class step_progress:
    """The CEM steps as they finish, with the time per step and the time left: a live bar on a
    terminal (its clock ticks while a step runs); in a log one line per step, and a line every
    `HEARTBEAT_S` while a long step runs."""

    HEARTBEAT_S = 30.0

    def __init__(self, err, steps: int) -> None:
        self.err, self.steps, self.t0, self.bar, self.done, self.stop = err, steps, None, None, 0, None

    def _heartbeat(self) -> None:
        import time as _time

        from ..planning.estimate import format_seconds

        last = self.t0
        while not self.stop.wait(self.HEARTBEAT_S):
            now = _time.perf_counter()
            if now - max(last, self.last_step) >= self.HEARTBEAT_S:
                last = now
                self.err.print(f"CEM step {self.done + 1}/{self.steps} running: {format_seconds(now - self.t0)} "
                               f"since the plan started")

    def __enter__(self):
        import threading
        import time as _time

        self.t0 = self.last_step = _time.perf_counter()
        if not progress_enabled():
            self.stop = threading.Event()
            threading.Thread(target=self._heartbeat, daemon=True).start()
        else:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total} CEM steps"), TimeElapsedColumn(),
                                TextColumn("left"), TimeRemainingColumn(), console=self.err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("planning", total=self.steps)
        return self.on_step

    def on_step(self, i: int, n: int, best: float) -> None:
        import time as _time

        self.last_step, self.done = _time.perf_counter(), i
        elapsed = self.last_step - self.t0
        per = elapsed / i
        from ..planning.estimate import format_seconds

        line = (f"CEM step {i}/{n}: {format_seconds(per)} per step, best energy {best:.5f}"
                + (f", about {format_seconds(per * (n - i))} left" if i < n else ""))
        if self.bar is not None:
            self.bar.update(self.task, completed=i, description=line)
        else:
            self.err.print(line)

    def __exit__(self, *exc) -> None:
        if self.stop is not None:
            self.stop.set()
        if self.bar is not None:
            self.bar.stop()


DEFAULT_LANDSCAPE_BUDGET = "1GiB"


@cli_errors
def energy_landscape(
    artifact: Path = o.artifact_argument(),
    observation: list[Path] = o.OBSERVATION, goal: list[Path] = o.GOAL, pose: str = o.POSE,
    encoder: Optional[Path] = o.ENCODER, backend: str = o.backend(), device: Optional[str] = o.DEVICE,
    precision: Optional[str] = o.PRECISION,
    grid: int = typer.Option(5, "--grid", help="Values per axis (x, y, z)."),
    size: float = typer.Option(0.075, "--size", help="Grid half-width: actions in [-size, size]."),
    plot: Path = typer.Option(..., "--plot", help="Heatmap PNG to write."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the grid and its energies here."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Grid actions rolled out at once (default 512, fewer "
                                                              "where --memory-budget fits fewer)."),
    memory_budget: str = typer.Option(DEFAULT_LANDSCAPE_BUDGET, "--memory-budget",
                                      help="Bytes the rollouts may take (the memory model of `info --plan-samples`): "
                                           "the chunk is the largest that fits. E.g. 512MiB, 8GiB."),
) -> None:
    """The upstream energy-landscape example: the energy of one predicted frame per grid action."""
    from ..artifacts import check_output, now_iso, write_json_atomic
    from ..errors import VitacError
    from ..planning.landscape import action_grid, energy_landscape as landscape, landscape_chunk, plot_landscape
    from ..planning.memory import parse_bytes
    from ..planning.scene import open_scene

    budget = parse_bytes(memory_budget)
    if chunk is not None and chunk < 1:
        raise VitacError(f"--chunk must be a positive integer, got {chunk}")
    for flag, target in (("--plot", plot), ("--json", json_out)):
        if target is not None:
            check_output(target, flag)
    err = stderr_console()
    with live_status(err, "opening the predictor and encoder, encoding the observation and goal"):
        # one predicted frame per action: the cache holds the current frame; allocated for the first chunk
        sc = open_scene(artifact, observation, goal, pose, encoder, backend, device, precision, max_frames=1)
    n = len(action_grid(sc.runtime.cfg.action_dim, grid, size))   # option errors before the work
    n_chunk = landscape_chunk(sc.runtime, n, chunk, budget)
    err.print(f"{n} actions in chunks of {n_chunk} (--memory-budget {memory_budget})")
    t0 = time.perf_counter()
    with live_status(err, f"scoring {n} grid actions (one predicted frame each)"):
        actions, energy = landscape(sc.runtime, sc.current, sc.goal, sc.pose, grid, size, chunk=n_chunk)
    seconds = time.perf_counter() - t0
    i = int(np.argmin(energy))
    stdout_console().print(f"{len(energy)} actions in {seconds:.2f} s; lowest energy {energy[i]:.5f} at action "
                    f"{np.array2string(actions[i], precision=4, separator=', ')}")
    plot_landscape(actions, energy, grid, plot, title=f"energy landscape: {artifact.name}, {sc.runtime.describe()}")
    err.print(f"wrote {plot}")
    if json_out is not None:
        write_json_atomic(json_out, {"date": now_iso(), "artifact": str(artifact), "pose": sc.pose[0].tolist(),
                                     "grid": grid, "size": size, "actions": actions.tolist(),
                                     "energies": energy.tolist(), "best": actions[i].tolist(), "seconds": seconds,
                                     "chunk": n_chunk})

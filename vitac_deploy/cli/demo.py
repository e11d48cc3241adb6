"""`vitac-deploy demo`: the main job on the built-in default model, end to end."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table
from rich.text import Text

from ..errors import VitacError
from . import options as o
from ._common import action_legend, cli_errors, format_action, live_status, plain, stderr_console, stdout_console


# what the demo's planning stage runs by default: the robot's action space at a small size
PLANNER_PRESET = "franka-small"
# a plan a 2-core CPU makes in seconds on that preset (the upstream defaults are 400 x 10)
QUICK_PLAN = "--samples 64 --topk 8 --cem-steps 3"


@cli_errors
def demo(
    ctx: typer.Context,
    preset: str = typer.Option("vitac-l384", "--preset", help="Config of the rollout stage (seeded random weights)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Keep the artifacts and camera frames in this folder and "
                                                           "print the commands that use them (default: a temp dir, "
                                                           "removed)."),
    horizon: int = typer.Option(7, "--horizon", help="Frames to predict from 1 context frame."),
    batch: int = typer.Option(1, "--batch", help="Trajectories rolled out at once."),
    seed: int = o.seed("Seed of the weights and inputs."),
    planner: str = typer.Option(PLANNER_PRESET, "--planner",
                                help="Predictor preset of the camera -> plan stage (7-dim Franka actions by default)."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Encoder preset of the camera stage (default: the "
                                                                  "planner preset's, vit-small for franka-small)."),
    samples: int = typer.Option(16, "--samples", help="CEM samples of the planning stage (0: skip it)."),
    cem_steps: int = typer.Option(2, "--cem-steps", help="CEM steps of the planning stage."),
    plan_samples: Optional[int] = o.hidden("--plan-samples"),   # the old names of --samples and --cem-steps
    plan_steps: Optional[int] = o.hidden("--plan-steps"),
) -> None:
    """export -> rollout with ONNX Runtime -> parity and speed against the PyTorch reference; then
    camera frames -> encoder -> the upstream CEM planner -> action, against PyTorch and the upstream way."""
    import torch

    from ..config import PredictorConfig
    from ..encoder import ENCODER_FOR_PREDICTOR
    from ..exporters import ExportOptions, export_artifact
    from ..validation.metrics import TOLERANCES, frame_errors, within
    from ..reference import random_predictor
    from ..runtimes import open_runtime
    from ..validation import ParityInputs
    from .export import summary_table

    plan_samples = o.alias(samples, plan_samples, "--samples", "--plan-samples", 16, ctx)
    plan_steps = o.alias(cem_steps, plan_steps, "--cem-steps", "--plan-steps", 2, ctx)
    console, err = stdout_console(), stderr_console()
    cfg = PredictorConfig.preset(preset)
    planner_cfg = PredictorConfig.preset(planner)    # unknown names fail before any work
    encoder = encoder or ENCODER_FOR_PREDICTOR.get(planner, "vit-l-demo")
    check_demo_options(cfg, planner_cfg, encoder, horizon, batch, plan_samples, plan_steps)
    if out is not None:
        check_demo_out(out)
    console.print(Text.assemble((str(preset), "bold"), f": {cfg.num_parameters():,} parameters, seeded random weights "
                                                        f"(seed {seed})"))
    model = random_predictor(cfg, seed)
    with tempfile.TemporaryDirectory() as tmp:
        art = (out / "predictor") if out is not None else Path(tmp) / "artifact"
        with err.status("exporting") as status:
            manifest = export_artifact(model, art, ExportOptions(force=out is not None),
                                       progress=lambda m: (status.update(plain(m)), err.print(f"  {m}")))
        console.print(summary_table(art, manifest))

        inputs = ParityInputs.make(cfg, batch=batch, frames=horizon, seed=seed + 1)
        H = inputs.horizon
        args = (inputs.context, inputs.actions, inputs.states, H, inputs.extrinsics)
        t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
        targs = tuple(t(a) if isinstance(a, np.ndarray) else a for a in args)

        def timed(fn):
            fn()  # warm-up
            t0 = time.perf_counter()
            res = fn()
            return res, time.perf_counter() - t0

        err.print(f"  timing {H}-frame rollouts (batch {batch}): reference full recompute, reference cached, runtimes")
        with live_status(err, "  torch, full recompute (the upstream way): a warm-up run, then a timed one") as say:
            ref, t_full = timed(lambda: model.rollout(*targs, use_cache=False).numpy())
            rows = [("torch, full recompute (upstream)", "fp32", t_full, ref)]
            say("  torch, KV cache: a warm-up run, then a timed one")
            cached, t_cached = timed(lambda: model.rollout(*targs, use_cache=True).numpy())
            rows.append(("torch, KV cache", "fp32", t_cached, cached))
            for precision in ("fp32", "fp16"):
                say(f"  onnxruntime {precision}, KV cache: a warm-up run, then a timed one")
                rt = open_runtime(art, backend="onnxruntime", precision=precision)
                pred, secs = timed(lambda: rt.rollout(*args))
                rows.append(("onnxruntime, KV cache", precision, secs, pred))

    table = Table(title=f"{H}-frame rollout from 1 context frame, batch {batch} (this machine, CPU)",
                  header_style="bold")
    table.add_column("runtime (cpu)")
    for col in ("prec.", "time", "per frame", "speedup", "max abs err", "ok"):
        table.add_column(col, justify="right")
    ok = True
    for name, precision, secs, pred in rows:
        errs = frame_errors(pred, ref)
        good = within(errs, TOLERANCES[precision])
        ok &= good
        table.add_row(name, precision, f"{secs * 1e3:.0f} ms", f"{secs / H * 1e3:.1f} ms", f"{t_full / secs:.2f}x",
                      f"{max(e['max_abs'] for e in errs):.2e}", "yes" if good else "NO")
    console.print(table)
    console.print("speedup: against the full recompute measured in this run; max abs err: against it too "
                  "(normalized features)")
    times = {(name.split(",")[0], p): secs for name, p, secs, _ in rows}
    if times.get(("onnxruntime", "fp16"), 0) > times.get(("onnxruntime", "fp32"), float("inf")):
        console.print(FP16_ON_CPU)
    if plan_samples > 0:
        planner_model = random_predictor(planner_cfg, seed)
        console.print(Text.assemble((str(planner), "bold"), f": {planner_cfg.num_parameters():,} parameters, "
                                                             f"{planner_cfg.action_dim}-dim actions, seeded random "
                                                             f"weights: the planning stage"))
        ok &= camera_to_action(console, err, planner_model, encoder, plan_samples, plan_steps, seed, out)
    if out is not None:
        console.print(next_steps(out, planner_cfg.action_dim, plan_samples > 0))
    else:
        console.print("The artifacts were written to a temporary folder, now removed: `vitac-deploy demo --out DIR` "
                      "keeps them and prints the commands that plan and serve with them.")
    if not ok:
        raise typer.Exit(1)


FP16_ON_CPU = ("fp16 slower than fp32: ONNX Runtime's CPU provider has no fp16 arithmetic for these ops, so it runs "
               "the fp16 graph in fp32 with a cast around each op; fp16 is for GPUs (CUDA, TensorRT), where it halves "
               "memory and runs on tensor cores.")
ENCODER_ON_CPU = ("encoder speedup below 1: the encoder has no cache to reuse (unlike the predictor's rollout), so the "
                  "exported graph does the same arithmetic as PyTorch and the ratio is only ONNX Runtime's CPU kernels "
                  "against PyTorch's; fp16 adds the casts above. Its gain is on a GPU, fp16, as an engine.")
FRANKA_HOME = (0.45, 0.0, 0.35, 3.14, 0.0, 0.0, 0.0)   # the pose the demo and examples/robot_loop.py start from


def check_demo_options(cfg, planner_cfg, encoder: str, horizon: int, batch: int, samples: int,
                       cem_steps: int) -> None:
    """Every option of both stages, before the first stage's minutes of work (a bad planning option
    used to surface only after the rollout stage, some as an internal error)."""
    from ..encoder import ENCODER_PRESETS, EncoderConfig
    from ..planning import CEMOptions

    if not 1 <= horizon <= cfg.max_frames:
        raise VitacError(f"--horizon must be in 1..{cfg.max_frames} (the model's max_frames), got {horizon}")
    if batch < 1:
        raise VitacError(f"--batch must be at least 1, got {batch}")
    if samples == 0:
        return
    if samples < 2:
        raise VitacError(f"--samples must be 0 (no planning stage) or at least 2 (CEM keeps 2 elites), got {samples}")
    CEMOptions(samples=samples, topk=max(2, samples // 4), cem_steps=cem_steps).check()
    if not isinstance(encoder, EncoderConfig) and encoder not in ENCODER_PRESETS:
        raise VitacError(f"unknown encoder preset {encoder!r} (known: {', '.join(ENCODER_PRESETS)})")
    ecfg = encoder if isinstance(encoder, EncoderConfig) else EncoderConfig.preset(encoder)
    if (ecfg.embed_dim, ecfg.tokens_per_frame) != (planner_cfg.embed_dim, planner_cfg.tokens_per_frame):
        raise VitacError(f"encoder {encoder} gives {ecfg.tokens_per_frame} x {ecfg.embed_dim} features; the "
                         f"planner preset takes {planner_cfg.tokens_per_frame} x {planner_cfg.embed_dim}")


DEMO_FILES = ("predictor", "planner", "now.png", "goal.png", "now.npy", "goal.npy")


def check_demo_out(out: Path) -> None:
    """--out is a new folder or one of an earlier demo (nothing in it but what the demo writes,
    which it replaces): a user's files are never overwritten. Made here, before the work."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise VitacError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in DEMO_FILES and not p.name.startswith("."))
        if other:
            raise VitacError(f"--out {out} holds files the demo did not write ({', '.join(other[:4])}"
                             f"{', ...' if len(other) > 4 else ''}): give a new or empty folder")
    elif not out.parent.is_dir():
        raise VitacError(f"cannot write --out {out}: {out.parent} does not exist")
    out.mkdir(exist_ok=True)


def demo_pose(action_dim: int) -> np.ndarray:
    """[1, A]: a Franka pose (xyz, extrinsic xyz Euler angles, gripper) for 7-dim models, else zeros."""
    return np.array([FRANKA_HOME if action_dim == 7 else [0.0] * action_dim], np.float32)


def next_steps(out: Path, action_dim: int, planned: bool) -> Text:
    """What the demo kept in `out` and the commands that go on from there."""
    pose = ",".join(f"{v:g}" for v in demo_pose(action_dim)[0])
    ext = frame_suffix()
    lines = Text()
    lines.append(f"Kept in {out}: ", style="bold")
    lines.append("predictor/ (the rollout stage's artifact)")
    if not planned:
        return lines
    lines.append(f", planner/ (predictor + planner/encoder), now{ext}, goal{ext}. Next:\n")
    lines.append(f"  vitac-deploy plan {out / 'planner'} --observation {out / ('now' + ext)} "
                 f"--goal {out / ('goal' + ext)} --pose {pose} {QUICK_PLAN}\n")
    lines.append(f"  vitac-deploy serve {out / 'planner'} {QUICK_PLAN}     "
                 f"# then, in a second shell: python examples/robot_loop.py --steps 5")
    return lines


def camera_to_action(console, err, model, encoder_preset, samples: int, cem_steps: int, seed: int,
                     out: Optional[Path]) -> bool:
    """Camera frames -> encoder -> the upstream CEM planner -> action, on exported graphs (ONNX
    Runtime), next to the PyTorch reference encoding and planning the upstream way."""
    import torch

    from ..encoder import ENCODER_PRESETS, EncoderConfig, preprocess
    from ..exporters import ExportOptions, export_artifact
    from ..exporters import EncoderExportOptions, export_encoder
    from ..validation import encoder_parity, validation_images
    from ..planning import ActionSpace, CEMOptions, plan
    from ..reference import random_encoder
    from ..runtimes import open_runtime
    from ..runtimes import open_encoder
    from ..runtimes.torch.full_recompute import FullRecompute
    from .encoder import encoder_table

    if isinstance(encoder_preset, EncoderConfig):
        ecfg, encoder_preset = encoder_preset, "(given config)"
    elif encoder_preset not in ENCODER_PRESETS:
        raise VitacError(f"unknown encoder preset {encoder_preset!r} (known: {', '.join(ENCODER_PRESETS)})")
    else:
        ecfg = EncoderConfig.preset(encoder_preset)
    cfg = model.cfg
    if (ecfg.embed_dim, ecfg.tokens_per_frame) != (cfg.embed_dim, cfg.tokens_per_frame):
        raise VitacError(f"encoder {encoder_preset} gives {ecfg.tokens_per_frame} x {ecfg.embed_dim} features; the "
                         f"predictor takes {cfg.tokens_per_frame} x {cfg.embed_dim}")
    console.print(Text.assemble(("camera -> encoder -> planner -> action", "bold"),
                                f": encoder {encoder_preset} ({ecfg.num_parameters():,} parameters, {ecfg.depth} "
                                f"blocks, seeded random weights)"))
    enc_model = random_encoder(ecfg, seed)
    frames = validation_images(ecfg, 2, seed + 7, size=(480, 640))[0]      # two 480x640 camera frames
    if out is not None:
        _write_frames(out, frames)
    with tempfile.TemporaryDirectory() as tmp:
        art = (out or Path(tmp)) / "planner"
        with err.status("exporting") as status:
            say = lambda m: (status.update(plain(m)), err.print(f"  {m}"))  # noqa: E731
            export_artifact(model, art, ExportOptions(precisions=["fp32"], first_frame_graph=False, force=True),
                            progress=say)
            manifest = export_encoder(enc_model, art / "encoder", EncoderExportOptions(force=True), progress=say)
        console.print(encoder_table(art / "encoder", manifest))

        # encoder: the reference vs the exported graphs on the camera frames (current, goal)
        rows, ok = [], True
        pixels = torch.from_numpy(preprocess(frames[None], ecfg.img_size))
        with torch.no_grad():
            enc_model.encode_frames(pixels)   # warm-up, as for the runtimes
            t0 = time.perf_counter()
            ref = enc_model.encode_frames(pixels).numpy()
            t_ref = time.perf_counter() - t0
        for precision in ("fp32", "fp16"):
            enc = open_encoder(art / "encoder", backend="onnxruntime", precision=precision)
            enc.encode(frames[None])   # warm-up, at the batch that is timed (ONNX Runtime sizes its arena per shape)
            r = encoder_parity(enc, enc_model, frames[None], precision)
            ok &= r["passed"]
            rows.append((f"encoder, onnxruntime {precision}", r["encode_s"], t_ref, r["max_abs"], r["passed"]))
        N = cfg.tokens_per_frame
        current, goal = ref[:, :N], ref[:, N:]

        # the upstream planner: the exported predictor (KV cache, energy graph) vs the upstream way
        opts = CEMOptions(samples=samples, topk=max(2, samples // 4), cem_steps=cem_steps)
        space = ActionSpace.for_dim(cfg.action_dim)
        noise = np.random.default_rng(seed).standard_normal((cem_steps * opts.rollout, samples, len(space.sampled)))
        pose = demo_pose(cfg.action_dim)
        err.print(f"  planning: {samples} samples x top {opts.topk} x {cem_steps} CEM steps, horizon {opts.rollout}")
        with live_status(err, "  planning the upstream way (PyTorch, full recompute)") as say:
            upstream = plan(FullRecompute(model), current, goal, pose, opts, noise=noise)
            say("  planning with the exported predictor (ONNX Runtime, KV cache): a warm-up step, then the plan")
            rt = open_runtime(art, backend="onnxruntime", precision="fp32", max_batch=samples)
            plan(rt, current, goal, pose, CEMOptions(**{**opts.__dict__, "cem_steps": 1}),
                 noise=noise[:opts.rollout])   # warm-up
            ours = plan(rt, current, goal, pose, opts, noise=noise)
        # same draws: step 0 scores the same samples, so its energies compare one to one (the final
        # actions agree only while no two samples score within rounding: random weights barely
        # react to actions, so they often do; the golden planner case checks the plan itself)
        diff = float(np.abs(ours.energies[0] - upstream.energies[0]).max())
        good = diff < 1e-4
        ok &= good
        rows.append(("plan, onnxruntime fp32 (KV cache)", ours.seconds, upstream.seconds, diff, good))
        same_plan = bool(np.abs(ours.actions - upstream.actions).max() < 1e-5)
        spread = float(np.ptp(upstream.energies[0]))

    table = Table(title="camera frames (2 x 480x640) -> features -> plan (this machine, CPU)", header_style="bold")
    for col, just in (("stage", "left"), ("time", "right"), ("reference", "right"), ("speedup", "right"),
                      ("max abs err", "right"), ("ok", "right")):
        table.add_column(col, justify=just)
    for name, secs, ref_s, e, good in rows:
        table.add_row(name, f"{secs * 1e3:.0f} ms", f"{ref_s * 1e3:.0f} ms", f"{ref_s / secs:.2f}x", f"{e:.2e}",
                      "yes" if good else "NO")
    console.print(table)
    console.print(f"reference: PyTorch encoding the same frames; the upstream way planning with the same draws "
                  f"(errors: features, then the energies of the first CEM step's samples). Plan "
                  f"{'identical to' if same_plan else 'differs from'} the upstream way's"
                  + ("" if same_plan else f" (the {samples} samples' energies span only {spread:.1e}: random weights, "
                                          f"samples within rounding swap places)") + ".")
    if any(ref_s < secs for name, secs, ref_s, _, _ in rows if name.startswith("encoder")):
        console.print(ENCODER_ON_CPU)
    console.print(f"Action to execute: {format_action(ours.actions[0])}{action_legend(cfg.action_dim)}")
    return ok


def frame_suffix() -> str:
    """How the demo keeps its camera frames: PNG where Pillow is installed (the `images` extra), else
    .npy (which `plan` reads without it)."""
    import importlib.util

    return ".png" if importlib.util.find_spec("PIL") is not None else ".npy"


def _write_frames(out: Path, frames: np.ndarray) -> None:
    """The demo's two camera frames as out/now.png and out/goal.png (.npy without Pillow): the next
    commands read them."""
    out.mkdir(parents=True, exist_ok=True)
    ext = frame_suffix()
    for name, frame in (("now", frames[0]), ("goal", frames[1])):
        tmp = out / f".{name}.partial{ext}"
        if ext == ".png":
            from PIL import Image

            Image.fromarray(frame).save(tmp)
        else:
            np.save(tmp, frame)
        tmp.replace(out / f"{name}{ext}")

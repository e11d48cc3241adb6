"""`vitac-deploy rollout` and `vitac-deploy validate`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from ..artifacts import ENGINE_SUFFIXES, check_output, read_engine_manifest, read_manifest, write_json_atomic
from ..config import PredictorConfig
from ..errors import ValidationError, VitacError
from ..precision import PRECISIONS
from . import options as o
from ._common import cli_errors, live_status, progress_enabled, stderr_console, stdout_console


@cli_errors
def rollout(
    path: Path = typer.Argument(..., help="Artifact directory (predictor or encoder), or a TensorRT ENGINE.plan."),
    inputs: Path = typer.Option(..., "--inputs", help="NPZ with features [B,C,N,D] (raw), actions, states[, extrinsics]."),
    out: Path = typer.Option(..., "--out", help="NPZ to write: predictions [B,H,N,D] and timing."),
    backend: str = o.backend(), device: Optional[str] = o.DEVICE, precision: Optional[str] = o.PRECISION,
    horizon: Optional[int] = typer.Option(None, "--horizon", help="Frames to predict (default: from the actions)."),
    state_update: str = typer.Option("given", "--state-update", help="given or delta (state[t+1] = state[t] + action[t])."),
) -> None:
    """Roll the world model forward from context frames through a runtime."""
    from ..inputs import load_inputs
    from ..runtimes import config_of, open_runtime

    err = stderr_console()
    if state_update not in ("given", "delta"):
        raise VitacError(f"--state-update must be given or delta, got {state_update}")
    check_output(out, "--out")
    if out.exists() and inputs.exists() and out.resolve() == inputs.resolve():
        raise VitacError(f"--out {out} is the --inputs file: the predictions would replace the inputs")
    data = load_inputs(inputs, config_of(path))
    feats = data["features"]
    C = feats.shape[1]
    H = horizon if horizon is not None else data["actions"].shape[1] - C + 1
    if H < 1:
        raise VitacError(f"horizon must be >= 1 (actions hold {data['actions'].shape[1]} steps for {C} context frames)")
    rt = open_runtime(path, backend=backend, device=device, precision=precision)
    F = C + H - 1
    acts = data["actions"][:, :F]
    states = data["states"] if state_update == "delta" else data["states"][:, :F]
    ext = data["extrinsics"][:, :F] if "extrinsics" in data else None
    t0 = time.perf_counter()
    if progress_enabled() and H > 2:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            task = bar.add_task(escape(f"rollout ({rt.describe()})"), total=F)
            preds = rt.rollout(feats, acts, states, H, ext, state_update=state_update,
                               on_frame=lambda done, total: bar.update(task, completed=done))
    else:
        # in a log, a line only for a rollout that lasts (a refused input stays one line on stderr)
        with live_status(err, f"rollout of {H} frames ({rt.describe()})"):
            preds = rt.rollout(feats, acts, states, H, ext, state_update=state_update)
    seconds = time.perf_counter() - t0
    tmp = out.with_name(out.name + ".partial.npz")
    try:
        np.savez(tmp, predictions=preds, seconds=np.float64(seconds), frames_per_second=np.float64(H * preds.shape[0] / seconds))
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VitacError(f"cannot write {out}: {e.strerror}") from None
    stdout_console().print(f"predictions {list(preds.shape)} -> {out}  ({seconds * 1e3:.1f} ms, "
                    f"{H * preds.shape[0] / seconds:.1f} frames/s, {rt.describe()})")


@cli_errors
def validate(
    path: Path = typer.Argument(..., help="Artifact directory (predictor or encoder), or a TensorRT ENGINE.plan."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="The checkpoint the artifact was exported from."),
    config: Optional[Path] = typer.Option(None, "--config", help="Config JSON (default: the artifact's)."),
    random_init: bool = typer.Option(False, "--random-init", help="Compare with seeded random weights (as exported with "
                                                                  "--random-init; read from the manifest when it "
                                                                  "records them)."),
    seed: Optional[int] = o.seed("Seed of the random weights (default: the one the manifest records, else 0).",
                                 None),
    # the deployment gate checks the exported graphs: ONNX Runtime unless told otherwise
    backend: Optional[str] = o.backend(None, "onnxruntime (default), torch, torch-compile or torch-reference; an "
                                             "ENGINE.plan runs on tensorrt."),
    device: Optional[str] = o.DEVICE,
    precision: Optional[str] = typer.Option(None, "--precision",
                                            help="Comma list of precisions to check (default: every one the artifact has; an engine's own)."),
    steps: int = typer.Option(4, "--steps", help="Frames of the closed-loop rollout (including the context)."),
    batch: int = typer.Option(2, "--batch", help="Batch of the seeded inputs (an encoder: camera frames)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of error vs rollout step."),
    save_polygraphy: Optional[Path] = typer.Option(
        None, "--save-polygraphy", help="Write the validated steps' feeds, the reference's outputs and the "
                                        "`polygraphy run` command that reproduces the check to this directory."),
) -> None:
    """Parity of an artifact against its PyTorch reference: exit 0 pass, 1 mismatch, 2 bad input."""
    from ..artifacts import file_digest
    from ..reference import predictor_from_source
    from ..runtimes import open_runtime
    from ..validation import TOLERANCES, ParityInputs, check_parity

    from ..artifacts.source import engine_source_manifest, weights_source
    from .encoder import is_encoder, validate_encoder

    if is_encoder(path):   # an encoder artifact or engine: its features against the reference encoder
        if save_polygraphy is not None:
            raise VitacError("--save-polygraphy reproduces the predictor's step graphs; for an encoder, run "
                             "`polygraphy run ENCODER/encoder.onnx --onnxrt` on your own frames")
        return validate_encoder(path, checkpoint, config, random_init, seed, backend or "auto", device, precision,
                                batch, report, plot)
    console = stdout_console()
    engine = path.suffix in ENGINE_SUFFIXES
    # read_*manifest refuse a manifest whose seal does not match (edited) or that has none, names
    # outside the folder, and files without a sha256
    if engine:
        manifest = read_engine_manifest(path)
        backend, have = backend or "auto", [manifest["precision"]]
        listed = {e["file"]: e["sha256"] for e in manifest["engines"]}
    else:
        manifest = read_manifest(path)
        backend = backend or "onnxruntime"
        have = [p for p in PRECISIONS if f"step.{p}" in manifest["graphs"]]
        listed = manifest["files"]
    precisions = [x.strip() for x in precision.split(",") if x.strip()] if precision else have
    for p in precisions:
        if p not in have:
            raise VitacError(f"{path} has no {p} {'engine' if engine else 'graph'} (it has: {', '.join(have) or 'none'})")
    if not precisions:
        raise VitacError(f"{path} has no step {'engine' if engine else 'graph'} to validate")
    if save_polygraphy is not None:
        if engine:
            raise VitacError("--save-polygraphy takes an artifact directory (the engine's ONNX graphs are in the "
                             "artifact it was built from)")
        from ..validation.polygraphy import check_save_target

        check_save_target(save_polygraphy)
    folder = path.parent if engine else path
    cfg = PredictorConfig.resolve(config) if config else PredictorConfig.from_dict(manifest["config"])
    weights = weights_source(engine_source_manifest(path, manifest) if engine else manifest, checkpoint, random_init,
                             seed, str(path))
    checkpoint, random_init, seed = weights.checkpoint, weights.random_init, weights.seed
    if steps < 2 or batch < 1:
        raise VitacError("--steps must be >= 2, --batch >= 1 and --seed >= 0")
    if steps > cfg.max_frames:
        raise VitacError(f"--steps {steps} exceeds the model's max_frames {cfg.max_frames}")
    for out_path, flag in ((report, "--report"), (plot, "--plot")):
        if out_path is not None:
            check_output(out_path, flag)
    if plot is not None:
        _matplotlib()
    err = stderr_console()
    with live_status(err, "loading the reference model"):
        model = predictor_from_source(checkpoint, cfg, random_init, seed)

    def matches(name: str, digest: str) -> bool:
        f = folder / name
        try:
            return f.is_file() and not f.is_symlink() and file_digest(f) == digest
        except OSError:
            return False

    with live_status(err, f"checking {len(listed)} files against their sha256"):
        files_ok = {name: matches(name, digest) for name, digest in listed.items()}
    bad_files = [n for n, ok in files_ok.items() if not ok]
    inputs = ParityInputs.make(cfg, batch=batch, frames=steps, seed=seed + 1)
    results = {}
    # files that differ from the manifest are a mismatch (exit 1) and nothing of them is run
    for p in [] if bad_files else precisions:
        # verify=False: every listed file was hashed just above
        with live_status(err, f"{p}: rolling out {steps} frames (batch {batch}) with the runtime and the reference"):
            rt = open_runtime(path, backend=backend, device=device, precision=p, verify=False)
            r = check_parity(rt, model, inputs, p)
        results[p] = r
        table = Table(title=f"{p} via {rt.describe()}: tolerance max abs {r.tolerance.max_abs:g}, "
                            f"mean abs {r.tolerance.mean_abs:g}, cosine >= {r.tolerance.cosine_min}",
                      header_style="bold")
        for col in ("mode", "frame", "max abs", "mean abs", "cosine", "rel L1"):
            table.add_column(col, justify="right")
        for mode, errs in (("rollout", r.rollout), ("teacher forcing", r.teacher_forcing)):
            for e in errs:
                table.add_row(mode, str(e["frame"] + 1), f"{e['max_abs']:.2e}", f"{e['mean_abs']:.2e}",
                              f"{e['cosine']:.7f}", f"{e['rel_l1']:.2e}")
        console.print(table)
    passed = not bad_files and all(r.passed for r in results.values())
    if bad_files:
        console.print(f"files differ from the manifest's sha256 (missing or modified): {', '.join(bad_files)}",
                      style="red")
    console.print("PASSED" if passed else "FAILED", style="bold")
    console.print(f"reference: {weights.describe()}")
    data = {"passed": passed, "artifact": str(path), "backend": backend, "device": device,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "random_init_seed": seed if random_init else None, "files_match_manifest": files_ok,
            "tolerances": {p: TOLERANCES[p].to_dict() for p in results},
            "results": {p: r.to_dict() for p, r in results.items()}}
    if save_polygraphy is not None:   # also, and above all, when the check failed
        from ..validation.polygraphy import save_polygraphy as save

        commands = save(save_polygraphy, path, model, inputs, list(results), manifest)
        data["polygraphy_commands"] = commands
        console.print(f"reproduce with Polygraphy ({save_polygraphy}/command.txt):")
        for c in commands:
            console.print(c, soft_wrap=True, highlight=False, markup=False)
    if report:
        try:
            write_json_atomic(report, data)
        except OSError as e:   # checked before the work, but the disk can fill meanwhile: exit 2, not 1
            raise VitacError(f"cannot write --report {report}: {e.strerror}") from None
    if plot and results:
        _plot(plot, results, str(path))
    if not passed:
        raise ValidationError("the artifact does not match the reference" +
                              (f" (missing or modified files: {', '.join(bad_files)})" if bad_files else ""))


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VitacError("--plot needs matplotlib: pip install 'vitac-deploy[plot]'") from None
    return plt


def _plot(path: Path, results, artifact: str = "the artifact") -> None:
    plt = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    from ..artifacts import save_figure

    fig, ax = plt.subplots(figsize=(7.6, 4.2), layout="constrained")
    for i, (p, r) in enumerate(results.items()):
        colour = f"C{i}"   # one colour per precision: its errors and its tolerance
        steps = [e["frame"] + 1 for e in r.rollout]
        ax.semilogy(steps, [e["max_abs"] for e in r.rollout], "o-", color=colour, label=f"{p} max abs")
        ax.semilogy(steps, [e["mean_abs"] for e in r.rollout], "s--", color=colour, alpha=0.6, label=f"{p} mean abs")
        ax.axhline(r.tolerance.max_abs, color=colour, lw=1.0, ls=":", label=f"{p} tolerance, max abs {r.tolerance.max_abs:g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rollout step (predicted frame)")
    ax.set_ylabel("error vs the PyTorch reference")
    ax.set_title(f"{artifact}: closed-loop rollout vs PyTorch", fontsize=11)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    try:
        save_figure(fig, path)
    except OSError as e:
        raise VitacError(f"cannot write --plot {path}: {e.strerror}") from None

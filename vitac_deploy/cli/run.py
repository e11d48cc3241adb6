"""`vitac-deploy rollout` and `vitac-deploy validate`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from ..errors import ValidationError, VitacError, first_line
from ._common import cli_errors, progress_enabled, resolve_config, stderr_console, stdout_console


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise VitacError(f"inputs not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise VitacError(f"cannot read {path}: {first_line(e)}") from None


@cli_errors
def rollout(
    path: Path = typer.Argument(..., help="Artifact directory (predictor or encoder), or a TensorRT ENGINE.plan."),
    inputs: Path = typer.Option(..., "--inputs", help="NPZ with features [B,C,N,D] (raw), actions, states[, extrinsics]."),
    out: Path = typer.Option(..., "--out", help="NPZ to write: predictions [B,H,N,D] and timing."),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime, torch, tensorrt."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cpu; cuda for engines)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 or fp16 (default: fp32 on cpu, fp16 on cuda)."),
    horizon: Optional[int] = typer.Option(None, "--horizon", help="Frames to predict (default: from the actions)."),
    state_update: str = typer.Option("given", "--state-update", help="given or delta (state[t+1] = state[t] + action[t])."),
) -> None:
    """Roll the world model forward from context frames through a runtime."""
    from ..runtimes import open_runtime

    err = stderr_console()
    data = _load_npz(inputs)
    for key in ("features", "actions", "states"):
        if key not in data:
            raise VitacError(f"{inputs} has no '{key}' array (has: {', '.join(sorted(data)) or 'nothing'})")
    if state_update not in ("given", "delta"):
        raise VitacError(f"--state-update must be given or delta, got {state_update}")
    feats = data["features"]
    if feats.ndim != 4:
        raise VitacError(f"features must be [B, C, N, D], got shape {list(feats.shape)}")
    C = feats.shape[1]
    H = horizon if horizon is not None else data["actions"].shape[1] - C + 1
    if H < 1:
        raise VitacError(f"horizon must be >= 1 (actions hold {data['actions'].shape[1]} steps for {C} context frames)")
    rt = open_runtime(path, backend=backend, device=device, precision=precision)
    err.print(f"runtime: {rt.describe()}")
    F = C + H - 1
    acts = data["actions"][:, :F]
    states = data["states"] if state_update == "delta" else data["states"][:, :F]
    ext = data["extrinsics"][:, :F] if "extrinsics" in data else None
    t0 = time.perf_counter()
    if progress_enabled() and H > 2:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            task = bar.add_task(f"rollout ({rt.describe()})", total=F)
            preds = rt.rollout(feats, acts, states, H, ext, state_update=state_update,
                               on_frame=lambda done, total: bar.update(task, completed=done))
    else:
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
    random_init: bool = typer.Option(False, "--random-init", help="Compare with seeded random weights (as exported with --random-init)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --random-init."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime or torch (engines: tensorrt)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cpu; cuda for engines)."),
    precision: Optional[str] = typer.Option(None, "--precision",
                                            help="Comma list of precisions to check (default: fp32,fp16; an engine's own)."),
    steps: int = typer.Option(4, "--steps", help="Frames of the closed-loop rollout (including the context)."),
    batch: int = typer.Option(2, "--batch", help="Batch of the seeded inputs (an encoder: camera frames)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of error vs rollout step."),
    save_polygraphy: Optional[Path] = typer.Option(
        None, "--save-polygraphy", help="Write the validated steps' feeds, the reference's outputs and the "
                                        "`polygraphy run` command that reproduces the check to this directory."),
) -> None:
    """Parity of an artifact against its PyTorch reference: exit 0 pass, 1 mismatch, 2 bad input."""
    from ..config import PredictorConfig
    from ..manifest import read_engine_manifest, read_manifest, sha256_file, write_json_atomic
    from ..metrics import TOLERANCES
    from ..reference import load_predictor, random_predictor
    from ..runtimes import open_runtime
    from ..validation import ParityInputs, check_parity

    from .encoder import is_encoder, validate_encoder

    if is_encoder(path):   # an encoder artifact or engine: its features against the reference encoder
        if save_polygraphy is not None:
            raise VitacError("--save-polygraphy reproduces the predictor's step graphs; for an encoder, run "
                             "`polygraphy run ENCODER/encoder.onnx --onnxrt` on your own frames")
        return validate_encoder(path, checkpoint, config, random_init, seed, backend, device, precision, batch,
                                report, plot)
    console = stdout_console()
    engine = path.suffix in (".plan", ".engine")
    if engine:
        manifest = read_engine_manifest(path)
        backend, precision = "tensorrt", precision or manifest["precision"]
        graphs = {f"step.{manifest['precision']}"}
        listed = {e["file"]: e["sha256"] for e in manifest["engines"]}
    else:
        manifest = read_manifest(path)
        precision = precision or "fp32,fp16"
        graphs = set(manifest["graphs"])
        listed = manifest.get("files", {})
    if save_polygraphy is not None:
        if engine:
            raise VitacError("--save-polygraphy takes an artifact directory (the engine's ONNX graphs are in the "
                             "artifact it was built from)")
        from ..reproduce import check_save_target

        check_save_target(save_polygraphy)
    folder = path.parent if engine else path
    cfg = resolve_config(config, None) if config else PredictorConfig.from_dict(manifest["config"])
    if checkpoint is None and not random_init:
        raise VitacError("give --checkpoint (or --random-init --seed N for an artifact exported that way)")
    model = load_predictor(checkpoint, cfg) if checkpoint is not None else random_predictor(cfg, seed)
    if steps < 2 or batch < 1:
        raise VitacError("--steps must be >= 2 and --batch >= 1")
    files_ok = {name: sha256_file(folder / name) == digest if (folder / name).is_file() else False
                for name, digest in listed.items()}
    inputs = ParityInputs.make(cfg, batch=batch, frames=steps, seed=seed + 1)
    results = {}
    for p in [x.strip() for x in precision.split(",") if x.strip()]:
        if f"step.{p}" not in graphs:
            raise VitacError(f"{path} has no {p} {'engine' if engine else 'graph'}")
        rt = open_runtime(path, backend=backend, device=device, precision=p)
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
    passed = all(r.passed for r in results.values()) and all(files_ok.values())
    bad_files = [n for n, ok in files_ok.items() if not ok]
    if bad_files:
        console.print(f"[red]files differ from the manifest's sha256: {', '.join(bad_files)}[/]")
    console.print(f"[bold]{'PASSED' if passed else 'FAILED'}[/]")
    data = {"passed": passed, "artifact": str(path), "backend": backend, "device": device,
            "checkpoint": str(checkpoint) if checkpoint else None, "files_match_manifest": files_ok,
            "tolerances": {p: TOLERANCES[p].to_dict() for p in results},
            "results": {p: r.to_dict() for p, r in results.items()}}
    if save_polygraphy is not None:   # also, and above all, when the check failed
        from ..reproduce import save_polygraphy as save

        commands = save(save_polygraphy, path, model, inputs, list(results), manifest)
        data["polygraphy_commands"] = commands
        console.print(f"reproduce with Polygraphy ({save_polygraphy}/command.txt):")
        for c in commands:
            console.print(c, soft_wrap=True, highlight=False, markup=False)
    if report:
        write_json_atomic(report, data)
    if plot:
        _plot(plot, results)
    if not passed:
        raise ValidationError("the artifact does not match the reference" +
                              (f" (modified files: {', '.join(bad_files)})" if bad_files else ""))


def _plot(path: Path, results) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VitacError("--plot needs matplotlib: pip install 'vitac-deploy[plot]'") from None
    from ..manifest import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for p, r in results.items():
        steps = [e["frame"] + 1 for e in r.rollout]
        ax.semilogy(steps, [e["max_abs"] for e in r.rollout], "o-", label=f"{p} max abs")
        ax.semilogy(steps, [e["mean_abs"] for e in r.rollout], "s--", label=f"{p} mean abs")
        ax.axhline(r.tolerance.max_abs, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("rollout step")
    ax.set_ylabel("error vs PyTorch reference")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)

"""`vitac-deploy export-encoder`: the V-JEPA 2 encoder as a validated ONNX artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import VitacError
from . import options as o
from ._common import cli_errors, live_status, plain, stderr_console, stdout_console


@cli_errors
def export_encoder(
    out: Path = typer.Option(..., "--out",
                             help="Encoder artifact directory to create (plan looks in ARTIFACT/encoder)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint",
                                              help="A published V-JEPA 2-AC checkpoint or an encoder state_dict."),
    encoder_key: str = typer.Option("encoder", "--encoder-key", help="Checkpoint entry: encoder or target_encoder."),
    config: Optional[Path] = typer.Option(None, "--config",
                                          help="EncoderConfig JSON, upstream kwargs or a golden file."),
    preset: Optional[str] = typer.Option(None, "--preset", help="vit-l (default), vit-g or vit-l-demo."),
    random_init: bool = o.RANDOM_INIT, seed: int = o.WEIGHT_SEED,
    precision: str = typer.Option("fp32,fp16", "--precision", help="Comma list of fp32, fp16."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13..21)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check every graph against PyTorch."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
) -> None:
    """Export the V-JEPA 2 encoder (per frame, the planner's way) to ONNX fp32 + strongly typed fp16."""
    from ..artifacts import ENCODER_FORMAT, check_out, publish_lock, sha256_file
    from ..encoder import EncoderConfig
    from ..exporters import EncoderExportOptions, export_encoder as export
    from ..reference import encoder_from_source

    err = stderr_console()
    source: dict = {"checkpoint": str(checkpoint) if checkpoint else None, "encoder_key": encoder_key}
    if checkpoint is not None and checkpoint.is_file():
        source["checkpoint_sha256"] = sha256_file(checkpoint)
    if random_init:
        source["random_init_seed"] = seed

    check_out(out, force, (ENCODER_FORMAT,))   # before the model is loaded: a refused --out costs nothing
    with publish_lock(out):   # held from here: two commands started together cannot both write --out
        with live_status(err, "loading the reference encoder"):
            model = encoder_from_source(checkpoint, EncoderConfig.resolve(config, preset), random_init, seed,
                                        encoder_key)
        opts = EncoderExportOptions(precisions=[p.strip() for p in precision.split(",") if p.strip()], opset=opset,
                                    validate=validate, force=force, source=source)
        with err.status("exporting the encoder") as status:
            manifest = export(model, out, opts, progress=lambda m: (status.update(plain(m)), err.print(f"  {m}")))
    stdout_console().print(encoder_table(out, manifest))


def encoder_table(out: Path, manifest: dict) -> Table:
    cfg = manifest["config"]
    table = Table(title=f"{out}: encoder, {manifest['parameters']:,} parameters, {cfg['img_size']} px, "
                        f"{manifest['tokens_per_frame']} tokens x {cfg['embed_dim']} per frame", header_style="bold")
    for col in ("graph", "file", "tolerance (max abs)", "measured max abs", "cosine", "status"):
        table.add_column(col)
    val = manifest.get("validation", {})
    for key, g in manifest["graphs"].items():
        v = val.get(g["precision"]) if isinstance(val.get(g["precision"]), dict) else None
        tol = manifest["tolerances"][g["precision"]]["max_abs"]
        if v is None:
            table.add_row(key, g["file"], f"{tol:g}", "-", "-", "not validated")
        else:
            table.add_row(key, g["file"], f"{tol:g}", f"{v['max_abs']:.2e}", f"{v['cosine']:.7f}",
                          "ok" if v["passed"] else "FAILED")
    return table


def is_encoder(path: Path) -> bool:
    """Whether `path` is an encoder artifact directory or an encoder engine (by its manifest)."""
    from ..artifacts import artifact_kind

    return artifact_kind(path) in ("encoder", "encoder-engine")


def validate_encoder(path: Path, checkpoint: Optional[Path], config: Optional[Path], random_init: bool,
                     seed: Optional[int],
                     backend: str, device: Optional[str], precision: Optional[str], frames: int,
                     report: Optional[Path], plot: Optional[Path], encoder_key: str = "encoder") -> None:
    """`validate` for an encoder artifact or engine: its features of seeded camera-like frames
    against the reference encoder, per precision; exit 1 on a mismatch."""
    from ..artifacts import (ENGINE_SUFFIXES, check_output, read_encoder_manifest, read_engine_manifest, sha256_file,
                             write_json_atomic)
    from ..encoder import EncoderConfig
    from ..errors import ValidationError
    from ..precision import PRECISIONS
    from ..reference import encoder_from_source
    from ..runtimes import open_encoder
    from ..validation import encoder_parity, validation_images

    engine = path.suffix in ENGINE_SUFFIXES
    manifest = read_engine_manifest(path) if engine else read_encoder_manifest(path)
    if engine:   # an engine runs on the backend that opens engines, on the GPU
        backend, device = "auto", device or "cuda"
        precision = precision or manifest["precision"]
        have = {manifest["precision"]}
        listed = {e["file"]: e.get("sha256") for e in manifest["engines"]}
    else:
        have = {g["precision"] for g in manifest["graphs"].values()}
        # default: every precision the artifact has (as validate does for the predictor)
        device, precision = device or "cpu", precision or ",".join(p for p in PRECISIONS if p in have)
        listed = manifest["files"]
    cfg = EncoderConfig.resolve(config) if config else EncoderConfig.from_dict(manifest["config"])
    from ..artifacts.source import engine_source_manifest, weights_source

    weights = weights_source(engine_source_manifest(path, manifest) if engine else manifest, checkpoint, random_init,
                             seed, str(path))
    checkpoint, random_init, seed = weights.checkpoint, weights.random_init, weights.seed
    if frames < 1:
        raise VitacError("--batch (frames) must be >= 1")
    for out_path, flag in ((report, "--report"), (plot, "--plot")):
        if out_path is not None:   # before the work: a failure to write is exit 2, never 1 (mismatch)
            check_output(out_path, flag)
    err = stderr_console()
    with live_status(err, "loading the reference encoder"):
        model = encoder_from_source(checkpoint, cfg, random_init, seed, encoder_key)
    folder = path.parent if engine else path
    with live_status(err, f"checking {len(listed)} files against their sha256"):
        files_ok = {n: (folder / n).is_file() and sha256_file(folder / n) == d for n, d in listed.items()}
    images = validation_images(cfg, frames, seed + 1)
    results = {}
    console = stdout_console()
    precisions = [x.strip() for x in precision.split(",") if x.strip()]
    for p in precisions:
        if p not in have:
            raise VitacError(f"{path} has no {p} {'engine' if engine else 'encoder graph'}")
    bad = [n for n, ok in files_ok.items() if not ok]
    # files that differ from the manifest are a mismatch (exit 1) and nothing of them is run
    for p in [] if bad else precisions:
        # verify=False: every listed file was hashed just above
        with live_status(err, f"{p}: encoding {frames} frames with the graph and the reference"):
            enc = open_encoder(path, backend=backend, device=device, precision=p, verify=False)
            r = results[p] = encoder_parity(enc, model, images, p)
        tol = r["tolerance"]
        table = Table(title=f"encoder {p} via {enc.describe()}: tolerance max abs {tol['max_abs']:g}, "
                            f"mean abs {tol['mean_abs']:g}, cosine >= {tol['cosine_min']}", header_style="bold")
        for col in ("frame", "max abs", "mean abs", "cosine", "rel L1"):
            table.add_column(col, justify="right")
        for e in r["frames"]:
            table.add_row(str(e["frame"] + 1), f"{e['max_abs']:.2e}", f"{e['mean_abs']:.2e}", f"{e['cosine']:.7f}",
                          f"{e['rel_l1']:.2e}")
        console.print(table)
        enc.close()
    passed = all(r["passed"] for r in results.values()) and not bad
    if bad:
        console.print(f"files differ from the manifest's sha256 (missing or modified): {', '.join(bad)}", style="red")
    console.print("PASSED" if passed else "FAILED", style="bold")
    console.print(f"reference: {weights.describe()}")
    if report:
        try:
            write_json_atomic(report, {"passed": passed, "artifact": str(path), "kind": "encoder", "backend": backend,
                                       "device": device, "checkpoint": str(checkpoint) if checkpoint else None,
                                       "files_match_manifest": files_ok, "results": results})
        except OSError as e:   # checked before the work, but the disk can fill meanwhile: exit 2, not 1
            raise VitacError(f"cannot write --report {report}: {e.strerror}") from None
    if plot:
        _plot_encoder(plot, results)
    if not passed:
        raise ValidationError("the encoder does not match the reference" +
                              (f" (modified files: {', '.join(bad)})" if bad else ""))


def _plot_encoder(path: Path, results: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VitacError("--plot needs matplotlib: pip install 'vitac-deploy[plot]'") from None
    from ..artifacts import save_figure

    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.6, 4.2), layout="constrained")
    for i, (p, r) in enumerate(results.items()):
        colour = f"C{i}"   # one colour per precision: its errors and its tolerance
        frames = [e["frame"] + 1 for e in r["frames"]]
        ax.semilogy(frames, [e["max_abs"] for e in r["frames"]], "o-", color=colour, label=f"{p} max abs")
        ax.semilogy(frames, [e["mean_abs"] for e in r["frames"]], "s--", color=colour, alpha=0.6, label=f"{p} mean abs")
        tol = r["tolerance"]["max_abs"]
        ax.axhline(tol, color=colour, lw=1.0, ls=":", label=f"{p} tolerance, max abs {tol:g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("camera frame")
    ax.set_ylabel("feature error vs the PyTorch reference")
    ax.set_title("encoder parity", fontsize=11)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    save_figure(fig, path)

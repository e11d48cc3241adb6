"""`vitac-deploy export-encoder`: the V-JEPA 2 encoder as a validated ONNX artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import VitacError
from ._common import cli_errors, stderr_console


def resolve_encoder_config(config: Optional[Path], preset: Optional[str]):
    """--config JSON (ours, upstream kwargs, or a golden file's `encoder_kwargs`) wins over --preset
    (default vit-l)."""
    from ..encoder import EncoderConfig

    if config is not None:
        return EncoderConfig.from_json(config)
    return EncoderConfig.preset(preset or "vit-l")


def load_encoder_model(checkpoint: Optional[Path], config: Optional[Path], preset: Optional[str],
                       random_init: bool, seed: int, key: str = "encoder"):
    """The reference encoder from a checkpoint (its `key` part), or seeded random weights."""
    from ..reference import load_encoder, random_encoder

    if checkpoint is not None and random_init:
        raise VitacError("give either --checkpoint or --random-init, not both")
    cfg = resolve_encoder_config(config, preset)
    if checkpoint is not None:
        return load_encoder(checkpoint, cfg, key)
    if not random_init:
        raise VitacError("no weights: give --checkpoint PATH, or --random-init for seeded random weights")
    return random_encoder(cfg, seed)


@cli_errors
def export_encoder(
    out: Path = typer.Option(..., "--out", help="Encoder artifact directory to create (plan looks in ARTIFACT/encoder)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint",
                                              help="A published V-JEPA 2-AC checkpoint or an encoder state_dict."),
    encoder_key: str = typer.Option("encoder", "--encoder-key", help="Checkpoint entry: encoder or target_encoder."),
    config: Optional[Path] = typer.Option(None, "--config", help="EncoderConfig JSON, upstream kwargs or a golden file."),
    preset: Optional[str] = typer.Option(None, "--preset", help="vit-l (default), vit-g or vit-l-demo."),
    random_init: bool = typer.Option(False, "--random-init", help="Seeded random weights instead of a checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Seed for --random-init."),
    precision: str = typer.Option("fp32,fp16", "--precision", help="Comma list of fp32, fp16."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13..21)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check every graph against PyTorch."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
) -> None:
    """Export the V-JEPA 2 encoder (per frame, the planner's way) to ONNX fp32 + strongly typed fp16."""
    from ..exporters.encoder_artifact import EncoderExportOptions, export_encoder as export
    from ..manifest import sha256_file

    err = stderr_console()
    source: dict = {"checkpoint": str(checkpoint) if checkpoint else None, "encoder_key": encoder_key}
    if checkpoint is not None and checkpoint.is_file():
        source["checkpoint_sha256"] = sha256_file(checkpoint)
    if random_init:
        source["random_init_seed"] = seed
    err.print("loading the reference encoder")
    model = load_encoder_model(checkpoint, config, preset, random_init, seed, encoder_key)
    opts = EncoderExportOptions(precisions=[p.strip() for p in precision.split(",") if p.strip()], opset=opset,
                                validate=validate, force=force, source=source)
    with err.status("exporting the encoder") as status:
        manifest = export(model, out, opts, progress=lambda m: (status.update(m), err.print(f"  {m}")))
    Console(width=max(Console().width, 120)).print(encoder_table(out, manifest))


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

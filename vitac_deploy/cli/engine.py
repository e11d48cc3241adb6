"""`vitac-deploy build-engine`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import VitacError
from ._common import cli_errors, stderr_console, stdout_console


@cli_errors
def build_engine(
    artifact: Path = typer.Argument(..., help="Export artifact directory (predictor, or an encoder from export-encoder)."),
    out: Path = typer.Option(..., "--out", help="ENGINE.plan to write (+ ENGINE.plan.json)."),
    precision: str = typer.Option("fp16", "--precision", help="fp16 or fp32."),
    min_batch: int = typer.Option(1, "--min-batch"),
    opt_batch: int = typer.Option(1, "--opt-batch"),
    max_batch: int = typer.Option(1, "--max-batch"),
    max_frames: int = typer.Option(0, "--max-frames", help="Frames the engine serves (default: the model's)."),
    workspace: Optional[int] = typer.Option(None, "--workspace", help="Workspace limit in MiB."),
    opt_level: Optional[int] = typer.Option(None, "--opt-level", help="Builder optimization level 0-5."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Read and update this timing cache."),
    version_compatible: bool = typer.Option(False, "--version-compatible"),
    hardware_compatible: bool = typer.Option(False, "--hardware-compatible"),
    first_frame: str = typer.Option("engine", "--first-frame",
                                    help="engine: a second engine from first*.onnx; zero-past: profile past_len from 0."),
    flavour: str = typer.Option("tensorrt", "--flavour", help="tensorrt or tensorrt-rtx."),
    compute_capability: Optional[str] = typer.Option(
        None, "--compute-capability",
        help="tensorrt-rtx: comma list of target GPUs, e.g. 8.6,8.9 (default: this GPU, or Ampere+ without one)."),
    tf32: bool = typer.Option(False, "--tf32", help="Allow TF32 in float32 layers (off: fp32 means fp32)."),
    verbose: bool = typer.Option(False, "--verbose", help="TensorRT's own log."),
) -> None:
    """Build FP16 (or FP32) TensorRT engines from an artifact, with profiles for batch and past_len
    (an encoder artifact: one engine, its profile over the batch of frames)."""
    from ..runtimes.tensorrt.build import EngineOptions, build_engine as build, read_artifact_manifest
    from ..runtimes.tensorrt.profiles import ProfileOptions

    read_artifact_manifest(artifact)  # a bad artifact is reported before TensorRT is looked for
    if first_frame not in ("engine", "zero-past"):
        raise VitacError(f"--first-frame must be engine or zero-past, got {first_frame}")
    if out.suffix not in (".plan", ".engine"):
        raise VitacError(f"--out must end in .plan or .engine, got {out}")
    if not out.parent.is_dir():
        raise VitacError(f"cannot write {out}: {out.parent} does not exist")
    opts = EngineOptions(
        precision=precision,
        profile=ProfileOptions(min_batch, opt_batch, max_batch, max_frames, 1 if first_frame == "engine" else 0),
        workspace_mib=workspace, opt_level=opt_level, timing_cache=timing_cache,
        version_compatible=version_compatible, hardware_compatible=hardware_compatible, verbose=verbose,
        flavour=flavour, tf32=tf32,
        compute_capabilities=tuple(c.strip() for c in (compute_capability or "").split(",") if c.strip()))
    err = stderr_console()
    with err.status("building") as status:
        data = build(artifact, out, opts, say=lambda m: (status.update(m), err.print(f"  {m}")))
    for e in data["engines"]:
        stdout_console().print(f"{e['role']} engine -> {out.parent / e['file']} ({e['build_s']} s)")
    gpu = data["gpu"]
    where = (f"{gpu['name']} ({gpu['compute_capability']})" if gpu
             else f"no GPU (ahead of time, for compute capability {', '.join(data['compute_capabilities'])})")
    stdout_console().print(f"{data['precision']}: {data['precision_how']}; {data['tensorrt']['flavour']} "
                    f"{data['tensorrt']['version']} on {where}")

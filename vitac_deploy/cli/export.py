"""`vitac-deploy export` and `vitac-deploy inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import VitacError, first_line
from ._common import cli_errors, load_model, stderr_console, stdout_console


@cli_errors
def export(
    out: Path = typer.Option(..., "--out", help="Artifact directory to create."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights (.pt/.pth/.safetensors)."),
    config: Optional[Path] = typer.Option(None, "--config", help="PredictorConfig JSON or upstream kwargs JSON."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Named config (default vitac-l384)."),
    random_init: bool = typer.Option(False, "--random-init", help="Seeded random weights instead of a checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Seed for --random-init."),
    precision: str = typer.Option("fp32,fp16", "--precision", help="Comma list of fp32, fp16."),
    opset: Optional[int] = typer.Option(None, "--opset",
                                        help="ONNX opset (concat: 13..21, default 17; static: 24, TensorScatter)."),
    cache: str = typer.Option("concat", "--cache",
                              help="KV cache contract: concat (grows, double-buffered; every runtime) or static "
                                   "(fixed length, written in place: half the cache memory; opset 24)."),
    cache_frames: Optional[int] = typer.Option(None, "--cache-frames",
                                               help="--cache static: frames the cache holds (default the model's "
                                                    "max_frames; context + horizon - 1 is enough for planning)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check every graph against PyTorch."),
    first_frame_graph: bool = typer.Option(True, "--first-frame-graph/--no-first-frame-graph",
                                           help="Also write first*.onnx (no past inputs) for TensorRT."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    save_polygraphy: Optional[Path] = typer.Option(
        None, "--save-polygraphy", help="Write the validated steps' feeds, the reference's outputs and the "
                                        "`polygraphy run` command that reproduces the check to this directory."),
) -> None:
    """Export the per-step ONNX graphs (fp32 + strongly typed fp16) with a KV-cache interface."""
    from ..exporters import ExportOptions, export_artifact
    from ..manifest import sha256_file

    err = stderr_console()
    source: dict = {"checkpoint": str(checkpoint) if checkpoint else None}
    if checkpoint is not None and checkpoint.is_file():
        source["checkpoint_sha256"] = sha256_file(checkpoint)
    if random_init:
        source["random_init_seed"] = seed
    err.print("loading the reference model")
    model = load_model(checkpoint, config, preset, random_init, seed)
    opts = ExportOptions(precisions=[p.strip() for p in precision.split(",") if p.strip()], opset=opset,
                         validate=validate, first_frame_graph=first_frame_graph, force=force, source=source,
                         cache=cache, cache_frames=cache_frames, save_polygraphy=save_polygraphy)
    with err.status("exporting") as status:
        manifest = export_artifact(model, out, opts, progress=lambda m: (status.update(m), err.print(f"  {m}")))
    stdout_console().print(summary_table(out, manifest))
    if save_polygraphy is not None:
        stdout_console().print(f"reproduce the check with Polygraphy: see {save_polygraphy}/command.txt",
                               highlight=False)


def summary_table(out: Path, manifest: dict) -> Table:
    table = Table(title=f"{out}", header_style="bold")
    for col in ("graph", "file", "cache", "tolerance (max abs)", "measured max abs", "cosine", "status"):
        table.add_column(col)
    val = manifest.get("validation", {})
    for key, g in manifest["graphs"].items():
        if g["role"] == "energy":   # the planner's energy: checked against numpy, not the model
            e = val.get("energy", {})
            measured = f"{e['max_abs']:.2e} vs numpy" if "max_abs" in e else "-"
            table.add_row(key, g["file"], "-", f"{e.get('tolerance', 1e-5):g}", measured, "-",
                          "not validated" if val.get("skipped") else ("ok" if e.get("passed") else "FAILED"))
            continue
        v = val.get(g["precision"], {}) if isinstance(val.get(g["precision"]), dict) else {}
        tol = manifest["tolerances"][g["precision"]]["max_abs"]
        if val.get("skipped"):
            measured, cos, status = "-", "-", "not validated"
        elif g["role"] == "first":
            measured, cos, status = f"{v.get('first_frame_graph_max_abs', float('nan')):.2e} vs step", "-", "ok"
        else:
            measured, cos = f"{v['worst_max_abs']:.2e}", f"{v['worst_cosine']:.7f}"
            status = "ok" if v["passed"] else "FAILED"
        table.add_row(key, g["file"], g["cache_dtype"], f"{tol:g}", measured, cos, status)
    return table


@cli_errors
def inspect(path: Path = typer.Argument(..., help="Artifact directory, .onnx file or ENGINE.plan.")) -> None:
    """Manifest summary and IO table (name, dtype, shape with symbolic dims); for an engine, how and
    where it was built and its optimization profiles."""
    console = stdout_console()
    if not path.exists():
        raise VitacError(f"not found: {path}")
    if path.suffix in (".plan", ".engine"):
        _inspect_engine(console, path)
        return
    if path.is_dir():
        from ..manifest import read_manifest

        m = read_manifest(path)
        cache = m.get("cache", {"contract": "concat"})
        console.print(f"[bold]{path}[/]  created {m['created']}, opset {m['opset']}, {cache['contract']} cache"
                      + (f" ({cache['frames']} frames, max_len {cache['max_len']})" if cache["contract"] == "static" else "")
                      + ", "
                      f"vitac-deploy {m['exporter'].get('vitac_deploy')}, torch {m['exporter'].get('torch')}, "
                      f"onnx {m['exporter'].get('onnx')}")
        cfg = m["config"]
        console.print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
        src = m.get("source", {})
        console.print("source: " + json.dumps(src))
        val = m.get("validation", {})
        for p, tol in m["tolerances"].items():
            v = val.get(p)
            got = "not validated" if not isinstance(v, dict) else (
                f"max abs {v['worst_max_abs']:.2e}, cosine {v['worst_cosine']:.7f}, "
                f"{'passed' if v['passed'] else 'FAILED'}")
            console.print(f"{p}: tolerance {tol} -> {got}")
        for key, g in m["graphs"].items():
            console.print(_io_table(f"{key} ({g['file']})", g["inputs"], g["outputs"]))
        return
    if path.suffix != ".onnx":
        raise VitacError(f"inspect takes an artifact directory or an .onnx file, got {path}")
    try:
        import onnx
    except ImportError:
        raise VitacError("inspecting an .onnx file needs onnx: pip install onnx") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise VitacError(f"cannot read {path}: {first_line(e)}") from None

    def spec(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}

    inits = {i.name for i in model.graph.initializer}
    console.print(f"[bold]{path}[/]  opset {[o.version for o in model.opset_import]}, "
                  f"{len(model.graph.node)} nodes, {len(inits)} initializers")
    console.print(_io_table(path.name, [spec(v) for v in model.graph.input if v.name not in inits],
                            [spec(v) for v in model.graph.output]))


def _inspect_engine(console: Console, path: Path) -> None:
    from ..manifest import read_engine_manifest

    m = read_engine_manifest(path)
    gpu = m.get("gpu")
    where = (f"{gpu['name']} (compute capability {gpu['compute_capability']}, CUDA {gpu.get('cuda_runtime')})" if gpu
             else f"no GPU, ahead of time for compute capability {', '.join(m.get('compute_capabilities', []))}")
    console.print(f"[bold]{path}[/]  {m['tensorrt']['flavour']} {m['tensorrt']['version']}, built {m['created']} on {where}")
    console.print(f"precision {m['precision']}: {m['precision_how']}")
    console.print(f"first frame: {m['first_frame']}; build flags: {json.dumps(m['build_flags'])}")
    for e in m["engines"]:
        table = Table(title=f"{e['role']} engine {e['file']} (from {e['source_onnx']}, built in {e['build_s']} s)",
                      header_style="bold")
        for col in ("input", "min", "opt", "max"):
            table.add_column(col)
        for name, shapes in e["profile"].items():
            if name.split(".")[-1].isdigit() and not name.endswith(".0"):
                continue
            shown = name[:-2] + ".{i}" if name.endswith(".0") else name
            table.add_row(shown, *(escape(str(list(s))) for s in shapes))
        console.print(table)


def _io_table(title: str, inputs: list, outputs: list) -> Table:
    table = Table(title=title, header_style="bold")
    for col in ("", "name", "dtype", "shape"):
        table.add_column(col)
    for kind, specs in (("in", inputs), ("out", outputs)):
        shown = [s for s in specs if not s["name"].split(".")[-1].isdigit() or s["name"].endswith(".0")]
        for s in shown:
            name = s["name"] if not s["name"].endswith(".0") else s["name"][:-2] + ".{i}"
            table.add_row(kind, name, s["dtype"], escape("[" + ", ".join(map(str, s["shape"])) + "]"))
    return table

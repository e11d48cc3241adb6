"""`vitac-deploy export` and `vitac-deploy inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import options as o
from ._common import cli_errors, live_status, plain, stderr_console, stdout_console


@cli_errors
def export(
    out: Path = typer.Option(..., "--out", help="Artifact directory to create."),
    checkpoint: Optional[Path] = o.CHECKPOINT, config: Optional[Path] = o.CONFIG,
    preset: Optional[str] = typer.Option(None, "--preset", help="Named config (default vitac-l384)."),
    random_init: bool = o.RANDOM_INIT, seed: int = o.WEIGHT_SEED,
    precision: str = typer.Option("fp32,fp16", "--precision", help="Comma list of fp32, fp16."),
    opset: Optional[int] = typer.Option(None, "--opset",
                                        help="ONNX opset (concat: 13..21, default 17; static: 24, TensorScatter)."),
    cache: str = typer.Option("concat", "--cache",
                              help="KV cache contract: concat (grows, double-buffered; every runtime) or static "
                                   "(fixed length, written in place: half the cache memory; opset 24)."),
    cache_frames: Optional[int] = typer.Option(None, "--cache-frames",
                                               help="--cache static: frames the cache holds (default the model's "
                                                    "max_frames; context + horizon - 1 is enough for planning)."),
    graph_form: str = typer.Option(
        "portable", "--graph-form",
        help="The operators the step graphs are written in: portable (any runtime, TensorRT 8.6/10.3 of JetPack "
             "5/6), ort-fused (ONNX Runtime: fused multi-head attention with the cache, fused LayerNorm/GELU; "
             "concat cache) or trt-attention (TensorRT >= 10.15 / 11.x and RTX: the ONNX Attention operator). "
             "Same inputs, outputs and tolerances; docs/export.md."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check every graph against PyTorch."),
    first_frame_graph: bool = typer.Option(True, "--first-frame-graph/--no-first-frame-graph",
                                           help="Also write first*.onnx (no past inputs) for TensorRT."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    save_polygraphy: Optional[Path] = typer.Option(
        None, "--save-polygraphy", help="Write the validated steps' feeds, the reference's outputs and the "
                                        "`polygraphy run` command that reproduces the check to this directory."),
) -> None:
    """Export the per-step ONNX graphs (fp32 + strongly typed fp16) with a KV-cache interface."""
    from ..artifacts import check_out, publish_lock

    check_out(out, force)   # before the model is loaded: a refused --out costs nothing
    with publish_lock(out):  # held from here: two commands started together cannot both write --out
        _export(out, checkpoint, config, preset, random_init, seed, precision, opset, validate, first_frame_graph,
                force, cache, cache_frames, save_polygraphy, graph_form)


def _export(out: Path, checkpoint: Optional[Path], config: Optional[Path], preset: Optional[str], random_init: bool,
            seed: int, precision: str, opset: Optional[int], validate: bool, first_frame_graph: bool, force: bool,
            cache: str, cache_frames: Optional[int], save_polygraphy: Optional[Path],
            graph_form: str = "portable") -> None:
    from ..artifacts import sha256_file
    from ..config import PredictorConfig
    from ..exporters import ExportOptions, export_artifact
    from ..exporters.artifact import check_options
    from ..reference import predictor_from_source

    err = stderr_console()
    source: dict = {"checkpoint": str(checkpoint) if checkpoint else None}
    if checkpoint is not None and checkpoint.is_file():
        source["checkpoint_sha256"] = sha256_file(checkpoint)
    if random_init:
        source["random_init_seed"] = seed
    opts = ExportOptions(precisions=[p.strip() for p in precision.split(",") if p.strip()], opset=opset,
                         validate=validate, first_frame_graph=first_frame_graph, force=force, source=source,
                         cache=cache, cache_frames=cache_frames, save_polygraphy=save_polygraphy,
                         graph_form=graph_form)
    check_options(opts)   # before the model loads: a bad flag costs nothing
    with live_status(err, "loading the reference model"):
        model = predictor_from_source(checkpoint, PredictorConfig.resolve(config, preset), random_init, seed)
    with err.status("exporting") as status:
        manifest = export_artifact(model, out, opts,
                                   progress=lambda m: (status.update(plain(m)), err.print(f"  {m}")))
    stdout_console().print(summary_table(out, manifest))
    if save_polygraphy is not None:
        stdout_console().print(f"reproduce the check with Polygraphy: see {save_polygraphy}/command.txt")


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
def inspect(path: Path = typer.Argument(..., help="Artifact directory (predictor or encoder), .onnx file or ENGINE.plan."),
            json_out: bool = typer.Option(False, "--json", help="Print it as one JSON object instead of tables.")) -> None:
    """Manifest summary, tolerances and IO table (name, dtype, shape with symbolic dims); for an
    engine, how and where it was built and its optimization profiles."""
    from ..summaries import artifact_summary

    data = artifact_summary(path)
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    console = stdout_console()
    if data["kind"] == "engine":
        _inspect_engine(console, path)
        return
    if data["kind"] == "onnx":
        console.print(Text.assemble((str(path), "bold"), f"  opset {data['opset']}, {data['nodes']} nodes, "
                                                         f"{data['initializers']} initializers"))
        console.print(_io_table(path.name, data["inputs"], data["outputs"]))
        return
    exporter = data.get("exporter") or {}
    if data["kind"] == "encoder":
        what = f"encoder, {data.get('parameters') or 0:,} parameters"
    else:
        cache = data.get("cache") or {"contract": "concat"}
        static = f" ({cache['frames']} frames, max_len {cache['max_len']})" if cache.get("contract") == "static" else ""
        what = f"{cache.get('contract')} cache{static}, {data.get('graph_form', 'portable')} graphs"
    console.print(Text.assemble((str(path), "bold"), f"  created {data.get('created')}, opset {data.get('opset')}, "
                                f"{what}, vitac-deploy {exporter.get('vitac_deploy')}, torch {exporter.get('torch')}, "
                                f"onnx {exporter.get('onnx')}"))
    console.print("config: " + ", ".join(f"{k}={v}" for k, v in data["config"].items()))
    console.print("source: " + _source_line(data.get("source") or {}))
    console.print(_tolerance_table(data["tolerances"]))
    for key, g in data["graphs"].items():
        console.print(_io_table(f"{key} ({g['file']})", g["inputs"], g["outputs"]))


def _source_line(src: dict) -> str:
    """The weights an artifact holds, as its manifest records them."""
    if isinstance(src.get("random_init_seed"), int):
        return f"seeded random weights, seed {src['random_init_seed']} (validate reads it from here)"
    if src.get("checkpoint"):
        sha = src.get("checkpoint_sha256")
        return f"checkpoint {src['checkpoint']}" + (f" (sha256 {sha[:16]}...)" if isinstance(sha, str) else "")
    return "not recorded" if not src else json.dumps(src)


def _tolerance_table(rows: list) -> Table:
    """Each precision's tolerance and what export measured against it."""
    table = Table(title="tolerances (against the PyTorch reference) and what export measured", header_style="bold")
    for col, justify in (("precision", "left"), ("max abs", "right"), ("mean abs", "right"), ("cosine >=", "right"),
                         ("measured max abs", "right"), ("measured cosine", "right"), ("export check", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        status = "not validated" if r["passed"] is None else "passed" if r["passed"] else "FAILED"
        table.add_row(r["precision"], _num(r["max_abs"], "g"), _num(r["mean_abs"], "g"), _num(r["cosine_min"], "g"),
                      _num(r["measured_max_abs"], ".2e"), _num(r["measured_cosine"], ".7f"), status)
    return table


def _inspect_engine(console: Console, path: Path) -> None:
    from ..artifacts import read_engine_manifest

    m = read_engine_manifest(path)
    # a sealed manifest is still only as well-formed as whoever wrote it: display what is there
    gpu = m.get("gpu") if isinstance(m.get("gpu"), dict) else None
    targets = m.get("compute_capabilities") if isinstance(m.get("compute_capabilities"), list) else []
    where = (f"{gpu.get('name')} (compute capability {gpu.get('compute_capability')}, CUDA {gpu.get('cuda_runtime')})"
             if gpu else f"no GPU, ahead of time for compute capability {', '.join(map(str, targets))}")
    console.print(Text.assemble((str(path), "bold"), f"  {m['tensorrt'].get('flavour')} {m['tensorrt'].get('version')}, "
                                                     f"built {m.get('created')} on {where}"))
    console.print(f"precision {m['precision']}: {m.get('precision_how')}")
    console.print(f"first frame: {m.get('first_frame')}; build flags: {json.dumps(m['build_flags'])}")
    for e in m["engines"]:
        table = Table(title=f"{e['role']} engine {e['file']} (from {e.get('source_onnx')}, built in {e.get('build_s')} s)",
                      header_style="bold")
        for col in ("input", "min", "opt", "max"):
            table.add_column(col)
        profile = e.get("profile") if isinstance(e.get("profile"), dict) else {}
        for name, shapes in profile.items():
            if name.split(".")[-1].isdigit() and not name.endswith(".0"):
                continue
            shown = name[:-2] + ".{i}" if name.endswith(".0") else name
            table.add_row(shown, *(str(list(s)) if isinstance(s, (list, tuple)) else str(s)
                                   for s in (shapes if isinstance(shapes, list) else [shapes])))
        console.print(table)


def _num(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _io_table(title: str, inputs: list, outputs: list) -> Table:
    table = Table(title=title, header_style="bold")
    for col in ("", "name", "dtype", "shape"):
        table.add_column(col)
    for kind, specs in (("in", inputs), ("out", outputs)):
        shown = [s for s in specs if not s["name"].split(".")[-1].isdigit() or s["name"].endswith(".0")]
        for s in shown:
            name = s["name"] if not s["name"].endswith(".0") else s["name"][:-2] + ".{i}"
            table.add_row(kind, name, s["dtype"], "[" + ", ".join(map(str, s["shape"])) + "]")
    return table

"""`vitac-deploy info`: what a config or checkpoint holds and what its KV cache costs."""

from __future__ import annotations

import json
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..config import PredictorConfig
from ..errors import VitacError
from ..planning.memory import DEVICES
from ..summaries import backends_summary, config_summary, encoder_summary, plan_summary
from . import options as opt
from ._common import cli_errors, stdout_console


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def config_table(cfg: PredictorConfig, title: str, n_params: Optional[int] = None) -> Table:
    c = config_summary(cfg, n_params)
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in c["config"].items():
        table.add_row(key, str(value))
    table.add_section()
    table.add_row("parameters", f"{c['parameters']:,}")
    table.add_row("head_dim / rope dims per axis", f"{c['head_dim']} / {c['rope_dims_per_axis']}")
    table.add_row("tokens per frame (patch + cond)", f"{c['tokens_per_frame']} + {c['conditioning_tokens']}")
    for name in ("float16", "float32"):
        table.add_row(f"KV cache per frame, batch 1 ({name})", _mib(c["kv_cache_bytes_per_frame"][name]))
        table.add_row(f"KV cache at max_frames, batch 1 ({name})", _mib(c["kv_cache_bytes_at_max_frames"][name]))
    return table


@dataclass(frozen=True)
class PlanOptions:
    """The plan options of `info` (--samples, --horizon, ...), as given (None: not given)."""

    samples: Optional[int]
    horizon: Optional[int]
    context: Optional[int]
    cem_steps: Optional[int]
    chunk: Optional[int]
    budget: Optional[str]
    device_budget: Optional[str]
    unified: Optional[bool]
    precision: Optional[str]
    backend: Optional[str]
    engines: Optional[int]
    fused_attention: Optional[bool]

    def requested(self) -> bool:
        """True with --samples; any other plan option without it is an error (it would be ignored)."""
        if self.samples is not None:
            return True
        if any(v is not None for v in astuple(self)):
            raise VitacError("the plan options (--horizon, --chunk, --budget, ...) need --samples")
        return False


def plan_table(cfg: PredictorConfig, o: PlanOptions) -> Table:
    """Memory of a chunk of a CEM plan by component (MiB), totals, FLOPs, and against a budget the
    largest chunk that fits. Raises VitacError on a bad option, before anything is printed."""
    return render_plan(plan_summary(cfg, **asdict(o)))


def render_plan(p: dict) -> Table:
    """The table of a `summaries.plan_summary`."""
    attention = "fused" if p["fused_attention"] else "unfused (upper bound)"
    title = (f"CEM plan: {p['samples']} samples, horizon {p['horizon']}, context {p['context']}, chunk {p['chunk']} "
             f"({p['precision']}, {p['backend']}, {p['engines']} engine{'s' if p['engines'] > 1 else ''}, "
             f"{attention} attention)")
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("per chunk of the plan")
    table.add_column("value", justify="right")
    for key, nbytes in p["memory_bytes"].items():
        table.add_row(p["memory_labels"][key], _mib(nbytes))
    table.add_section()
    table.add_row("device total", _mib(p["device_total_bytes"]))
    table.add_row("unified total (device + pinned host, Jetson)", _mib(p["unified_total_bytes"]))
    which = "unified" if p["unified"] else "device"
    table.add_row(f"fixed + per sample ({which} total)", f"{_mib(p['fixed_bytes'])} + {_mib(p['per_sample_bytes'])}")
    table.add_section()
    table.add_row(f"FLOPs of the plan ({p['cem_steps']} CEM steps, KV cache)", f"{p['flops']:.4g}")
    table.add_row("FLOPs, upstream full recompute", f"{p['upstream_flops']:.4g}")
    b = p["budget"]
    if b is not None:
        dev = b["device"]
        table.add_section()
        if dev is not None:
            table.add_row(f"budget: {dev['name']}", f"{_mib(dev['total_bytes'])} - {_mib(dev['reserve_bytes'])} reserve")
        table.add_row(f"budget, compared with the {which} total", _mib(b["bytes"]))
        table.add_row(f"chunk {p['chunk']} fits", "yes" if b["chunk_fits"] else "no")
        table.add_row("largest chunk that fits", str(b["largest_chunk"]))
        table.add_row(f"chunks per CEM step for {p['samples']} samples",
                      str(b["chunks_per_cem_step"]) if b["chunks_per_cem_step"] else "-")
        table.add_row("plan fits at all", "yes" if b["plan_fits"] else "no (not even 1 sample)")
        if b["compute_limit_seconds"] is not None:
            derived = " (derived, not published)" if dev.get("fp16_derived") else ""
            table.add_row(f"compute limit at {dev['fp16_dense_tflops']:g} TFLOP/s dense fp16{derived}",
                          f"{b['compute_limit_seconds']:.3f} s")
    return table


@cli_errors
def info(
    ctx: typer.Context,
    preset: Optional[str] = typer.Option(None, "--preset", help="A named config (vitac-l384, vjepa2-ac-vitg)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint to inspect (.pt/.pth/.safetensors)."),
    config: Optional[Path] = typer.Option(None, "--config", help="PredictorConfig JSON or upstream kwargs JSON."),
    samples: Optional[int] = typer.Option(
        None, "--samples", help="Also print the memory of a CEM plan of this many samples (upstream: 400)."),
    horizon: Optional[int] = typer.Option(None, "--horizon", help="Predicted frames per sample (default 2)."),
    context: Optional[int] = typer.Option(None, "--context", help="Observed context frames (default 1)."),
    cem_steps: Optional[int] = typer.Option(None, "--cem-steps", help="CEM steps, for FLOPs (default 10)."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Samples per runtime call, its max batch (default all)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Memory budget, e.g. 8GiB, 7.5GB, 6000MiB."),
    device_budget: Optional[str] = typer.Option(
        None, "--device-budget", help=f"A named budget: {', '.join(DEVICES)} (total minus a stated reserve)."),
    unified: Optional[bool] = typer.Option(
        None, "--unified/--discrete", help="With --budget: host and device share memory (Jetson), so pinned "
                                           "host buffers count (default --discrete)."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="fp16 or fp32: cache, weights, activations (default fp16)."),
    backend: Optional[str] = opt.backend(None, "The backend whose memory layout is counted: tensorrt (default), "
                                             "onnxruntime or torch."),
    engines: Optional[int] = typer.Option(
        None, "--engines", help="Copies of the weights: 2 for TensorRT with its first-frame engine (the default "
                                "build), 1 for ONNX Runtime (the defaults)."),
    fused_attention: Optional[bool] = typer.Option(
        None, "--fused-attention/--unfused-attention",
        help="Fused attention keeps no score matrix (default unfused: the upper bound)."),
    encoder: Optional[str] = typer.Option(
        None, "--encoder", help="Also print an encoder's size, FLOPs and memory: a preset (vit-l, vit-g) or an "
                                "encoder artifact directory."),
    artifact: Optional[Path] = typer.Option(
        None, "--artifact", help="Also print the cost of an exported artifact's step graph, read from the graph: "
                                 "kernels, bytes and FLOP per frame and per plan (--samples, --horizon, --cem-steps, "
                                 "default the upstream 400 x horizon 2 x 10 CEM steps), kernels after ONNX Runtime's "
                                 "optimizer, and the roofline time on named devices. Its config is the one shown."),
    backends: bool = typer.Option(False, "--backends", help="Also list the runtime backends: what each opens and "
                                                            "runs, and whether it is installed here."),
    json_out: bool = typer.Option(False, "--json", help="Print it all as one JSON object (bytes and FLOPs as "
                                                        "numbers) instead of tables."),
    plan_samples: Optional[int] = opt.hidden("--plan-samples"),     # the old names of --samples, --horizon,
    plan_horizon: Optional[int] = opt.hidden("--plan-horizon"),     # --context and --cem-steps
    plan_context: Optional[int] = opt.hidden("--plan-context"),
    plan_cem_steps: Optional[int] = opt.hidden("--plan-cem-steps"),
) -> None:
    """Config table, parameter count, tokens per frame and KV-cache bytes of a preset or checkpoint;
    with --samples, the memory and FLOPs of a CEM plan and the largest chunk a budget allows;
    with --artifact, the graph cost model of that artifact; --json, all of it as data."""
    if artifact is not None and (config is not None or preset is not None):
        raise VitacError("give --artifact or --preset/--config, not both (the artifact's config is shown)")
    if artifact is not None:
        from ..artifacts import read_manifest

        cfg = PredictorConfig.from_dict(read_manifest(artifact)["config"])
    else:
        cfg = PredictorConfig.resolve(config, preset)
    plan = PlanOptions(opt.alias(samples, plan_samples, "--samples", "--plan-samples", ctx=ctx),
                       opt.alias(horizon, plan_horizon, "--horizon", "--plan-horizon", ctx=ctx),
                       opt.alias(context, plan_context, "--context", "--plan-context", ctx=ctx),
                       opt.alias(cem_steps, plan_cem_steps, "--cem-steps", "--plan-cem-steps", ctx=ctx),
                       chunk, budget, device_budget, unified, precision, backend, engines, fused_attention)
    if artifact is not None and plan.samples is None and any(
            v is not None for v in (budget, device_budget, unified, backend, engines, fused_attention)):
        raise VitacError("the memory options (--budget, --backend, ...) need --samples")
    cost = cost_summary(artifact, plan) if artifact is not None else None
    plan_data = plan_summary(cfg, **asdict(plan)) if (artifact is None or plan.samples is not None) \
        and plan.requested() else None  # bad options fail before any output
    title = f"preset {preset}" if preset and not config else (str(config) if config else
                                                                (str(artifact) if artifact else "vitac-l384 (default)"))
    n_params = None
    if checkpoint is not None:
        from ..reference.checkpoint import check_state_dict, read_state_dict

        from ._common import live_status, stderr_console

        with live_status(stderr_console(), f"reading {checkpoint}"):
            sd = read_state_dict(checkpoint)
        check_state_dict(sd, cfg, source=str(checkpoint))
        n_params = sum(int(v.numel()) for v in sd.values())
        title = f"{checkpoint} ({title})"
    enc_data = encoder_summary(encoder, precision or "fp16", bool(fused_attention)) if encoder else None
    if json_out:
        data = {"model": title, "checkpoint": str(checkpoint) if checkpoint else None,
                **config_summary(cfg, n_params), "plan": plan_data, "encoder": enc_data, "graph_cost": cost,
                "backends": backends_summary() if backends else None}
        typer.echo(json.dumps(data, indent=2))
        return
    console = stdout_console()
    console.print(config_table(cfg, title, n_params))
    if plan_data is not None:
        console.print(render_plan(plan_data))
    if enc_data is not None:
        console.print(render_encoder(enc_data))
    if cost is not None:
        console.print(render_cost(cost))
    if backends:
        console.print(backends_table())


def cost_summary(artifact: Path, o: PlanOptions) -> dict:
    """The graph cost model of an artifact's step graph for a plan (`vitac_deploy.exporters.cost`),
    as data: per frame and per plan, kernels after ONNX Runtime's optimizer, roofline per named device."""
    from ..artifacts import read_manifest
    from ..exporters.cost import ort_optimized, plan_cost
    from ..graph_forms import graph_form
    from ..precision import precision as get_precision
    from ..roofline import ROOFLINE_DEVICES
    from ..summaries import _positive

    S = _positive("--samples", o.samples, 400)
    H = _positive("--horizon", o.horizon, 2)
    steps = _positive("--cem-steps", o.cem_steps, 10)
    chunk = _positive("--chunk", o.chunk, S)
    if chunk > S:
        raise VitacError(f"--chunk {chunk} is more than --samples {S}")
    if o.context not in (None, 1):
        raise VitacError("the cost model plans from one observation, as upstream: --context does not apply")
    precision = get_precision(o.precision or "fp16", "--precision").name
    manifest = read_manifest(artifact)
    cost = plan_cost(artifact, precision, S, H, steps, chunk)
    out = {"artifact": str(artifact), "form": graph_form(manifest, artifact), "precision": precision, "samples": S,
           "horizon": H, "cem_steps": steps, "chunk": chunk,
           "frames": [{"cached_frames": t, "kernels": c.kernels, "bytes": c.nbytes, "flops": c.flops}
                      for t, c in cost.frames.items()],
           "energy": None if cost.energy is None else {"kernels": cost.energy.kernels, "bytes": cost.energy.nbytes},
           "runtime_calls": cost.rollouts, "bytes": cost.nbytes, "flops": cost.flops,
           "ort_kernels_per_frame": None, "ort_cpu_inserted_casts": None, "roofline": []}
    try:
        ort = ort_optimized(artifact / manifest["graphs"][f"step.{precision}"]["file"])
        out["ort_kernels_per_frame"], out["ort_cpu_inserted_casts"] = ort.kernels, ort.cpu_inserted_casts
    except ImportError:
        pass
    for key, dev in ROOFLINE_DEVICES.items():
        out["roofline"].append({"device": key, "name": dev.name, "bandwidth_tb_s": dev.bandwidth_tb_s,
                                "peak_tflops": dev.peak_tflops(precision), "seconds_per_plan": cost.roofline_s(dev)})
    return out


def render_cost(c: dict):
    """The table of a `cost_summary`."""
    from rich.console import Group
    from rich.text import Text

    precision, chunk = c["precision"], c["chunk"]
    table = Table(title=f"graph cost: {c['artifact']} ({c['form']} form, {precision} step graph), plan of "
                        f"{c['samples']} samples x horizon {c['horizon']} x {c['cem_steps']} CEM steps, {chunk} samples "
                        f"per call", header_style="bold")
    table.add_column("")
    table.add_column("kernels", justify="right")
    table.add_column("bytes moved", justify="right")
    table.add_column("FLOP", justify="right")
    for f in c["frames"]:
        t = f["cached_frames"]
        table.add_row(f"frame on {t} cached frame{'s' if t != 1 else ''} (batch {chunk})", str(f["kernels"]),
                      f"{f['bytes'] / 1e9:,.2f} GB", f"{f['flops'] / 1e12:,.3f} T")
    if c["energy"] is not None:
        table.add_row("energy graph (per call)", str(c["energy"]["kernels"]), f"{c['energy']['bytes'] / 1e9:,.3f} GB", "0")
    table.add_row(f"plan ({c['runtime_calls']} runtime calls)", "-", f"{c['bytes'] / 1e9:,.1f} GB",
                  f"{c['flops'] / 1e12:,.1f} T")
    table.add_section()
    extra = ""
    if c["ort_kernels_per_frame"] is not None:
        table.add_row("kernels per frame after ONNX Runtime's optimizer (CPU provider)", str(c["ort_kernels_per_frame"]),
                      "-", "-")
        if c["ort_cpu_inserted_casts"]:
            extra = (f" Not counted: the {c['ort_cpu_inserted_casts']} Casts ONNX Runtime's CPU provider inserts around "
                     f"operators it has no float16 kernel for (the CUDA provider has them).")
    else:
        table.add_row("kernels per frame after ONNX Runtime's optimizer", "onnxruntime not installed", "-", "-")
    table.add_section()
    for r in c["roofline"]:
        peak, seconds = r["peak_tflops"], r["seconds_per_plan"]
        table.add_row(f"roofline on {r['name']} ({r['bandwidth_tb_s']:g} TB/s, "
                      f"{'-' if peak is None else f'{peak:g}'} TFLOP/s {precision})",
                      "-", "-", "-" if seconds is None else f"{seconds:.3f} s per plan")
    note = Text("roofline: the sum over kernels of max(bytes / bandwidth, FLOP / peak), one kernel per node, "
                "datasheet figures (vitac_deploy.roofline; Jetson fp16 rates derived): the time this graph cannot "
                "beat as written. Fused operators count their inputs and outputs only." + extra)
    return Group(table, note)


def backends_table() -> Table:
    """The registered backends and their declared capabilities (runtimes/registry.py)."""
    table = Table(title="runtime backends", header_style="bold")
    for col in ("backend", "opens", "devices", "precisions", "cache contracts", "graph forms", "CUDA graphs",
                "memory model", "installed"):
        table.add_column(col)
    for b in backends_summary():
        layout = b["memory_layout"]
        table.add_row(", ".join([b["backend"], *b["variants"]]), ", ".join(b["opens"]), ", ".join(b["devices"]),
                      ", ".join(b["precisions"]), ", ".join(b["cache_contracts"]) or "its own",
                      ", ".join(b["graph_forms"]), "yes" if b["cuda_graphs"] else "no",
                      f"{layout['frame_buffers']} frame buffers{', pinned staging' if layout['pinned_staging'] else ''}"
                      if layout else "none", "yes" if b["installed"] else "no")
    return table


def render_encoder(e: dict):
    """The line and table of a `summaries.encoder_summary`, with what is left of each named device budget."""
    from rich.console import Group
    from rich.text import Text

    line = Text(f"encoder {e['encoder']}: {e['parameters']:,} parameters, {e['img_size']} px, {e['tokens_per_frame']} "
                f"tokens x {e['embed_dim']}, {e['flops_per_frame'] / 1e9:.1f} GFLOP per frame")
    table = Table(title=f"encoder memory, {e['precision']}{', fused attention' if e['fused_attention'] else ''}",
                  header_style="bold")
    for col in ("frames at once", "weights", "I/O", "activations (estimate)", "total"):
        table.add_column(col, justify="right")
    for m in e["memory"]:
        table.add_row(str(m["frames"]), *(f"{m[k] / 2**20:,.0f} MiB" for k in
                                          ("weights_bytes", "io_bytes", "activations_bytes", "total_bytes")))
    return Group(line, table)

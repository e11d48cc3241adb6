"""`vitac-deploy info`: what a config or checkpoint holds and what its KV cache costs."""

from __future__ import annotations

from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..config import PredictorConfig
from ..errors import VitacError
from ..planning.memory import (
    DEVICES,
    affine_terms,
    chunks_needed,
    device,
    largest_chunk,
    memory_layout,
    parse_bytes,
    plan_flops,
    plan_memory,
    upstream_plan_flops,
)
from ..precision import precision as get_precision
from . import options as opt
from ._common import cli_errors, stdout_console


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def config_table(cfg: PredictorConfig, title: str, n_params: Optional[int] = None) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in cfg.to_dict().items():
        table.add_row(key, str(value))
    table.add_section()
    table.add_row("parameters", f"{n_params if n_params is not None else cfg.num_parameters():,}")
    table.add_row("head_dim / rope dims per axis", f"{cfg.head_dim} / {cfg.rope_dim}")
    table.add_row("tokens per frame (patch + cond)", f"{cfg.tokens_per_frame} + {cfg.cond_tokens}")
    for name, nbytes in (("float16", 2), ("float32", 4)):
        per = cfg.kv_bytes_per_frame(nbytes)
        table.add_row(f"KV cache per frame, batch 1 ({name})", _mib(per))
        table.add_row(f"KV cache at max_frames, batch 1 ({name})", _mib(per * cfg.max_frames))
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


def _positive(flag: str, value: Optional[int], default: int) -> int:
    value = default if value is None else value
    if value < 1:
        raise VitacError(f"{flag} must be at least 1, got {value}")
    return value


def plan_table(cfg: PredictorConfig, o: PlanOptions) -> Table:
    """Memory of a chunk of a CEM plan by component (MiB), totals, FLOPs, and against a budget the
    largest chunk that fits. Raises VitacError on a bad option, before anything is printed."""
    S = _positive("--samples", o.samples, 1)
    H = _positive("--horizon", o.horizon, 2)
    C = _positive("--context", o.context, 1)
    steps = _positive("--cem-steps", o.cem_steps, 10)
    chunk = _positive("--chunk", o.chunk, S)
    if chunk > S:
        raise VitacError(f"--chunk {chunk} is more than --samples {S}")
    precision = get_precision(o.precision or "fp16", "--precision").name
    backend = o.backend or "tensorrt"
    layout = memory_layout(backend)   # a backend without a memory model: one line naming those with one
    engines = o.engines if o.engines is not None else layout.default_weight_copies
    if engines not in layout.weight_copies:
        raise VitacError(f"--engines must be {' or '.join(map(str, layout.weight_copies))} for {backend}, got {engines}")
    if o.budget is not None and o.device_budget is not None:
        raise VitacError("give either --budget or --device-budget, not both")
    if o.device_budget is not None and o.unified is not None:
        raise VitacError("--unified/--discrete go with --budget; a --device-budget knows its memory")
    budget, unified, dev = None, bool(o.unified), None
    if o.budget is not None:
        budget = parse_bytes(o.budget)
    elif o.device_budget is not None:
        dev = device(o.device_budget)
        budget, unified = dev.budget, dev.unified
    fused = bool(o.fused_attention)
    kw = {"horizon": H, "context": C, "precision": precision, "backend": backend, "engines": engines,
          "fused_attention": fused}
    mem = plan_memory(cfg, chunk, **kw)

    attention = "fused" if fused else "unfused (upper bound)"
    title = (f"CEM plan: {S} samples, horizon {H}, context {C}, chunk {chunk} ({precision}, {backend}, "
             f"{engines} engine{'s' if engines > 1 else ''}, {attention} attention)")
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("per chunk of the plan")
    table.add_column("value", justify="right")
    for label, nbytes in mem.rows():
        table.add_row(label, _mib(nbytes))
    table.add_section()
    table.add_row("device total", _mib(mem.device_total))
    table.add_row("unified total (device + pinned host, Jetson)", _mib(mem.total(unified=True)))
    fixed, per_sample = affine_terms(cfg, unified=unified, **kw)
    which = "unified" if unified else "device"
    table.add_row(f"fixed + per sample ({which} total)", f"{_mib(fixed)} + {_mib(per_sample)}")
    table.add_section()
    table.add_row(f"FLOPs of the plan ({steps} CEM steps, KV cache)", f"{plan_flops(cfg, S, H, steps, C, chunk):.4g}")
    table.add_row("FLOPs, upstream full recompute", f"{upstream_plan_flops(cfg, S, H, steps, C):.4g}")
    if budget is not None:
        best = largest_chunk(cfg, budget, samples=S, unified=unified, **kw)
        table.add_section()
        if dev is not None:
            table.add_row(f"budget: {dev.name}", f"{_mib(dev.total)} - {_mib(dev.reserve)} reserve")
        table.add_row(f"budget, compared with the {which} total", _mib(budget))
        table.add_row(f"chunk {chunk} fits", "yes" if mem.total(unified) <= budget else "no")
        table.add_row("largest chunk that fits", str(best))
        table.add_row(f"chunks per CEM step for {S} samples", str(chunks_needed(S, best)) if best else "-")
        table.add_row("plan fits at all", "yes" if best else "no (not even 1 sample)")
        if dev is not None and dev.fp16_dense_tflops:
            seconds = plan_flops(cfg, S, H, steps, C, best or chunk) / (dev.fp16_dense_tflops * 1e12)
            table.add_row(f"compute limit at {dev.fp16_dense_tflops:g} TFLOP/s dense fp16", f"{seconds:.3f} s")
    return table


@cli_errors
def info(
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
    plan_samples: Optional[int] = opt.hidden("--plan-samples"),     # the old names of --samples, --horizon,
    plan_horizon: Optional[int] = opt.hidden("--plan-horizon"),     # --context and --cem-steps
    plan_context: Optional[int] = opt.hidden("--plan-context"),
    plan_cem_steps: Optional[int] = opt.hidden("--plan-cem-steps"),
) -> None:
    """Config table, parameter count, tokens per frame and KV-cache bytes of a preset or checkpoint;
    with --samples, the memory and FLOPs of a CEM plan and the largest chunk a budget allows;
    with --artifact, the graph cost model of that artifact."""
    if artifact is not None and (config is not None or preset is not None):
        raise VitacError("give --artifact or --preset/--config, not both (the artifact's config is shown)")
    if artifact is not None:
        from ..artifacts import read_manifest

        cfg = PredictorConfig.from_dict(read_manifest(artifact)["config"])
    else:
        cfg = PredictorConfig.resolve(config, preset)
    plan = PlanOptions(opt.alias(samples, plan_samples, "--samples", "--plan-samples"),
                       opt.alias(horizon, plan_horizon, "--horizon", "--plan-horizon"),
                       opt.alias(context, plan_context, "--context", "--plan-context"),
                       opt.alias(cem_steps, plan_cem_steps, "--cem-steps", "--plan-cem-steps"),
                       chunk, budget, device_budget, unified, precision, backend, engines, fused_attention)
    if artifact is not None and plan.samples is None and any(
            v is not None for v in (budget, device_budget, unified, backend, engines, fused_attention)):
        raise VitacError("the memory options (--budget, --backend, ...) need --samples")
    cost = cost_table(artifact, plan) if artifact is not None else None
    plan_table_ = plan_table(cfg, plan) if (artifact is None or plan.samples is not None) and plan.requested() \
        else None  # bad options fail before any output
    title = f"preset {preset}" if preset and not config else (str(config) if config else
                                                                (str(artifact) if artifact else "vitac-l384 (default)"))
    n_params = None
    if checkpoint is not None:
        from ..reference.checkpoint import check_state_dict, read_state_dict

        sd = read_state_dict(checkpoint)
        check_state_dict(sd, cfg, source=str(checkpoint))
        n_params = sum(int(v.numel()) for v in sd.values())
        title = f"{checkpoint} ({title})"
    enc_table = encoder_table(encoder, precision or "fp16", bool(fused_attention)) if encoder else None
    console = stdout_console()
    console.print(config_table(cfg, title, n_params))
    if plan_table_ is not None:
        console.print(plan_table_)
    if enc_table is not None:
        console.print(enc_table)
    if cost is not None:
        console.print(cost)
    if backends:
        console.print(backends_table())


def cost_table(artifact: Path, o: PlanOptions):
    """The graph cost model of an artifact's step graph for a plan (`vitac_deploy.exporters.cost`):
    per frame and per plan, kernels after ONNX Runtime's optimizer, roofline per named device."""
    from rich.console import Group
    from rich.text import Text

    from ..artifacts import read_manifest
    from ..exporters.cost import ort_optimized, plan_cost
    from ..graph_forms import graph_form
    from ..roofline import ROOFLINE_DEVICES

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
    form = graph_form(manifest, artifact)
    table = Table(title=f"graph cost: {artifact} ({form} form, {precision} step graph), plan of {S} samples x "
                        f"horizon {H} x {steps} CEM steps, {chunk} samples per call", header_style="bold")
    table.add_column("")
    table.add_column("kernels", justify="right")
    table.add_column("bytes moved", justify="right")
    table.add_column("FLOP", justify="right")
    for t, c in cost.frames.items():
        table.add_row(f"frame on {t} cached frame{'s' if t != 1 else ''} (batch {chunk})", str(c.kernels),
                      f"{c.nbytes / 1e9:,.2f} GB", f"{c.flops / 1e12:,.3f} T")
    if cost.energy is not None:
        table.add_row("energy graph (per call)", str(cost.energy.kernels), f"{cost.energy.nbytes / 1e9:,.3f} GB", "0")
    table.add_row(f"plan ({cost.rollouts} runtime calls)", "-", f"{cost.nbytes / 1e9:,.1f} GB",
                  f"{cost.flops / 1e12:,.1f} T")
    table.add_section()
    extra = ""
    try:
        ort = ort_optimized(artifact / manifest["graphs"][f"step.{precision}"]["file"])
        table.add_row("kernels per frame after ONNX Runtime's optimizer (CPU provider)", str(ort.kernels), "-", "-")
        if ort.cpu_inserted_casts:
            extra = (f" Not counted: the {ort.cpu_inserted_casts} Casts ONNX Runtime's CPU provider inserts around "
                     f"operators it has no float16 kernel for (the CUDA provider has them).")
    except ImportError:
        table.add_row("kernels per frame after ONNX Runtime's optimizer", "onnxruntime not installed", "-", "-")
    table.add_section()
    for key, dev in ROOFLINE_DEVICES.items():
        seconds = cost.roofline_s(dev)
        peak = dev.peak_tflops(precision)
        table.add_row(f"roofline on {dev.name} ({dev.bandwidth_tb_s:g} TB/s, "
                      f"{'-' if peak is None else f'{peak:g}'} TFLOP/s {precision})",
                      "-", "-", "-" if seconds is None else f"{seconds:.3f} s per plan")
    note = Text("roofline: the sum over kernels of max(bytes / bandwidth, FLOP / peak), one kernel per node, "
                "datasheet figures (vitac_deploy.roofline; Jetson fp16 rates derived): the time this graph cannot "
                "beat as written. Fused operators count their inputs and outputs only." + extra)
    return Group(table, note)


def backends_table() -> Table:
    """The registered backends and their declared capabilities (runtimes/registry.py)."""
    from ..runtimes.registry import backends

    table = Table(title="runtime backends", header_style="bold")
    for col in ("backend", "opens", "devices", "precisions", "cache contracts", "graph forms", "CUDA graphs",
                "memory model", "installed"):
        table.add_column(col)
    for b in backends().values():
        names = ", ".join([b.name, *b.variants])
        layout = b.memory_layout
        table.add_row(names, ", ".join(b.opens), ", ".join(b.devices), ", ".join(b.precisions),
                      ", ".join(b.cache_contracts) or "its own", ", ".join(b.graph_forms),
                      "yes" if b.cuda_graphs else "no",
                      f"{layout.frame_buffers} frame buffers{', pinned staging' if layout.pinned_staging else ''}"
                      if layout else "none", "yes" if b.installed() else "no")
    return table


def encoder_table(encoder: str, precision: str, fused: bool):
    """Parameters, FLOPs per frame and memory (batch 1, and 2: current + goal) of an encoder, with
    what is left of each named device budget."""
    from ..encoder import ENCODER_PRESETS, EncoderConfig
    from ..planning.memory import encoder_memory

    if encoder in ENCODER_PRESETS:
        ecfg, name = EncoderConfig.preset(encoder), encoder
    else:
        from ..artifacts import read_encoder_manifest

        ecfg, name = EncoderConfig.from_dict(read_encoder_manifest(encoder)["config"]), encoder
    from rich.console import Group
    from rich.text import Text

    line = Text(f"encoder {name}: {ecfg.num_parameters():,} parameters, {ecfg.img_size} px, {ecfg.tokens_per_frame} "
                f"tokens x {ecfg.embed_dim}, {ecfg.frame_flops() / 1e9:.1f} GFLOP per frame")
    table = Table(title=f"encoder memory, {precision}{', fused attention' if fused else ''}", header_style="bold")
    for col in ("frames at once", "weights", "I/O", "activations (estimate)", "total"):
        table.add_column(col, justify="right")
    for b in (1, 2):
        m = encoder_memory(ecfg, b, precision, fused)
        table.add_row(str(b), *(f"{x / 2**20:,.0f} MiB" for x in (m.weights, m.io, m.activations, m.total)))
    return Group(line, table)

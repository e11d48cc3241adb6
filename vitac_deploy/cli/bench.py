"""`vitac-deploy bench`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import VitacError
from ..roofline import ROOFLINE_DEVICES
from . import options as o
from ._common import cli_errors, plain, stderr_console, stdout_console


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise VitacError(f"{flag} takes a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise VitacError(f"{flag} takes positive integers, got {text!r}")
    return values


@cli_errors
def bench(
    artifact: Optional[Path] = typer.Argument(None, help="Artifact directory (or use --preset/--config)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Benchmark seeded random weights of a preset."),
    config: Optional[Path] = typer.Option(None, "--config", help="PredictorConfig or upstream kwargs JSON."),
    backend: list[str] = typer.Option(["onnxruntime", "torch"], "--backend",
                                      help="onnxruntime, torch (the fast PyTorch path), torch-compile, "
                                           "torch-reference (the reference model), tensorrt: repeatable, or a comma list."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) or cuda."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 or fp16 (default: fp32 on cpu, fp16 on "
                                                                      "cuda; the baseline uses the same)."),
    batch: Optional[str] = typer.Option(None, "--batch", help="Comma list of batch sizes (default 1)."),
    horizon: Optional[int] = typer.Option(None, "--horizon",
                                          help="Frames predicted per rollout (default 7; with --plan the planner's rollout, default 2)."),
    context: Optional[int] = typer.Option(None, "--context", help="Context frames (default 1; --plan plans from one)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed rollouts per entry, median reported (default 3)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed rollouts first (default 1)."),
    baseline: str = typer.Option("full-recompute", "--baseline",
                                 help="full-recompute (the upstream way), or none to skip it."),
    plan: bool = typer.Option(False, "--plan", help="Time one plan of the upstream CEM planner instead of rollouts."),
    samples: Optional[int] = typer.Option(None, "--samples", help="--plan: action sequences per CEM step (default 400)."),
    topk: Optional[int] = typer.Option(None, "--topk", help="--plan: elites per CEM step (default 10)."),
    cem_steps: Optional[int] = typer.Option(None, "--cem-steps", help="--plan: CEM steps (default 10)."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="--plan: samples rolled out at once (default: all)."),
    cuda_graphs: str = typer.Option("off", "--cuda-graphs",
                                    help="off, on, or both (a row each): onnxruntime on cuda, tensorrt, torch, "
                                         "torch-compile."),
    compile_mode: str = typer.Option("default", "--compile-mode",
                                     help="torch-compile rows: a comma list of torch.compile modes (default, "
                                          "reduce-overhead, max-autotune, max-autotune-no-cudagraphs), a row each."),
    context_staging: str = typer.Option("staged", "--context-staging",
                                        help="--plan: staged (the observation staged once per plan on the runtime), "
                                             "host (sent with every rollout, as before), or both as a comma list "
                                             "(a row each)."),
    cache: Optional[str] = typer.Option(None, "--cache",
                                        help="KV cache contracts of the onnxruntime/tensorrt rows, a comma list of "
                                             "concat, static (a row each, side by side; default: the artifact's, "
                                             "or concat). A contract the artifact lacks is exported from its weights "
                                             "(static: sized to context + horizon - 1 frames)."),
    graph_form: Optional[str] = typer.Option(
        None, "--graph-form", help="Step-graph forms of the onnxruntime/tensorrt rows, a comma list of portable, "
                                   "ort-fused, trt-attention (a row each, side by side; default: the artifact's, or "
                                   "portable). A form the artifact lacks is exported from its weights; a form a "
                                   "backend cannot run is skipped (ort-fused: onnxruntime only)."),
    roofline_device: Optional[str] = typer.Option(
        None, "--roofline-device", help="Print each graph row's roofline time (the graph cost model) on this named "
                                        f"device: {', '.join(ROOFLINE_DEVICES)} (default: the GPU benched, if it is "
                                        "one of them). The JSON has every device's."),
    seed: int = o.seed("Seed of weights and inputs."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of per-frame latency vs frame index."),
    encoder: Optional[str] = typer.Option(
        None, "--encoder", help="Also time an encoder (an encoder artifact or a preset: vit-l, vit-g, vit-l-demo) "
                                "at 1 and 2 frames per call against PyTorch."),
    encoder_only: bool = typer.Option(False, "--encoder-only", help="Time the --encoder alone."),
) -> None:
    """Per-frame and rollout latency (or one CEM plan), throughput, memory and agreement of each
    backend against the upstream way, measured in the same run."""
    from ..artifacts import cache_contract, check_output, read_manifest, write_json_atomic
    from ..benchmarks.rollouts import (BenchOptions, _rows, _split, check_options, plot_per_frame, run_bench,
                                       runs_graphs, variant)
    from ..graph_forms import graph_form as manifest_form
    from ..config import PredictorConfig
    from ..exporters import ExportOptions, export_artifact
    from ..planning import CEMOptions
    from ..precision import resolve as resolve_precision
    from ..reference import predictor_from_graph, random_predictor
    from ..runtimes import registry

    device = device or "cpu"
    precision = resolve_precision(precision, device).name
    # flags of the other mode would be ignored without a word: refuse them
    other = {"--samples": samples, "--topk": topk, "--cem-steps": cem_steps, "--chunk": chunk} if not plan else \
        {"--batch": batch, "--repeats": repeats, "--warmup": warmup, "--plot": plot}
    given = [flag for flag, value in other.items() if value is not None]
    if given:
        raise VitacError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply "
                         f"{'without' if not plan else 'with'} --plan")
    samples, topk, cem_steps = (400 if samples is None else samples), (10 if topk is None else topk), \
        (10 if cem_steps is None else cem_steps)
    repeats, warmup = (3 if repeats is None else repeats), (1 if warmup is None else warmup)
    horizon = horizon if horizon is not None else (2 if plan else 7)
    if plan and context not in (None, 1):
        raise VitacError("--plan plans from one observation, as upstream: --context does not apply")
    context = context if context is not None else 1
    if horizon < 1 or context < 1 or repeats < 1 or warmup < 0:
        raise VitacError("--horizon, --context and --repeats must be >= 1, --warmup >= 0")
    if artifact is not None and (preset or config):
        raise VitacError("give an ARTIFACT or --preset/--config, not both")
    cem = CEMOptions(rollout=horizon, samples=samples, topk=topk, cem_steps=cem_steps) if plan else None
    manifest = read_manifest(artifact) if artifact is not None else None
    have = cache_contract(manifest, artifact) if manifest else None
    have_form = manifest_form(manifest, artifact) if manifest else None
    caches = [c.strip() for c in (cache or have or "concat").split(",") if c.strip()]
    forms = [f.strip() for f in (graph_form or have_form or "portable").split(",") if f.strip()]
    backend = [b.strip() for value in backend for b in value.split(",") if b.strip()]   # as the other list flags
    opts = BenchOptions(backends=backend, device=device, precision=precision, batches=_ints(batch or "1", "--batch"),
                        horizon=horizon, context=context, repeats=repeats, warmup=warmup, baseline=baseline,
                        seed=seed, plan=cem, chunk=chunk, cuda_graphs=cuda_graphs, caches=caches, graph_forms=forms,
                        roofline_device=roofline_device,
                        compile_modes=[m.strip() for m in compile_mode.split(",") if m.strip()],
                        context_staging=[s.strip() for s in context_staging.split(",") if s.strip()])
    check_options(opts)
    for flag, target in (("--json", json_out), ("--plot", plot)):   # before minutes of benchmarking
        if target is not None:
            check_output(target, flag)
    if encoder_only and encoder is None:
        raise VitacError("--encoder-only needs --encoder")
    if encoder is not None:
        from ..encoder import ENCODER_PRESETS

        if encoder not in ENCODER_PRESETS and not Path(encoder).is_dir():
            raise VitacError(f"--encoder {encoder}: neither an encoder preset ({', '.join(ENCODER_PRESETS)}) "
                             f"nor an encoder artifact directory")
    if encoder_only:
        return _bench_encoder_only(encoder, opts, json_out)
    cfg = PredictorConfig.from_dict(manifest["config"]) if manifest else PredictorConfig.resolve(config, preset)
    if context + horizon - 1 > cfg.max_frames:
        raise VitacError(f"--context {context} + --horizon {horizon} - 1 exceeds the model's max_frames {cfg.max_frames}")
    if manifest is not None and "step.fp32" not in manifest["graphs"]:
        raise VitacError(f"{artifact} has no fp32 graph: the torch backends and the baseline read their weights "
                         f"from it (re-export with --precision fp32,fp16)")
    err = stderr_console()
    console = stdout_console()
    with tempfile.TemporaryDirectory() as tmp:
        if artifact is not None:
            model = predictor_from_graph(artifact / manifest["graphs"]["step.fp32"]["file"], cfg)
            arts = {variant(have, have_form): artifact}
        else:
            model = random_predictor(cfg, seed)
            arts = {}
            err.print("exporting seeded random weights to a temp artifact")
        # fp32 carries the weights the torch backends read; TensorRT 8.x builds fp16 from it too
        first_frame = any(registry.get(b)[0].needs_first_frame_graph for b in backend)
        precisions = sorted({precision, "fp32"} | ({"fp16"} if first_frame else set()))
        frames = context + horizon - 1
        wanted = sorted({k for b, _, k in _rows(opts) if runs_graphs(b)})
        for key in [k for k in wanted if k not in arts] or ([] if arts else ["concat"]):
            c, form = _split(key)
            arts[key] = Path(tmp) / f"artifact-{key.replace('/', '-')}"
            # the static cache holds the rollout and no more: attention reads the whole buffer
            export_artifact(model, arts[key], ExportOptions(precisions=precisions, validate=False, cache=c,
                                                            first_frame_graph=first_frame, graph_form=form,
                                                            cache_frames=frames if c == "static" else None))
        with err.status("benchmarking") as status:
            result = run_bench(model, arts, opts, say=lambda m: (status.update(plain(m)), err.print(f"  {m}")),
                               # every row on disk as it comes: a bench cut off by a time limit keeps them
                               on_row=lambda r: json_out and write_json_atomic(json_out, r))
    _print(console, result, cfg, opts)
    if encoder is not None:
        result["encoder"] = _encoder_rows(encoder, opts, console)
    if json_out:
        write_json_atomic(json_out, result)
    if plot:
        plot_per_frame(result, plot)


def _encoder_rows(encoder: str, opts, console) -> dict:
    from ..benchmarks.rollouts import _machine
    from ..benchmarks.encoder import bench_encoder, encoder_rows_table

    err = stderr_console()
    with err.status("benchmarking the encoder") as status:
        res = bench_encoder(encoder, opts.backends, opts.device, opts.precision, (1, 2), opts.repeats, opts.warmup,
                            opts.seed, say=lambda m: (status.update(plain(m)), err.print(f"  {m}")))
    machine = _machine(opts.device)
    res["machine"] = machine
    console.print(encoder_rows_table(res, machine.get("gpu") or f"cpu ({machine['cpu_count']} cores)"))
    return res


def _bench_encoder_only(encoder: str, opts, json_out: Optional[Path]) -> None:
    from ..artifacts import now_iso, versions, write_json_atomic

    console = stdout_console()
    res = {"date": now_iso(), "mode": "encoder", "versions": versions(), **_encoder_rows(encoder, opts, console)}
    if json_out:
        write_json_atomic(json_out, res)


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _print(console: Console, result: dict, cfg, opts) -> None:
    where = result["machine"].get("gpu") or f"cpu ({result['machine']['cpu_count']} cores)"
    if opts.plan:
        p = opts.plan
        table = Table(title=f"upstream CEM plan: {p.samples} samples x top {p.topk} x {p.cem_steps} steps x horizon "
                            f"{p.rollout}, {cfg.num_parameters():,}-parameter model, {where}, {opts.precision}; "
                            f"baseline = torch full recompute, host scoring, same draws, same run", header_style="bold")
        for col in ("backend", "chunk", "plan", _roofline_col(result, opts), "per step", "TFLOP/s", "% FLOP peak",
                    "% byte peak", "host->dev B/step", "dev->host B/step", "speedup", "energy diff", "same elites",
                    "action diff", "device MiB"):
            table.add_column(col, justify="right")
        pct = lambda x: _fmt(None if x is None else 100 * x, ".1f")  # noqa: E731
        for e in result["entries"]:
            table.add_row(e["backend"], str(e["batch"]), f"{e['plan_s']:.2f} s", _roofline_cell(e, e["plan_s"]),
                          f"{e['step_s_median'] * 1e3:.0f} ms", f"{e['tflops_per_s']:.3f}",
                          pct(e.get("flop_fraction_of_peak")),
                          pct(e.get("byte_fraction_of_peak")), _fmt(e.get("host_to_device_bytes_per_step"), ","),
                          _fmt(e.get("device_to_host_bytes_per_step"), ","),
                          _fmt(e["speedup_vs_baseline"], ".2f") + ("x" if e["speedup_vs_baseline"] else ""),
                          _fmt(e.get("energy_max_abs_step0"), ".1e"),
                          {True: "yes", False: "no", None: "-"}[e.get("same_elites_every_step")],
                          _fmt(e.get("action_max_abs_vs_baseline"), ".1e"), _fmt(_mib(e["device_memory"]), ".0f"))
        if "plan" in result["baseline"]:
            b = result["baseline"]["plan"]
            table.add_row("baseline", str(b["chunk"]), f"{b['plan_s']:.2f} s", "-", f"{b['step_s_median'] * 1e3:.0f} ms",
                          f"{result['plan']['upstream_flops'] / b['plan_s'] / 1e12:.3f}", "-", "-", "-", "-", "1.00x",
                          "0", "-", "0", "-")
        console.print(table)
        spread = result["baseline"].get("plan", {}).get("energy_spread_step0")
        if spread is not None and any(e.get("same_elites_every_step") is False for e in result["entries"]):
            console.print(f"elites differ: the samples' energies span only {spread:.1e} at step 0, so samples within "
                          f"rounding swap places (random weights barely react to actions; the golden planner case "
                          f"checks the plan itself)")
        console.print(f"FLOPs of one plan: {result['plan']['flops'] / 1e12:.2f} TFLOP with the KV cache, "
                      f"{result['plan']['upstream_flops'] / 1e12:.2f} TFLOP the upstream way "
                      f"(TFLOP/s column: each row's own FLOPs / its time); device-memory bytes by the model "
                      f"(planning/traffic.py, a lower bound): {result['plan']['bytes_model'] / 1e9:.1f} GB")
        peak = result["plan"].get("peak")
        console.print(f"% of peak against {peak['name']} ({peak['fp16_dense_tflops']} TFLOP/s fp16, {peak['fp32_tflops']} "
                      f"fp32, {peak['bandwidth_tb_s']} TB/s; datasheet)" if peak else
                      "% of peak: this device's peak is not known (CPU, or a GPU not in vitac_deploy/devices.py)")
        _roofline_note(console, result)
        return
    table = Table(title=f"{cfg.num_parameters():,}-parameter model, {opts.context} context + {opts.horizon} predicted "
                        f"frames, {where}, {opts.precision}; baseline = torch full recompute, same run",
                  header_style="bold")
    for col in ("backend", "batch", "step p50", "step p90", "rollout", _roofline_col(result, opts), "frames/s",
                "speedup", "max abs err", "cache MiB", "peak RSS MiB", "device MiB"):
        table.add_column(col, justify="right")
    for e in result["entries"]:
        table.add_row(e["backend"], str(e["batch"]), f"{e['step_latency_median_ms']:.2f} ms",
                      f"{e['step_latency_p90_ms']:.2f} ms", f"{e['rollout_ms']:.1f} ms",
                      _roofline_cell(e, e["rollout_ms"] / 1e3),
                      f"{e['predicted_frames_per_s']:.1f}",
                      _fmt(e["speedup_vs_baseline"], ".2f") + ("x" if e["speedup_vs_baseline"] else ""),
                      _fmt(e["max_abs_vs_baseline"], ".1e"), f"{e.get('cache_bytes', 0) / 2**20:.1f}",
                      f"{e['peak_host_rss_mib']:.0f}", _fmt(_mib(e["device_memory"]), ".0f"))
    for b, v in result["baseline"].items():
        table.add_row("baseline", b, "-", "-", f"{v['rollout_s'] * 1e3:.1f} ms", "-", f"{v['frames_per_s']:.1f}", "1.00x", "0",
                      "-", "-", "-")
    console.print(table)
    _roofline_note(console, result)
    for s in result.get("skipped", []):
        console.print(f"{s['backend']} batch {s['batch']}: {s['reason']}")
    for e in result["entries"]:
        if e["per_frame_ms"]:
            console.print(f"{e['backend']} batch {e['batch']} per-frame ms (frame 1..{len(e['per_frame_ms'])}): "
                          + ", ".join(f"{x:.2f}" for x in e["per_frame_ms"]))


def _roofline_col(result: dict, opts) -> str:
    devices = {r.get("device") for r in result.get("roofline", {}).values()} - {None}
    return f"roofline ({', '.join(sorted(devices))})" if devices else "roofline"


def _roofline_cell(e: dict, measured_s: float) -> str:
    """The row's roofline time on its device and the measured time's multiple of it."""
    r = e.get("roofline_s")
    if r is None:
        return "-"
    return f"{r:.3g} s ({measured_s / r:.1f}x)" if r > 0 else "-"


def _roofline_note(console, result: dict) -> None:
    if any(r.get("device") for r in result.get("roofline", {}).values()):
        console.print("roofline: the graph cost model (vitac_deploy.exporters.cost) of each row's own graphs on the "
                      "named device's datasheet ceilings, one kernel per node: the time they cannot beat as written "
                      "(in brackets: measured / roofline); every device's is in the JSON")


def _mib(mem) -> Optional[float]:
    """The most telling device-memory figure of an entry, if any."""
    if not mem:
        return None
    for key in ("device_used_since_open_mib", "peak_allocated_mib", "cache_and_io_buffers_mib"):
        if mem.get(key) is not None:
            return mem[key]
    return None

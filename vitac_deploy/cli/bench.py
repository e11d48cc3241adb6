"""`vitac-deploy bench`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import VitacError
from ._common import cli_errors, resolve_config, stderr_console


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
    backend: list[str] = typer.Option(["onnxruntime", "torch"], "--backend", help="Backends (repeatable)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (baseline uses the same)."),
    batch: str = typer.Option("1", "--batch", help="Comma list of batch sizes."),
    horizon: int = typer.Option(7, "--horizon", help="Frames predicted per rollout."),
    context: int = typer.Option(1, "--context", help="Context frames."),
    repeats: int = typer.Option(3, "--repeats", help="Timed rollouts per entry (median reported)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed rollouts first."),
    baseline: str = typer.Option("full-recompute", "--baseline", help="Only full-recompute (the upstream way)."),
    seed: int = typer.Option(0, "--seed", help="Seed of weights and inputs."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of per-frame latency vs frame index."),
) -> None:
    """Per-frame and rollout latency, throughput and agreement of each backend vs the upstream way."""
    from ..bench import BenchOptions, plot_per_frame, run_bench
    from ..config import PredictorConfig
    from ..exporters import ExportOptions, export_artifact
    from ..manifest import read_manifest, write_json_atomic
    from ..reference import Predictor, random_predictor

    if baseline != "full-recompute":
        raise VitacError("--baseline supports only full-recompute")
    if precision not in ("fp32", "fp16"):
        raise VitacError(f"--precision must be fp32 or fp16, got {precision}")
    if horizon < 1 or context < 1 or repeats < 1 or warmup < 0:
        raise VitacError("--horizon, --context and --repeats must be >= 1, --warmup >= 0")
    if artifact is not None and (preset or config):
        raise VitacError("give an ARTIFACT or --preset/--config, not both")
    opts = BenchOptions(backends=backend, device=device, precision=precision, batches=_ints(batch, "--batch"),
                        horizon=horizon, context=context, repeats=repeats, warmup=warmup, seed=seed)
    err, console = stderr_console(), Console()
    with tempfile.TemporaryDirectory() as tmp:
        if artifact is not None:
            import torch

            from ..exporters.weights import state_dict_from_graph

            manifest = read_manifest(artifact)
            cfg = PredictorConfig.from_dict(manifest["config"])
            model = Predictor(cfg)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in
                                   state_dict_from_graph(artifact / manifest["graphs"]["step.fp32"]["file"], cfg).items()})
            model.eval()
            art = artifact
        else:
            cfg = resolve_config(config, preset)
            model = random_predictor(cfg, seed)
            art = Path(tmp) / "artifact"
            err.print("exporting seeded random weights to a temp artifact")
            export_artifact(model, art, ExportOptions(precisions=[precision], validate=False, first_frame_graph=False))
        with err.status("benchmarking") as status:
            result = run_bench(model, art, opts, say=lambda m: (status.update(m), err.print(f"  {m}")))
    table = Table(title=f"{cfg.num_parameters():,}-parameter model, {context} context + {horizon} predicted frames, "
                        f"{device}, {precision}; baseline = torch full recompute, same run", header_style="bold")
    for col in ("backend", "batch", "step p50", "step p90", "rollout", "frames/s", "speedup", "max abs err"):
        table.add_column(col, justify="right")
    for e in result["entries"]:
        table.add_row(e["backend"], str(e["batch"]), f"{e['step_latency_median_ms']:.1f} ms",
                      f"{e['step_latency_p90_ms']:.1f} ms", f"{e['rollout_ms']:.0f} ms",
                      f"{e['predicted_frames_per_s']:.1f}", f"{e['speedup_vs_baseline']:.2f}x",
                      f"{e['max_abs_vs_baseline']:.1e}")
    for b, v in result["baseline"].items():
        table.add_row("baseline", b, "-", "-", f"{v['rollout_s'] * 1e3:.0f} ms", f"{v['frames_per_s']:.1f}", "1.00x", "0")
    console.print(table)
    for e in result["entries"]:
        if e["per_frame_ms"]:
            console.print(f"{e['backend']} batch {e['batch']} per-frame ms (frame 1..{len(e['per_frame_ms'])}): "
                          + ", ".join(f"{x:.1f}" for x in e["per_frame_ms"]))
    if json_out:
        write_json_atomic(json_out, result)
    if plot:
        plot_per_frame(result, plot)

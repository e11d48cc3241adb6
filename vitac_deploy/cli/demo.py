"""`vitac-deploy demo`: the main job on the built-in default model, end to end."""

from __future__ import annotations

import time

import typer
from rich.console import Console

from ._common import cli_errors


@cli_errors
def demo(
    preset: str = typer.Option("vitac-l384", "--preset", help="Config to run (seeded random weights)."),
    horizon: int = typer.Option(7, "--horizon", help="Frames to predict from 1 context frame."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and inputs."),
) -> None:
    """Reference rollout on seeded random weights: shapes, cache-vs-recompute agreement, timing."""
    import torch

    from ..config import PredictorConfig
    from ..reference import random_predictor

    console = Console()
    cfg = PredictorConfig.preset(preset)
    torch.manual_seed(seed)
    model = random_predictor(cfg, seed)
    B, C, A = 1, 1, cfg.action_dim
    g = torch.Generator().manual_seed(seed)
    context = 12.0 * torch.randn(B, C, cfg.tokens_per_frame, cfg.embed_dim, generator=g)
    actions = torch.randn(B, C + horizon - 1, A, generator=g)
    states = torch.randn(B, C + horizon - 1, A, generator=g)
    extr = torch.randn(B, C + horizon - 1, A - 1, generator=g) if cfg.use_extrinsics else None
    console.print(f"[bold]{preset}[/]: {cfg.num_parameters():,} parameters, context {list(context.shape)}, "
                  f"horizon {horizon}")
    times = {}
    preds = {}
    for use_cache in (True, False):
        model.rollout(context, actions, states, 1, extr, use_cache=use_cache)  # warm-up
        t0 = time.perf_counter()
        preds[use_cache] = model.rollout(context, actions, states, horizon, extr, use_cache=use_cache)
        times[use_cache] = time.perf_counter() - t0
    diff = (preds[True] - preds[False]).abs().max().item()
    console.print(f"predictions {list(preds[True].shape)}")
    console.print(f"KV-cached rollout    {times[True] * 1e3:8.1f} ms")
    console.print(f"full recompute       {times[False] * 1e3:8.1f} ms   (upstream way)")
    console.print(f"speedup {times[False] / times[True]:.2f}x, max abs difference {diff:.2e}")
    if diff > 1e-4:
        raise typer.Exit(1)

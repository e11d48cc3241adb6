"""`vitac-deploy serve`: the planner as an openpi-protocol policy server (docs/serving.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import options as o
from ._common import cli_errors, stderr_console


@cli_errors
def serve(
    ctx: typer.Context,
    artifact: Path = o.artifact_argument(),
    encoder: Optional[Path] = o.ENCODER, backend: str = o.backend(), device: Optional[str] = o.DEVICE,
    precision: Optional[str] = o.PRECISION,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless you say otherwise)."),
    port: int = typer.Option(8000, "--port", help="Port (0: any free port, printed)."),
    image_key: str = typer.Option("observation/image", "--image-key",
                                  help="Key of the camera frame (e.g. observation/exterior_image_1_left)."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env",
                                              help="Require 'Authorization: Api-Key KEY', KEY read from this variable."),
    batch_window_ms: float = typer.Option(5.0, "--batch-window-ms",
                                          help="Requests arriving this close together are planned together."),
    max_robots: int = typer.Option(8, "--max-robots", help="Connections served at once; more are refused."),
    max_message_mb: float = typer.Option(16.0, "--max-message-mb", help="Largest request accepted (MiB)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch",
                                            help="Rows rolled out at once (default samples x max-robots)."),
    horizon: int = o.HORIZON, samples: int = o.SAMPLES, topk: int = o.TOPK, cem_steps: int = o.CEM_STEPS,
    momentum_mean: float = o.MOMENTUM_MEAN, momentum_mean_gripper: float = o.MOMENTUM_MEAN_GRIPPER,
    momentum_std: float = o.MOMENTUM_STD, momentum_std_gripper: float = o.MOMENTUM_STD_GRIPPER,
    maxnorm: float = o.MAXNORM, close_gripper: Optional[int] = o.CLOSE_GRIPPER,
    rollout: Optional[int] = o.hidden("--rollout"),   # the old name of --horizon
    verbose: bool = typer.Option(False, "--verbose", help="A line per request (and connection logs)."),
    ray: bool = typer.Option(False, "--ray", help="Serve as Ray Serve replicas (the ray extra; docs/serving.md)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="With --ray: deploy onto this Ray cluster (default: a local instance)."),
    replicas: int = typer.Option(1, "--replicas", help="With --ray: replicas (fixed count), each with its own runtimes."),
    gpus_per_replica: Optional[float] = typer.Option(None, "--gpus-per-replica",
                                                     help="With --ray: GPUs per replica (default 1 on --device cuda, else 0)."),
) -> None:
    """Serve the planner to robots: openpi's websocket protocol, images + pose + goal in, the CEM plan out."""
    from ..errors import VitacError
    from ..serving import ServeOptions, serve as run

    horizon = o.alias(horizon, rollout, "--horizon", "--rollout", o.HORIZON.default, ctx)
    cem = o.cem_options(horizon, samples, topk, cem_steps, momentum_mean, momentum_mean_gripper, momentum_std,
                        momentum_std_gripper, maxnorm, close_gripper)
    opts = ServeOptions(image_key=image_key, batch_window_ms=batch_window_ms, max_robots=max_robots,
                        max_message_mb=max_message_mb)
    opts.check()
    if not ray and (ray_address is not None or replicas != 1 or gpus_per_replica is not None):
        raise VitacError("--ray-address, --replicas and --gpus-per-replica need --ray")
    err = stderr_console()
    if ray:
        from ..serving import serve_ray

        serve_ray(artifact, encoder, backend, device, precision, host, port, api_key_env, cem, opts, max_batch,
                  ray_address=ray_address, replicas=replicas, gpus_per_replica=gpus_per_replica,
                  say=lambda m: print(m, flush=True))
        return
    run(artifact, encoder, backend, device, precision, host, port, api_key_env, cem, opts, max_batch, verbose,
        say=lambda m: print(m, flush=True), progress=err.print)

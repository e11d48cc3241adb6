"""`vitac-deploy serve`: the planner as an openpi-protocol policy server (docs/serving.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import cli_errors, stderr_console
from .plan import _BACKEND, _DEVICE, _ENC, _PREC


@cli_errors
def serve(
    artifact: Path = typer.Argument(..., help="Predictor artifact directory (with its encoder in ARTIFACT/encoder)."),
    encoder: Optional[Path] = _ENC, backend: str = _BACKEND, device: str = _DEVICE,
    precision: Optional[str] = _PREC,
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
    rollout: int = typer.Option(2, "--rollout", help="Actions planned (and frames predicted) per sample."),
    samples: int = typer.Option(400, "--samples", help="Action sequences per CEM step."),
    topk: int = typer.Option(10, "--topk", help="Elites per CEM step."),
    cem_steps: int = typer.Option(10, "--cem-steps", help="CEM steps."),
    momentum_mean: float = typer.Option(0.15, "--momentum-mean"),
    momentum_mean_gripper: float = typer.Option(0.15, "--momentum-mean-gripper"),
    momentum_std: float = typer.Option(0.15, "--momentum-std"),
    momentum_std_gripper: float = typer.Option(0.15, "--momentum-std-gripper"),
    maxnorm: float = typer.Option(0.05, "--maxnorm", help="Bound (and initial std) of the xyz entries."),
    close_gripper: Optional[int] = typer.Option(None, "--close-gripper", help="Gripper closed from this step on."),
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
    from ..planning import CEMOptions
    from ..serving import ServeOptions, serve as run

    cem = CEMOptions(rollout=rollout, samples=samples, topk=topk, cem_steps=cem_steps, momentum_mean=momentum_mean,
                     momentum_mean_gripper=momentum_mean_gripper, momentum_std=momentum_std,
                     momentum_std_gripper=momentum_std_gripper, maxnorm=maxnorm, close_gripper=close_gripper)
    cem.check()
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
    err.print("opening the predictor and encoder")
    run(artifact, encoder, backend, device, precision, host, port, api_key_env, cem, opts, max_batch, verbose,
        say=lambda m: print(m, flush=True))

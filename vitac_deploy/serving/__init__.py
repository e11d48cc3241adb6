"""`vitac-deploy serve`: the planner as a policy server speaking openpi's websocket protocol.

- `protocol`: request keys and checks, metadata, replies (no transport).
- `batching`: `PlanService`, several robots' requests planned together (no transport).
- `policy`: what every transport shares (`Policy`: auth, atomic admission, error lines, refusal logs).
- `server`: the websocket transport (`PolicyServer`), needs the `serve` extra (websockets, msgpack).
- `ray_serve`: the same as Ray Serve replicas (`serve_ray`), needs the `ray` extra.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Union

from ..errors import VitacError
from ..planning.cem import CEMOptions
from .batching import PlanService, Session
from .protocol import Request, RequestError, ServeOptions, parse_request

__all__ = ["PlanService", "Session", "ServeOptions", "Request", "RequestError", "parse_request", "open_service",
           "serve", "serve_ray"]


def open_service(artifact: Union[str, os.PathLike], encoder: Optional[Union[str, os.PathLike]] = None,
                 backend: str = "auto", device: Optional[str] = None, precision: Optional[str] = None,
                 cem: Optional[CEMOptions] = None, options: Optional[ServeOptions] = None,
                 max_batch: Optional[int] = None) -> PlanService:
    """Open ARTIFACT as `vitac-deploy plan` does (encoder in ARTIFACT/encoder or `encoder`) and wrap it
    in a PlanService. `max_batch`: rows rolled out at once (default samples x max_robots: every
    robot of a full batch in one rollout per CEM step; lower it where memory is short: see
    `vitac-deploy info --samples`). The runtime's cache is sized for `cem.rollout` frames."""
    from ..runtimes import open_models

    cem = cem or CEMOptions()
    cem.check()
    options = options or ServeOptions()
    options.check()
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise VitacError(f"max_batch must be a positive integer, got {max_batch!r}")
    check_horizon(artifact, cem)
    # the cache holds what a plan needs: the current frame + rollout - 1 fed-back predictions
    rt, enc, _ = open_models(Path(artifact), Path(encoder) if encoder else None, backend, device, precision,
                             max_batch or cem.samples * options.max_robots, max_frames=cem.rollout)
    return PlanService(rt, enc, cem, options)


def check_horizon(artifact: Union[str, os.PathLike], cem: CEMOptions) -> None:
    """Refuse a horizon the model cannot hold, from the manifest alone (before any model opens):
    a plan's cache holds the current frame and horizon - 1 fed-back predictions."""
    from ..runtimes import config_of

    limit = config_of(artifact).max_frames
    if cem.rollout > limit:
        raise VitacError(f"horizon {cem.rollout} is more than this model's {limit} frames (max_frames of {artifact})")


def serve(artifact: Union[str, os.PathLike], encoder: Optional[Union[str, os.PathLike]] = None,
          backend: str = "auto", device: Optional[str] = None, precision: Optional[str] = None,
          host: str = "127.0.0.1", port: int = 8000, api_key_env: Optional[str] = None,
          cem: Optional[CEMOptions] = None, options: Optional[ServeOptions] = None,
          max_batch: Optional[int] = None, verbose: bool = False,
          say: Callable[[str], None] = print, progress: Optional[Callable[[str], None]] = None) -> None:
    """Serve until SIGINT/SIGTERM (the CLI's `serve`, flag for flag). Returns after a graceful stop.
    `progress(message)` hears when the models start opening, once every cheap check has passed."""
    import asyncio

    try:
        import msgpack  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as e:
        raise VitacError(f"vitac-deploy serve needs the serve extra ({e.name} is missing): "
                         f"pip install 'vitac-deploy[serve]'") from None
    from .server import LOOPBACK, PolicyServer, api_key_from_env

    key = api_key_from_env(api_key_env)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise VitacError(f"port must be in 0..65535, got {port!r}")
    if host not in LOOPBACK and key is None:
        say(f"warning: serving on {host} without an API key: anyone who reaches this port can drive the "
            f"planner (use --api-key-env VAR)")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise VitacError(f"max_batch must be a positive integer, got {max_batch!r}")
    check_horizon(artifact, cem or CEMOptions())
    if progress is not None:
        progress("opening the predictor and encoder")
    service = open_service(artifact, encoder, backend, device, precision, cem, options, max_batch)
    server = PolicyServer(service, host, port, key, verbose=verbose, say=say)
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def main() -> None:
        task = asyncio.ensure_future(server.serve_async(install_signals=True))
        while not server.ready.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if server.ready.is_set():
            rt = service.runtime
            say(f"serving {Path(artifact)} ({rt.describe()}) on ws://{host}:{server.port} "
                f"(healthz: http://{host}:{server.port}/healthz); {service.cem.samples} samples x "
                f"{service.cem.cem_steps} CEM steps, batch window {service.options.batch_window_ms:g} ms, "
                f"up to {service.options.max_robots} robots")
        await task
        say("stopped")

    asyncio.run(main())


def serve_ray(artifact: Union[str, os.PathLike], encoder: Optional[Union[str, os.PathLike]] = None,
              backend: str = "auto", device: Optional[str] = None, precision: Optional[str] = None,
              host: str = "127.0.0.1", port: int = 8000, api_key_env: Optional[str] = None,
              cem: Optional[CEMOptions] = None, options: Optional[ServeOptions] = None,
              max_batch: Optional[int] = None, ray_address: Optional[str] = None, replicas: int = 1,
              gpus_per_replica: Optional[float] = None, say: Callable[[str], None] = print) -> None:
    """`serve --ray`: the same server as Ray Serve replicas, on a local Ray instance or the cluster at
    `ray_address`; the proxy listens on host:port. Returns after SIGINT/SIGTERM (app deleted)."""
    try:
        from .ray_serve import build_app, run_ray
    except ImportError as e:
        raise VitacError(f"vitac-deploy serve --ray needs the ray extra ({e.name} is missing): "
                         f"pip install 'vitac-deploy[ray]'") from None
    from .server import LOOPBACK, api_key_from_env

    key = api_key_from_env(api_key_env)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise VitacError(f"port must be in 1..65535 with --ray (Ray Serve takes no port 0), got {port!r}")
    if not Path(artifact).exists():
        raise VitacError(f"{artifact}: no such artifact")
    if host not in LOOPBACK and key is None:
        say(f"warning: serving on {host} without an API key: anyone who reaches this port can drive the "
            f"planner (use --api-key-env VAR)")
    if device is None:   # as open_runtime decides it: an engine runs on the GPU (the replica needs one)
        from ..artifacts import ENGINE_SUFFIXES

        device = "cuda" if Path(artifact).suffix in ENGINE_SUFFIXES else "cpu"
    app = build_app(artifact, encoder, backend, device, precision, cem, options, max_batch, key, replicas,
                    gpus_per_replica)
    run_ray(app, host, port, ray_address, replicas, say=say)

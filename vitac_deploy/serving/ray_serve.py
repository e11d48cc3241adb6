"""`vitac-deploy serve --ray`: the same protocol and planner as Ray Serve replicas (docs/serving.md).

A thin wrapper and nothing more: every frame is parsed, checked, planned and answered by
`PlanService` (batching.py, protocol.py) exactly as by the single-machine server. This module gives
it a FastAPI websocket ingress behind Ray Serve's proxy, gathers a replica's requests with
`@serve.batch` (window and batch size from the same `ServeOptions`) and runs the batched CEM in a
thread, off the replica's event loop. A websocket stays on one replica for its life, so a robot's
cached goal features stay where they are. Needs the `ray` extra (ray[serve], which brings FastAPI).
"""

# no `from __future__ import annotations`: FastAPI must see the WebSocket annotation itself (as a
# string it would take `ws` for a query parameter and refuse every connection with 1008)
import asyncio
import logging
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse
from ray import serve

from ..client.msgpack_numpy import packb
from ..errors import VitacError
from ..planning.cem import CEMOptions
from .policy import Policy, Refusal
from .protocol import ServeOptions

APP_NAME = "vitac"
log = logging.getLogger("vitac_deploy.serving")
api = FastAPI(title="vitac-deploy serve --ray")


@serve.deployment(name="VitacPolicy")
@serve.ingress(api)
class VitacPolicy:
    """One replica: the encoder and predictor runtimes once, the robots connected to it batched."""

    def __init__(self, artifact: str, encoder: Optional[str] = None, backend: str = "auto", device: str = "cpu",
                 precision: Optional[str] = None, cem: Optional[CEMOptions] = None,
                 options: Optional[ServeOptions] = None, max_batch: Optional[int] = None,
                 api_key: Optional[str] = None) -> None:
        from . import open_service

        self.service = open_service(artifact, encoder, backend, device, precision, cem, options, max_batch)
        # @serve.batch gathers the batches here; the service's own worker would only sit idle
        self.service.close()
        opts = self.service.options
        self._plan_batch.set_max_batch_size(opts.max_robots)
        self._plan_batch.set_batch_wait_timeout_s(opts.batch_window_ms / 1e3)
        self.policy = Policy(self.service, api_key)
        ctx = serve.get_replica_context()
        rid = getattr(ctx, "replica_id", None)
        self.replica = str(getattr(rid, "unique_id", None) or getattr(ctx, "replica_tag", "replica"))

    @api.get("/healthz")
    async def healthz(self) -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    async def _deny(self, ws: WebSocket, refusal: Refusal) -> None:
        """Refuse the handshake with its HTTP status (401, 503) where the ASGI server has the denial
        extension (Ray 2.60's proxy does), else with a close before accept (HTTP 403)."""
        try:
            await ws.send_denial_response(PlainTextResponse(refusal.reason + "\n", status_code=refusal.status))
        except Exception:  # noqa: BLE001 - the denial extension is missing behind this proxy
            await ws.close(code=1008, reason=refusal.reason[:120])

    @property
    def connections(self) -> int:
        return self.policy.connected

    @api.websocket("/")
    async def policy_socket(self, ws: WebSocket) -> None:
        try:
            self.policy.authorize(ws.headers.getlist("authorization"), ws.client)
            ticket = self.policy.admit(ws.client)   # counted before the first await: atomic
        except Refusal as e:
            return await self._deny(ws, e)
        with ticket:
            try:
                await ws.accept()
                await ws.send_bytes(packb(self.service.metadata))
                while True:
                    msg = await ws.receive()
                    if msg["type"] == "websocket.disconnect":
                        break
                    data = msg.get("bytes")
                    frame = await self.policy.answer(ticket.session, data if data is not None else msg.get("text", ""),
                                                     self._plan_one)
                    if isinstance(frame, str):
                        await ws.send_text(frame)
                    elif frame is not None:
                        await ws.send_bytes(frame)
            except WebSocketDisconnect:
                pass

    async def _plan_one(self, session, request) -> dict:
        reply = (await self._plan_batch((session, request))).result()
        reply["server_timing"]["replica"] = self.replica
        return reply

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _plan_batch(self, pairs: list) -> list:
        """Every robot whose request arrived in the window: one batched CEM, in a thread."""
        return await asyncio.to_thread(self.service.plan_now, pairs)


def build_app(artifact: Any, encoder: Any = None, backend: str = "auto", device: str = "cpu",
              precision: Optional[str] = None, cem: Optional[CEMOptions] = None,
              options: Optional[ServeOptions] = None, max_batch: Optional[int] = None,
              api_key: Optional[str] = None, replicas: int = 1, gpus_per_replica: Optional[float] = None,
              cpus_per_replica: float = 1.0) -> Any:
    """The bound Ray Serve application. `gpus_per_replica` None: 1 on a CUDA device, else 0."""
    cem = cem or CEMOptions()
    cem.check()
    options = options or ServeOptions()
    options.check()
    if not isinstance(replicas, int) or replicas < 1:
        raise VitacError(f"--replicas must be a positive integer, got {replicas!r}")
    gpus = (1.0 if str(device).startswith("cuda") else 0.0) if gpus_per_replica is None else float(gpus_per_replica)
    if gpus < 0:
        raise VitacError(f"--gpus-per-replica must be >= 0, got {gpus_per_replica!r}")
    # each websocket is one ongoing request for its life: room for max_robots + health checks
    dep = VitacPolicy.options(num_replicas=replicas, max_ongoing_requests=options.max_robots + 4,
                              ray_actor_options={"num_gpus": gpus, "num_cpus": cpus_per_replica})
    return dep.bind(str(Path(artifact).resolve()), str(Path(encoder).resolve()) if encoder else None, backend,
                    device, precision, cem, options, max_batch, api_key)


def app_builder(args: dict) -> Any:
    """For `serve run vitac_deploy.serving.ray_serve:app_builder artifact=art/` and examples/serve.yaml:
    `args` holds `artifact` and optionally encoder, backend, device, precision, api_key_env, max_batch,
    the ServeOptions fields and the CEMOptions fields (replicas and GPUs: the yaml's deployments)."""
    from .server import api_key_from_env

    args = dict(args)
    if "artifact" not in args:
        raise VitacError("app_builder needs args.artifact (the predictor artifact directory)")
    cem_fields, opt_fields = set(CEMOptions.__dataclass_fields__), set(ServeOptions.__dataclass_fields__)
    known = cem_fields | opt_fields | {"artifact", "encoder", "backend", "device", "precision", "api_key_env",
                                       "max_batch"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise VitacError(f"unknown args {unknown} (known: {sorted(known)})")
    cem = CEMOptions(**{k: args[k] for k in cem_fields & set(args)})
    opts = ServeOptions(**{k: args[k] for k in opt_fields & set(args)})
    key = api_key_from_env(args.get("api_key_env"))
    dep = VitacPolicy.options(max_ongoing_requests=opts.max_robots + 4)
    cem.check()
    opts.check()
    return dep.bind(str(args["artifact"]), args.get("encoder"), args.get("backend", "auto"),
                    args.get("device", "cpu"), args.get("precision"), cem, opts, args.get("max_batch"), key)


def run_ray(app: Any, host: str, port: int, ray_address: Optional[str], replicas: int,
            say: Callable[[str], None] = print, stop: Optional[threading.Event] = None,
            ready: Optional[threading.Event] = None) -> None:
    """Start (or join, with `ray_address`) Ray, run `app` with its proxy on host:port (`ready` set once
    its replicas serve), block until SIGINT/SIGTERM (or `stop`), then delete the app and stop what
    was started here."""
    import ray

    started = not ray.is_initialized()
    if started:
        # no address: a local instance, dashboard off (it runs code for whoever reaches it)
        ray.init(address=ray_address, include_dashboard=False if ray_address is None else None,
                 log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        say(f"serving on ws://{host}:{port} through Ray Serve ({replicas} replica(s)"
            f"{', cluster ' + ray_address if ray_address else ', local Ray'}); healthz: http://{host}:{port}/healthz")
        if ready is not None:
            ready.set()
        stop = stop or threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        serve.delete(APP_NAME)
        if ray_address is None:
            serve.shutdown()
        say("stopped")
    finally:
        if started:
            ray.shutdown()

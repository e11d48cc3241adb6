"""`vitac-deploy serve`: the websocket transport (openpi's protocol) around `PlanService`.

On connect: one binary frame with the metadata. Then each binary frame (one msgpack request) gets
one binary reply, or a text frame with one line (`error: ...`) after which the connection stays
usable. `GET /healthz` answers 200. With an API key, the handshake needs `Authorization: Api-Key
KEY` (401 otherwise); past `max_robots` connections a handshake gets 503 with the reason. SIGINT /
SIGTERM: stop accepting, finish the plans in flight, close the connections, return.
"""

from __future__ import annotations

import asyncio
import http
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

from ..client.msgpack_numpy import packb
from ..errors import VitacError, first_line
from .batching import PlanService
from .policy import Policy, Refusal

log = logging.getLogger("vitac_deploy.serving")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
HARD_LIMIT_FACTOR = 4   # frames up to this many times the message limit get an error frame; larger ones close
# frames a connection buffers while its plan runs: reading pauses once one waits (websockets'
# default, 16, let one client hold 16 frames of 4x the message limit: GBs; docs/serving.md)
MAX_QUEUE = (0, 0)
SHUTDOWN_GRACE_S = 60.0


class PolicyServer:
    """Serves a PlanService on host:port (port 0: any free port, see `.port` once `ready` is set)."""

    def __init__(self, service: PlanService, host: str = "127.0.0.1", port: int = 8000,
                 api_key: Optional[str] = None, verbose: bool = False,
                 say: Callable[[str], None] = lambda m: None) -> None:
        self.service, self.host, self.port, self.verbose, self.say = service, host, port, verbose, say
        self.policy = Policy(service, api_key, verbose=verbose, say=say)
        self.ready = threading.Event()
        self.connections: set = set()
        self.in_flight = 0
        self._stopping: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    # -- handshake ------------------------------------------------------------------------------------
    def _process_request(self, connection: Any, request: Any) -> Any:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        try:
            self.policy.authorize(request.headers.get_all("Authorization"), connection.remote_address)
            self.policy.check_room(connection.remote_address)   # an early 503; the handler admits
        except Refusal as e:
            return connection.respond(http.HTTPStatus(e.status), e.reason + "\n")
        return None

    # -- one connection -------------------------------------------------------------------------------
    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            ticket = self.policy.admit(ws.remote_address)
        except Refusal as e:   # two handshakes raced past the early check: the count decides
            await ws.close(1013, e.reason[:120])
            return
        self.connections.add(ws)
        session = ticket.session
        try:
            await ws.send(packb(self.service.metadata))
            async for message in ws:
                frame = await self.policy.answer(session, message, lambda s, r: self._infer(ws, s, r))
                if frame is None:   # the client left during its plan
                    break
                await ws.send(frame)
        except ConnectionClosed:
            pass
        finally:
            self.connections.discard(ws)
            ticket.release()

    async def _infer(self, ws: Any, session: Any, request: Any) -> Optional[dict]:
        """The reply, or None when the connection closed first (its plan dropped if not started)."""
        fut = self.service.submit(session, request)
        self.in_flight += 1
        try:
            reply = asyncio.wrap_future(fut)
            closed = asyncio.ensure_future(ws.wait_closed())
            done, _ = await asyncio.wait({reply, closed}, return_when=asyncio.FIRST_COMPLETED)
            if reply not in done:
                fut.cancel()           # dropped if its batch has not started; ignored otherwise
                reply.cancel()
                return None
            closed.cancel()
            return reply.result()
        finally:
            self.in_flight -= 1

    # -- lifetime -------------------------------------------------------------------------------------
    async def serve_async(self, stop: Optional[asyncio.Event] = None, install_signals: bool = False) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stopping = stop or asyncio.Event()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stopping.set)
        limit = self.service.options.max_message_bytes * HARD_LIMIT_FACTOR
        try:
            listening = await serve(self._handler, self.host, self.port, process_request=self._process_request,
                                    compression=None, max_size=limit, max_queue=MAX_QUEUE, ping_interval=20,
                                    ping_timeout=60, server_header="vitac-deploy")
        except OSError as e:   # an unknown host, an address in use or not ours: the user's to fix
            self.service.close(timeout=SHUTDOWN_GRACE_S)
            raise VitacError(f"cannot listen on {self.host}:{self.port}: {e.strerror or first_line(e)}") from None
        async with listening as server:
            sock = next(iter(server.sockets))
            self.port = sock.getsockname()[1]
            self.ready.set()
            await self._stopping.wait()
            self.policy.stop()
            # stop accepting, let the plans in flight be answered, then close the connections
            server.close(close_connections=False)
            deadline = time.monotonic() + SHUTDOWN_GRACE_S
            while (self.in_flight or self.service.pending()) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.gather(*(ws.close(1001, "server shutting down") for ws in list(self.connections)),
                                 return_exceptions=True)
            await server.wait_closed()
        self.service.close(timeout=SHUTDOWN_GRACE_S)

    def stop(self) -> None:
        """Ask a server running in another thread to shut down (as SIGTERM does)."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    def start_in_thread(self, timeout: float = 30.0) -> threading.Thread:
        """Run in a daemon thread (tests, notebooks); returns once it listens."""
        errors: list = []

        def run() -> None:
            try:
                asyncio.run(self.serve_async())
            except BaseException as e:  # noqa: BLE001 - reported to the starter
                errors.append(e)
                self.ready.set()

        t = threading.Thread(target=run, name="vitac-serve", daemon=True)
        t.start()
        if not self.ready.wait(timeout) or errors:
            raise errors[0] if errors else VitacError("the server did not start in time")
        return t


def api_key_from_env(var: Optional[str]) -> Optional[str]:
    """The key named by --api-key-env (an error if the variable is unset or empty)."""
    if var is None:
        return None
    key = os.environ.get(var, "")
    if not key:
        raise VitacError(f"--api-key-env {var}: the environment variable is unset or empty")
    return key

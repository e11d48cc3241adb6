"""The policy behind every transport: what the websocket server, Ray Serve (and a gRPC or ROS 2
front, each one file) share, so that none of it is written twice.

A transport does four things with a `Policy`:
- `authorize(values, peer)` with the values of the credentials a connection presents (its
  `Authorization` headers, all of them): nothing with the right key, `Refusal` (401) otherwise,
  a duplicate header included;
- `admit(peer)` a connection: a `Ticket` (its `Session`, released once, however the connection
  ends), or `Refusal` (503) past `max_robots`. The check and the count are one step under a lock,
  so simultaneous handshakes can never all get in;
- `answer(session, frame, plan)` for each frame: the packed reply, or the one error line
  (`error: ...`) after which the connection stays usable, or None when the client left;
- `stop()` when it shuts down: new connections and requests are refused with the reason.
Refused connections are logged at most once per `log_interval_s` and reason (an unauthenticated
client cannot flood the log), with the count of those not logged. numpy only.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import Any, Awaitable, Callable, Optional, Sequence, Union

from ..client.msgpack_numpy import WireError, packb
from ..errors import VitacError
from .batching import PlanService, Session
from .protocol import Request, RequestError

log = logging.getLogger("vitac_deploy.serving")
AUTH_HINT = "send one header Authorization: Api-Key KEY"
INTERNAL_ERROR = "internal error (see the server's log)"
Plan = Callable[[Session, Request], Awaitable[Optional[dict]]]


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line of at most `limit` characters (what an error frame and a log line hold)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


class Refusal(VitacError):
    """A connection refused at the handshake: the HTTP status and the one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class RateLimitedLog:
    """Warnings at most once per `interval_s` per key; the next one says how many were not logged."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger, self.interval_s = logger, interval_s
        self._last: dict = {}
        self._dropped: dict = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str) -> bool:
        """Log `message` unless `key` was logged less than `interval_s` ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -float("inf")) < self.interval_s:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return False
            self._last[key] = now
            dropped = self._dropped.pop(key, 0)
        suffix = f" ({dropped} more like it not logged in the last {self.interval_s:g} s)" if dropped else ""
        self.logger.warning("%s%s", message, suffix)
        return True


class Ticket:
    """One admitted connection: its session; `release()` frees its slot (once, idempotent)."""

    def __init__(self, policy: "Policy", session: Session) -> None:
        self.policy, self.session = policy, session
        self._released = False

    def release(self) -> None:
        self.policy._release(self)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Policy:
    """Auth, admission, error lines and refusal logging over one `PlanService`, for any transport."""

    def __init__(self, service: PlanService, api_key: Optional[str] = None, verbose: bool = False,
                 say: Callable[[str], None] = lambda m: None, log_interval_s: float = 10.0) -> None:
        self.service, self.verbose, self.say = service, verbose, say
        self._api_key = api_key.encode() if api_key else None
        self.refusals = RateLimitedLog(log, log_interval_s)
        self._lock = threading.Lock()
        self._connected = 0
        self.stopping = False

    # -- the handshake --------------------------------------------------------------------------------
    @property
    def max_robots(self) -> int:
        return self.service.options.max_robots

    @property
    def connected(self) -> int:
        """Connections admitted and not yet released."""
        return self._connected

    def authorize(self, values: Sequence[str], peer: Any = None) -> None:
        """Check the `Authorization` values a handshake carries (every one of them); Refusal(401)
        unless exactly one is present and it is `Api-Key KEY`. Without a key, anything passes."""
        if self._api_key is None:
            return
        want = b"Api-Key " + self._api_key
        if len(values) == 1 and hmac.compare_digest(str(values[0]).encode("utf-8", "replace"), want):
            return
        why = ("missing API key" if not values else "wrong API key" if len(values) == 1 else
               f"{len(values)} Authorization headers (one expected)")
        self.refusals.warning("auth", f"refused a connection from {peer}: {why}")
        raise Refusal(401, f"missing or wrong API key ({AUTH_HINT})")

    def check_room(self, peer: Any = None) -> None:
        """Refusal(503) if a connection would not be admitted now (an early answer at the handshake;
        `admit` decides)."""
        if self.stopping:
            raise Refusal(503, "server shutting down")
        if self._connected >= self.max_robots:
            self._refuse_full(peer, self._connected)

    def admit(self, peer: Any = None) -> Ticket:
        """Count one connection in, or Refusal(503): the check and the count are one atomic step."""
        with self._lock:
            if self.stopping:
                raise Refusal(503, "server shutting down")
            n = self._connected
            if n < self.max_robots:
                self._connected = n + 1
                self.service.connected = self._connected
                n = -1
        if n >= 0:
            self._refuse_full(peer, n)
        ticket = Ticket(self, self.service.new_session())
        log.info("robot %d connected from %s", ticket.session.id, peer)
        return ticket

    def _refuse_full(self, peer: Any, n: int) -> None:
        self.refusals.warning("full", f"refused a connection from {peer}: {n} robots connected")
        raise Refusal(503, f"server full: {n} robots connected (--max-robots {self.max_robots})")

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket._released:
                return
            ticket._released = True
            self._connected -= 1
            self.service.connected = self._connected
        log.info("robot %d disconnected after %d plans", ticket.session.id, ticket.session.requests)

    def stop(self) -> None:
        """Refuse new connections and requests from now on (those in flight are answered)."""
        self.stopping = True

    # -- one frame ------------------------------------------------------------------------------------
    async def answer(self, session: Session, message: Any, plan: Plan) -> Optional[Union[bytes, str]]:
        """One frame -> the packed reply (bytes), or the error line (str) for a refused or failed
        request, or None when the client left during its plan. `plan(session, request)` is the
        transport's way to get the reply dict (None: the client left)."""
        try:
            request = self.service.parse(message)
            if self.stopping:
                raise RequestError("the server is shutting down")
            reply = await plan(session, request)
        except (WireError, RequestError) as e:
            if self.verbose:
                self.say(f"robot {session.id}: refused: {one_line(str(e))}")
            return f"error: {one_line(str(e))}"
        except Exception:  # noqa: BLE001 - no traceback leaves the server
            log.exception("robot %d: request failed", session.id)
            return f"error: {INTERNAL_ERROR}"
        if reply is None:
            return None
        if self.verbose:
            t = reply["server_timing"]
            self.say(f"robot {session.id}: seed {reply['seed']}, {t['infer_ms']:.0f} ms (queue "
                     f"{t['queue_ms']:.0f}, encode {t['encode_ms']:.0f}, plan {t['plan_ms']:.0f}; batch "
                     f"{t['batch']}), action {[round(float(v), 4) for v in reply['actions'][0]]}")
        return packb(reply)

"""The robot side of `vitac-deploy serve`: `PolicyClient(host, port, api_key=None)`, wire-compatible
with openpi's `WebsocketClientPolicy` (`.infer(obs) -> dict`, `.metadata`).

numpy + websockets (>= 12, its sync client) + msgpack only, Python 3.8 and later (JetPack 5): this
package imports nothing else from vitac_deploy, so it can be copied onto a robot as it is.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Dict, Optional

from .msgpack_numpy import WireError, packb, unpackb

__all__ = ["PolicyClient", "PolicyError", "WireError", "packb", "unpackb"]


class PolicyError(RuntimeError):
    """The server refused a request (its one-line message). A RuntimeError, as openpi's client
    raises; the connection stays usable."""


class PolicyClient:
    """One websocket connection to a policy server. On connect the server sends its metadata
    (`.metadata`); `infer(obs)` sends one request and returns the reply dict.

    `connect_timeout`: seconds to keep retrying a refused connection (the server may still be
    loading). `timeout`: seconds to wait for a reply (None: forever). `reconnect`: when the
    connection is lost (a replica restarted, a rolling update), connect again (backoff, up to
    `connect_timeout`) and resend the request once, with the last goal image if it lacks one (the
    new server has no cached goal); off by default."""

    def __init__(self, host: str = "127.0.0.1", port: Optional[int] = 8000, api_key: Optional[str] = None,
                 connect_timeout: float = 30.0, timeout: Optional[float] = None, reconnect: bool = False,
                 goal_key: str = "goal/image") -> None:
        self.uri = f"ws://{host}" + (f":{port}" if port else "")
        self.timeout, self.reconnect, self.goal_key = timeout, reconnect, goal_key
        self.connect_timeout = connect_timeout
        self.reconnects = 0
        self._goal: Any = None
        self._headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._connect()

    def _connect(self) -> None:
        from websockets.sync.client import connect   # websockets >= 12

        headers, connect_timeout = self._headers, self.connect_timeout
        # websockets >= 17 wants connect() as a context manager unless legacy=True (older ones lack it)
        extra = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                # compression off and no size limit on replies, as openpi's client
                self._ws = connect(self.uri, compression=None, max_size=None, additional_headers=headers,
                                   open_timeout=max(1.0, connect_timeout), **extra)
                break
            except (ConnectionRefusedError, OSError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        first = self._ws.recv(timeout=self.timeout) if _recv_takes_timeout(self._ws) else self._ws.recv()
        if isinstance(first, str):
            self._ws.close()
            raise PolicyError(first)
        self.metadata: Dict[str, Any] = unpackb(first)

    def infer(self, obs: Dict[str, Any]) -> Dict[str, Any]:
        """Send one observation dict; return the reply. PolicyError (a RuntimeError) with the server's
        one-line message when it refuses the request."""
        from websockets.exceptions import ConnectionClosed

        if self.goal_key in obs:
            self._goal = obs[self.goal_key]
        try:
            return self._infer(obs)
        except ConnectionClosed:
            if not self.reconnect:
                raise
        delay = 0.2
        deadline = time.monotonic() + self.connect_timeout
        while True:   # backoff: the server (or Ray's replacement replica) may take seconds to come back
            try:
                self._connect()
                break
            except Exception as e:  # noqa: BLE001 - refused, reset, or HTTP 503 while a replica starts
                if time.monotonic() + delay >= deadline:
                    raise ConnectionError(f"{self.uri}: connection lost and not back within "
                                          f"{self.connect_timeout:g} s ({e})") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.reconnects += 1
        if self.goal_key not in obs and self._goal is not None:
            obs = {**obs, self.goal_key: self._goal}
        return self._infer(obs)

    def _infer(self, obs: Dict[str, Any]) -> Dict[str, Any]:
        self._ws.send(packb(obs))
        reply = self._ws.recv(timeout=self.timeout) if _recv_takes_timeout(self._ws) else self._ws.recv()
        if isinstance(reply, str):
            raise PolicyError(reply)
        return unpackb(reply)

    def reset(self) -> None:
        """openpi's policy interface; the server keeps no state but the connection's goal."""

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _recv_takes_timeout(ws: Any) -> bool:
    try:
        return "timeout" in inspect.signature(ws.recv).parameters
    except (TypeError, ValueError):
        return False

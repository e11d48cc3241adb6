"""The robot side of `vitac-deploy serve`: `PolicyClient(host, port, api_key=None)`, wire-compatible
with openpi's `WebsocketClientPolicy` (`.infer(obs) -> dict`, `.metadata`).

numpy + websockets (>= 12, its sync client) + msgpack only, Python 3.8 and later (JetPack 5): this
package imports nothing else from vitac_deploy, so it can be copied onto a robot as it is.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Dict, Optional

import numpy as np

from .msgpack_numpy import WireError, packb, unpackb

__all__ = ["PolicyClient", "PolicyError", "ReplyError", "WireError", "packb", "unpackb"]


class PolicyError(RuntimeError):
    """The server refused a request (its one-line message). A RuntimeError, as openpi's client
    raises; the connection stays usable."""


class ReplyError(PolicyError):
    """A reply that must not reach a robot: no actions, actions not finite or of the wrong shape,
    or the plan of another seed than the one asked for."""


class PolicyClient:
    """One websocket connection to a policy server. On connect the server sends its metadata
    (`.metadata`); `infer(obs)` sends one request and returns the reply dict.

    `connect_timeout`: seconds to keep retrying a refused connection (the server may still be
    loading) and to wait for its metadata. `timeout`: seconds to wait for a reply (None: forever);
    past it `infer` raises TimeoutError and closes the connection, so that the late reply can never
    be returned for a later request: the next `infer` connects again (sending the last goal image
    if the request lacks one). `reconnect`: when the connection is lost (a replica restarted, a
    rolling update), connect again (backoff, up to `connect_timeout`) and resend the request once,
    with the last goal image if it lacks one (the new server has no cached goal); off by default.

    Every reply is checked before it is returned: `actions` a finite float array of the shape the
    metadata announces ([rollout, action_dim]), and the seed asked for; ReplyError otherwise."""

    def __init__(self, host: str = "127.0.0.1", port: Optional[int] = 8000, api_key: Optional[str] = None,
                 connect_timeout: float = 30.0, timeout: Optional[float] = None, reconnect: bool = False,
                 goal_key: str = "goal/image") -> None:
        self.uri = f"ws://{host}" + (f":{port}" if port else "")
        self.timeout, self.reconnect, self.goal_key = timeout, reconnect, goal_key
        self.connect_timeout = connect_timeout
        self.reconnects = 0
        self._goal: Any = None
        self._ws: Any = None
        self._closed = False
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
                                   open_timeout=max(1.0, deadline - time.monotonic()), **extra)
                break
            except (ConnectionRefusedError, OSError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        # the metadata within what is left of connect_timeout: a server that accepts and says
        # nothing must not hang the robot
        wait = max(1.0, deadline - time.monotonic())
        try:
            first = self._ws.recv(timeout=wait) if _recv_takes_timeout(self._ws) else self._ws.recv()
        except TimeoutError:
            self._drop()
            raise TimeoutError(f"{self.uri}: connected, but no metadata within {wait:.3g} s (connect_timeout)") \
                from None
        if isinstance(first, str):
            self._drop()
            raise PolicyError(first)
        try:
            self.metadata: Dict[str, Any] = unpackb(first)
        except WireError as e:
            self._drop()
            raise ReplyError(f"{self.uri}: the metadata frame is not a message of this protocol ({e})") from None

    def infer(self, obs: Dict[str, Any]) -> Dict[str, Any]:
        """Send one observation dict; return the reply. PolicyError (a RuntimeError) with the server's
        one-line message when it refuses the request."""
        from websockets.exceptions import ConnectionClosed

        if self.goal_key in obs:   # a copy: a camera driver may refill the caller's array in place
            goal = obs[self.goal_key]
            self._goal = np.array(goal) if isinstance(goal, np.ndarray) else goal
        if self._closed:
            raise ConnectionError(f"{self.uri}: this client was closed")
        if self._ws is None:   # dropped after a timeout: a fresh connection, never the late reply
            self._connect()
            self.reconnects += 1
            obs = self._with_goal(obs)
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
        return self._infer(self._with_goal(obs))

    def _with_goal(self, obs: Dict[str, Any]) -> Dict[str, Any]:
        if self.goal_key not in obs and self._goal is not None:
            return {**obs, self.goal_key: self._goal}
        return obs

    def _infer(self, obs: Dict[str, Any]) -> Dict[str, Any]:
        self._ws.send(packb(obs))
        try:
            reply = self._ws.recv(timeout=self.timeout) if _recv_takes_timeout(self._ws) else self._ws.recv()
        except TimeoutError:
            self._drop()
            raise TimeoutError(f"{self.uri}: no reply within {self.timeout:g} s; the connection is closed so that "
                               f"the late reply is never taken for another request (the next infer() connects "
                               f"again)") from None
        if isinstance(reply, str):
            raise PolicyError(reply)
        try:
            out = unpackb(reply)
        except WireError as e:
            raise ReplyError(f"the server's reply is not a message of this protocol ({e})") from None
        self._check_reply(out, obs)
        return out

    def _check_reply(self, reply: Any, obs: Dict[str, Any]) -> None:
        """ReplyError unless `reply` holds finite float actions [rollout, action_dim] (as the
        metadata announces them) and the seed of the request."""
        if not isinstance(reply, dict) or "actions" not in reply:
            raise ReplyError(f"the server's reply has no actions (got {type(reply).__name__})")
        a = reply["actions"]
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.ndim != 2:
            what = f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ReplyError(f"the server's actions must be a float array [rollout, action_dim], got {what}")
        md = self.metadata if isinstance(self.metadata, dict) else {}
        want = (md.get("rollout"), md.get("action_dim"))
        if all(isinstance(v, int) for v in want) and a.shape != want:
            raise ReplyError(f"the server's actions have shape {list(a.shape)}, its metadata announced {list(want)}")
        if not np.isfinite(a).all():
            raise ReplyError("the server's actions contain NaN or inf")
        seed = obs.get("seed")
        if seed is not None and "seed" in reply:
            try:
                same = int(reply["seed"]) == int(seed)
            except (TypeError, ValueError, OverflowError):
                same = False
            if not same:
                raise ReplyError(f"the reply is the plan of seed {reply['seed']!r}, not of the seed {seed!r} asked for")

    def _drop(self) -> None:
        """Close the connection and forget it (the next infer() connects again)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def reset(self) -> None:
        """openpi's policy interface; the server keeps no state but the connection's goal."""

    def close(self) -> None:
        self._closed = True
        self._drop()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _recv_takes_timeout(ws: Any) -> bool:
    try:
        return "timeout" in inspect.signature(ws.recv).parameters
    except (TypeError, ValueError):
        return False

"""The robot-side client never hands a robot the wrong action: a reply that came too late is never
returned for the next request (the connection is dropped and made again), every reply is checked
(actions present, finite, of the announced shape, of the seed asked for), and connecting waits at
most `connect_timeout` for a server that accepts and says nothing. Real sockets on 127.0.0.1: the
project's server on a reduced-size model, and small websocket servers that misbehave on purpose."""

from __future__ import annotations

import re
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.server import serve as sync_serve  # noqa: E402

from tests.test_serving import CEM, Alone, start  # noqa: E402
from vitac_deploy.client import PolicyClient, PolicyError, packb, unpackb  # noqa: E402
from vitac_deploy.benchmarks.serving import robot_requests, tiny_artifact  # noqa: E402


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("client") / "art")


def test_a_late_reply_never_becomes_the_next_action(art):
    """Seed 111 times out (the server holds it in a 1.5 s batch window: a second robot is
    connected); the next request, seed 222, must get the plan of seed 222, never 111's."""
    alone = Alone(art)
    s = start(art, batch_window_ms=1500.0)
    idle = PolicyClient("127.0.0.1", s.port)          # connected = 2: the window is waited for
    try:
        c = PolicyClient("127.0.0.1", s.port, timeout=0.1)
        first, second = robot_requests(2, 5)
        first["seed"], second["seed"] = 111, 222
        with pytest.raises(TimeoutError):
            c.infer(first)
        c.timeout = 60.0
        time.sleep(2.0)                                 # 111's plan is done and sent by now
        rep = c.infer(second)
        assert int(rep["seed"]) == 222
        assert np.abs(rep["actions"] - alone(second, 222)).max() <= 1e-6
        assert c.reconnects == 1                        # a fresh connection, the goal sent again
        rep = c.infer({k: v for k, v in second.items() if k != "goal/image"})   # the goal is cached there
        assert int(rep["seed"]) == 222
        c.close()
    finally:
        idle.close()
        s.stop()


def _run_bad_server(replies: list):
    """A websocket server on 127.0.0.1 that sends valid metadata, then answers the i-th request
    with replies[i] (bytes). Returns (server, port)."""
    md = {"protocol": "openpi-websocket-msgpack", "rollout": 2, "action_dim": 7}

    def handler(ws):
        try:
            ws.send(packb(md))
            for frame in replies:
                ws.recv()
                ws.send(frame)
            ws.recv()
        except ConnectionClosed:
            pass

    server = sync_serve(handler, "127.0.0.1", 0, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.socket.getsockname()[1]


def test_every_reply_is_checked_before_it_reaches_a_robot():
    good = np.zeros((2, 7), np.float32)
    bad = [
        (packb({"actions": np.full((2, 7), np.nan, np.float32), "seed": 5}), "NaN or inf"),
        (packb({"actions": np.full((2, 7), np.inf, np.float32), "seed": 5}), "NaN or inf"),
        (packb({"actions": np.zeros((3, 7), np.float32), "seed": 5}), "shape [3, 7]"),
        (packb({"actions": np.zeros(7, np.float32), "seed": 5}), "float array"),
        (packb({"actions": np.zeros((2, 7), np.int64), "seed": 5}), "float array"),
        (packb({"actions": [[0.0] * 7] * 2, "seed": 5}), "float array"),
        (packb({"seed": 5}), "no actions"),
        (packb([1, 2]), "no actions"),
        (packb({"actions": good, "seed": 6}), "seed 6"),
        (b"\xc1", "not a message"),
    ]
    server, port = _run_bad_server([f for f, _ in bad] + [packb({"actions": good, "seed": 5})])
    try:
        c = PolicyClient("127.0.0.1", port, timeout=10)
        for _, why in bad:
            with pytest.raises(PolicyError, match=re.escape(why)):   # ReplyError, a PolicyError
                c.infer({"seed": 5})
        assert np.array_equal(c.infer({"seed": 5})["actions"], good)   # a good reply passes
        c.close()
    finally:
        server.shutdown()


def _connect_in_thread(port: int, connect_timeout: float):
    out: dict = {}

    def go():
        t0 = time.monotonic()
        try:
            PolicyClient("127.0.0.1", port, connect_timeout=connect_timeout)
            out["result"] = "connected"
        except Exception as e:  # noqa: BLE001 - what it raised is the result
            out["result"] = e
        out["seconds"] = time.monotonic() - t0

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(30)
    return t, out


def test_connect_waits_at_most_connect_timeout_for_the_metadata():
    """A websocket server that completes the handshake and never sends the metadata."""
    gate = threading.Event()
    server = sync_serve(lambda ws: gate.wait(60), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t, out = _connect_in_thread(server.socket.getsockname()[1], 1.5)
        assert not t.is_alive(), "PolicyClient hung waiting for metadata past connect_timeout"
        assert isinstance(out["result"], TimeoutError) and "no metadata" in str(out["result"])
        assert out["seconds"] < 10
    finally:
        gate.set()
        server.shutdown()


def test_connect_waits_at_most_connect_timeout_for_a_silent_listener():
    """A TCP listener that accepts and never answers the handshake."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        t, out = _connect_in_thread(lsock.getsockname()[1], 1.5)
        assert not t.is_alive(), "PolicyClient hung on a silent listener past connect_timeout"
        assert isinstance(out["result"], (TimeoutError, OSError)), out
        assert out["seconds"] < 10

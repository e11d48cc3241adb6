"""The policy every transport shares (serving/policy.py), attacked through the websocket server on
127.0.0.1: a duplicate Authorization header is refused (401), never a 500; wrong keys cannot flood
the log; admission is counted in the same step as it is checked; and what one connection can make
the server hold while a plan runs is bounded (peak RSS of a real `vitac-deploy serve` process)."""

from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("websockets")
from websockets.exceptions import InvalidStatus  # noqa: E402

from tests.test_serving import CEM, connect, start  # noqa: E402
from vitac_deploy.client import PolicyClient, packb, unpackb  # noqa: E402
from vitac_deploy.serving import ServeOptions  # noqa: E402
from vitac_deploy.benchmarks.serving import robot_requests, tiny_artifact  # noqa: E402


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("policy") / "art")


def _handshake(port: int, headers: list) -> tuple:
    """A websocket upgrade request with exactly these headers (duplicates kept): (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", "/", skip_accept_encoding=True)
    for k, v in [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
                 ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")] + headers:
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    out = resp.status, resp.read(200) if resp.status != 101 else b""
    conn.close()
    return out


def test_duplicate_authorization_header_is_401_not_500(art, caplog):
    s = start(art, key="k3y")
    try:
        key = ("Authorization", "Api-Key k3y")
        for headers in ([key, key], [key, ("Authorization", "Api-Key wrong")], [("Authorization", "x")] * 3):
            status, body = _handshake(s.port, headers)
            assert status == 401, (headers, status, body)
            assert b"Authorization" in body and b"Traceback" not in body
        assert _handshake(s.port, [key])[0] == 101      # one right header still gets in
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a handshake raised"
    finally:
        s.stop()


def test_wrong_keys_cannot_flood_the_log(art, caplog):
    s = start(art, key="k3y")
    caplog.set_level(logging.WARNING, logger="vitac_deploy.serving")
    try:
        for i in range(40):
            with pytest.raises(InvalidStatus, match="401"):
                PolicyClient("127.0.0.1", s.port, api_key=f"wrong{i}", connect_timeout=2)
    finally:
        s.stop()
    lines = [r.getMessage() for r in caplog.records if "API key" in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines


def test_rate_limited_log_counts_what_it_did_not_log(caplog):
    from vitac_deploy.serving.policy import RateLimitedLog

    caplog.set_level(logging.WARNING, logger="t")
    rl = RateLimitedLog(logging.getLogger("t"), interval_s=0.2)
    logged = [rl.warning("k", f"m{i}") for i in range(10)]
    assert logged == [True] + [False] * 9
    time.sleep(0.25)
    assert rl.warning("k", "later") and "9 more like it" in caplog.records[-1].getMessage()
    assert rl.warning("other", "another reason")     # one key does not silence another


def test_admission_is_checked_and_counted_in_one_step(art):
    """64 threads admit at once against max_robots 2: exactly 2 tickets; released slots are reused."""
    from vitac_deploy.serving import open_service
    from vitac_deploy.serving.policy import Policy, Refusal

    service = open_service(art, backend="onnxruntime", cem=CEM, options=ServeOptions(max_robots=2))
    try:
        policy = Policy(service)
        barrier, got, refused = threading.Barrier(64), [], []

        def go():
            barrier.wait()
            try:
                got.append(policy.admit("t"))
            except Refusal as e:
                refused.append(e.status)

        ts = [threading.Thread(target=go) for _ in range(64)]
        [t.start() for t in ts]
        [t.join(30) for t in ts]
        assert len(got) == 2 and refused == [503] * 62 and policy.connected == 2 == service.connected
        got[0].release()
        got[0].release()                           # idempotent: one slot freed, not two
        assert policy.connected == 1
        policy.admit("t").release()
        policy.stop()
        with pytest.raises(Refusal, match="shutting down"):
            policy.admit("t")
    finally:
        service.close()


def test_simultaneous_handshakes_never_exceed_max_robots(art):
    s = start(art, max_robots=2)
    try:
        barrier, lock, opened, refused = threading.Barrier(8), threading.Lock(), [], []

        def go():
            barrier.wait()
            try:
                ws = connect(f"ws://127.0.0.1:{s.port}", compression=None, open_timeout=30)
                unpackb(ws.recv(timeout=30))           # served: the metadata came
                with lock:
                    opened.append(ws)
            except Exception as e:  # noqa: BLE001 - 503 at the handshake or 1013 after it
                with lock:
                    refused.append(type(e).__name__)

        ts = [threading.Thread(target=go) for _ in range(8)]
        [t.start() for t in ts]
        [t.join(60) for t in ts]
        assert len(opened) <= 2 and len(opened) + len(refused) == 8, (len(opened), refused)
        [ws.close() for ws in opened]
    finally:
        s.stop()


def _vm(pid: int, field: str) -> int:
    """VmRSS / VmHWM (peak RSS) of a process, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    raise RuntimeError(field)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux) to read peak RSS")
def test_a_connection_cannot_make_the_server_hold_its_frames_while_a_plan_runs(art):
    """One client sends a request that waits 4 s (a batch window, a second robot connected), then
    24 frames of 15 MiB (under the 4x hard limit of --max-message-mb 4, so they are read). The
    server's peak RSS may grow by a few frames, not by all of them (websockets' default queue held
    16: about 240 MiB here)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "vitac_deploy", "serve", str(art), "--backend", "onnxruntime",
                          "--port", "0", "--samples", "8", "--topk", "3", "--cem-steps", "2",
                          "--batch-window-ms", "4000", "--max-message-mb", "4"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        assert "serving" in line, line + p.stderr.read()
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        req = robot_requests(1, 3)[0]
        with PolicyClient("127.0.0.1", port) as idle:
            idle.infer(req)                           # warm: arenas, encoder, planner
            base = _vm(p.pid, "VmRSS")
            ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None)
            unpackb(ws.recv(timeout=30))
            ws.send(packb(req))                        # waits for the window: idle is connected
            junk = b"\x00" * (15 << 20)

            def flood():
                try:
                    for _ in range(24):
                        ws.send(junk)
                except Exception:  # noqa: BLE001 - the connection is closed under it at the end
                    pass
            sender = threading.Thread(target=flood, daemon=True)
            sender.start()
            sender.join(3.0)                           # blocks once the server stops reading
            time.sleep(0.5)
            grown = _vm(p.pid, "VmHWM") - base
            ws.close()
        print(f"peak RSS grew by {grown} MiB")
        assert grown < 120, f"peak RSS grew by {grown} MiB while one connection's plan ran"
    finally:
        p.kill()
        p.wait()

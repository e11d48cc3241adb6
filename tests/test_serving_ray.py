"""`vitac-deploy serve --ray` on a local Ray instance (loopback, bounded, stopped at the end): the
same protocol as the single-machine server through Ray Serve's proxy, driven by the project's own
`PolicyClient` and by raw websocket frames. Skipped where the `ray` extra is not installed (one run
starts Ray: about 20 s here)."""

import http.client
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="needs the ray extra: pip install 'vitac-deploy[ray]'")
pytest.importorskip("websockets")
from tests.test_serving import CEM, Alone, _raw_bad_frames, connect  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from vitac_deploy.client import PolicyClient, PolicyError, packb, unpackb  # noqa: E402
from vitac_deploy.serving import ServeOptions  # noqa: E402
from vitac_deploy.benchmarks.serving import robot_requests, tiny_artifact  # noqa: E402

pytestmark = pytest.mark.ray
KEY = "s3cret"


def _free_port() -> int:
    # Ray Serve's proxy takes no port 0: a port free a moment ago on loopback
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("serve_ray") / "art")


@pytest.fixture(scope="module")
def alone(art):
    return Alone(art)


@pytest.fixture(scope="module")
def ray_server(art):
    """A local Ray instance serving one replica on loopback; deleted and stopped after the module."""
    from vitac_deploy.serving.ray_serve import build_app, run_ray

    port = _free_port()
    app = build_app(art, backend="onnxruntime", cem=CEM, options=ServeOptions(batch_window_ms=300.0, max_robots=4),
                    api_key=KEY, replicas=1)
    stop, ready, errors = threading.Event(), threading.Event(), []

    def run():
        try:
            run_ray(app, "127.0.0.1", port, None, 1, say=lambda m: None, stop=stop, ready=ready)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            ready.set()

    t = threading.Thread(target=run, name="ray-serve-test", daemon=True)
    t.start()
    assert ready.wait(180) and not errors, errors
    yield port
    stop.set()
    t.join(120)
    assert not t.is_alive(), "Ray Serve did not stop within 120 s"


def test_ray_plan_is_the_plan_alone(ray_server, alone):
    with PolicyClient("127.0.0.1", ray_server, api_key=KEY) as c:
        md = c.metadata
        assert md["action_dim"] == 7 and md["rollout"] == 2 and md["cem"]["samples"] == 8
        assert md["backend"] == "onnxruntime" and md["max_robots"] == 4
        req = robot_requests(1, 5)[0]
        rep = c.infer(req)
        assert rep["actions"].dtype == np.float32 and rep["actions"].shape == (2, 7) and rep["seed"] == req["seed"]
        assert isinstance(rep["server_timing"]["replica"], str) and rep["server_timing"]["replica"]
        assert np.abs(rep["actions"] - alone(req, req["seed"])).max() <= 1e-6
        again = {k: v for k, v in req.items() if k not in ("goal/image", "seed")}   # the cached goal
        rep2 = c.infer(again)
        assert np.abs(rep2["actions"] - alone(again, rep2["seed"], goal=req["goal/image"])).max() <= 1e-6


def test_ray_robots_batched_each_gets_its_plan_alone(ray_server, alone):
    """3 robots at once in a 300 ms window: @serve.batch plans them together, each its plan alone."""
    reqs = robot_requests(3, 11, size=(40, 90))
    clients = [PolicyClient("127.0.0.1", ray_server, api_key=KEY) for _ in reqs]
    replies, barrier = [None] * 3, threading.Barrier(3)

    def go(i):
        barrier.wait()
        replies[i] = clients[i].infer(reqs[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    [c.close() for c in clients]
    assert max(r["server_timing"]["batch"] for r in replies) >= 2, [r["server_timing"] for r in replies]
    for req, rep in zip(reqs, replies):
        assert np.abs(rep["actions"] - alone(req, req["seed"])).max() <= 1e-6


def test_ray_error_frames_keep_the_connection(ray_server, alone):
    good = robot_requests(1, 3)[0]
    with connect(f"ws://127.0.0.1:{ray_server}", compression=None, max_size=None,
                 additional_headers={"Authorization": f"Api-Key {KEY}"}) as ws:
        unpackb(ws.recv(timeout=30))
        for frame, why in _raw_bad_frames() + [("hello", "text frames are not requests")]:
            ws.send(frame)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and reply.startswith("error: ") and why in reply, (why, reply)
            assert "\n" not in reply and "Traceback" not in reply
        ws.send(packb(good))
        rep = unpackb(ws.recv(timeout=30))
        assert np.abs(rep["actions"] - alone(good, good["seed"])).max() <= 1e-6
    with PolicyClient("127.0.0.1", ray_server, api_key=KEY) as c, pytest.raises(PolicyError, match="no goal yet"):
        c.infer({k: v for k, v in good.items() if k != "goal/image"})


def test_ray_healthz_and_api_key(ray_server):
    conn = http.client.HTTPConnection("127.0.0.1", ray_server, timeout=10)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"ok\n"
    for key in (None, "wrong"):
        t0 = time.monotonic()
        with pytest.raises(InvalidStatus, match="401"):
            PolicyClient("127.0.0.1", ray_server, api_key=key, connect_timeout=1)
        assert time.monotonic() - t0 < 30


def test_ray_duplicate_authorization_header_is_401(ray_server):
    from tests.test_serving_policy import _handshake

    key = ("Authorization", f"Api-Key {KEY}")
    status, body = _handshake(ray_server, [key, key])
    assert status == 401 and b"Traceback" not in body, (status, body)


def test_ray_simultaneous_handshakes_never_exceed_max_robots(ray_server):
    """10 handshakes at once against --max-robots 4 (one replica): at most 4 are served (the
    check and the count are one step; before, all 10 passed the check before any was counted)."""
    barrier, lock, opened, refused = threading.Barrier(10), threading.Lock(), [], []

    def go():
        barrier.wait()
        try:
            ws = connect(f"ws://127.0.0.1:{ray_server}", compression=None, open_timeout=60,
                         additional_headers={"Authorization": f"Api-Key {KEY}"})
            unpackb(ws.recv(timeout=60))        # served: the metadata came
            with lock:
                opened.append(ws)
        except Exception as e:  # noqa: BLE001 - refused at the handshake
            with lock:
                refused.append(type(e).__name__)

    ts = [threading.Thread(target=go) for _ in range(10)]
    [t.start() for t in ts]
    [t.join(120) for t in ts]
    try:
        assert len(opened) <= 4 and len(opened) + len(refused) == 10, (len(opened), refused)
    finally:
        [ws.close() for ws in opened]
    time.sleep(1.0)
    with PolicyClient("127.0.0.1", ray_server, api_key=KEY) as c:   # the slots were released
        assert c.metadata["max_robots"] == 4


def test_cli_serve_ray_plans_and_stops_on_sigint(art, alone):
    """`vitac-deploy serve ART --ray`: its own local Ray instance, the exact plan, SIGINT: exit 0."""
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "vitac_deploy", "serve", str(art), "--ray", "--replicas", "1",
                          "--gpus-per-replica", "0", "--backend", "onnxruntime", "--port", str(port),
                          "--samples", "8", "--topk", "3", "--cem-steps", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        line = p.stdout.readline()
        assert f"serving on ws://127.0.0.1:{port} through Ray Serve" in line, line
        with PolicyClient("127.0.0.1", port) as c:
            req = robot_requests(1, 8)[0]
            assert np.abs(c.infer(req)["actions"] - alone(req, req["seed"])).max() <= 1e-6
        p.send_signal(signal.SIGINT)
        assert p.wait(120) == 0
        assert "stopped" in p.stdout.read()
    finally:
        if p.poll() is None:   # SIGINT again lets it stop its Ray instance; kill only as the last resort
            p.send_signal(signal.SIGINT)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_example_serve_yaml_builds(tmp_path):
    """examples/serve.yaml's args are what app_builder takes (unknown ones are refused: one line).
    `serve run` on a copy (artifact, cpu, one replica) was run by hand: docs/serving.md."""
    import yaml

    from vitac_deploy.errors import VitacError
    from vitac_deploy.serving.ray_serve import app_builder

    conf = yaml.safe_load((Path(__file__).parents[1] / "examples" / "serve.yaml").read_text())
    app = conf["applications"][0]
    assert app["import_path"] == "vitac_deploy.serving.ray_serve:app_builder"
    assert conf["http_options"]["host"] == "127.0.0.1"
    assert app_builder(app["args"]) is not None
    with pytest.raises(VitacError, match="unknown args \\['sample'\\]"):
        app_builder({**app["args"], "sample": 8})

"""`vitac-deploy serve` on loopback, with real sockets and ONNX Runtime on a reduced-size model: the
served plan equals `plan(...)` alone within 1e-6 (batched or not), the protocol (metadata, one
reply per request, one-line error frames that keep the connection, /healthz, API key, max robots),
bad input, disconnects, a bounded load test, SIGTERM/SIGINT, and the real openpi-client where it
can be installed."""

import http.client
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

pytest.importorskip("websockets")
from websockets.sync.client import connect as _connect  # noqa: E402

from vitac_deploy.client import PolicyClient, PolicyError, packb, unpackb  # noqa: E402
from vitac_deploy.planning import CEMOptions, plan  # noqa: E402
from vitac_deploy.runtimes import open_runtime  # noqa: E402
from vitac_deploy.runtimes import open_encoder  # noqa: E402
from vitac_deploy.serving import ServeOptions, open_service  # noqa: E402
from vitac_deploy.benchmarks.serving import robot_requests, tiny_artifact  # noqa: E402
from vitac_deploy.serving.server import PolicyServer  # noqa: E402

def connect(uri, **kw):
    """The raw websocket client (legacy=True where websockets asks for it: direct use)."""
    import inspect

    return _connect(uri, **kw, **({"legacy": True} if "legacy" in inspect.signature(_connect).parameters else {}))


CEM = CEMOptions(samples=8, topk=3, cem_steps=2)
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("serve") / "art")


class Alone:
    """The plan each request gets from `plan` alone: open_encoder(...).encode of both images."""

    def __init__(self, art):
        self.enc = open_encoder(art / "encoder", backend="onnxruntime")
        self.rt = open_runtime(art, backend="onnxruntime")

    def __call__(self, req, seed, goal=None, cem=CEM):
        goal = req.get("goal/image", goal)
        cur, g = self.enc.encode(req["observation/image"][None, None]), self.enc.encode(goal[None, None])
        return plan(self.rt, cur, g, req["observation/state"][None], cem, seed=seed).actions


@pytest.fixture(scope="module")
def alone(art):
    return Alone(art)


def start(art, cem=CEM, key=None, **opts):
    service = open_service(art, backend="onnxruntime", cem=cem, options=ServeOptions(**opts))
    server = PolicyServer(service, port=0, api_key=key)
    server.start_in_thread()
    return server


@pytest.fixture(scope="module")
def server(art):
    s = start(art, batch_window_ms=150.0)
    yield s
    s.stop()


def test_served_plan_is_the_plan_alone(server, alone):
    with PolicyClient("127.0.0.1", server.port) as c:
        md = c.metadata
        assert md["action_dim"] == 7 and md["rollout"] == 2 and md["cem"]["samples"] == 8
        assert md["observation"]["observation/state"] == {"dtype": "float32", "shape": [7]}
        assert md["backend"] == "onnxruntime" and md["precision"] == "fp32" and "vitac_deploy" in md["versions"]
        req = robot_requests(1, 5)[0]
        rep = c.infer(req)
        assert rep["actions"].dtype == np.float32 and rep["actions"].shape == (2, 7)
        assert rep["energies"].shape == (2,) and rep["seed"] == req["seed"]
        assert set(rep["server_timing"]) >= {"infer_ms", "encode_ms", "plan_ms", "queue_ms"}
        assert np.abs(rep["actions"] - alone(req, req["seed"])).max() <= 1e-6
        # no goal: the connection's last one (cached); no seed: the reply names the one drawn
        again = {k: v for k, v in req.items() if k not in ("goal/image", "seed")}
        rep2 = c.infer(again)
        assert np.abs(rep2["actions"] - alone(again, rep2["seed"], goal=req["goal/image"])).max() <= 1e-6
    with PolicyClient("127.0.0.1", server.port) as c, pytest.raises(PolicyError, match="no goal yet"):
        c.infer({k: v for k, v in req.items() if k != "goal/image"})


def test_robots_batched_each_gets_its_plan_alone(server, alone):
    """4 robots at once in a 150 ms window: planned in one batch (images in one encoder call,
    rollouts of all robots' samples together), each plan the one it gets alone."""
    reqs = robot_requests(4, 11, size=(40, 90))
    reqs[1]["observation/image"] = reqs[1]["observation/image"][:, :50]   # another camera size
    clients = [PolicyClient("127.0.0.1", server.port) for _ in reqs]
    replies, barrier = [None] * 4, threading.Barrier(4)
    before = len(server.service.batches)

    def go(i):
        barrier.wait()
        replies[i] = clients[i].infer(reqs[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    [c.close() for c in clients]
    assert max(server.service.batches[before:]) >= 2, server.service.batches[before:]
    for req, rep in zip(reqs, replies):
        assert np.abs(rep["actions"] - alone(req, req["seed"])).max() <= 1e-6


def test_healthz(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"ok\n"


def _raw_bad_frames():
    good = robot_requests(1, 3)[0]
    arr = lambda a, **kw: {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str, b"shape": a.shape, **kw}  # noqa: E731

    def with_(**kw):
        m = dict(good)
        m.update(kw)
        return packb(m)

    obj = {k: (arr(v) if isinstance(v, np.ndarray) else v) for k, v in good.items()}
    obj["observation/state"] = {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": (1,)}
    state = good["observation/state"]
    return [
        (b"\xc1\xc1", "not a msgpack message"),
        (pickle.dumps(good), "not a msgpack message"),
        (msgpack.packb(msgpack.ExtType(5, b"xx")), "extension type"),
        (msgpack.packb(obj, use_bin_type=True), "unsupported dtype"),
        (msgpack.packb({**obj, "observation/state": arr(state.astype(np.complex64))}, use_bin_type=True),
         "unsupported dtype"),
        (packb([1, 2]), "must be a map"),
        (packb({k: v for k, v in good.items() if k != "observation/state"}), "missing key 'observation/state'"),
        (with_(prompt="pick"), "unknown key 'prompt'"),
        (with_(**{"observation/image": good["observation/image"].astype(np.float32)}), "must be uint8"),
        (with_(**{"observation/image": good["observation/image"][..., 0]}), "shape"),
        (with_(**{"observation/image": np.zeros((0, 0, 3), np.uint8)}), "at least 2x2"),
        (with_(**{"observation/image": np.zeros((1, 1, 3), np.uint8)}), "at least 2x2"),
        (with_(**{"goal/image": np.zeros((1, 1, 3), np.uint8)}), "at least 2x2"),
        (with_(**{"observation/state": state[:6]}), "shape [7]"),
        (with_(**{"observation/state": state.astype(np.int32)}), "float array"),
        (with_(**{"observation/state": np.full(7, np.nan, np.float32)}), "NaN or inf"),
        (with_(**{"observation/state": np.full(7, np.inf)}), "NaN or inf"),
        (with_(seed=-1), "seed"),
        (with_(seed="7"), "seed"),
        (msgpack.packb({"observation/image": {b"__ndarray__": True, b"data": b"xx", b"dtype": "|u1",
                                              b"shape": (4, 4, 3)}}), "needs 48 bytes"),
    ]


def test_bad_frames_get_one_line_and_the_connection_stays(server, alone):
    good = robot_requests(1, 3)[0]
    with connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None) as ws:
        unpackb(ws.recv())
        for frame, why in _raw_bad_frames() + [("hello", "text frames are not requests")]:
            ws.send(frame)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and reply.startswith("error: ") and why in reply, (why, reply)
            assert "\n" not in reply and "Traceback" not in reply
        ws.send(packb(good))   # still served, exactly
        rep = unpackb(ws.recv(timeout=30))
        assert np.abs(rep["actions"] - alone(good, good["seed"])).max() <= 1e-6


def test_oversize_message_api_key_and_max_robots(art, monkeypatch):
    from websockets.exceptions import InvalidStatus

    s = start(art, key="s3cret", max_robots=2, max_message_mb=0.01)
    try:
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus, match="401"):
                PolicyClient("127.0.0.1", s.port, api_key=key, connect_timeout=1)
        a = PolicyClient("127.0.0.1", s.port, api_key="s3cret")
        b = PolicyClient("127.0.0.1", s.port, api_key="s3cret")
        with pytest.raises(InvalidStatus, match="503") as e:
            PolicyClient("127.0.0.1", s.port, api_key="s3cret", connect_timeout=1)
        assert b"server full" in e.value.response.body
        big = robot_requests(1, 1, size=(80, 80))[0]            # 2 x 19 KiB images > 0.01 MiB
        with pytest.raises(PolicyError, match="exceeds the limit"):
            a.infer(big)
        assert a.infer(robot_requests(1, 1, size=(20, 20))[0])["actions"].shape == (2, 7)   # still usable
        b.close()
        time.sleep(0.2)
        PolicyClient("127.0.0.1", s.port, api_key="s3cret").close()   # a freed slot is taken again
        a.close()
    finally:
        s.stop()


def test_disconnect_mid_plan_disturbs_nothing(art, alone):
    cem = CEMOptions(samples=16, topk=3, cem_steps=6)
    s = start(art, cem=cem, batch_window_ms=0.0)
    try:
        req = robot_requests(1, 9)[0]
        for _ in range(3):   # leave while queued or planning
            ws = connect(f"ws://127.0.0.1:{s.port}", compression=None)
            ws.recv()
            ws.send(packb(req))
            ws.close()
        with PolicyClient("127.0.0.1", s.port) as c:
            rep = c.infer(req)
        assert np.abs(rep["actions"] - alone(req, req["seed"], cem=cem)).max() <= 1e-6
        deadline = time.monotonic() + 10
        while (s.connections or s.in_flight) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not s.connections and s.in_flight == 0 and s.service.pending() == 0
    finally:
        s.stop()


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_load_mixed_valid_and_malformed(server, alone):
    """4 clients x 40 requests, every 4th malformed, in two halves: every valid request answered with
    its exact plan, every bad one refused, none lost; RSS flat between the halves. Bounded: 120 s."""
    pool = robot_requests(4, 21)
    want = {i: alone(r, r["seed"]) for i, r in enumerate(pool)}
    bad = packb({"observation/image": np.zeros((3, 3), np.uint8)})
    rss = []

    def half(n):
        counts = {"ok": 0, "refused": 0, "wrong": 0}
        lock = threading.Lock()

        def robot(k):
            with connect(f"ws://127.0.0.1:{server.port}", compression=None, open_timeout=10) as ws:
                ws.recv(timeout=10)
                for j in range(n):
                    i = (k + j) % len(pool)
                    ws.send(bad if j % 4 == 3 else packb(pool[i]))
                    rep = ws.recv(timeout=60)
                    with lock:
                        if j % 4 == 3:
                            counts["refused" if isinstance(rep, str) else "wrong"] += 1
                        elif isinstance(rep, bytes) and np.abs(unpackb(rep)["actions"] - want[i]).max() <= 1e-6:
                            counts["ok"] += 1
                        else:
                            counts["wrong"] += 1

        threads = [threading.Thread(target=robot, args=(k,)) for k in range(4)]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
        assert not any(t.is_alive() for t in threads)
        return counts

    t0 = time.monotonic()
    half(8)   # warm: arenas, caches
    rss.append(_rss_mb())
    counts = half(16)
    counts2 = half(16)
    rss.append(_rss_mb())
    assert time.monotonic() - t0 < 120
    for c in (counts, counts2):
        assert c == {"ok": 4 * 12, "refused": 4 * 4, "wrong": 0}, c
    assert rss[1] - rss[0] < 25, rss


def _serve_cli(art, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "vitac_deploy", "serve", str(art), "--backend", "onnxruntime",
                          "--port", "0", "--samples", "64", "--topk", "4", "--cem-steps", "40", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    assert "serving" in line, line + p.stderr.read()
    port = int(line.split("ws://127.0.0.1:")[1].split()[0])
    return p, port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_plan_in_flight_and_exits_0(art, sig):
    p, port = _serve_cli(art)
    try:
        c = PolicyClient("127.0.0.1", port)
        got = {}
        t = threading.Thread(target=lambda: got.update(rep=c.infer(robot_requests(1, 2)[0])))
        t.start()
        time.sleep(0.3)           # the plan (40 CEM steps) is running
        p.send_signal(sig)
        t.join(60)
        assert got["rep"]["actions"].shape == (2, 7)
        assert p.wait(60) == 0
        with pytest.raises(OSError):
            PolicyClient("127.0.0.1", port, connect_timeout=0.5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cli_errors_are_one_line(art, tmp_path):
    r = subprocess.run([sys.executable, "-m", "vitac_deploy", "serve", str(art), "--api-key-env", "VITAC_NO_SUCH_VAR",
                        "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "VITAC_NO_SUCH_VAR" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "vitac_deploy", "serve", str(tmp_path), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_warns_on_a_public_bind_without_key(tmp_path):
    """The warning comes before anything opens (so nothing binds a public address here)."""
    from vitac_deploy import VitacError
    from vitac_deploy.serving import serve

    said = []
    with pytest.raises(VitacError):
        serve(tmp_path, host="0.0.0.0", say=said.append)   # noqa: S104 - no artifact there: fails before binding
    assert said and "without an API key" in said[0]
    said.clear()
    with pytest.raises(VitacError):
        serve(tmp_path, host="127.0.0.1", say=said.append)
    assert not said


# -- the real openpi-client (pins numpy<2: its own virtual environment) ------------------------------------
OPENPI_VENV = Path(os.environ.get("VITAC_OPENPI_VENV", "/tmp/vitac-openpi-client-venv"))


def _openpi_python():
    """openpi-client's python in OPENPI_VENV, made there if the path does not exist yet. An existing
    path is only ever used, never removed or written over (VITAC_OPENPI_VENV may name anything);
    a failed install removes only the directory this call created."""
    py = OPENPI_VENV / "bin" / "python"
    if os.path.lexists(OPENPI_VENV):
        if not py.exists():
            return None
        ok = subprocess.run([str(py), "-c", "import openpi_client.websocket_client_policy"], capture_output=True)
        return py if ok.returncode == 0 else None
    if os.environ.get("VITAC_OPENPI_INSTALL", "1") == "0":
        return None
    try:
        OPENPI_VENV.mkdir()   # ours from here on: fails if it appeared meanwhile
    except OSError:
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(OPENPI_VENV)], check=True, capture_output=True, timeout=120)
        # openpi-client's metadata misses typing_extensions; --timeout/--retries: fail fast offline
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--timeout", "10", "--retries", "1", "openpi-client",
                        "typing_extensions"], check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError):
        shutil.rmtree(OPENPI_VENV, ignore_errors=True)   # made by this call just above
        return None
    return py


OPENPI_SCRIPT = r"""
import json, sys
import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy
port, key = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(4)
obs = {"observation/exterior_image_1_left": rng.integers(0, 256, (45, 60, 3), dtype=np.uint8),
       "observation/state": np.array([0.1, -0.2, 0.3, 0.1, 0.2, -0.1, 0.5], np.float32),
       "goal/image": rng.integers(0, 256, (45, 60, 3), dtype=np.uint8), "seed": 77}
policy = WebsocketClientPolicy("127.0.0.1", port, api_key=key)
md = policy.get_server_metadata()
out = policy.infer(obs)
try:
    policy.infer({"observation/state": obs["observation/state"]})
    err = None
except RuntimeError as e:
    err = str(e)
again = policy.infer(obs)
np.savez(sys.argv[3], actions=out["actions"], again=again["actions"], image=obs["observation/exterior_image_1_left"],
         goal=obs["goal/image"], state=obs["observation/state"])
print(json.dumps({"action_dim": md["action_dim"], "seed": int(out["seed"]), "err": err,
                  "numpy": np.__version__}))
"""


def test_real_openpi_client(art, alone, tmp_path, monkeypatch):
    py = _openpi_python()
    if py is None:
        pytest.skip(f"openpi-client could not be installed in {OPENPI_VENV} (no registry access?)")
    monkeypatch.setenv("VITAC_TEST_KEY", "k3y")
    s = start(art, key="k3y", image_key="observation/exterior_image_1_left")
    try:
        (tmp_path / "drive.py").write_text(OPENPI_SCRIPT)
        r = subprocess.run([str(py), str(tmp_path / "drive.py"), str(s.port), "k3y", str(tmp_path / "out.npz")],
                           capture_output=True, text=True, timeout=120, env={"PATH": os.environ.get("PATH", "")})
        assert r.returncode == 0, r.stderr
    finally:
        s.stop()
    import json

    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["action_dim"] == 7 and info["seed"] == 77 and info["numpy"].startswith("1.")
    assert "missing key" in info["err"]
    z = np.load(tmp_path / "out.npz")
    req = {"observation/image": z["image"], "observation/state": z["state"], "goal/image": z["goal"]}
    assert np.abs(z["actions"] - alone(req, 77)).max() <= 1e-6
    assert np.array_equal(z["actions"], z["again"])


def test_robot_loop_example(server):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "robot_loop.py"), "--port", str(server.port),
                        "--rate", "20", "--steps", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "connected: vitac-deploy serve" in r.stdout and r.stdout.count("-> pose") == 3


def test_client_and_serving_import_no_torch():
    code = ("import sys, vitac_deploy.client, vitac_deploy.serving, vitac_deploy.serving.server; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_served_plan_is_what_the_plan_cli_writes(server, art, tmp_path):
    """`vitac-deploy plan ... --seed S --json OUT` writes the served `actions` for seed S."""
    import json

    req = robot_requests(1, 31, size=(50, 70))[0]
    np.save(tmp_path / "now.npy", req["observation/image"])
    np.save(tmp_path / "goal.npy", req["goal/image"])
    with PolicyClient("127.0.0.1", server.port) as c:
        rep = c.infer(req)
    pose = ",".join(repr(float(v)) for v in req["observation/state"])
    r = subprocess.run([sys.executable, "-m", "vitac_deploy", "plan", str(art), "--observation", str(tmp_path / "now.npy"),
                        "--goal", str(tmp_path / "goal.npy"), "--pose", pose, "--backend", "onnxruntime",
                        "--samples", "8", "--topk", "3", "--cem-steps", "2", "--seed", str(rep["seed"]),
                        "--json", str(tmp_path / "plan.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cli = np.array(json.loads((tmp_path / "plan.json").read_text())["actions"], np.float32)
    assert np.abs(cli - rep["actions"]).max() <= 1e-6


def test_protocol_without_a_transport():
    """The checks a Ray Serve wrapper reuses: renamed image key, option errors, seed forms."""
    from vitac_deploy import VitacError
    from vitac_deploy.serving import RequestError, parse_request

    opts = ServeOptions(image_key="observation/exterior_image_1_left")
    img, state = np.zeros((4, 6, 3), np.uint8), np.zeros(7)
    req = parse_request({"observation/exterior_image_1_left": img, "observation/state": state, "seed": np.int64(5)},
                        opts, 7)
    assert req.seed == 5 and req.goal is None and req.pose.dtype == np.float32 and req.pose.shape == (1, 7)
    with pytest.raises(RequestError, match="missing key 'observation/exterior_image_1_left'"):
        parse_request({"observation/state": state}, opts, 7)
    with pytest.raises(RequestError, match="seed"):
        parse_request({"observation/exterior_image_1_left": img, "observation/state": state, "seed": True}, opts, 7)
    for bad in (ServeOptions(image_key="seed"), ServeOptions(max_robots=0), ServeOptions(batch_window_ms=-1),
                ServeOptions(max_message_mb=0)):
        with pytest.raises(VitacError):
            bad.check()


def test_client_reconnects_and_resends_its_goal(art, alone):
    """PolicyClient(reconnect=True): the server goes away and comes back on the same port (a replica
    restarted); the next request, without a goal, is planned toward the goal sent before, exactly."""
    from websockets.exceptions import ConnectionClosed

    s, s2 = start(art), None
    port = s.port
    c = PolicyClient("127.0.0.1", port, reconnect=True, connect_timeout=30)
    plain = PolicyClient("127.0.0.1", port)
    try:
        req = robot_requests(1, 21)[0]
        c.infer(req)
        s.stop()
        time.sleep(0.5)
        s2 = PolicyServer(open_service(art, backend="onnxruntime", cem=CEM), port=port)
        s2.start_in_thread()
        again = {k: v for k, v in req.items() if k != "goal/image"}
        rep = c.infer(again)
        assert c.reconnects == 1
        assert np.abs(rep["actions"] - alone(again, again["seed"], goal=req["goal/image"])).max() <= 1e-6
        with pytest.raises(ConnectionClosed):   # without reconnect: the loss is the caller's to handle
            plain.infer(again)
    finally:
        c.close()
        if s2 is None:   # the first server is still up when the test failed before stopping it
            s.stop()
        else:
            s2.stop()

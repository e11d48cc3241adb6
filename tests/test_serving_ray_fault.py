"""`serve --ray` with two replicas on a local Ray instance (loopback, bounded, stopped at the end): a
replica killed in the middle of a plan gives its robot an error or a closed connection, never an
action; the other replica keeps serving exactly; Ray restarts the dead one and a reconnecting robot
is served again. Skipped without the `ray` extra."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="needs the ray extra: pip install 'vitac-deploy[ray]'")
pytest.importorskip("websockets")
from tests.test_serving import Alone  # noqa: E402
from tests.test_serving_ray import _free_port  # noqa: E402

from vitac_deploy.client import PolicyClient  # noqa: E402
from vitac_deploy.planning import CEMOptions  # noqa: E402
from vitac_deploy.serving import ServeOptions  # noqa: E402
from vitac_deploy.benchmarks.serving import robot_requests, tiny_artifact  # noqa: E402

pytestmark = pytest.mark.ray
SLOW = CEMOptions(samples=8, topk=3, cem_steps=300)   # a plan long enough to be killed in the middle


def _running(serve) -> int:
    st = serve.status().applications["vitac"].deployments["VitacPolicy"]
    return int(st.replica_states.get("RUNNING", 0))


def test_replica_killed_mid_plan(tmp_path):
    import ray
    from ray import serve

    from vitac_deploy.serving.ray_serve import build_app, run_ray

    art = tiny_artifact(tmp_path / "art")
    alone = Alone(art)
    port = _free_port()
    app = build_app(art, backend="onnxruntime", cem=SLOW, options=ServeOptions(batch_window_ms=0.0), replicas=2)
    stop, ready, errors = threading.Event(), threading.Event(), []

    def run():
        try:
            run_ray(app, "127.0.0.1", port, None, 2, say=lambda m: None, stop=stop, ready=ready)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    clients = []
    try:
        assert ready.wait(180) and not errors, errors
        # connections until both replicas have one (the proxy spreads them; bounded)
        by_replica = {}
        req = robot_requests(1, 4)[0]
        for _ in range(12):
            c = PolicyClient("127.0.0.1", port)
            clients.append(c)
            by_replica.setdefault(c.infer(req)["server_timing"]["replica"], c)
            if len(by_replica) == 2:
                break
        assert len(by_replica) == 2, list(by_replica)
        (victim_id, victim), (other_id, other) = sorted(by_replica.items())
        got = {}

        def plan_on_victim():
            try:
                got["reply"] = victim.infer(robot_requests(1, 5)[0])
            except Exception as e:  # noqa: BLE001 - what the robot sees
                got["error"] = e

        th = threading.Thread(target=plan_on_victim)
        th.start()
        time.sleep(0.5)   # its plan (300 CEM steps) is running on the victim
        ray.kill(ray.get_actor(f"SERVE_REPLICA::vitac#VitacPolicy#{victim_id}", namespace="serve"), no_restart=False)
        th.join(60)
        assert "reply" not in got and "error" in got, got   # never an action from a dead replica
        # the other replica keeps serving, exactly
        r2 = robot_requests(1, 6)[0]
        rep = other.infer(r2)
        assert rep["server_timing"]["replica"] == other_id
        assert np.abs(rep["actions"] - alone(r2, r2["seed"], cem=SLOW)).max() <= 1e-6
        # Ray brings the deployment back to two replicas; a reconnecting robot is served
        deadline = time.monotonic() + 90
        while _running(serve) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _running(serve) == 2
        with PolicyClient("127.0.0.1", port) as c:
            assert np.abs(c.infer(r2)["actions"] - alone(r2, r2["seed"], cem=SLOW)).max() <= 1e-6
    finally:
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - the victim's connection is already gone
                pass
        stop.set()
        t.join(120)
    assert not t.is_alive()

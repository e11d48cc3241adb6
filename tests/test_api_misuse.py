"""The Python API used wrongly: every misuse is one clear VitacError, never a crash, a raw numpy or
onnxruntime error, or a silently wrong answer. Real artifacts (a small predictor and encoder
exported into a temporary folder), real ONNX Runtime and torch runtimes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL
from vitac_deploy.encoder import EncoderConfig
from vitac_deploy.errors import VitacError
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.exporters.encoder_artifact import EncoderExportOptions, export_encoder
from vitac_deploy.reference import random_encoder, random_predictor
from vitac_deploy.runtimes import open_encoder, open_runtime

ENCODER = EncoderConfig(img_size=64, patch_size=16, embed_dim=SMALL.embed_dim, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    art = tmp_path_factory.mktemp("misuse") / "art"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(precisions=["fp32"], validate=False))
    export_encoder(random_encoder(ENCODER, 0), art / "encoder", EncoderExportOptions(precisions=["fp32"],
                                                                                      validate=False))
    return art


# Run in a child process: before the fix, a closed ONNX Runtime runtime bound freed buffers and
# the child died of a segmentation fault (or heap corruption) instead of raising.
CLOSED = r"""
import json, sys
import numpy as np
from vitac_deploy.errors import VitacError
from vitac_deploy.runtimes import open_encoder, open_runtime

art, backend = sys.argv[1], sys.argv[2]
rt = open_runtime(art, backend=backend)
cfg = rt.cfg
N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
rng = np.random.default_rng(0)
feats = rng.standard_normal((1, N, D)).astype(np.float32)
act, state = np.zeros((1, A), np.float32), np.zeros((1, A), np.float32)
ctx = feats[:, None]
acts, states = np.zeros((2, 2, A), np.float32), np.zeros((2, 2, A), np.float32)
rt.rollout(ctx, acts, states, 2)
rt.reset(1)
rt.append(feats, act, state)   # a stream under way when it is closed
rt.close()
rt.close()   # closing again does nothing
calls = {
    "append": lambda: rt.append(feats, act, state),
    "reset": lambda: rt.reset(1),
    "rollout": lambda: rt.rollout(ctx, acts, states, 2),
    "set_goal": lambda: rt.set_goal(feats),
    "stage_context": lambda: rt.stage_context(ctx),
    "rollout_energy": lambda: rt.rollout_energy(ctx, acts, states, 2),
}
enc = open_encoder(art + "/encoder", backend=backend)
image = rng.integers(0, 255, (1, 32, 40, 3), dtype=np.uint8)
enc.encode(image)
enc.close()
enc.close()
calls["encode"] = lambda: enc.encode(image)
out = {}
for name, call in calls.items():
    try:
        call()
        out[name] = "no error"
    except VitacError as e:
        out[name] = str(e)
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "torch-reference"])
def test_a_closed_runtime_refuses_every_call(artifact, backend):
    p = subprocess.run([sys.executable, "-c", CLOSED, str(artifact), backend], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    got = json.loads(p.stdout.strip().splitlines()[-1])
    for call, message in got.items():
        assert "was closed: open a new one" in message, (call, message)


def _cli(*args, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_serve_on_a_taken_port_or_unknown_host_is_one_line_exit_2(artifact):
    """Before: `error: internal error (OSError) ...` and exit 1, the code of a parity mismatch."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for host in ("127.0.0.1", "256.1.1.1"):
            p = _cli("serve", artifact, "--host", host, "--port", port, "--samples", 4, "--topk", 2, "--cem-steps", 1)
            assert p.returncode == 2, (host, p.returncode, p.stderr)
            assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
            last = p.stderr.strip().splitlines()[-1]
            assert last.startswith(f"error: cannot listen on {host}:{port}: "), last


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("tensorrt_rtx") is None,
                    reason="TensorRT for RTX is not installed (pip install 'vitac-deploy[tensorrt-rtx]')")
def test_build_engine_with_a_bad_timing_cache_leaves_nothing(artifact, tmp_path):
    """A --timing-cache that is a directory, or in a missing one, is refused before building; before,
    the engine was built, then `internal error (IsADirectoryError)`, exit 1, and ENGINE.plan.partial
    and the cache's .partial were left behind."""
    (tmp_path / "cache").mkdir()
    for cache, why in ((tmp_path / "cache", "exists and is not a file"), (tmp_path / "no" / "tc", "does not exist")):
        p = _cli("build-engine", artifact, "--out", tmp_path / "x.plan", "--flavour", "tensorrt-rtx",
                 "--precision", "fp32", "--timing-cache", cache, timeout=600)
        assert p.returncode == 2, (p.returncode, p.stderr[-1500:])
        last = p.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and why in last and "internal error" not in p.stderr, p.stderr[-1500:]
        assert sorted(q.name for q in tmp_path.iterdir()) == ["cache"], list(tmp_path.iterdir())
        assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_encoder_pixels_must_be_float(artifact, backend):
    """Pixels are preprocessed floats; before, uint8 frames that skipped preprocessing, bool,
    object and complex arrays (the imaginary part dropped) were cast and encoded without a word."""
    enc = open_encoder(artifact / "encoder", backend=backend)
    S = enc.cfg.img_size
    good = np.random.default_rng(0).standard_normal((2, 3, S, S))
    want = enc.encode_pixels(good.astype(np.float32))
    np.testing.assert_allclose(enc.encode_pixels(good), want, atol=1e-6)   # float64 is fine
    np.testing.assert_allclose(enc.encode_pixels(np.asfortranarray(good)), want, atol=1e-6)
    for bad in (np.zeros((1, 3, S, S), np.uint8), np.zeros((1, 3, S, S), np.int64), np.zeros((1, 3, S, S), bool),
                good.astype(complex), good.astype(object)):
        with pytest.raises(VitacError, match=f"pixels must be float .*got dtype {bad.dtype}"):
            enc.encode_pixels(bad)
        if backend == "torch":
            with pytest.raises(VitacError, match="pixels must be float"):
                enc.encode_pixels_on_device(bad)
    with pytest.raises(VitacError, match="NaN or Inf"):
        enc.encode_pixels(np.full((1, 3, S, S), 1e300))


def test_the_client_resends_the_goal_it_sent_not_what_its_array_holds_now(artifact):
    """`PolicyClient` resends the last goal image after a reconnect (the new server has none). It kept
    a reference to the caller's array: a camera buffer refilled in place since then made it plan
    towards the current view instead of the goal, silently. Real servers on loopback."""
    pytest.importorskip("websockets")
    from vitac_deploy.client import PolicyClient
    from vitac_deploy.planning import CEMOptions
    from vitac_deploy.serving import open_service
    from vitac_deploy.serving.server import PolicyServer

    cem = CEMOptions(samples=4, topk=2, cem_steps=1)
    rng = np.random.default_rng(0)
    now, goal = (rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(2))
    pose = np.zeros(SMALL.action_dim, np.float32)
    first = PolicyServer(open_service(artifact, backend="onnxruntime", cem=cem), port=0)
    first.start_in_thread()
    port = first.port
    client = PolicyClient("127.0.0.1", port, reconnect=True, connect_timeout=30)
    camera = goal.copy()   # the caller's buffer, sent as the goal
    want = client.infer({"observation/image": now, "observation/state": pose, "goal/image": camera,
                         "seed": 7})["actions"]
    camera[:] = now        # the driver refills it with the next frame
    first.stop()
    second = PolicyServer(open_service(artifact, backend="onnxruntime", cem=cem), port=port)
    second.start_in_thread()
    try:
        got = client.infer({"observation/image": now, "observation/state": pose, "seed": 7})["actions"]
    finally:
        client.close()
        second.stop()
    assert client.reconnects == 1
    np.testing.assert_array_equal(got, want)


def test_counts_and_arguments_of_the_openers_and_the_planner(artifact, tmp_path):
    """A count of 0, a string or a bool is refused by name (a numpy integer is a count); an empty
    list of images, contexts of different shapes and options of the wrong kind are one VitacError,
    not a raw numpy, onnxruntime or AttributeError."""
    from vitac_deploy.encoder.preprocess import read_images
    from vitac_deploy.planning import CEMOptions, plan
    from vitac_deploy.planning.cem import plan_many

    for kwargs, what in (({"max_batch": 0}, "max_batch"), ({"max_frames": True}, "max_frames"),
                         ({"threads": "2"}, "threads"), ({"threads": 0}, "threads")):
        with pytest.raises(VitacError, match=f"{what} must be a positive integer"):
            open_runtime(artifact, backend="onnxruntime", **kwargs)
    for kwargs, what in (({"max_batch": 0}, "max_batch"), ({"threads": 1.5}, "threads")):
        with pytest.raises(VitacError, match=f"{what} must be a positive integer"):
            open_encoder(artifact / "encoder", backend="onnxruntime", **kwargs)
    enc = open_encoder(artifact / "encoder", backend="onnxruntime", max_batch=np.int64(3))
    assert enc.max_batch == 3 and type(enc.max_batch) is int
    rt = open_runtime(artifact, backend="onnxruntime", max_batch=np.int64(8), threads=np.int32(1))

    with pytest.raises(VitacError, match="no images given"):
        read_images([])
    N, D = rt.cfg.tokens_per_frame, rt.cfg.embed_dim
    with pytest.raises(VitacError, match="one shape"):
        rt.stage_context([np.zeros((1, 1, N, D), np.float32), np.zeros((1, 2, N, D), np.float32)])
    feats = np.zeros((1, N, D), np.float32)
    pose = np.zeros((1, rt.cfg.action_dim), np.float32)
    with pytest.raises(VitacError, match="options must be a CEMOptions, got dict"):
        plan(rt, feats, feats, pose, options={"samples": 4})
    with pytest.raises(VitacError, match="plan_many takes PlanRequests"):
        plan_many(rt, [None], CEMOptions(samples=4, topk=2, cem_steps=1, rollout=1))

"""A hostile user's inputs to the newer command-line surfaces (plan, energy-landscape, info
--artifact, demo): each is one line on stderr and exit 2, never a warning dump, a traceback or an
"internal error", and the Python API and the server answer the same input the same way."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL
from vitac_deploy.encoder import EncoderConfig
from vitac_deploy.errors import VitacError
from vitac_deploy.exporters import EncoderExportOptions, ExportOptions, export_artifact, export_encoder
from vitac_deploy.reference import random_encoder, random_predictor

ROOT = Path(__file__).parents[1]
FRAMES = ROOT / "examples" / "frames"
ENC = EncoderConfig(img_size=64, patch_size=16, embed_dim=SMALL.embed_dim, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    a = tmp_path_factory.mktemp("hostile") / "art"
    export_artifact(random_predictor(SMALL, 3), a, ExportOptions(precisions=["fp32"], first_frame_graph=False))
    export_encoder(random_encoder(ENC, 4), a / "encoder", EncoderExportOptions(precisions=["fp32"]))
    return a


def cli(*args):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def one_line_error(p, code=2) -> str:
    """The promise: exit `code`, and stderr is exactly one line, the error (no warnings, no traceback)."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), \
        (p.returncode, p.stdout, p.stderr)
    return lines[0]


def scene_args(art, pose="0.1,0,0.2"):
    return (art, "--observation", FRAMES / "franka_now.png", "--goal", FRAMES / "franka_goal.png", "--pose", pose)


SMALL_PLAN = ("--samples", "8", "--topk", "2", "--cem-steps", "1")


@pytest.mark.parametrize("pose", ["1e39,0,0", "1e300,0,0", "2e6,0,0"])
def test_a_pose_past_float32_is_one_line_everywhere(art, pose):
    # finite as float64, inf as the float32 the graphs take: refused before anything is opened
    msg = one_line_error(cli("plan", *scene_args(art, pose), *SMALL_PLAN))
    assert "--pose has entries beyond 1e6: not a pose" in msg
    from vitac_deploy.planning.energy import check_pose
    from vitac_deploy.serving.protocol import RequestError, ServeOptions, parse_request

    values = np.array([float(v) for v in pose.split(",")])
    with pytest.raises(VitacError, match="beyond 1e6: not a pose"):
        check_pose(values[None], 3)
    with pytest.raises(RequestError, match="beyond 1e6: not a pose"):
        parse_request({"observation/image": np.zeros((8, 8, 3), np.uint8), "observation/state": values},
                      ServeOptions(), 3)


@pytest.mark.parametrize("maxnorm", ["1e300", "1e39", "inf"])
def test_a_maxnorm_past_float32_is_one_line(art, maxnorm):
    msg = one_line_error(cli("plan", *scene_args(art), *SMALL_PLAN, "--maxnorm", maxnorm))
    assert "maxnorm must be a finite number in (0, 1e6]" in msg


@pytest.mark.parametrize("size", ["1e39", "1e300"])
def test_a_landscape_size_past_float32_is_one_line(art, tmp_path, size):
    msg = one_line_error(cli("energy-landscape", *scene_args(art), "--grid", "2", "--size", size,
                             "--plot", tmp_path / "l.png"))
    assert "--size must be a finite number in (0, 1e6]" in msg
    assert not (tmp_path / "l.png").exists()


def test_samples_past_what_a_plan_takes_are_one_line(art):
    # past 1,000,000 numpy's and torch's size arithmetic overflowed: "internal error", exit 1
    msg = one_line_error(cli("plan", *scene_args(art), "--samples", 10**14, "--topk", "2", "--cem-steps", "1"))
    assert "samples must be at most 1,000,000" in msg
    msg = one_line_error(cli("info", "--artifact", art, "--samples", 10**15))
    assert "--samples must be at most 1,000,000" in msg
    msg = one_line_error(cli("info", "--preset", "franka-small", "--samples", 10**23))
    assert "--samples must be at most 1,000,000" in msg


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_cache_too_large_to_allocate_is_a_user_error(art, backend):
    from vitac_deploy.runtimes import open_runtime

    # numpy refuses the size before allocating (no memory is touched); torch says it overflowed
    rt = open_runtime(art, backend=backend, max_batch=10**13)
    with pytest.raises(VitacError, match="not enough memory for this runtime's buffers at batch 10000000000000"):
        rt.reset(1)


def test_a_plan_too_large_for_memory_is_one_line_exit_2(art):
    # a million samples x a million CEM steps: its energies alone are 3.6 TiB, refused by numpy at once
    p = cli("plan", *scene_args(art), "--samples", 10**6, "--topk", "2", "--cem-steps", 10**6, "--chunk", "8")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: not enough memory") and "--samples" in last, p.stderr


@pytest.mark.parametrize("args,want", [
    (["--samples", "1"], "--samples must be 0 (no planning stage) or at least 2"),
    (["--cem-steps", "0"], "cem_steps must be a positive integer, got 0"),
    (["--plan-samples", "4", "--plan-steps", "-1"], "cem_steps must be a positive integer, got -1"),
    (["--horizon", "0"], "--horizon must be in 1..8"),
    (["--horizon", "100"], "--horizon must be in 1..8"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--encoder", "nope"], "unknown encoder preset 'nope'"),
    (["--encoder", "vit-l"], "encoder vit-l gives 256 x 1024 features"),
])
def test_demo_refuses_bad_options_before_any_work(args, want):
    # they surfaced after the rollout stage's minutes of export and timing, some as exit 1
    p = cli("demo", *args)
    assert want in one_line_error(p) and p.stdout == "", p.stdout


def _inputs(path, cfg, frames=3, fill=None):
    N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
    feats = np.random.default_rng(0).standard_normal((1, 1, N, D))
    if fill is not None:
        feats[:] = fill
    np.savez(path, features=feats, actions=np.zeros((1, frames, A), np.float32),
             states=np.zeros((1, frames, A), np.float32))
    return path


@pytest.mark.parametrize("fill,horizon,want", [
    (np.nan, None, "context contains NaN or inf"),
    (1e39, None, "beyond float32's range"),
    (None, "99", "exceed max_frames"),
])
def test_rollout_refusals_are_one_line_on_stderr(art, tmp_path, fill, horizon, want):
    # a "runtime: ..." note went to stderr before the refusal: two lines
    inp = _inputs(tmp_path / "in.npz", SMALL, fill=fill)
    p = cli("rollout", art, "--inputs", inp, "--out", tmp_path / "out.npz", *(["--horizon", horizon] if horizon else []))
    assert want in one_line_error(p)
    assert not (tmp_path / "out.npz").exists() and sorted(q.name for q in tmp_path.iterdir()) == ["in.npz"]


def test_rollout_never_writes_its_predictions_over_its_inputs(art, tmp_path):
    inp = _inputs(tmp_path / "in.npz", SMALL)
    before = inp.read_bytes()
    for out in (inp, tmp_path / "." / "in.npz"):
        msg = one_line_error(cli("rollout", art, "--inputs", inp, "--out", out))
        assert "is the --inputs file" in msg
    assert inp.read_bytes() == before
    p = cli("rollout", art, "--inputs", inp, "--out", tmp_path / "out.npz")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    with np.load(tmp_path / "out.npz") as z:
        assert z["predictions"].shape == (1, 3, SMALL.tokens_per_frame, SMALL.embed_dim)


@pytest.mark.parametrize("args,want", [
    (["--port", "70000"], "port must be in 0..65535, got 70000"),
    (["--api-key-env", "VITAC_TEST_SURELY_UNSET"], "the environment variable is unset or empty"),
    (["--max-batch", "0"], "max_batch must be a positive integer, got 0"),
])
def test_serve_refuses_cheap_options_before_opening_anything(art, args, want):
    # "opening the predictor and encoder" went to stderr before these were checked: two lines
    assert want in one_line_error(cli("serve", art, *SMALL_PLAN, *args))


def test_serve_on_an_address_it_cannot_listen_on_is_exit_2(art):
    import socket

    # an unknown host was an "internal error (gaierror)", exit 1; an address in use the same
    p = cli("serve", art, *SMALL_PLAN, "--host", "999.1.1.1", "--port", "0")
    assert p.returncode == 2 and "error: cannot listen on 999.1.1.1:0" in p.stderr.strip().splitlines()[-1], p.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = cli("serve", art, *SMALL_PLAN, "--port", port)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith(f"error: cannot listen on 127.0.0.1:{port}") and \
        "Traceback" not in p.stderr, p.stderr


@pytest.fixture(scope="module")
def static_art(tmp_path_factory):
    a = tmp_path_factory.mktemp("hostile-static") / "art"
    export_artifact(random_predictor(SMALL, 3), a, ExportOptions(precisions=["fp32"], first_frame_graph=False,
                                                                 cache="static", cache_frames=3))
    return a


@pytest.mark.parametrize("backend", ["torch", "torch-reference"])
def test_the_torch_backends_open_a_static_cache_artifact(static_art, art, backend):
    # they checked the graph against the concat contract: "the manifest was edited" on a fresh export
    from vitac_deploy.runtimes import open_runtime
    from vitac_deploy.validation import ParityInputs

    x = ParityInputs.make(SMALL, batch=2, frames=3, seed=1)
    args = (x.context, x.actions, x.states, x.horizon)
    ours = open_runtime(static_art, backend=backend).rollout(*args)
    ort = open_runtime(static_art, backend="onnxruntime").rollout(*args)
    same_weights = open_runtime(art, backend=backend).rollout(*args)   # the concat export of the same seed
    assert np.abs(ours - ort).max() < 1e-4
    np.testing.assert_array_equal(ours, same_weights)


def test_bench_runs_every_row_on_a_static_cache_artifact(static_art):
    p = cli("bench", static_art, "--horizon", "2", "--repeats", "1", "--warmup", "0")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "torch" in p.stdout and "static" in p.stdout


def test_a_precision_given_twice_is_exported_once(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(SMALL.to_json())
    out = tmp_path / "art"
    p = cli("export", "--config", cfg, "--random-init", "--out", out, "--precision", "fp16,fp16",
            "--no-first-frame-graph")
    assert p.returncode == 0, p.stderr
    # it built, wrote and validated fp16 twice, the second over the first
    assert p.stderr.count("building fp16 graphs") == 1 and p.stderr.count("validating fp16") == 1, p.stderr
    import json

    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["graphs"]) == ["energy", "step.fp16"] and list(m["tolerances"]) == ["fp16"]


def test_bench_refuses_a_compile_mode_no_row_uses(art):
    # it was ignored: a table without the torch.compile rows the user asked for, exit 0
    msg = one_line_error(cli("bench", art, "--compile-mode", "reduce-overhead", "--backend", "onnxruntime"))
    assert "--compile-mode applies to torch-compile rows" in msg


def test_a_chunk_larger_than_the_samples_is_the_samples_everywhere():
    """`plan` and `bench` roll out min(chunk, samples) rows at once; `info` estimates the same plan
    (it refused the chunk before) and gives the figures of --chunk equal to --samples."""
    def info(*args):
        return subprocess.run([sys.executable, "-m", "vitac_deploy", "info", "--preset", "franka-small", "--json",
                               "--samples", "32", *args], capture_output=True, text=True)

    big, same = info("--chunk", "64"), info("--chunk", "32")
    assert big.returncode == same.returncode == 0, big.stderr + same.stderr
    assert json.loads(big.stdout)["plan"] == json.loads(same.stdout)["plan"]


def test_bench_takes_its_backends_as_a_comma_list_too(art, tmp_path):
    # --batch, --cache, --graph-form take comma lists; --backend a,b was "unknown backend 'a,b'"
    out = tmp_path / "bench.json"
    p = cli("bench", art, "--backend", "onnxruntime,torch", "--horizon", "1", "--repeats", "1", "--warmup", "0",
            "--json", out)
    assert p.returncode == 0, p.stderr
    rows = {e["backend"] for e in json.loads(out.read_text())["entries"]}
    assert {"onnxruntime", "torch"} <= rows, rows


def test_serve_refuses_a_horizon_the_model_cannot_hold_before_opening_anything(art):
    # the manifest tells max_frames: the refusal comes before the "opening" note (stderr was two
    # lines, the error naming max_frames, which the user never gave)
    msg = one_line_error(cli("serve", art, "--horizon", "99", "--port", "0"))
    assert "horizon 99 is more than this model's" in msg, msg
    msg = one_line_error(cli("serve", Path(art).parent / "missing", "--port", "0"))
    assert "not found" in msg, msg

"""What a newcomer meets on the documented paths: validate without repeating --random-init (the
manifest records the seed), info and inspect as JSON, inspect's tolerance table, the plan's
estimate and smaller options, the demo's --out folder and next commands, messages that name the
real cause (an encoder given to rollout, --device cuda without a CUDA backend), the robot loop
against a model that is not 7-dim, and actions printed as plain numbers."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL
from vitac_deploy.artifacts.source import weights_source
from vitac_deploy.encoder import EncoderConfig
from vitac_deploy.errors import VitacError
from vitac_deploy.exporters import EncoderExportOptions, ExportOptions, export_artifact, export_encoder
from vitac_deploy.reference import random_encoder, random_predictor

ROOT = Path(__file__).parents[1]
ENC = EncoderConfig(img_size=64, patch_size=16, embed_dim=SMALL.embed_dim, depth=1, num_heads=2)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def one_line_error(p, code=2):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    return last


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A small predictor (seed 7) with its encoder (seed 8), exported through the library: the
    manifests record the seeds without being told."""
    a = tmp_path_factory.mktemp("paths") / "art"
    export_artifact(random_predictor(SMALL, 7), a, ExportOptions(precisions=["fp32"], first_frame_graph=False))
    export_encoder(random_encoder(ENC, 8), a / "encoder", EncoderExportOptions(precisions=["fp32"]))
    return a


# -- validate reads the weights from the manifest -----------------------------------------------------

def test_export_records_the_random_seed(art):
    assert json.loads((art / "manifest.json").read_text())["source"] == {"checkpoint": None, "random_init_seed": 7}
    assert json.loads((art / "encoder" / "manifest.json").read_text())["source"]["random_init_seed"] == 8


def test_validate_without_flags_reads_the_seed_from_the_manifest(art):
    p = cli("validate", art)
    assert p.returncode == 0, p.stderr
    assert "PASSED" in p.stdout and "seed 7, as the manifest records" in p.stdout
    p = cli("validate", art / "encoder")
    assert p.returncode == 0 and "seed 8, as the manifest records" in p.stdout, p.stderr
    # another seed is other weights: a mismatch (exit 1), and the report says which seed was used
    p = cli("validate", art, "--seed", 3)
    assert p.returncode == 1 and "seed 3; the manifest records seed 7" in p.stdout, p.stderr


def test_validate_says_what_to_give_when_the_manifest_does_not_say(tmp_path):
    from vitac_deploy.artifacts import seal

    a = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), a, ExportOptions(precisions=["fp32"], first_frame_graph=False,
                                                                 validate=False, source={"checkpoint": "ck.pt"}))
    assert "exported from ck.pt" in one_line_error(cli("validate", a))
    m = json.loads((a / "manifest.json").read_text())
    m["source"] = {}
    m.pop("manifest_sha256", None)
    (a / "manifest.json").write_text(json.dumps(seal(m)))
    assert "give --checkpoint (or --random-init --seed N)" in one_line_error(cli("validate", a))


def test_weights_source_rules():
    recorded = {"source": {"checkpoint": None, "random_init_seed": 5}}
    s = weights_source(recorded)
    assert (s.random_init, s.seed, s.from_manifest) == (True, 5, True)
    assert weights_source(recorded, seed=2).seed == 2
    assert weights_source(recorded, checkpoint="x.pt").checkpoint == Path("x.pt")
    assert weights_source({}, random_init=True).seed == 0
    for bad in ({"checkpoint": "x.pt", "random_init": True}, {"seed": -1}):
        with pytest.raises(VitacError):
            weights_source(recorded, **bad)
    for odd in ({"source": {"random_init_seed": True}}, {"source": "nonsense"}, {"source": {"random_init_seed": -3}}):
        with pytest.raises(VitacError, match="give --checkpoint"):
            weights_source(odd)


# -- info and inspect -----------------------------------------------------------------------------------

def test_info_json_is_the_table_as_numbers():
    p = cli("info", "--preset", "franka-small", "--samples", "64", "--budget", "1GiB", "--encoder", "vit-small",
            "--backends", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["parameters"] == 862208 and d["config"]["action_dim"] == 7 and d["tokens_per_frame"] == 256
    assert d["kv_cache_bytes_per_frame"]["float16"] == 2 * 4 * 258 * 128 * 2
    plan = d["plan"]
    assert plan["samples"] == 64 and plan["device_total_bytes"] == sum(
        v for k, v in plan["memory_bytes"].items() if k != "host_pinned")
    assert plan["budget"]["bytes"] == 2**30 and plan["budget"]["largest_chunk"] >= 1
    assert d["encoder"]["parameters"] == 3553024 and len(d["encoder"]["memory"]) == 2
    assert any(b["backend"] == "onnxruntime" and b["installed"] for b in d["backends"])


def test_inspect_prints_tolerances_as_a_table_and_json(art):
    p = cli("inspect", art)
    assert p.returncode == 0, p.stderr
    assert "tolerances (against the PyTorch reference)" in p.stdout and "{'max_abs'" not in p.stdout
    assert "seeded random weights, seed 7" in p.stdout
    d = json.loads(cli("inspect", art, "--json").stdout)
    assert d["kind"] == "predictor" and d["source"]["random_init_seed"] == 7
    row = d["tolerances"][0]
    assert row["precision"] == "fp32" and row["max_abs"] == 1e-4 and row["passed"] is True
    assert row["measured_max_abs"] < row["max_abs"]
    assert {s["name"] for s in d["graphs"]["step.fp32"]["inputs"]} >= {"features", "action", "state"}
    e = json.loads(cli("inspect", art / "encoder", "--json").stdout)
    assert e["kind"] == "encoder" and e["parameters"] == ENC.num_parameters()
    o = json.loads(cli("inspect", art / "step.onnx", "--json").stdout)
    assert o["kind"] == "onnx" and o["nodes"] > 0


# -- the plan's estimate ------------------------------------------------------------------------------

def test_plan_estimate_and_quicker_options(art):
    from vitac_deploy.planning import CEMOptions, planning_problem
    from vitac_deploy.planning.estimate import estimate_plan, format_seconds, quicker_options
    from vitac_deploy.planning.memory import plan_flops
    from vitac_deploy.runtimes import open_runtime

    rt = open_runtime(art, backend="onnxruntime", max_batch=400)
    current, goal, pose = planning_problem(rt.cfg, 0)
    opts = CEMOptions()
    est = estimate_plan(rt, current, goal, pose, opts)
    assert est.flops == plan_flops(rt.cfg, 400, 2, 10) and est.probe_samples == 16
    assert est.seconds == pytest.approx(est.flops / est.flops_per_second) and est.seconds > 0
    target = est.seconds / 20
    q = quicker_options(rt.cfg, opts, est, target)
    assert q.rollout == opts.rollout and 16 <= q.samples < 400 and 2 <= q.cem_steps < 10 and 2 <= q.topk <= q.samples
    assert est.seconds_for(rt.cfg, q) <= target or q.samples == 16
    assert quicker_options(rt.cfg, opts, est, est.seconds * 2) == opts
    assert [format_seconds(s) for s in (0.84, 42.0, 210.0, 9000.0)] == ["0.8 s", "42 s", "3.5 min", "2.5 h"]


# -- the demo's folder ------------------------------------------------------------------------------

def test_demo_out_is_a_new_or_demo_folder_and_the_next_commands_run(tmp_path):
    from vitac_deploy.cli.demo import check_demo_out, next_steps

    check_demo_out(tmp_path / "new")
    assert (tmp_path / "new").is_dir()
    (tmp_path / "new" / "now.png").write_bytes(b"")
    check_demo_out(tmp_path / "new")                       # what the demo wrote: fine, replaced
    (tmp_path / "new" / "notes.txt").write_text("mine")
    with pytest.raises(VitacError, match="holds files the demo did not write"):
        check_demo_out(tmp_path / "new")
    with pytest.raises(VitacError, match="does not exist"):
        check_demo_out(tmp_path / "missing" / "out")
    text = next_steps(tmp_path / "d", 7, True).plain
    assert f"vitac-deploy plan {tmp_path / 'd' / 'planner'} --observation" in text
    assert "--pose 0.45,0,0.35,3.14,0,0,0" in text and f"vitac-deploy serve {tmp_path / 'd' / 'planner'}" in text


def test_demo_camera_stage_writes_the_frames_the_next_commands_read(tmp_path, art):
    """The planner the demo keeps in --out plans from the frames it keeps there, with the printed
    command (the quick options)."""
    from rich.console import Console

    from vitac_deploy.cli.demo import QUICK_PLAN, camera_to_action, next_steps

    quiet = Console(file=open(tmp_path / "log.txt", "w"))
    assert camera_to_action(quiet, quiet, random_predictor(SMALL, 0), ENC, samples=8, cem_steps=2, seed=0,
                            out=tmp_path)
    assert (tmp_path / "now.png").is_file() and (tmp_path / "goal.png").is_file()
    line = next(x for x in next_steps(tmp_path, SMALL.action_dim, True).plain.splitlines() if "vitac-deploy plan" in x)
    args = line.split()[1:]
    assert " ".join(args[-6:]) == QUICK_PLAN
    p = cli(*args[:-6], "--samples", "8", "--topk", "2", "--cem-steps", "2")
    assert p.returncode == 0 and "the robot executes step 0" in p.stdout, p.stderr


# -- messages that name the real cause ------------------------------------------------------------

def test_rollout_of_an_encoder_and_cuda_without_a_cuda_backend(art, tmp_path):
    np.savez(tmp_path / "in.npz", features=np.zeros((1, 1, SMALL.tokens_per_frame, SMALL.embed_dim), np.float32),
             actions=np.zeros((1, 2, SMALL.action_dim), np.float32), states=np.zeros((1, 2, SMALL.action_dim), np.float32))
    last = one_line_error(cli("rollout", art / "encoder", "--inputs", tmp_path / "in.npz", "--out", tmp_path / "o.npz"))
    assert "is an encoder artifact, not a predictor artifact" in last and "open_encoder" in last
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has ONNX Runtime CUDA: --device cuda would run")
    last = one_line_error(cli("rollout", art, "--inputs", tmp_path / "in.npz", "--out", tmp_path / "o.npz",
                              "--device", "cuda"))
    assert "no backend for device cuda" in last and "onnxruntime-gpu" in last
    assert not last.split(":", 1)[1].strip().startswith("torch"), last   # auto: torch was never the user's choice


# -- the robot loop against any served model -----------------------------------------------------------

def test_robot_loop_reads_the_action_size_from_the_server(tmp_path):
    pytest.importorskip("websockets")
    from vitac_deploy.planning import CEMOptions
    from vitac_deploy.serving import ServeOptions, open_service
    from vitac_deploy.serving.server import PolicyServer

    two = SMALL.__class__(**{**SMALL.to_dict(), "action_dim": 2})
    a = tmp_path / "two"
    export_artifact(random_predictor(two, 0), a, ExportOptions(precisions=["fp32"], first_frame_graph=False,
                                                               validate=False))
    export_encoder(random_encoder(ENC, 1), a / "encoder", EncoderExportOptions(precisions=["fp32"], validate=False))
    server = PolicyServer(open_service(a, backend="onnxruntime", cem=CEMOptions(samples=8, topk=2, cem_steps=2),
                                       options=ServeOptions()), port=0)
    server.start_in_thread()
    try:
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "robot_loop.py"), "--port", str(server.port),
                            "--rate", "20", "--steps", "2"], capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr
    assert "2-dim actions" in r.stdout and r.stdout.count("-> pose") == 2
    last_pose = json.loads(r.stdout.strip().splitlines()[-1].split("-> pose ")[1])
    assert len(last_pose) == 2


# -- actions as a person reads them ------------------------------------------------------------------

def test_actions_print_as_plain_rounded_numbers():
    from vitac_deploy.cli._common import action_legend, format_action

    assert format_action(np.array([-0.045, -0.0019912, 0.0, -1e-9, 0.5], np.float32)) == "[-0.045, -0.002, 0, 0, 0.5]"
    assert action_legend(7) == " (dx, dy, dz, rotation x, y, z, gripper)" and action_legend(2) == ""


def test_long_stages_announce_themselves_in_a_log_and_quick_ones_do_not(capsys):
    """Piped output (a log): a stage that lasts longer than LOG_AFTER_S prints one line with the time
    so far; a quick stage, or one that fails at once, prints nothing."""
    import time

    from rich.console import Console

    from vitac_deploy.cli._common import live_status

    console = Console(file=sys.stderr, width=200)
    with live_status(console, "quick") as say:
        say("also quick")
    live_status.LOG_AFTER_S, old = 0.2, live_status.LOG_AFTER_S
    try:
        with live_status(console, "slow stage") as say:
            time.sleep(0.6)
            say("second stage, quick")
    finally:
        live_status.LOG_AFTER_S = old
    err = capsys.readouterr().err
    assert "slow stage" in err and "quick" not in err, err
    assert err.strip().startswith("[    0 s] slow stage"), err


def test_demo_keeps_npy_frames_without_pillow(tmp_path, monkeypatch):
    """Without Pillow the demo keeps its frames as .npy, and the command it prints names them."""
    import importlib

    demo = importlib.import_module("vitac_deploy.cli.demo")   # the package exports the command of that name
    monkeypatch.setattr(demo, "frame_suffix", lambda: ".npy")
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    demo._write_frames(tmp_path, frames)
    assert (tmp_path / "now.npy").is_file() and (tmp_path / "goal.npy").is_file()
    assert f"--observation {tmp_path / 'now.npy'}" in demo.next_steps(tmp_path, 7, True).plain
    demo.check_demo_out(tmp_path)   # its own files: accepted again


def test_plan_steps_in_a_log_with_a_heartbeat_while_a_step_runs(capsys, monkeypatch):
    """Piped: one line per finished CEM step with the time per step and left, and a line every
    HEARTBEAT_S while a long step runs (a default-size plan on a CPU spends minutes in one step)."""
    import time

    from rich.console import Console

    from vitac_deploy.cli.plan import step_progress

    monkeypatch.setattr(step_progress, "HEARTBEAT_S", 0.2)
    with step_progress(Console(file=sys.stderr, width=200), 2) as on_step:
        time.sleep(0.7)
        on_step(1, 2, 0.5)
        on_step(2, 2, 0.25)
    err = capsys.readouterr().err
    assert "CEM step 1/2 running: " in err, err
    assert "CEM step 1/2: " in err and "left" in err.split("CEM step 1/2: ")[1].splitlines()[0]
    assert "CEM step 2/2: " in err and "best energy 0.25000" in err

"""The V-JEPA 2 encoder, exact: preprocessing, reference, exported graphs and runtimes against the
upstream golden outputs (encoder_gelu_h24, encoder_vitg_shape); checkpoints in the published
layout; and the loop closed on real Franka frames (mpc_franka): images + pose in, upstream's plan
and energy landscape out, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import golden_path
from vitac_deploy import VitacError
from vitac_deploy.encoder import EncoderConfig, preprocess, read_images
from vitac_deploy.exporters.encoder_artifact import EncoderExportOptions, export_encoder
from vitac_deploy.reference import Encoder, load_encoder, recipe_state_dict, random_encoder
from vitac_deploy.runtimes import open_encoder

# every test here reads the golden files or stands beside those that do: a skip fails the run
pytestmark = pytest.mark.golden

CASES = ["encoder_gelu_h24", "encoder_vitg_shape"]
PIXELS_TOL, FEATURES_TOL, PLAN_TOL = 1e-5, 2e-5, 1e-5   # tests/golden/README.md


class EncoderGolden:
    def __init__(self, name: str):
        path = golden_path(name)   # a missing file fails the test, naming it
        self.meta = json.loads(path.read_text())
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files}
        self.cfg = EncoderConfig.from_dict(self.meta)
        self.model = Encoder(self.cfg)
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in
                                    recipe_state_dict(self.meta["param_shapes"], self.meta["weight_seed"]).items()})
        self.model.eval()


@pytest.fixture(scope="module", params=CASES)
def golden(request):
    return EncoderGolden(request.param)


@pytest.fixture(scope="module")
def artifact(golden, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "encoder"
    export_encoder(golden.model, out, EncoderExportOptions())
    return out


@pytest.fixture(scope="module")
def one():
    """One case for the tests of machinery (CLI, engines, bench) rather than of numbers."""
    return EncoderGolden(CASES[0])


@pytest.fixture(scope="module")
def one_artifact(one, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc1") / "encoder"
    export_encoder(one.model, out, EncoderExportOptions())
    return out


def test_preprocessing_matches_upstream(golden):
    px = preprocess(golden.arrays["images"], golden.cfg.img_size)
    assert px.shape == golden.arrays["pixels"].shape and px.dtype == np.float32
    assert np.abs(px - golden.arrays["pixels"]).max() < PIXELS_TOL
    # one trajectory without the batch axis gives the same pixels
    one = preprocess(golden.arrays["images"][-1], golden.cfg.img_size)
    assert np.array_equal(one[0], px[-1])


def test_reference_encoder_matches_upstream(golden):
    a, pixels = golden.arrays, torch.from_numpy(golden.arrays["pixels"])
    with torch.no_grad():
        raw = golden.model.encode_frames(pixels, normalize=False).numpy()
        feats = golden.model.encode_frames(pixels).numpy()
        clip = golden.model(pixels).numpy()
    assert np.abs(raw - a["features_raw"]).max() < FEATURES_TOL
    assert np.abs(feats - a["features"]).max() < FEATURES_TOL
    assert np.abs(clip - a["clip_features"]).max() < FEATURES_TOL   # true tubelets of consecutive frames
    assert golden.cfg.num_parameters() == golden.meta["n_params"]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_exported_encoder_matches_upstream_from_camera_frames(golden, artifact, backend):
    """uint8 camera frames -> numpy preprocessing -> exported graph (or the torch backend reading
    its weights back) -> the golden normalized features."""
    want = golden.arrays["features"]
    got = open_encoder(artifact, backend=backend, precision="fp32").encode(golden.arrays["images"])
    assert got.shape == want.shape
    assert np.abs(got - want).max() < FEATURES_TOL
    half = open_encoder(artifact, backend=backend, precision="fp16", max_batch=2).encode(golden.arrays["images"])
    assert np.abs(half - want).max() < 0.05   # the fp16 tolerance of the artifact (metrics.TOLERANCES)


def test_export_records_its_validation_and_contract(golden, artifact):
    m = json.loads((artifact / "manifest.json").read_text())
    assert m["format"] == "vitac-deploy/encoder" and m["kind"] == "encoder"
    assert EncoderConfig.from_dict(m["config"]) == golden.cfg
    for p in ("fp32", "fp16"):
        v = m["validation"][p]
        assert v["passed"] and v["max_abs"] <= m["tolerances"][p]["max_abs"]
    assert m["graphs"]["encoder.fp32"]["inputs"] == [
        {"name": "pixels", "dtype": "float32", "shape": ["batch", 3, golden.cfg.img_size, golden.cfg.img_size]}]
    assert set(m["files"]) == {p.name for p in artifact.iterdir()} - {"manifest.json"}


def test_a_broken_graph_is_refused_at_export(one, tmp_path, monkeypatch):
    """Validation compares with the reference: a graph built from other weights fails and nothing
    is left at --out."""
    import vitac_deploy.exporters.encoder_artifact as ea

    real = ea.build_encoder_graph

    def off_by_one_bias(cfg, weights, precision="fp32", opset=17):
        w = dict(weights)
        bias = w["blocks.0.mlp.fc2.bias"].copy()
        bias[0] += 0.5   # one channel: a shift of every channel alike would vanish in the LayerNorms
        w["blocks.0.mlp.fc2.bias"] = bias
        return real(cfg, w, precision, opset)

    monkeypatch.setattr(ea, "build_encoder_graph", off_by_one_bias)
    with pytest.raises(VitacError, match="does not match the reference"):
        export_encoder(one.model, tmp_path / "bad", EncoderExportOptions(precisions=["fp32"]))
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8, 3), np.uint8), r"\[B, T, H, W, 3\]"),
    (np.zeros((1, 2, 8, 8, 4), np.uint8), "3 channels"),
    (np.zeros((1, 0, 8, 8, 3), np.uint8), "empty"),
    ([[1, 2, 3]], "numpy array"),
])
def test_preprocess_refuses_bad_images(images, message):
    with pytest.raises(VitacError, match=message):
        preprocess(images, 64)


def test_read_images_png_and_npz(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    np.savez(tmp_path / "b.npz", images=np.stack([a, a]))
    assert np.array_equal(read_images([tmp_path / "a.png"])[0], a)
    assert read_images([tmp_path / "b.npz"]).shape == (2, 30, 40, 3)
    np.savez(tmp_path / "f.npz", images=a.astype(np.float32))
    with pytest.raises(VitacError, match="uint8"):
        read_images([tmp_path / "f.npz"])
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(VitacError, match="cannot read image"):
        read_images([tmp_path / "c.png"])


def _published_checkpoint(path: Path, encoder_sd: dict, predictor_sd: dict, target_offset: float = 0.0) -> None:
    """The layout of the released V-JEPA 2-AC file: one torch.save of encoder, target_encoder and
    predictor with their DDP prefixes (and an int beside them, as training checkpoints have)."""
    torch.save({"encoder": {f"module.backbone.{k}": torch.from_numpy(v) for k, v in encoder_sd.items()},
                "target_encoder": {f"module.backbone.{k}": torch.from_numpy(v + target_offset)
                                   for k, v in encoder_sd.items()},
                "predictor": {f"module.backbone.{k}": torch.from_numpy(v) for k, v in predictor_sd.items()},
                "epoch": 3}, path)


def test_published_checkpoint_loads_each_part(tmp_path):
    cfg = EncoderConfig.from_dict(json.loads(golden_path("encoder_gelu_h24").read_text()))
    sd = {k: v.numpy() for k, v in random_encoder(cfg, 5).state_dict().items()}
    ck = tmp_path / "vjepa2-ac.pt"
    _published_checkpoint(ck, sd, {"predictor_embed.weight": np.zeros((4, 96), np.float32)}, target_offset=1.0)
    enc = load_encoder(ck, cfg)
    assert torch.equal(enc.state_dict()["norm.weight"], torch.from_numpy(sd["norm.weight"]))
    target = load_encoder(ck, cfg, key="target_encoder")
    assert torch.equal(target.state_dict()["norm.weight"], torch.from_numpy(sd["norm.weight"] + 1.0))
    with pytest.raises(VitacError, match="does not match the config.*wrong shape"):
        load_encoder(ck, EncoderConfig(img_size=64, embed_dim=128, depth=3, num_heads=4))
    torch.save({"predictor": {"x.weight": torch.zeros(2)}}, tmp_path / "p.pt")
    with pytest.raises(VitacError, match="no 'encoder' entry"):
        load_encoder(tmp_path / "p.pt", cfg)


def test_encoder_runtime_runs_without_torch(one_artifact, one):
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx', 'safetensors'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
from vitac_deploy.runtimes import open_encoder
enc = open_encoder({str(one_artifact)!r}, backend='onnxruntime')
f = enc.encode(np.zeros((1, 2, 70, 90, 3), np.uint8))
assert f.shape == (1, 2 * {one.cfg.tokens_per_frame}, {one.cfg.embed_dim}), f.shape
assert not any(m.split('.')[0] in ('torch', 'onnx') for m in sys.modules)
print('ok')
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


# -- the loop closed: real frames in, upstream's plan out -------------------------------------------------

def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def franka(tmp_path_factory):
    """mpc_franka's encoder and predictor written as ONE published-layout checkpoint, exported with
    the CLI (predictor to A, encoder to A/encoder), and its frames as files."""
    path = golden_path("mpc_franka")
    meta = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    d = tmp_path_factory.mktemp("franka")
    enc_sd = recipe_state_dict(meta["encoder_param_shapes"], meta["encoder_weight_seed"])
    pred_sd = recipe_state_dict(meta["predictor_param_shapes"], meta["predictor_weight_seed"],
                                meta["predictor_linear_std"], meta["predictor_weight_overrides"])
    _published_checkpoint(d / "vjepa2-ac.pt", enc_sd, pred_sd)
    (d / "predictor.json").write_text(json.dumps(meta["predictor_upstream_kwargs"]))
    (d / "encoder.json").write_text(json.dumps({"encoder_kwargs": meta["encoder_kwargs"]}))
    art = d / "art"
    p = _cli("export", "--checkpoint", d / "vjepa2-ac.pt", "--config", d / "predictor.json", "--out", art,
             "--precision", "fp32", "--no-first-frame-graph")
    assert p.returncode == 0, p.stderr
    p = _cli("export-encoder", "--checkpoint", d / "vjepa2-ac.pt", "--config", d / "encoder.json",
             "--out", art / "encoder", "--precision", "fp32")
    assert p.returncode == 0, p.stderr
    np.savez(d / "current.npz", images=arrays["observations"][0, :1])
    np.savez(d / "goal.npz", images=arrays["observations"][0, 1:])
    np.savez(d / "noise.npz", cem_noise=arrays["cem_noise"])
    pose = ",".join(repr(float(v)) for v in arrays["poses"][0, 0])
    return {"dir": d, "art": art, "meta": meta, "arrays": arrays, "pose": pose}


def test_plan_from_camera_frames_reproduces_upstream(franka):
    d, a, args = franka["dir"], franka["arrays"], franka["meta"]["mpc_args"]
    p = _cli("plan", franka["art"], "--observation", d / "current.npz", "--goal", d / "goal.npz",
             "--pose", franka["pose"], "--backend", "onnxruntime", "--noise", d / "noise.npz",
             "--horizon", args["rollout"], "--samples", args["samples"], "--topk", args["topk"],
             "--cem-steps", args["cem_steps"], "--momentum-mean", args["momentum_mean"],
             "--momentum-mean-gripper", args["momentum_mean_gripper"], "--momentum-std", args["momentum_std"],
             "--momentum-std-gripper", args["momentum_std_gripper"], "--maxnorm", args["maxnorm"],
             "--json", d / "plan.json")
    assert p.returncode == 0, p.stderr
    out = json.loads((d / "plan.json").read_text())
    assert np.abs(np.array(out["actions"]) - a["cem_action"]).max() < PLAN_TOL
    assert np.abs(np.array(out["energies"]) - a["cem_energies"]).max() < PLAN_TOL
    assert "the robot executes step 0" in p.stdout


def test_energy_landscape_from_camera_frames_reproduces_upstream(franka):
    d, a, grid = franka["dir"], franka["arrays"], franka["meta"]["energy_grid"]
    p = _cli("energy-landscape", franka["art"], "--observation", d / "current.npz", "--goal", d / "goal.npz",
             "--pose", franka["pose"], "--grid", grid["nsamples"], "--size", grid["grid_size"],
             "--plot", d / "landscape.png", "--json", d / "landscape.json")
    assert p.returncode == 0, p.stderr
    out = json.loads((d / "landscape.json").read_text())
    assert np.allclose(out["actions"], a["grid_actions"])
    assert np.abs(np.array(out["energies"]) - a["grid_energy"]).max() < PLAN_TOL
    from PIL import Image

    with Image.open(d / "landscape.png") as im:
        assert im.size[0] > 600 and im.size[1] > 250   # 5 panels side by side and a colorbar


@pytest.mark.parametrize("extra, message", [
    (["--pose", "1,2,3"], "--pose must have 7 numbers"),
    (["--pose", "a,b,c,d,e,f,g"], "--pose must be 7 comma-separated numbers"),
    (["--encoder", "/nonexistent"], "no encoder artifact at --encoder"),
    (["--topk", "5"], "topk must be in 2..samples"),
])
def test_plan_bad_input_is_one_line_and_exit_2(franka, extra, message):
    d = franka["dir"]
    args = ["plan", franka["art"], "--observation", d / "current.npz", "--goal", d / "goal.npz",
            "--pose", franka["pose"], "--samples", 4, "--topk", 2, "--cem-steps", 1]
    p = _cli(*args, *extra)
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()[-1]   # after at most a progress line
    assert last.startswith("error: ") and message in last and p.stderr.count("error") == 1, p.stderr
    assert "Traceback" not in p.stderr


# -- TensorRT: the encoder engine ------------------------------------------------------------------------

@pytest.mark.tensorrt
def test_encoder_engine_builds_with_tensorrt_rtx(one_artifact, tmp_path):
    """TensorRT for RTX compiles ahead of time without a GPU: the real parser and builder take the
    encoder graph, with a profile over the batch of frames."""
    pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx-cu13 (TensorRT for RTX)")
    p = _cli("build-engine", one_artifact, "--out", tmp_path / "enc.plan", "--flavour", "tensorrt-rtx",
             "--min-batch", 1, "--opt-batch", 2, "--max-batch", 4)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "enc.plan.json").read_text())
    assert m["kind"] == "encoder" and [e["role"] for e in m["engines"]] == ["encoder"]
    S = m["config"]["img_size"]
    assert m["engines"][0]["profile"] == {"pixels": [[1, 3, S, S], [2, 3, S, S], [4, 3, S, S]]}
    assert (tmp_path / "enc.plan").stat().st_size > 100_000
    # the predictor's runtime refuses it with a pointer to the encoder's
    from vitac_deploy.runtimes import open_runtime

    with pytest.raises(VitacError, match="encoder engine"):
        open_runtime(tmp_path / "enc.plan")


def test_encoder_engine_runtime_on_fakes(one, one_artifact, tmp_path, monkeypatch):
    """The TensorRT encoder runtime's bindings, pinned staging and batching, on the fakes of CUDA
    and TensorRT (their engines run the one_artifact's fp16 graph with ONNX Runtime)."""
    from tests.fakes import FakeCudart, FakeTensorRT, write_fake_engine
    from vitac_deploy.artifacts import sha256_file, write_json_atomic
    from vitac_deploy.runtimes import gpu
    from vitac_deploy.runtimes.tensorrt import encoder as trt_encoder
    from vitac_deploy.runtimes.tensorrt.build import EngineOptions, encoder_profile, engine_manifest
    from vitac_deploy.runtimes.tensorrt.profiles import ProfileOptions

    cu = FakeCudart(api="13")
    trt = FakeTensorRT(cu, version="10.3.0", flavour="tensorrt")
    monkeypatch.setattr(gpu, "import_cudart", lambda: cu)
    monkeypatch.setattr(trt_encoder, "import_cudart", lambda: cu)
    monkeypatch.setattr(trt_encoder, "import_tensorrt", lambda flavour: trt)
    fake_gpu = {"name": "Fake H100", "compute_capability": "9.0"}
    monkeypatch.setattr(trt_encoder, "gpu_info", lambda required=False: fake_gpu)
    m = json.loads((one_artifact / "manifest.json").read_text())
    prof = ProfileOptions(1, 2, 2)
    shapes = encoder_profile(m["graphs"]["encoder.fp16"], prof)
    plan = write_fake_engine(tmp_path / "enc.plan", one_artifact / "encoder.fp16.onnx", shapes, version="10.3.0")
    data = engine_manifest(one_artifact, one.cfg, "tensorrt", "10.3.0", fake_gpu,
                           ["default"], EngineOptions(profile=prof), prof, "fake",
                           [{"role": "encoder", "file": plan.name, "sha256": sha256_file(plan), "profile": shapes}],
                           kind="encoder")
    write_json_atomic(tmp_path / "enc.plan.json", data)
    enc = open_encoder(plan, device="cuda")
    assert enc.max_batch == 2 and enc.describe() == "tensorrt encoder (cuda, fp16)"
    images = one.arrays["images"]                    # B*T frames, encoded 2 at a time
    got = enc.encode(images)
    assert np.abs(got - one.arrays["features"]).max() < 0.05
    assert np.array_equal(enc.encode(images), got)      # second call: bindings reused, same result
    with pytest.raises(VitacError, match="exceeds the encoder engine's profile"):
        open_encoder(plan, device="cuda", max_batch=3)
    enc.close()


# -- validate, bench, info, memory --------------------------------------------------------------------

def test_validate_an_encoder_artifact_and_catch_a_tampered_one(one, one_artifact, tmp_path):
    """`validate` on an encoder: passes against the weights it was exported from, fails (exit 1)
    against other weights, and names a file edited after export."""
    import shutil

    ck = tmp_path / "enc.pt"
    torch.save({"encoder": one.model.state_dict()}, ck)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(one.cfg.to_dict()))
    p = _cli("validate", one_artifact, "--checkpoint", ck, "--config", cfg, "--report", tmp_path / "r.json",
             "--plot", tmp_path / "r.png")
    assert p.returncode == 0, p.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["passed"] and r["kind"] == "encoder" and set(r["results"]) == {"fp32", "fp16"}
    assert (tmp_path / "r.png").stat().st_size > 5000
    p = _cli("validate", one_artifact, "--random-init", "--seed", 9, "--precision", "fp32")
    assert p.returncode == 1 and "does not match the reference" in p.stderr
    bad = tmp_path / "bad"
    shutil.copytree(one_artifact, bad)
    with open(bad / "encoder.weights.fp32.bin", "r+b") as f:
        f.seek(4096)
        f.write(b"\x00\x00\x80\x7f")   # one weight set to +inf
    p = _cli("validate", bad, "--checkpoint", ck, "--config", cfg, "--precision", "fp32")
    assert p.returncode == 1 and "encoder.weights.fp32.bin" in p.stderr


def test_bench_times_the_encoder_against_pytorch(one_artifact, tmp_path):
    p = _cli("bench", "--encoder", one_artifact, "--encoder-only", "--repeats", 1, "--warmup", 0,
             "--json", tmp_path / "b.json")
    assert p.returncode == 0, p.stderr
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["mode"] == "encoder" and {(e["backend"], e["batch"]) for e in r["entries"]} == {
        (b, n) for b in ("onnxruntime", "torch") for n in (1, 2)}
    for e in r["entries"]:
        assert e["max_abs_vs_reference"] < 1e-4 and e["frame_ms"] > 0
        assert abs(e["speedup_vs_reference"] - e["reference_call_ms"] / e["call_ms"]) < 1e-9
    p = _cli("bench", "--encoder-only")
    assert p.returncode == 2 and "--encoder-only needs --encoder" in p.stderr


def test_encoder_memory_and_info():
    from vitac_deploy.planning.memory import encoder_memory

    g = EncoderConfig.preset("vit-g")
    assert abs(g.num_parameters() - 1.012e9) < 1e6
    assert abs(EncoderConfig.preset("vit-l").num_parameters() - 3.04e8) < 1e6
    m1, m2, m3 = (encoder_memory(g, b, "fp16") for b in (1, 2, 3))
    assert m1.weights == g.num_parameters() * 2 == m2.weights
    assert m3.total - m2.total == m2.total - m1.total > 0               # affine in the batch
    assert encoder_memory(g, 2, "fp16", fused_attention=True).activations < m2.activations
    p = _cli("info", "--encoder", "vit-g")
    assert p.returncode == 0 and "1,012,173,952 parameters" in p.stdout and "532.1 GFLOP per frame" in p.stdout


def test_demo_camera_to_action_stage(tmp_path):
    """The demo's camera stage on a small predictor and a matching encoder: camera frames ->
    exported encoder -> exported predictor planning -> action, agreeing with PyTorch and the
    upstream way (the full demo runs the default model: about two minutes)."""
    from rich.console import Console

    from tests.conftest import SMALL
    from vitac_deploy.cli.demo import camera_to_action
    from vitac_deploy.reference import random_predictor

    ecfg = EncoderConfig(img_size=64, patch_size=16, embed_dim=SMALL.embed_dim, depth=1, num_heads=2)
    console = Console(file=open(tmp_path / "out.txt", "w"), width=200)
    ok = camera_to_action(console, Console(file=open(tmp_path / "err.txt", "w")), random_predictor(SMALL, 0), ecfg,
                          samples=8, cem_steps=2, seed=0, out=tmp_path)
    console.file.close()
    text = (tmp_path / "out.txt").read_text()
    assert ok, text
    assert "encoder, onnxruntime fp32" in text and "plan, onnxruntime fp32 (KV cache)" in text
    assert (tmp_path / "planner" / "encoder" / "manifest.json").is_file()


def test_reexporting_the_predictor_keeps_its_encoder(tmp_path):
    """`export --force` replaces only artifacts of ours, and a predictor artifact's encoder (ours,
    in ARTIFACT/encoder) is carried into the new one; a user's file beside it stops the export."""
    from tests.conftest import SMALL
    from vitac_deploy.artifacts import read_encoder_manifest
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor

    ecfg = EncoderConfig(img_size=64, patch_size=16, embed_dim=SMALL.embed_dim, depth=1, num_heads=2)
    art = tmp_path / "art"
    quick = ExportOptions(precisions=["fp32"], validate=False, force=True)
    export_artifact(random_predictor(SMALL, 0), art, quick)
    first = export_encoder(random_encoder(ecfg, 0), art / "encoder", EncoderExportOptions(precisions=["fp32"]))
    export_artifact(random_predictor(SMALL, 1), art, quick)
    assert read_encoder_manifest(art / "encoder")["files"] == first["files"]
    again = export_encoder(random_encoder(ecfg, 1), art / "encoder",
                           EncoderExportOptions(precisions=["fp32"], validate=False, force=True))
    assert again["files"] != first["files"]
    (art / "encoder" / "notes.txt").write_text("mine")
    with pytest.raises(VitacError, match="not part of a vitac-deploy artifact"):
        export_artifact(random_predictor(SMALL, 2), art, quick)
    assert (art / "encoder" / "notes.txt").read_text() == "mine"


def test_encoder_features_stay_tensors_into_the_torch_planner(franka):
    """The torch encoder's features kept where it runs (`encode_pixels_on_device`) go into the fast
    torch runtime as the planner's observation and goal: upstream's plan, and neither crosses the
    predictor runtime's host boundary (per CEM step only the samples' conditioning does)."""
    from vitac_deploy.planning import CEMOptions, plan
    from vitac_deploy.runtimes import open_runtime
    from vitac_deploy.runtimes import open_encoder

    a, args = franka["arrays"], franka["meta"]["mpc_args"]
    enc = open_encoder(franka["art"] / "encoder", backend="torch")
    S = enc.cfg.img_size
    pixels = np.concatenate([preprocess(im[None, None], S)[:, :, 0] for im in a["observations"][0, :2]])
    feats = enc.encode_pixels_on_device(pixels)
    assert type(feats).__module__.startswith("torch") and tuple(feats.shape)[0] == 2
    rt = open_runtime(franka["art"], backend="torch", max_frames=2)
    opts = CEMOptions(**{k: v for k, v in args.items() if k != "verbose"})
    before = rt.host_traffic
    res = plan(rt, feats[:1], feats[1:], a["poses"][:, 0], opts, noise=a["cem_noise"])
    assert np.abs(res.actions - a["cem_action"]).max() < PLAN_TOL
    assert np.abs(res.energies - a["cem_energies"]).max() < PLAN_TOL
    sent = (rt.host_traffic - before).to_device
    assert sent == opts.cem_steps * opts.samples * opts.rollout * 2 * 7 * 4   # actions and poses only

"""export -> inspect -> rollout -> validate through the real command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import SMALL_SWIGLU_EXTR


def cli(*args, ok=True):
    p = subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True)
    if ok:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


def assert_one_line_error(p, code=2):
    assert p.returncode == code, (p.returncode, p.stderr)
    assert p.stderr.strip().splitlines()[-1].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "cfg.json"
    cfg.write_text(SMALL_SWIGLU_EXTR.to_json())
    import torch

    from vitac_deploy.reference import random_predictor, save_checkpoint

    ckpt = d / "w.safetensors"
    model = random_predictor(SMALL_SWIGLU_EXTR, 11)
    save_checkpoint(model, ckpt)
    torch.save({"predictor": {f"module.{k}": v for k, v in model.state_dict().items()}}, d / "w.pt")
    art = d / "art"
    p = cli("export", "--checkpoint", ckpt, "--config", cfg, "--out", art)
    assert "step.fp16" in p.stdout and "ok" in p.stdout
    # piped: the summary table whole (it is wider than 80 columns), not `first.fp…`
    assert "first.fp16.onnx" in p.stdout and "measured max abs" in p.stdout and "…" not in p.stdout, p.stdout
    return d, cfg, ckpt, art


def test_export_writes_manifest_with_checkpoint_hash(pipeline):
    d, cfg, ckpt, art = pipeline
    m = json.loads((art / "manifest.json").read_text())
    from vitac_deploy.artifacts import sha256_file

    assert m["source"]["checkpoint_sha256"] == sha256_file(ckpt)
    assert m["validation"]["fp32"]["passed"] and m["validation"]["fp16"]["passed"]


def test_export_with_upstream_kwargs_config(pipeline, tmp_path):
    d, *_ = pipeline
    up = tmp_path / "up.json"
    up.write_text(json.dumps({"img_size": [48, 48], "patch_size": 16, "num_frames": 6, "tubelet_size": 2,
                              "embed_dim": 16, "predictor_embed_dim": 24, "depth": 1, "num_heads": 2,
                              "action_embed_dim": 2}))
    cli("export", "--random-init", "--config", up, "--out", tmp_path / "a", "--precision", "fp32")
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]["grid_height"] == 3


def test_inspect(pipeline):
    d, cfg, ckpt, art = pipeline
    out = cli("inspect", art).stdout
    assert "…" not in out, out
    assert "past_key.{i}" in out and "[batch, 4, past_len, 16]" in out and "passed" in out
    out = cli("inspect", art / "step.fp16.onnx").stdout
    assert "float16" in out and "present_len" in out


def test_rollout_cli(pipeline, tmp_path):
    d, cfg, ckpt, art = pipeline
    c = SMALL_SWIGLU_EXTR
    rng = np.random.default_rng(0)
    B, C, H = 2, 1, 4
    inputs = tmp_path / "in.npz"
    np.savez(inputs, features=(12 * rng.standard_normal((B, C, c.tokens_per_frame, c.embed_dim))).astype(np.float32),
             actions=rng.standard_normal((B, C + H - 1, c.action_dim)).astype(np.float32),
             states=rng.standard_normal((B, C, c.action_dim)).astype(np.float32),
             extrinsics=rng.standard_normal((B, C + H - 1, c.action_dim - 1)).astype(np.float32))
    out = tmp_path / "out.npz"
    cli("rollout", art, "--inputs", inputs, "--out", out, "--state-update", "delta")
    with np.load(out) as z:
        preds = z["predictions"]
        assert preds.shape == (B, H, c.tokens_per_frame, c.embed_dim) and float(z["seconds"]) > 0
    # same through the Python API
    from vitac_deploy.runtimes import open_runtime

    with np.load(inputs) as z:
        ref = open_runtime(art).rollout(z["features"], z["actions"], z["states"], H, z["extrinsics"], state_update="delta")
    assert np.array_equal(preds, ref)
    assert_one_line_error(cli("rollout", art, "--inputs", tmp_path / "nope.npz", "--out", out, ok=False))
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((1, 1, 3, 3), np.float32), actions=np.zeros((1, 3, 4), np.float32),
             states=np.zeros((1, 3, 4), np.float32))
    assert_one_line_error(cli("rollout", art, "--inputs", bad, "--out", out, ok=False))


def test_validate_passes_then_fails_on_tampered_weight(pipeline, tmp_path):
    d, cfg, ckpt, art = pipeline
    report, plot = tmp_path / "r.json", tmp_path / "p.png"
    p = cli("validate", art, "--checkpoint", d / "w.pt", "--report", report, "--plot", plot)
    assert "PASSED" in p.stdout
    r = json.loads(report.read_text())
    assert r["passed"] and set(r["tolerances"]) == {"fp32", "fp16"}
    assert plot.stat().st_size > 1000
    # a checkpoint the artifact was not exported from
    other = tmp_path / "other.safetensors"
    from vitac_deploy.reference import random_predictor, save_checkpoint

    save_checkpoint(random_predictor(SMALL_SWIGLU_EXTR, 12), other)
    p = cli("validate", art, "--checkpoint", other, "--precision", "fp32", ok=False)
    assert p.returncode == 1 and "FAILED" in p.stdout
    # tamper one weight inside the artifact
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(art, bad)
    data = bytearray((bad / "weights.fp32.bin").read_bytes())
    w = np.frombuffer(data, np.float32, count=4096, offset=8192).copy()
    w[:64] += 1.0
    data[8192:8192 + w.nbytes] = w.tobytes()
    (bad / "weights.fp32.bin").write_bytes(bytes(data))
    p = cli("validate", bad, "--checkpoint", ckpt, "--precision", "fp32", "--report", tmp_path / "t.json", ok=False)
    assert p.returncode == 1 and "weights.fp32.bin" in p.stdout
    assert json.loads((tmp_path / "t.json").read_text())["passed"] is False


def test_cli_input_errors(pipeline, tmp_path):
    d, cfg, ckpt, art = pipeline
    cases = [
        ("export", "--checkpoint", tmp_path / "missing.pt", "--config", cfg, "--out", tmp_path / "x"),
        ("export", "--preset", "vitac-l384", "--out", tmp_path / "x"),               # no weights
        ("export", "--checkpoint", ckpt, "--preset", "vitac-l384", "--out", tmp_path / "x"),  # mismatch
        ("export", "--checkpoint", ckpt, "--config", cfg, "--out", art),              # not empty
        ("export", "--checkpoint", ckpt, "--config", cfg, "--out", "/proc/forbidden/x"),
        ("inspect", tmp_path / "nothing"),
        ("validate", art),
        ("rollout", tmp_path, "--inputs", tmp_path / "a.npz", "--out", tmp_path / "b.npz"),
    ]
    for args in cases:
        assert_one_line_error(cli(*args, ok=False))
    assert not (tmp_path / "x").exists()
    p = cli("export", "--checkpoint", ckpt, "--preset", "vitac-l384", "--out", tmp_path / "x", ok=False)
    assert "missing" in p.stderr and "embed_dim=24" in p.stderr

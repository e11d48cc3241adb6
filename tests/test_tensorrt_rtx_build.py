"""Real engine builds with TensorRT for RTX, which compiles ahead of time without a GPU: our ONNX
graphs go through TensorRT's ONNX parser and builder, and the engine manifest, atomic writes and
the runtime's pre-deserialization checks are exercised on real engine files. Skipped where
tensorrt_rtx is not installed (pip install 'vitac-deploy[tensorrt-rtx]')."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR
from vitac_deploy import VitacError
from vitac_deploy.artifacts import seal, sha256_file, write_json_atomic

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="tensorrt_rtx not installed (pip install tensorrt-rtx-cu13)")


def _has_gpu() -> bool:
    from vitac_deploy.runtimes.gpu import gpu_info

    return gpu_info(required=False) is not None


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor

    art = tmp_path_factory.mktemp("rtx") / "artifact"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(validate=False))
    return art


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True)


def test_build_step_and_first_engines(artifact, tmp_path):
    out = tmp_path / "small.plan"
    p = _cli("build-engine", artifact, "--out", out, "--flavour", "tensorrt-rtx", "--max-batch", "8", "--opt-batch", "4")
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "small.plan.json").read_text())
    assert [e["role"] for e in meta["engines"]] == ["step", "first", "energy"]
    assert meta["tensorrt"]["flavour"] == "tensorrt-rtx" and meta["precision"] == "fp16" and meta["tf32"] is False
    assert "strongly typed" in meta["precision_how"]
    assert meta["build_flags"]["batch"] == [1, 4, 8] and meta["build_flags"]["max_frames"] == SMALL.max_frames
    for e in meta["engines"]:
        f = tmp_path / e["file"]
        assert f.stat().st_size > 10_000 and sha256_file(f) == e["sha256"]
        assert e["source_onnx_sha256"] == json.loads((artifact / "manifest.json").read_text())["files"][e["source_onnx"]]
    L = SMALL.tokens_per_step
    assert meta["engines"][0]["profile"]["past_key.0"] == [[1, 2, L, 24], [4, 2, 2 * L, 24], [8, 2, 3 * L, 24]]
    assert "past_key.0" not in meta["engines"][1]["profile"]
    assert meta["engines"][0]["profile"]["rope_cos"] == [[1, L, 24]] * 3     # the frame's RoPE rows: static
    N, D = SMALL.tokens_per_frame, SMALL.embed_dim
    assert meta["engines"][2]["profile"] == {"prediction": [[1, N, D], [4, N, D], [8, N, D]], "goal": [[1, N, D]] * 3}
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*tmp"))
    if meta["gpu"] is None:
        assert meta["compute_capabilities"] == ["default"]
    assert "Building engine" in p.stderr   # the builder's own progress reaches the user
    shown = _cli("inspect", out)
    assert shown.returncode == 0 and "tensorrt-rtx" in shown.stdout and "past_key.{i}" in shown.stdout
    assert "[8, 2, " in shown.stdout and "first engine small.first.plan" in shown.stdout


def test_zero_past_profile_builds_one_engine(tmp_path):
    """The question left open by the export: does a profile with past_len min 0 build? (AOT: yes.)"""
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL_SWIGLU_EXTR, 1), art, ExportOptions(validate=False, first_frame_graph=False))
    out = tmp_path / "z.plan"
    p = _cli("build-engine", art, "--out", out, "--flavour", "tensorrt-rtx", "--first-frame", "zero-past",
             "--compute-capability", "8.6,8.9", "--max-frames", "3")
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "z.plan.json").read_text())
    assert [e["role"] for e in meta["engines"]] == ["step", "energy"]
    assert meta["first_frame"] == "step engine with past_len = 0"
    assert meta["compute_capabilities"] == ["8.6", "8.9"]
    assert meta["engines"][0]["profile"]["past_key.0"][0][2] == 0
    assert meta["engines"][0]["profile"]["extrinsics"][2] == [1, SMALL_SWIGLU_EXTR.action_dim - 1]


@pytest.mark.parametrize("args, msg", [
    (["--compute-capability", "9.0"], "--compute-capability 9.0 is not one"),
    (["--hardware-compatible"], "--hardware-compatible is for TensorRT"),
    (["--max-frames", "9"], "--max-frames"),
])
def test_bad_build_flags_are_one_line_exit_2(artifact, tmp_path, args, msg):
    p = _cli("build-engine", artifact, "--out", tmp_path / "e.plan", "--flavour", "tensorrt-rtx", *args)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and msg in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing(artifact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    (broken / "first.fp16.onnx").write_bytes(b"not an onnx file")  # step builds, then first fails
    out = tmp_path / "out"
    out.mkdir()
    p = _cli("build-engine", broken, "--out", out / "e.plan", "--flavour", "tensorrt-rtx")
    assert p.returncode == 2 and "does not match the sha256" in p.stderr, p.stderr   # refused before TensorRT
    # the same damage with its hash (and the seal) recomputed reaches the builder, which fails
    m = json.loads((broken / "manifest.json").read_text())
    m["files"]["first.fp16.onnx"] = sha256_file(broken / "first.fp16.onnx")
    write_json_atomic(broken / "manifest.json", seal(m))
    p = _cli("build-engine", broken, "--out", out / "e.plan", "--flavour", "tensorrt-rtx")
    assert p.returncode == 2 and "cannot parse" in p.stderr, p.stderr
    assert list(out.iterdir()) == []


def test_runtime_checks_the_manifest_before_tensorrt(artifact, tmp_path):
    from vitac_deploy.runtimes import open_runtime

    out = tmp_path / "e.plan"
    assert _cli("build-engine", artifact, "--out", out, "--flavour", "tensorrt-rtx").returncode == 0
    with pytest.raises(VitacError, match="backend tensorrt"):
        open_runtime(out, backend="onnxruntime")
    with pytest.raises(VitacError, match="built fp16, not fp32"):
        open_runtime(out, precision="fp32")
    meta = tmp_path / "e.plan.json"
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps(seal({**data, "tensorrt": {"flavour": "tensorrt-rtx", "version": "0.9.0"}})))
    with pytest.raises(VitacError, match=r"built with tensorrt-rtx 0\.9\.0 .*rebuild"):
        open_runtime(out)
    meta.unlink()
    with pytest.raises(VitacError, match="e.plan.json is missing"):
        open_runtime(out)
    meta.write_text(json.dumps(data))
    if not _has_gpu():
        with pytest.raises(VitacError, match="no CUDA GPU is visible here"):
            open_runtime(out)
        p = _cli("validate", out, "--random-init")
        assert p.returncode == 2 and "no CUDA GPU" in p.stderr and p.stderr.count("\n") == 1


@pytest.mark.parametrize("opset", [13, 17])
def test_weak_typing_pins_every_normalization(tmp_path, opset):
    """TensorRT 8.x builds fp16 from the fp32 graph and pins normalization to fp32 by layer name.
    TensorRT for RTX's parser (the same ONNX parser) shows which layers that selects: every layer
    made from a LayerNorm node, and nothing else."""
    import onnx
    import tensorrt_rtx as trt

    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor
    from vitac_deploy.runtimes.tensorrt.build import NORMALIZATION_NAMES, normalization_layers

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(validate=False, opset=opset, precisions=["fp32"]))
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(art / "step.onnx"))
    picked = {layer.name for layer in normalization_layers(trt, network)}
    norm_nodes = [n.name for n in onnx.load(str(art / "step.onnx"), load_external_data=False).graph.node
                  if any(k in n.name for k in NORMALIZATION_NAMES)]
    assert norm_nodes and all(any(layer.startswith(node) for layer in picked) for node in norm_nodes)
    assert not any(".attn." in name or ".mlp." in name for name in picked)
    if opset >= 17:   # one LayerNormalization per norm: 2 per block, the final one, and the feature norms
        n_norm = sum(network.get_layer(i).type == trt.LayerType.NORMALIZATION for i in range(network.num_layers))
        assert n_norm == 2 * SMALL.depth + 1 + 2


def test_build_static_cache_engine(tmp_path):
    """TensorRT for RTX's parser maps the static contract's TensorScatter to its KV-cache update layer
    (it needs the fixed max_len the export gives it): one step engine, every shape but the batch
    fixed, no first-frame engine; the engine manifest records the contract (format 3)."""
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor

    art = tmp_path / "static"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(validate=False, cache="static", cache_frames=3))
    out = tmp_path / "static.plan"
    p = _cli("build-engine", art, "--out", out, "--flavour", "tensorrt-rtx", "--max-batch", "4", "--opt-batch", "2")
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "static.plan.json").read_text())
    assert [e["role"] for e in meta["engines"]] == ["step", "energy"]
    assert meta["format_version"] == 3 and meta["cache"]["contract"] == "static" and meta["cache"]["frames"] == 3
    assert meta["build_flags"]["max_frames"] == 3
    M = 3 * SMALL.tokens_per_step
    prof = meta["engines"][0]["profile"]
    assert prof["past_key.0"] == [[1, 2, M, 24], [2, 2, M, 24], [4, 2, M, 24]]
    assert prof["write_index"] == [[1], [2], [4]] and prof["attn_bias"] == [[1, 1, 1, M]] * 3

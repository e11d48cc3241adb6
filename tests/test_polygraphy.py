"""Polygraphy: the saved check reruns with Polygraphy's own CLI, and debug-precision finds a damaged layer."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL_SWIGLU_EXTR
from tests.test_cli_pipeline import assert_one_line_error, cli

pytest.importorskip("polygraphy")
onnx = pytest.importorskip("onnx")


def polygraphy_exe() -> str:
    """Polygraphy's console script beside this interpreter (the one its package installed)."""
    here = Path(sys.executable).with_name("polygraphy")
    exe = str(here) if here.is_file() else shutil.which("polygraphy")
    if exe is None:
        pytest.skip("the polygraphy command is not on PATH")
    return exe


def run_saved(command: str, artifact: Path = None, moved_to: Path = None) -> subprocess.CompletedProcess:
    """A saved `polygraphy run` line through the real CLI (optionally on a copy of the artifact)."""
    args = shlex.split(command)
    assert args[:2] == ["polygraphy", "run"], command
    if moved_to is not None:
        args = [a.replace(str(artifact.resolve()), str(moved_to.resolve())) for a in args]
    return subprocess.run([polygraphy_exe(), *args[1:]], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small artifact exported through the CLI with --save-polygraphy."""
    d = tmp_path_factory.mktemp("pg")
    cfg = d / "cfg.json"
    cfg.write_text(SMALL_SWIGLU_EXTR.to_json())
    art, pg = d / "art", d / "pg"
    p = cli("export", "--random-init", "--seed", "5", "--config", cfg, "--out", art, "--save-polygraphy", pg)
    assert "command.txt" in p.stdout
    return d, cfg, art, pg


def test_export_saves_feeds_reference_and_command(exported):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    d, cfg, art, pg = exported
    lines = (pg / "command.txt").read_text().splitlines()
    onnxrt = [c for c in lines if "--onnxrt" in c]
    assert len(onnxrt) == 2   # fp32 and fp16
    assert f"{art.resolve()}/step.onnx --onnxrt" in onnxrt[0] and "--atol 0.0001 --rtol 0" in onnxrt[0]
    assert f"{art.resolve()}/step.fp16.onnx --onnxrt" in onnxrt[1] and "--atol 0.05 --rtol 0" in onnxrt[1]
    feeds = load_json(str(pg / "fp16" / "inputs.json"))
    assert len(feeds) == 4   # one per validated step: the export's 4-frame rollout
    L = SMALL_SWIGLU_EXTR.tokens_per_step
    for t, feed in enumerate(feeds):
        assert feed["past_key.1"].dtype == np.float16 and feed["features"].dtype == np.float32
        assert feed["past_key.1"].shape[2] == t * L     # the caches of the steps before, from t = 0 (empty)
        assert "extrinsics" in feed
    ref = RunResults.load(str(pg / "fp16" / "reference.json"))
    (runner, iters), = ref.items()
    assert runner == "pytorch-reference" and len(iters) == 4 and list(iters[0].keys()) == ["next_features"]


def test_tensorrt_command_covers_the_steps_after_the_first(exported, tmp_path):
    """Where TensorRT is importable a --trt line is added; its profile is checked here (no TensorRT
    runs in CI): the first step (past_len 0, the first-frame engine's job) is left out."""
    from polygraphy.json import load_json

    from vitac_deploy.artifacts import read_manifest
    from vitac_deploy.reference import random_predictor
    from vitac_deploy.validation.polygraphy import save_polygraphy
    from vitac_deploy.validation import ParityInputs

    d, cfg, art, pg = exported
    out = tmp_path / "pg"
    inputs = ParityInputs.make(SMALL_SWIGLU_EXTR, batch=1, frames=3, seed=1)
    commands = save_polygraphy(out, art, random_predictor(SMALL_SWIGLU_EXTR, 5), inputs, ["fp16"],
                               read_manifest(art), tensorrt=True)
    assert len(commands) == 2 and "--onnxrt" in commands[0]
    trt = shlex.split(commands[1])
    assert "--trt" in trt and "--strongly-typed" in trt and "--onnxrt" not in trt
    L, H, hd = SMALL_SWIGLU_EXTR.tokens_per_step, SMALL_SWIGLU_EXTR.num_heads, SMALL_SWIGLU_EXTR.head_dim
    for flag, frames in (("--trt-min-shapes", 1), ("--trt-max-shapes", 2)):
        i = trt.index(flag)
        assert f"past_value.1:[1,{H},{frames * L},{hd}]" in trt[i + 1:i + 40]
    assert len(load_json(str(out / "fp16" / "inputs.trt.json"))) == 2
    assert len(load_json(str(out / "fp16" / "inputs.json"))) == 3


def test_polygraphy_cli_passes_on_the_artifact_and_fails_once_its_graph_is_changed(exported, tmp_path):
    d, cfg, art, pg = exported
    for precision in ("fp32", "fp16"):
        command = (pg / precision / "command.txt").read_text().splitlines()[0]
        p = run_saved(command)
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        assert "PASSED" in p.stdout + p.stderr
    # change the fp32 graph after export: one Add of the first block's MLP becomes a Sub
    bad = tmp_path / "changed"
    shutil.copytree(art, bad)
    model = onnx.load(str(bad / "step.onnx"), load_external_data=False)
    node = next(n for n in model.graph.node if n.output[0] == "predictor_blocks.0.mlp.fc1.add")
    node.op_type = "Sub"
    onnx.save(model, str(bad / "step.onnx"))
    p = run_saved((pg / "fp32" / "command.txt").read_text().splitlines()[0], art, bad)
    assert p.returncode != 0
    assert "FAILED" in p.stdout + p.stderr and "next_features" in p.stdout + p.stderr


def test_validate_saves_the_reproduction_even_when_it_fails(exported, tmp_path):
    d, cfg, art, pg = exported
    out, report = tmp_path / "pg", tmp_path / "r.json"
    p = cli("validate", art, "--random-init", "--seed", "5", "--precision", "fp16", "--steps", "3",
            "--save-polygraphy", out, "--report", report)
    assert "PASSED" in p.stdout and "polygraphy run" in p.stdout
    assert sorted(x.name for x in out.iterdir()) == ["command.txt", "fp16", "manifest.json"]
    r = json.loads(report.read_text())
    assert r["polygraphy_commands"] == (out / "command.txt").read_text().splitlines()
    p = run_saved(r["polygraphy_commands"][0])
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    # other weights than the artifact's: validate fails, and what it saved fails in Polygraphy too
    p = cli("validate", art, "--random-init", "--seed", "6", "--precision", "fp32", "--steps", "2",
            "--save-polygraphy", out, ok=False)
    assert p.returncode == 1 and "FAILED" in p.stdout
    assert run_saved((out / "command.txt").read_text().splitlines()[0]).returncode != 0


def test_save_polygraphy_input_errors(exported, tmp_path):
    d, cfg, art, pg = exported
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    p = cli("validate", art, "--random-init", "--seed", "5", "--save-polygraphy", busy, ok=False)
    assert_one_line_error(p)
    assert (busy / "notes.txt").read_text() == "mine"
    p = cli("export", "--random-init", "--config", cfg, "--out", tmp_path / "a", "--no-validate",
            "--save-polygraphy", tmp_path / "pg", ok=False)
    assert_one_line_error(p)
    assert not (tmp_path / "a").exists()


def _users_folder(d: Path) -> Path:
    """A folder of the user's that merely holds a file named command.txt (as ours do)."""
    d.mkdir()
    (d / "command.txt").write_text("my notes on commands")
    (d / "thesis.tex").write_text("mine")
    (d / "data").mkdir()
    (d / "data" / "run1.csv").write_text("1,2,3")
    return d


def _users_files_intact(d: Path) -> bool:
    return ((d / "command.txt").read_text() == "my notes on commands" and (d / "thesis.tex").read_text() == "mine"
            and (d / "data" / "run1.csv").read_text() == "1,2,3")


@pytest.mark.parametrize("command", ["validate", "export"])
def test_save_polygraphy_never_replaces_a_folder_it_did_not_write(exported, tmp_path, command):
    d, cfg, art, pg = exported
    mine = _users_folder(tmp_path / "mine")
    args = {"validate": ["validate", art, "--random-init", "--seed", "5", "--steps", "2"],
            "export": ["export", "--random-init", "--config", cfg, "--out", tmp_path / "a"]}[command]
    p = cli(*args, "--save-polygraphy", mine, ok=False)
    assert_one_line_error(p)
    assert "--save-polygraphy" in p.stderr and "not part of" in p.stderr, p.stderr
    assert _users_files_intact(mine), "--save-polygraphy deleted the user's files"
    assert not (tmp_path / "a").exists()


def test_save_polygraphy_replaces_only_what_it_listed(exported, tmp_path):
    """Our own folder is replaced (atomically, the listed files removed); a file the user added to
    it since makes it not ours any more: refused, nothing removed."""
    d, cfg, art, pg = exported
    out = tmp_path / "pg"
    base = ["validate", art, "--random-init", "--seed", "5", "--precision", "fp16", "--steps", "2"]
    cli(*base, "--save-polygraphy", out)
    listing = json.loads((out / "manifest.json").read_text())
    assert listing["format"] == "vitac-deploy/polygraphy" and set(listing["files"]) == {"command.txt"}
    assert set(json.loads((out / "fp16" / "manifest.json").read_text())["files"]) >= {"inputs.json", "reference.json",
                                                                                        "command.txt"}
    cli(*base, "--save-polygraphy", out)                       # ours: replaced
    assert sorted(x.name for x in out.iterdir()) == ["command.txt", "fp16", "manifest.json"]
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")], list(tmp_path.iterdir())
    (out / "fp16" / "my_plot.png").write_bytes(b"mine")
    p = cli(*base, "--save-polygraphy", out, ok=False)
    assert_one_line_error(p)
    assert (out / "fp16" / "my_plot.png").read_bytes() == b"mine" and (out / "fp16" / "inputs.json").exists()


def test_without_polygraphy_one_line_names_the_extra(monkeypatch, tmp_path):
    from vitac_deploy.errors import VitacError
    from vitac_deploy.validation.polygraphy import check_save_target

    monkeypatch.setitem(sys.modules, "polygraphy", None)   # as if not installed
    with pytest.raises(VitacError, match=r"vitac-deploy\[polygraphy\]"):
        check_save_target(tmp_path / "x")


def test_runtimes_import_without_polygraphy():
    code = ("import sys; sys.modules['polygraphy'] = None; import vitac_deploy.runtimes, vitac_deploy.cli; "
            "import vitac_deploy.exporters; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


def perturb_fp16_weight(artifact: Path, initializer: str, value: float, rehash: bool = True) -> None:
    """Overwrite one element of one fp16 initializer in the external weights file (and, like a
    deliberate edit, the file's sha256 in the manifest)."""
    from vitac_deploy.artifacts import seal, sha256_file

    model = onnx.load(str(artifact / "step.fp16.onnx"), load_external_data=False)
    init = next(i for i in model.graph.initializer if i.name == initializer)
    info = {e.key: e.value for e in init.external_data}
    path, offset = artifact / info["location"], int(info["offset"])
    data = bytearray(path.read_bytes())
    w = np.frombuffer(data, np.float16, count=8, offset=offset).copy()
    w[3] = value
    data[offset:offset + w.nbytes] = w.tobytes()
    path.write_bytes(bytes(data))
    if rehash:
        manifest = json.loads((artifact / "manifest.json").read_text())
        manifest["files"][info["location"]] = sha256_file(path)
        (artifact / "manifest.json").write_text(json.dumps(seal(manifest)))   # resealed, as an editor would


def test_debug_precision_clean_artifact_flags_nothing(exported, tmp_path):
    d, cfg, art, pg = exported
    out = tmp_path / "layers.json"
    p = cli("debug-precision", art, "--json", out)
    assert "no tensor past the tolerance" in p.stdout
    # a summary, and not every tensor unless asked
    assert "tensors compared over 3 steps, 0 past the tolerance" in p.stdout
    assert "15 largest relative errors" in p.stdout and "--all prints every one" in p.stdout
    r = json.loads(out.read_text())
    every = cli("debug-precision", art, "--all")
    assert every.returncode == 0 and all(f" {t['name']} " in every.stdout for t in r["tensors"][:: 10])
    assert_one_line_error(cli("debug-precision", art, "--all", "--flagged-only", ok=False))
    assert r["first"] is None and r["flagged"] == 0
    names = [t["name"] for t in r["tensors"]]
    # graph order, intermediate tensors of every block, each with its upstream module
    assert names.index("predictor_blocks.0.mlp.fc1.add") < names.index("predictor_blocks.1.attn.qkv.matmul")
    assert names[-1] == "next_features"
    fc1 = next(t for t in r["tensors"] if t["name"] == "predictor_blocks.1.mlp.fc1.add")
    assert fc1["module"] == "predictor_blocks.1.mlp.fc1" and 0 < fc1["max_abs"] < r["atol"]
    assert fc1["nan"] == 0 and fc1["inf"] == 0 and fc1["max_magnitude"] > 0


def test_debug_precision_names_the_perturbed_block_first(exported, tmp_path):
    d, cfg, art, pg = exported
    bad = tmp_path / "perturbed"
    shutil.copytree(art, bad)
    perturb_fp16_weight(bad, "predictor_blocks.1.mlp.fc1.weight.T:float16", 8.0)
    out = tmp_path / "layers.json"
    p = cli("debug-precision", bad, "--json", out, ok=False)
    assert_one_line_error(p, code=1)
    r = json.loads(out.read_text())
    assert r["first"].startswith("predictor_blocks.1.mlp.fc1."), r["first"]
    assert r["first_module"] == "predictor_blocks.1.mlp.fc1"
    assert f"first tensor past the tolerance: {r['first']}" in p.stdout
    # nothing before it is flagged: block 0 and block 1's attention are untouched
    first = [t["name"] for t in r["tensors"]].index(r["first"])
    assert not any(t["flagged"] for t in r["tensors"][:first])
    assert r["tensors"][first - 1]["name"].startswith("predictor_blocks.1.")


def test_debug_precision_python_api_on_an_attention_weight(exported, tmp_path):
    from vitac_deploy.validation.layerwise import compare_layers, write_report

    d, cfg, art, pg = exported
    bad = tmp_path / "perturbed"
    shutil.copytree(art, bad)
    perturb_fp16_weight(bad, "predictor_blocks.0.attn.proj.weight.T:float16", 8.0)
    report = compare_layers(bad, steps=2, batch=1)
    assert report.first.name.startswith("predictor_blocks.0.attn.proj."), report.first
    assert report.first.module == "predictor_blocks.0.attn.proj"
    write_report(tmp_path / "r.json", report)
    assert json.loads((tmp_path / "r.json").read_text())["first"] == report.first.name


def test_debug_precision_input_errors(exported, tmp_path):
    d, cfg, art, pg = exported
    assert_one_line_error(cli("debug-precision", tmp_path / "nothing", ok=False))
    assert_one_line_error(cli("debug-precision", art, "--precision", "fp32", ok=False))
    from vitac_deploy.errors import VitacError
    from vitac_deploy.validation.layerwise import compare_layers

    for kwargs in ({"steps": 0}, {"batch": 0}, {"atol": 0.0}, {"precision": "int8"}):
        with pytest.raises(VitacError):
            compare_layers(art, **kwargs)
    # a weight changed without its hash: refused, not diagnosed
    bad = tmp_path / "unhashed"
    shutil.copytree(art, bad)
    perturb_fp16_weight(bad, "predictor_blocks.1.mlp.fc1.weight.T:float16", 8.0, rehash=False)
    with pytest.raises(VitacError, match="sha256"):
        compare_layers(bad)


@pytest.fixture(scope="module")
def exported_static(exported):
    """The same model with the static cache contract (write_index and attn_bias inputs)."""
    d, cfg, _, _ = exported
    art = d / "art-static"
    cli("export", "--random-init", "--seed", "5", "--config", cfg, "--out", art, "--cache", "static",
        "--cache-frames", "3")
    return art


def test_debug_precision_runs_a_static_cache_artifact(exported_static, tmp_path):
    # it fed neither write_index nor attn_bias: Polygraphy's multi-line log, then exit 2
    out = tmp_path / "layers.json"
    p = cli("debug-precision", exported_static, "--steps", "3", "--json", out)
    assert p.returncode == 0 and "no tensor past the tolerance" in p.stdout, (p.stdout, p.stderr)
    # stderr holds progress only: no ONNX Runtime warning per run, no overflow warning
    assert all("step" in line and "running both graphs" in line or "loading" in line
               for line in p.stderr.strip().splitlines()), p.stderr
    r = json.loads(out.read_text())
    scores = [t for t in r["tensors"] if t["name"].endswith("attn.masked")]
    # masked scores compared where attention looks (-3.4e38 vs -65504 elsewhere: the same "masked")
    assert scores and all(not t["flagged"] and t["max_abs"] < r["atol"] * max(1.0, t["rms"]) for t in scores)


def test_debug_precision_static_still_names_a_perturbed_block(exported_static, tmp_path):
    bad = tmp_path / "perturbed"
    shutil.copytree(exported_static, bad)
    perturb_fp16_weight(bad, "predictor_blocks.1.mlp.fc1.weight.T:float16", 8.0)
    out = tmp_path / "layers.json"
    p = cli("debug-precision", bad, "--steps", "3", "--json", out, ok=False)
    assert_one_line_error(p, code=1)
    assert json.loads(out.read_text())["first"].startswith("predictor_blocks.1.mlp.fc1.")


def test_a_graph_that_refuses_the_feeds_is_one_line(exported_static, tmp_path):
    from vitac_deploy.artifacts import seal

    # a resealed manifest that says concat over static graphs: Polygraphy's failure, in one line
    bad = tmp_path / "edited"
    shutil.copytree(exported_static, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m.pop("manifest_sha256")
    m["cache"] = {"contract": "concat"}
    (bad / "manifest.json").write_text(json.dumps(seal(m)))
    p = cli("debug-precision", bad, "--steps", "1", ok=False)
    assert_one_line_error(p, code=2)
    assert "cannot run or compare the step graphs" in p.stderr and "[!]" not in p.stderr, p.stderr

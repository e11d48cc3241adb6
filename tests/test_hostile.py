"""Nothing lost, nothing trusted blindly. Each test is one root cause, attacked through the
real files, the real ONNX Runtime and the real command line (no stand-ins)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL
from vitac_deploy.errors import VitacError
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.artifacts.publish import OutLock, _exchange
from vitac_deploy.artifacts import MANIFEST, read_manifest, seal, write_json_atomic
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime

FAST = ExportOptions(precisions=["fp32"], validate=False)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(*args) -> _Result:
    """The command line in-process (the many-case tests: a subprocess per case costs seconds)."""
    from typer.testing import CliRunner

    from vitac_deploy.cli import _is, app, usage_line

    # as the console script runs it (cli.main): usage errors are one line, exit 2
    r = CliRunner().invoke(app, [str(a) for a in args], standalone_mode=False)
    if r.exception is not None and _is(r.exception, "UsageError"):
        return _Result(2, r.stdout, r.stderr + usage_line(r.exception) + "\n")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception   # an escaped exception is a crash, whatever the exit code says
    code = r.return_value if isinstance(r.return_value, int) else r.exit_code
    return _Result(code, r.stdout, r.stderr)


def one_line_error(p, code=2):
    assert p.returncode == code, (p.returncode, p.stdout[-500:], p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def model():
    return random_predictor(SMALL, 3)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, model):
    art = tmp_path_factory.mktemp("h") / "art"
    export_artifact(model, art, FAST)
    return art


@pytest.fixture
def art_copy(tmp_path, artifact):
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def reseal(art: Path, edit) -> None:
    """Edit a manifest and seal it again: what a deliberate (not careless) editor would do."""
    m = json.loads((art / MANIFEST).read_text())
    edit(m)
    write_json_atomic(art / MANIFEST, seal(m))


def inputs(cfg=SMALL, B=2, C=1, H=2, seed=0):
    rng = np.random.default_rng(seed)
    N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
    return (rng.standard_normal((B, C, N, D)).astype(np.float32),
            rng.standard_normal((B, C + H - 1, A)).astype(np.float32),
            rng.standard_normal((B, C + H - 1, A)).astype(np.float32))


# -- 1. data loss around --out ---------------------------------------------------------------------

def test_out_that_is_or_contains_the_cwd_is_refused(tmp_path, model, monkeypatch):
    work = tmp_path / "proj" / "work"
    work.mkdir(parents=True)
    (work / "precious.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out in (".", "..", str(work), str(tmp_path), "../work"):
        with pytest.raises(VitacError, match="working directory"):
            export_artifact(model, out, ExportOptions(precisions=["fp32"], validate=False, force=True))
    assert (work / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"]


def test_force_replaces_only_our_artifacts(tmp_path, model, artifact):
    force = ExportOptions(precisions=["fp32"], validate=False, force=True)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(VitacError, match="not part of a vitac-deploy artifact"):
        export_artifact(model, user, force)
    assert (user / "notes.txt").read_text() == "mine"
    # an artifact a user added a file to is not provably ours any more
    mixed = tmp_path / "mixed"
    shutil.copytree(artifact, mixed)
    (mixed / "README").write_text("mine")
    with pytest.raises(VitacError, match="not part of a vitac-deploy artifact"):
        export_artifact(model, mixed, force)
    assert (mixed / "README").read_text() == "mine"
    # a directory inside an artifact is not something we wrote either
    nested = tmp_path / "nested"
    shutil.copytree(artifact, nested)
    (nested / "sub").mkdir()
    with pytest.raises(VitacError, match="not part of"):
        export_artifact(model, nested, force)
    # our own artifact is replaced, and nothing (lock, partial, old copy) is left beside it
    ours = tmp_path / "ours"
    shutil.copytree(artifact, ours)
    before = json.loads((ours / MANIFEST).read_text())["created"]
    export_artifact(random_predictor(SMALL, 4), ours, force)
    assert read_manifest(ours)["files"] != json.loads((artifact / MANIFEST).read_text())["files"] or before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "nested", "ours", "user"]
    open_runtime(ours, backend="onnxruntime")   # complete and verified


def test_symlinked_out_is_refused_before_any_work(tmp_path, model, artifact):
    link = tmp_path / "link"
    link.symlink_to(artifact)
    with pytest.raises(VitacError, match="symbolic link"):
        export_artifact(model, link, ExportOptions(precisions=["fp32"], validate=False, force=True))
    assert link.is_symlink() and (artifact / MANIFEST).is_file()
    p = cli("export", "--random-init", "--preset", "vitac-l384", "--out", link, "--force")
    assert "symbolic link" in one_line_error(p)
    assert "loading the reference model" not in p.stderr   # refused before the model was built


def test_concurrent_writer_is_refused(tmp_path, model):
    import fcntl

    out = tmp_path / "a"
    fd = os.open(tmp_path / ".a.lock", os.O_RDWR | os.O_CREAT)   # held as another process would
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(VitacError, match="another export is writing"):
            export_artifact(model, out, FAST)
    finally:
        os.close(fd)
    errors: list[BaseException] = []
    with OutLock(out):   # held by this thread: re-entrant here, another writer for other threads
        t = threading.Thread(target=lambda: _catch(errors, lambda: export_artifact(model, out, FAST)))
        t.start()
        t.join()
        assert len(errors) == 1 and "another export is writing" in str(errors[0])
    assert not out.exists()
    export_artifact(model, out, FAST)   # the lock is gone with its holder
    assert not (tmp_path / ".a.lock").exists()


def _catch(errors: list, fn) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - collected for the test thread
        errors.append(e)


def test_two_processes_exporting_to_one_out(tmp_path):
    """Two real exports race for one --out: exactly one writes it, the other is refused (exit 2);
    never both 'succeed' with one silently replacing the other."""
    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    args = [sys.executable, "-m", "vitac_deploy", "export", "--random-init", "--config", str(cfg),
            "--precision", "fp32", "--out", str(tmp_path / "a"), "--force"]
    procs = [subprocess.Popen(args + ["--seed", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    # started together, they overlap (the CLI locks --out before loading the model): one is refused
    assert codes == [0, 2], results
    assert any("another export is writing" in r[1] for r in results), results
    open_runtime(tmp_path / "a", backend="onnxruntime")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.json"]


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not _exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported on this filesystem")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_failed_removal_of_the_old_artifact_keeps_the_new_one_and_names_the_rest(tmp_path):
    """The old artifact is removed only after the new one is in place: a failure while removing it
    (here a file it listed has vanished) loses neither, and says where the rest is."""
    from vitac_deploy.artifacts.publish import _swap_in

    new, target = tmp_path / ".t.1.x.partial", tmp_path / "t"
    new.mkdir()
    target.mkdir()
    (new / "manifest.json").write_text("new")
    (target / "manifest.json").write_text("old")
    said: list[str] = []
    _swap_in(new, target, ["manifest.json", "vanished.bin"], said.append)
    assert (target / "manifest.json").read_text() == "new"
    assert len(said) == 1 and "could not be removed completely" in said[0]


def test_stale_partials_are_swept_live_ones_kept(tmp_path, model):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".a.{dead.pid}.k1ll3d.partial"
    stale.mkdir()
    (stale / "weights.fp32.bin").write_bytes(b"\0" * 1000)
    live = tmp_path / f".a.{os.getppid()}.running.partial"   # our parent: alive
    live.mkdir()
    odd = tmp_path / f".a.{dead.pid}.withsub.partial"        # not as an export leaves it
    (odd / "sub").mkdir(parents=True)
    said: list[str] = []
    export_artifact(model, tmp_path / "a", FAST, progress=said.append)
    assert not stale.exists() and live.exists() and odd.exists()
    assert any("killed export" in s for s in said) and any("left alone" in s for s in said)


def test_killed_export_leaves_a_partial_the_next_one_sweeps(tmp_path):
    import signal
    import time

    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    p = subprocess.Popen([sys.executable, "-m", "vitac_deploy", "export", "--random-init", "--config", str(cfg),
                          "--out", str(tmp_path / "a")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(q.name.endswith(".partial") for q in tmp_path.iterdir()):
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)   # at once: a small export takes well under a second
    p.wait()
    if (tmp_path / "a").exists():
        pytest.skip("the export finished before it could be killed")
    assert any(q.name.endswith(".partial") for q in tmp_path.iterdir())
    r = cli("export", "--random-init", "--config", cfg, "--precision", "fp32", "--no-validate",
            "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "killed export" in r.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a", "c.json"]


def test_unwritable_out_is_a_user_error(tmp_path):
    p = run("export", "--random-init", "--preset", "vitac-l384", "--out", "/proc/sys/x")
    one_line_error(p)
    p = run("export", "--random-init", "--preset", "vitac-l384", "--out", tmp_path / "f", "--seed", "-1")
    one_line_error(p)


# -- 2. silent garbage -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_zero_frames_and_float64_overflow_are_refused(artifact, backend):
    rt = open_runtime(artifact, backend=backend)
    ctx, acts, states = inputs()
    with pytest.raises(VitacError, match="at least one frame"):
        rt.rollout(ctx[:, :0], acts[:, :1], states[:, :1], 2)
    big = ctx.astype(np.float64)
    big[0, 0, 0, 0] = 1e39    # finite in float64, inf in float32
    with pytest.raises(VitacError, match="beyond float32's range"):
        rt.rollout(big, acts, states, 2)
    acts64 = acts.astype(np.float64)
    acts64[1, 0, 0] = -4e38
    with pytest.raises(VitacError, match="actions has values beyond float32"):
        rt.rollout(ctx, acts64, states, 2)
    with pytest.raises(VitacError, match="features has values beyond"):
        rt.reset(2)
        rt.append(big[:, 0], acts[:, 0], states[:, 0])
    out = rt.rollout(ctx.astype(np.float64), acts, states, 2)   # float64 within range is fine
    assert np.isfinite(out).all()


def test_bad_checkpoint_weights_name_the_real_cause(tmp_path, model):
    import torch

    from vitac_deploy.reference import load_predictor

    sd = {k: v.clone() for k, v in model.state_dict().items()}
    key = "predictor_blocks.0.attn.qkv.weight"
    cases = {
        "nan": ({**sd, key: sd[key].clone().index_fill_(0, torch.tensor([0]), float("nan"))}, "NaN or Inf"),
        "inf": ({**sd, key: sd[key].clone().index_fill_(0, torch.tensor([1]), float("inf"))}, "NaN or Inf"),
        "int": ({**sd, key: sd[key].to(torch.int32)}, "dtype int32"),
        "bool": ({**sd, key: sd[key] > 0}, "dtype bool"),
        "complex": ({**sd, key: sd[key].to(torch.complex64)}, "dtype complex64"),
        "sparse": ({**sd, key: sd[key].to_sparse()}, "sparse"),
    }
    for name, (bad, msg) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(bad, path)
        with pytest.raises(VitacError, match=f"{key}.*{msg}|{msg}.*{key}|{key} .*{msg}") as e:
            load_predictor(path, SMALL)
        assert "features" not in str(e.value)
    meta = {**sd, key: torch.empty(sd[key].shape, device="meta")}
    from vitac_deploy.reference.checkpoint import check_state_dict

    with pytest.raises(VitacError, match="meta"):
        check_state_dict(meta, SMALL)
    # through the CLI: one line, exit 2, before any export work
    torch.save(cases["nan"][0], tmp_path / "nan.pt")
    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    p = cli("export", "--checkpoint", tmp_path / "nan.pt", "--config", cfg, "--out", tmp_path / "o")
    assert "NaN or Inf" in one_line_error(p) and not (tmp_path / "o").exists()


# -- 3. integrity ----------------------------------------------------------------------------------

def test_open_verifies_hashes_with_a_cache_that_sees_every_write(art_copy):
    rt = open_runtime(art_copy, backend="onnxruntime")
    rt.close()
    w = art_copy / "weights.fp32.bin"
    st = w.stat()
    data = bytearray(w.read_bytes())
    data[5000] ^= 0x01      # one bit, same size
    w.write_bytes(bytes(data))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))   # mtime put back: size+mtime alone would miss it
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(VitacError, match="weights.fp32.bin does not match the sha256"):
            open_runtime(art_copy, backend=backend)
    open_runtime(art_copy, backend="onnxruntime", verify=False).close()   # the documented opt-out


def test_edited_or_unsealed_manifest_is_refused_everywhere(art_copy, tmp_path):
    good = (art_copy / MANIFEST).read_text()
    m = json.loads(good)
    m["config"]["depth"] = 3
    (art_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(VitacError, match="modified after it was written"):
        open_runtime(art_copy, backend="onnxruntime")
    for cmd in (["inspect", art_copy], ["validate", art_copy, "--random-init", "--seed", "3"]):
        assert "modified after it was written" in one_line_error(run(*cmd))
    del m["manifest_sha256"]
    m["config"]["depth"] = 2
    (art_copy / MANIFEST).write_text(json.dumps(m))
    p = run("validate", art_copy, "--random-init", "--seed", "3")
    assert "integrity cannot be established" in one_line_error(p)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_resealed_config_that_does_not_describe_the_graph_is_refused(art_copy, backend):
    """A deliberate edit (seal recomputed) still cannot make a runtime run a model the graph is not:
    the graph's inputs are checked against the config (the grid is not visible in the weights)."""
    for key, value in (("depth", 3), ("grid_height", 5), ("embed_dim", 40)):
        reseal(art_copy, lambda m: m["config"].__setitem__(key, value))
        with pytest.raises(VitacError, match="inputs its manifest's config implies|do not fit"):
            open_runtime(art_copy, backend=backend)
        reseal(art_copy, lambda m: m["config"].__setitem__(key, SMALL.to_dict()[key]))
    reseal(art_copy, lambda m: m["config"].__setitem__("depth", -1))
    with pytest.raises(VitacError, match="invalid config"):
        open_runtime(art_copy, backend=backend)


def test_validate_refuses_unlisted_files_and_fails_on_missing_ones(art_copy, tmp_path):
    reseal(art_copy, lambda m: m["files"].pop("weights.fp32.bin"))
    with pytest.raises(VitacError, match="weights.fp32.bin .*has no sha256"):
        open_runtime(art_copy, backend="onnxruntime")
    assert "has no sha256" in one_line_error(run("validate", art_copy, "--random-init", "--seed", "3"))


def test_validate_fails_on_a_deleted_file(artifact, tmp_path):
    art = tmp_path / "a"
    shutil.copytree(artifact, art)
    (art / "first.onnx").unlink()
    p = run("validate", art, "--random-init", "--seed", "3", "--report", tmp_path / "r.json")
    assert p.returncode == 1 and "first.onnx" in p.stdout and "FAILED" in p.stdout, p.stdout + p.stderr
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False


def test_engine_entry_without_sha256_is_refused(tmp_path):
    from vitac_deploy.artifacts import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, read_engine_manifest

    (tmp_path / "e.plan").write_bytes(b"engine")
    data = {"format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION, "config": SMALL.to_dict(),
            "tensorrt": {"flavour": "tensorrt", "version": "10.3.0"}, "build_flags": {}, "precision": "fp16",
            "engines": [{"role": "step", "file": "e.plan"}]}
    write_json_atomic(tmp_path / "e.plan.json", seal(data))
    with pytest.raises(VitacError, match="step engine e.plan has no sha256"):
        read_engine_manifest(tmp_path / "e.plan")
    data["engines"] = [{"role": "step", "file": "e.plan", "sha256": "0" * 64},
                       {"role": "first", "file": "../../etc/passwd", "sha256": "0" * 64}]
    write_json_atomic(tmp_path / "e.plan.json", seal(data))
    with pytest.raises(VitacError, match="not a plain file name"):
        read_engine_manifest(tmp_path / "e.plan")
    data["engines"] = data["engines"][:1]
    write_json_atomic(tmp_path / "e.plan.json", data)    # unsealed
    with pytest.raises(VitacError, match="integrity cannot be established"):
        read_engine_manifest(tmp_path / "e.plan")


# -- 4. paths escaping the artifact ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.onnx", "sub/step.onnx", "..", ""])
def test_manifest_paths_stay_inside_the_artifact(art_copy, name):
    def edit(m):
        m["graphs"]["step.fp32"]["file"] = name
        m["files"][name] = "0" * 64
    reseal(art_copy, edit)
    with pytest.raises(VitacError, match="not a plain file name"):
        open_runtime(art_copy, backend="onnxruntime")
    assert "not a plain file name" in one_line_error(run("inspect", art_copy))


def test_symlink_inside_the_artifact_is_not_followed(art_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(art_copy / "step.onnx", outside)
    (art_copy / "step.onnx").unlink()
    (art_copy / "step.onnx").symlink_to(outside)   # same bytes, so the hash alone would pass
    with pytest.raises(VitacError, match="not a regular file"):
        open_runtime(art_copy, backend="onnxruntime")


# -- 5. markup injection ---------------------------------------------------------------------------

def test_markup_in_names_is_printed_as_text(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    for name in ("x[/]y", "x[bold]z", "[red]r[/red]"):
        out = tmp_path / name
        out.parent.mkdir(exist_ok=True)   # "x[/]y" is y inside "x["
        p = run("export", "--random-init", "--config", cfg, "--precision", "fp32", "--no-validate", "--out", out)
        assert p.returncode == 0, p.stderr
        assert name in p.stdout
        p = run("inspect", out)
        assert p.returncode == 0 and name in p.stdout, p.stderr
        ctx, acts, states = inputs()
        np.savez(tmp_path / f"{name}.npz", features=ctx, actions=acts, states=states)
        p = run("rollout", out, "--inputs", tmp_path / f"{name}.npz", "--out", tmp_path / f"{name}.out.npz")
        assert p.returncode == 0 and f"{name}.out.npz" in p.stdout.replace("\n", ""), p.stdout + p.stderr


# -- 6. exit codes ---------------------------------------------------------------------------------

def test_malformed_configs_are_user_errors(tmp_path):
    up = {"img_size": 64, "patch_size": 16, "num_frames": 4, "tubelet_size": 2, "embed_dim": 32,
          "predictor_embed_dim": 48, "depth": 1, "num_heads": 2, "action_embed_dim": 3}
    cases = {
        "not utf8": b"\xff\xfe{}",
        "nan": b'{"layer_norm_eps": NaN}',
        "infinity": b'{"mlp_ratio": Infinity}',
        "1e400": b'{"layer_norm_eps": 1e400}',
        "string depth": b'{"depth": "2"}',
        "tubelet 0": json.dumps({**up, "tubelet_size": 0}).encode(),
        "img_size string": json.dumps({**up, "img_size": "big"}).encode(),
        "img_size list of 3": json.dumps({**up, "img_size": [64, 64, 3]}).encode(),
        "num_frames float": json.dumps({**up, "num_frames": 4.5}).encode(),
        "upstream_kwargs list": b'{"upstream_kwargs": [1]}',
        "deep": b"[" * 100000 + b"]" * 100000,
        "a list": b"[1, 2]",
        "empty": b"",
    }
    for what, text in cases.items():
        path = tmp_path / "c.json"
        path.write_bytes(text)
        p = run("info", "--config", path)
        one_line_error(p)
    p = run("info", "--config", tmp_path)
    one_line_error(p)


def test_manifest_written_as_strict_json(artifact):
    def strict(name):
        raise ValueError(name)
    json.loads((artifact / MANIFEST).read_text(), parse_constant=strict)


def test_rollout_and_validate_user_errors(artifact, tmp_path):
    ctx, acts, states = inputs()
    npz = tmp_path / "in.npz"
    np.savez(npz, features=ctx, actions=acts, states=states)
    np.savez(tmp_path / "scalar.npz", features=ctx, actions=np.float32(1), states=states)
    np.savez(tmp_path / "zero.npz", features=ctx[:, :0], actions=acts, states=states)
    np.savez(tmp_path / "ints.npz", features=ctx.astype(np.int64), actions=acts, states=states)
    np.savez(tmp_path / "huge.npz", features=np.zeros((1, 1000, 16, 32), np.float32), actions=acts, states=states)
    ro = tmp_path / "nodir" / "o.npz"
    cases = [
        ("rollout", npz, "--inputs", npz, "--out", tmp_path / "o.npz"),            # an npz as the artifact
        ("rollout", artifact, "--inputs", tmp_path / "scalar.npz", "--out", tmp_path / "o.npz"),
        ("rollout", artifact, "--inputs", tmp_path / "zero.npz", "--out", tmp_path / "o.npz"),
        ("rollout", artifact, "--inputs", tmp_path / "ints.npz", "--out", tmp_path / "o.npz"),
        ("rollout", artifact, "--inputs", tmp_path / "huge.npz", "--out", tmp_path / "o.npz"),
        ("rollout", artifact, "--inputs", npz, "--out", ro),
        ("rollout", artifact, "--inputs", npz, "--out", tmp_path),
        ("validate", artifact, "--random-init", "--seed", "-1"),
        ("validate", artifact, "--random-init", "--steps", "100"),
        ("validate", artifact, "--random-init", "--precision", "fp16"),
        ("validate", artifact, "--random-init", "--report", ro),
        ("validate", artifact, "--random-init", "--plot", tmp_path / "nodir" / "p.png"),
        ("export", "--random-init", "--preset", "vitac-l384", "--out", tmp_path / "e", "--seed", "-5"),
    ]
    for args in cases:
        p = run(*args)
        one_line_error(p)
        assert "PASSED" not in p.stdout, args
    assert not (tmp_path / "o.npz").exists()


def test_validate_defaults_to_the_artifacts_precisions(artifact, tmp_path):
    p = run("validate", artifact, "--random-init", "--seed", "3", "--report", tmp_path / "r.json")
    assert p.returncode == 0 and "PASSED" in p.stdout, p.stderr
    assert set(json.loads((tmp_path / "r.json").read_text())["results"]) == {"fp32"}


def test_empty_onnx_and_npz_artifact_inspect(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "not an ONNX model" in one_line_error(run("inspect", tmp_path / "empty.onnx"))
    (tmp_path / "zeros.onnx").write_bytes(b"\0" * 64)
    one_line_error(run("inspect", tmp_path / "zeros.onnx"))


def test_unused_npz_arrays_are_never_decompressed(artifact, tmp_path):
    """A corrupted (or zip-bomb) array the rollout does not need is not read at all."""
    ctx, acts, states = inputs()
    npz = tmp_path / "in.npz"
    np.savez_compressed(npz, features=ctx, actions=acts, states=states, junk=np.zeros(1 << 20, np.float32))
    with zipfile.ZipFile(npz) as z:
        items = {i.filename: z.read(i.filename) for i in z.infolist()}
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as z:
        for name, data in items.items():
            z.writestr(name, data if name != "junk.npy" else data[:128] + b"\xff" * 64)
    p = cli("rollout", artifact, "--inputs", bad, "--out", tmp_path / "o.npz")
    assert p.returncode == 0, p.stderr


def test_max_batch_must_be_an_integer(artifact):
    for bad in (2.5, "2", True):
        with pytest.raises(VitacError, match="max_batch must be a positive integer"):
            open_runtime(artifact, backend="onnxruntime", max_batch=bad)
    open_runtime(artifact, backend="onnxruntime", max_batch=np.int64(2)).close()


# -- 7. threads ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_threads_sharing_a_runtime_get_their_own_results(artifact, backend):
    rt = open_runtime(artifact, backend=backend, max_batch=2)
    jobs = [inputs(seed=s) for s in range(4)]
    want = [rt.rollout(c, a, s, 2) for c, a, s in jobs]
    wrong: list[int] = []

    def work(i: int) -> None:
        for _ in range(5):
            if not np.array_equal(rt.rollout(*jobs[i % 4], 2), want[i % 4]):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []

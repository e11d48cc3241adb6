import os
import subprocess
import sys

import torch
from typer.testing import CliRunner

from vitac_deploy.cli import app

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("vitac-deploy ")


def test_info_preset_shows_cache_bytes():
    r = runner.invoke(app, ["info", "--preset", "vitac-l384"])
    assert r.exit_code == 0, r.output
    assert "43,378,816" in r.stdout and "KV cache per frame" in r.stdout


def test_info_checkpoint(tmp_path):
    from tests.conftest import SMALL
    from vitac_deploy.reference import random_predictor

    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(SMALL.to_json())
    ckpt = tmp_path / "w.pt"
    torch.save(random_predictor(SMALL, 0).state_dict(), ckpt)
    r = runner.invoke(app, ["info", "--checkpoint", str(ckpt), "--config", str(cfg_path)])
    assert r.exit_code == 0, r.output
    assert f"{SMALL.num_parameters():,}" in r.stdout


def test_user_errors_are_one_line_exit_2(tmp_path):
    """A real process: one line on stderr, exit 2, no traceback."""
    cases = [
        ["info", "--preset", "nope"],
        ["info", "--checkpoint", str(tmp_path / "missing.pt")],
        ["info", "--config", str(tmp_path / "missing.json")],
        # usage errors too: one line, not click's boxed message
        ["info", "--samples", "abc"],
        ["info", "--budget"],
        ["export", "--bogus"],
        ["nosuch"],
    ]
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "vitac_deploy", *args], capture_output=True, text=True)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "Traceback" not in p.stderr


def test_malformed_manifests_are_user_errors(tmp_path):
    """An edited or damaged manifest is a user error (exit 2, one line), not an internal one."""
    from tests.conftest import SMALL
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(precisions=["fp32"], validate=False))
    good = (art / "manifest.json").read_text()
    import json

    m = json.loads(good)
    cases = {"a list": "[1, 2]", "not UTF-8": b"\xff\xfe{",
             "no graphs": json.dumps({k: v for k, v in m.items() if k != "graphs"}),
             "version true": json.dumps({**m, "format_version": True}),
             "version 1": json.dumps({**m, "format_version": 1})}
    for what, text in cases.items():
        path = art / "manifest.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        for cmd in (["inspect", str(art)], ["rollout", str(art), "--inputs", str(tmp_path / "x.npz"),
                                            "--out", str(tmp_path / "o.npz")]):
            p = subprocess.run([sys.executable, "-m", "vitac_deploy", *cmd], capture_output=True, text=True)
            assert p.returncode == 2 and p.stderr.startswith("error: "), (what, cmd, p.stderr)
            assert len(p.stderr.strip().splitlines()) == 1 and "internal error" not in p.stderr, (what, p.stderr)
    (art / "manifest.json").write_text(good)


COMMANDS = ["info", "export", "inspect", "rollout", "validate", "bench", "build-engine", "demo"]


def test_help_shows_flags_as_flags():
    """A flag that takes no value reads `--force`, not `--force <bool>`; options with a value keep it."""
    for cmd in [[], *([c] for c in COMMANDS)]:
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0, (cmd, r.output)
        assert "<bool>" not in r.stdout and "BOOLEAN" not in r.stdout, (cmd, r.stdout)
    out = runner.invoke(app, ["export", "--help"]).stdout
    force = next(ln for ln in out.splitlines() if "--force" in ln)
    assert "Replace a non-empty" in force and "<" not in force, force
    seed = next(ln for ln in out.splitlines() if "--seed" in ln)
    assert "int" in seed.lower(), seed      # a value option still says what it takes


def _piped(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    p = subprocess.run([sys.executable, "-m", "vitac_deploy", *args], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_piped_help_and_tables_are_whole():
    """Not a terminal (a pipe, a log, CI): nothing is cut to fit 80 columns."""
    out = _piped("export", "--help")
    assert "--no-first-frame-graph" in out and "(.pt/.pth/.safetensors)" in out and "…" not in out, out
    out = _piped("info", "--preset", "vitac-l384", "--samples", "400")
    assert "unified total (device + pinned host, Jetson)" in out and "…" not in out, out

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
    ]
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "vitac_deploy", *args], capture_output=True, text=True)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "Traceback" not in p.stderr

"""scripts/bootstrap.py, the README's two set-up commands: command-line errors, a second run that
installs nothing, and CI running the README's test command. (The full set-up from a clean clone is
what .ci/run itself does.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bootstrap.py"


def _bootstrap():
    spec = importlib.util.spec_from_file_location("bootstrap", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bad_command_line_is_one_line_exit_2():
    for args in ([], ["nosuch"], ["--tests"]):
        p = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert p.returncode == 0 and "scripts/bootstrap.py test" in p.stdout, p.stdout


def test_a_set_up_environment_is_reused_without_installing(tmp_path):
    """An environment whose stamp matches pyproject.toml and the script runs the job at once: no pip
    (no network here would make pip fail), and the job's exit status is returned."""
    venv = tmp_path / "venv"
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    py.parent.mkdir(parents=True)
    py.symlink_to(sys.executable)
    (venv / "vitac-bootstrap.json").write_text(json.dumps({"test": _bootstrap().fingerprint("test")}))
    env = {**os.environ, "VITAC_VENV": str(venv), "PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_NO_INDEX": "1"}
    p = subprocess.run([sys.executable, str(SCRIPT), "test", "--version"], capture_output=True, text=True,
                       env=env, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    assert "already set up for `test`" in p.stderr and "installed" not in p.stderr, p.stderr
    assert "pytest" in p.stdout + p.stderr    # the job ran: pytest --version
    # a changed pyproject.toml (another fingerprint) would install again
    stamp = json.loads((venv / "vitac-bootstrap.json").read_text())
    assert stamp["test"] != _bootstrap().fingerprint("demo")


def test_ci_runs_the_readme_test_command():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert "python3 scripts/bootstrap.py test" in readme and "python3 scripts/bootstrap.py demo" in readme
    assert '"$PY" scripts/bootstrap.py test' in ci

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


# -- what VITAC_VENV may name: never removed unless this script made it (every path under tmp_path) --
OFFLINE = {"PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_NO_INDEX": "1", "VITAC_TORCH_INDEX": "http://127.0.0.1:9"}


def _run(venv, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "VITAC_VENV": str(venv)}
    return subprocess.run([sys.executable, str(SCRIPT), "test", "--version"], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300, check=False)


def _project(d: Path) -> Path:
    (d / "src").mkdir(parents=True)
    (d / "src" / "main.py").write_text("print('mine')\n")
    (d / "notes.txt").write_text("mine\n")
    return d


def _intact(d: Path) -> bool:
    return (d / "src" / "main.py").read_text() == "print('mine')\n" and (d / "notes.txt").is_file()


def _one_error_line(p: subprocess.CompletedProcess) -> bool:
    errors = [line for line in p.stderr.splitlines() if not line.startswith("[bootstrap]")]
    return len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in p.stderr


def test_a_project_directory_as_vitac_venv_is_refused_untouched(tmp_path):
    proj = _project(tmp_path / "project")
    p = _run(proj, tmp_path)
    assert p.returncode == 2 and _one_error_line(p) and "not a virtual environment" in p.stderr, p.stderr
    assert _intact(proj), "the project's files were deleted"


def test_vitac_venv_dot_is_refused_and_the_working_directory_untouched(tmp_path):
    proj = _project(tmp_path / "cwd")
    p = _run(".", proj)
    assert p.returncode == 2 and _one_error_line(p), p.stderr
    assert _intact(proj), "the working directory was deleted"


def test_a_file_as_vitac_venv_is_one_line_exit_2(tmp_path):
    f = tmp_path / "venv.txt"
    f.write_text("mine")
    p = _run(f, tmp_path)
    assert p.returncode == 2 and _one_error_line(p) and "not a directory" in p.stderr, p.stderr
    assert f.read_text() == "mine"


def test_a_venv_of_ours_without_pip_gets_pip_back(tmp_path):
    """Interrupted between creating the environment and installing into it: no pip. Offline here,
    so the install fails after the repair (exit 1); pip is back all the same."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (venv / "vitac-bootstrap.json").write_text("{}")
    py = venv / "bin" / "python"
    assert subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True).returncode != 0
    p = _run(venv, tmp_path)
    assert "restoring it with ensurepip" in p.stderr, p.stderr
    assert subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True).returncode == 0
    # torch cannot be installed offline: the failed step's output tail, then one error line
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr


def test_a_broken_venv_of_ours_is_made_again(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /nowhere\n")
    (venv / "vitac-bootstrap.json").write_text("{}")
    (venv / "leftover").write_text("x")
    p = _run(venv, tmp_path)
    assert not (venv / "leftover").exists() and (venv / "bin" / "python").exists()

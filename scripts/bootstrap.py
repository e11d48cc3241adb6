#!/usr/bin/env python3
"""Set up and run on a fresh machine that has only Python 3.9+ and pip.

    python3 scripts/bootstrap.py demo [ARGS...]   # the main job: `vitac-deploy demo ARGS`
    python3 scripts/bootstrap.py test [ARGS...]   # the tests: `python -m pytest -q -ra ARGS`

Each makes a virtual environment on first use (`.venv` in the repository, or $VITAC_VENV), installs
the CPU build of PyTorch (pinned) and the project (editable) with what the job needs, then runs it.
`test` also installs TensorRT for RTX where it can be installed (it builds engines without a GPU, so
the engine-builder tests run for real); where it cannot, those tests skip and say so. A later run
installs nothing unless pyproject.toml or this script changed. The exit status is the job's, or 1
when the set-up failed, or 2 for a bad command line or a $VITAC_VENV that is not ours to use.

It never removes what it did not make: an existing $VITAC_VENV is used if its python runs, made
again only if it is a broken environment this script made (its `pyvenv.cfg` and stamp file are
there), and otherwise refused in one line. An environment that lost its pip (an interrupted
upgrade) gets it back from ensurepip.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TORCH = "torch==2.13.0"
# PyPI's Linux wheel of torch is the CUDA build (GBs of CUDA libraries); PyTorch's own CPU index holds
# the same release without them (2.13.0+cpu, which `torch==2.13.0` matches and pip prefers).
TORCH_CPU_INDEX = os.environ.get("VITAC_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
# demo: what `vitac-deploy demo` and the README's quick start after it use (serve: the policy server
# and client; images: PNG camera frames)
EXTRAS = {"demo": "export,onnxruntime,serve,images", "test": "test"}
ROOT = Path(__file__).resolve().parents[1]
STAMP = "vitac-bootstrap.json"


def log(msg: str) -> None:
    """One line of progress on stderr (stdout is the job's)."""
    print(f"[bootstrap] {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    """A set-up step failed: reported in one line, exit 1."""


class UsageError(Exception):
    """A command line or environment this script must not act on: one line, exit 2."""


def run(cmd: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a set-up step, timed; its output is kept and shown (the tail) only if it fails."""
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log(f"{what}: {'done' if p.returncode == 0 else 'FAILED'} in {time.monotonic() - t0:.0f} s")
    if p.returncode != 0 and check:
        sys.stderr.write("".join(p.stdout.splitlines(True)[-25:]))
        raise SetupError(f"{what} failed (`{' '.join(cmd)}`)")
    return p


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def works(py: Path) -> bool:
    return py.exists() and subprocess.run([str(py), "-c", "import sys"], capture_output=True).returncode == 0


def made_here(venv: Path) -> bool:
    """Whether `venv` is an environment this script made: a venv (`pyvenv.cfg`) holding our stamp,
    both regular files (written right after `python -m venv`, before any install)."""
    return all(os.path.isfile(p) and not os.path.islink(p) for p in (venv / "pyvenv.cfg", venv / STAMP))


def ensure_venv(venv: Path) -> Path:
    """The environment's python, the environment made first if it is missing (or broken and ours).
    UsageError, touching nothing, for anything else at `venv`."""
    py = venv_python(venv)
    if os.path.lexists(venv) and (venv.is_symlink() or not venv.is_dir()):
        raise UsageError(f"VITAC_VENV {venv} exists and is not a directory: point it to a new directory")
    is_venv = (venv / "pyvenv.cfg").is_file() or (venv / STAMP).is_file()
    if venv.is_dir() and is_venv and works(py):
        return py
    if venv.is_dir() and any(venv.iterdir()):
        if not made_here(venv):
            raise UsageError(f"{venv} is not a virtual environment made by this script (no working python, no "
                             f"pyvenv.cfg and {STAMP}): refusing to touch it; set VITAC_VENV to a new directory "
                             f"(or remove it yourself if it is a broken environment)")
        log(f"{venv} is a broken environment made here: making it again")
        import shutil

        shutil.rmtree(venv)
    run([sys.executable, "-m", "venv", str(venv)], f"virtual environment {venv} (python {platform.python_version()})")
    write_stamp(venv, {})   # ours from now on: a later run may make it again, nothing else may
    # A venv's bundled pip can predate editable installs of pyproject projects (PEP 660, pip 21.3).
    run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], "pip upgraded")
    return py


def ensure_pip(py: Path) -> None:
    """pip in the environment: an upgrade interrupted between uninstalling the old pip and installing
    the new one leaves none; ensurepip (the one bundled with Python) puts it back."""
    if subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return
    log("the environment has no working pip (an interrupted set-up?): restoring it with ensurepip")
    run([str(py), "-m", "ensurepip", "--upgrade", "--default-pip"], "pip restored (ensurepip)")
    run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], "pip upgraded", check=False)


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=10).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means: do not use it
        return False


def install_torch(py: Path) -> None:
    """torch==2.13.0, the CPU build: from PyTorch's CPU index on Linux when it answers, else from the
    configured indexes (on Linux, PyPI's is the CUDA build: it runs on a CPU too, only bigger)."""
    cmd = [str(py), "-m", "pip", "install", "-q", TORCH]
    if sys.platform.startswith("linux") and reachable(TORCH_CPU_INDEX + "/torch/"):
        cmd += ["--extra-index-url", TORCH_CPU_INDEX]
    elif sys.platform.startswith("linux"):
        log(f"{TORCH_CPU_INDEX} not reachable: {TORCH} from the configured package indexes")
    run(cmd, f"{TORCH} installed")
    p = subprocess.run([str(py), "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                       capture_output=True, text=True)
    log(f"torch {p.stdout.strip()} (version, CUDA; None is the CPU build)")


def fingerprint(mode: str) -> str:
    """What an installation depends on: a change re-runs pip."""
    h = hashlib.sha256()
    for f in (ROOT / "pyproject.toml", Path(__file__).resolve()):
        h.update(f.read_bytes())
    h.update(f"{mode} {sys.version_info[:2]}".encode())
    return h.hexdigest()


def read_stamp(venv: Path) -> dict:
    try:
        return json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def write_stamp(venv: Path, stamp: dict) -> None:
    """Atomically: an interrupted set-up leaves the old stamp, so the next run installs again."""
    tmp = venv / f"{STAMP}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(stamp, indent=1))
    os.replace(tmp, venv / STAMP)


def setup(mode: str, venv: Path) -> Path:
    """The environment for `mode`, installed unless an earlier run already did it."""
    t0 = time.monotonic()
    py = ensure_venv(venv)
    stamp = read_stamp(venv)
    if stamp.get(mode) == fingerprint(mode):
        log(f"{venv} already set up for `{mode}`")
        return py
    ensure_pip(py)
    install_torch(py)
    run([str(py), "-m", "pip", "install", "-q", "-e", f"{ROOT}[{EXTRAS[mode]}]"],
        f"vitac-deploy[{EXTRAS[mode]}] installed (editable)")
    if mode == "test":
        p = run([str(py), "-m", "pip", "install", "-q", "-e", f"{ROOT}[tensorrt-rtx]"],
                "TensorRT for RTX (tensorrt-rtx-cu13) installed", check=False)
        if p.returncode != 0:
            last = (p.stdout.strip().splitlines() or ["?"])[-1]
            log(f"TensorRT for RTX is not installable here ({last.strip()}): its engine-builder tests will skip")
    stamp[mode] = fingerprint(mode)
    write_stamp(venv, stamp)
    log(f"set-up for `{mode}` took {time.monotonic() - t0:.0f} s")
    return py


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    if not argv or argv[0] not in EXTRAS:
        print(f"error: usage: {Path(sys.argv[0]).name} demo|test [ARGS...] (see --help)", file=sys.stderr)
        return 2
    if sys.version_info < (3, 9):
        print(f"error: vitac-deploy needs Python 3.9 or newer (this is {platform.python_version()})", file=sys.stderr)
        return 2
    mode, args = argv[0], argv[1:]
    venv = Path(os.environ.get("VITAC_VENV") or ROOT / ".venv").resolve()
    try:
        py = setup(mode, venv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # a VITAC_VENV that cannot be read or written: one line, not a traceback
        print(f"error: {venv}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    job = [str(py), "-m", "vitac_deploy", "demo", *args] if mode == "demo" else \
        [str(py), "-m", "pytest", "-q", "-ra", *args]
    log(f"running: {' '.join(job[1:])}")
    t0 = time.monotonic()
    # The environment's own packages, not a PYTHONPATH of another checkout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        rc = subprocess.run(job, cwd=ROOT, env=env).returncode
    except KeyboardInterrupt:
        rc = 130
    log(f"`{mode}` exited {rc} after {time.monotonic() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

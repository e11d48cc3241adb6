"""The README's quick start, run as a user runs it: every line of its command block, in order, in a
fresh folder holding a copy of `examples/` (the frames and the robot loop), `vitac-deploy` as the
installed command, `python` this interpreter, `cmd &` in the background and `kill %1` stopping it.
One change: the server and the robot loop get a free port instead of 8000, which another test or
program may hold."""

import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
pytest.importorskip("websockets")


def quickstart_lines() -> list:
    """The lines of the bash block after the README's quick-start marker, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quick start:.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its quick-start block"
    lines = []
    for line in block.group(1).splitlines():
        line = line.split("  #")[0].strip()
        if line:
            lines.append(line)
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(args: list) -> list:
    exe = shutil.which("vitac-deploy", path=str(Path(sys.executable).parent))
    if args[0] == "vitac-deploy":
        return ([exe] if exe else [sys.executable, "-m", "vitac_deploy"]) + args[1:]
    if args[0] == "python":
        return [sys.executable] + args[1:]
    raise AssertionError(f"the quick start runs only vitac-deploy and python, not {args[0]}")


def test_readme_quickstart_runs_as_written(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    port = str(free_port())
    background, outputs = None, {}
    try:
        for line in quickstart_lines():
            if line == "kill %1":
                assert background is not None, "kill %1 with nothing in the background"
                background.send_signal(signal.SIGTERM)
                out, err = background.communicate(timeout=60)
                assert background.returncode in (0, -signal.SIGTERM), err
                outputs["serve"] = out + err
                background = None
                continue
            args = shlex.split(line)
            in_background = args[-1] == "&"
            args = args[:-1] if in_background else args
            if "serve" in args[:2] or "robot_loop.py" in line:
                args += ["--port", port]
            if in_background:
                assert background is None
                background = subprocess.Popen(command(args), cwd=tmp_path, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)
                continue
            p = subprocess.run(command(args), cwd=tmp_path, capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, (line, p.stdout[-2000:], p.stderr[-2000:])
            assert "Traceback" not in p.stderr, (line, p.stderr)
            outputs[args[1] if args[0] == "vitac-deploy" else Path(args[1]).name] = p.stdout + p.stderr
    finally:
        if background is not None:
            background.kill()
            background.wait()
    assert "PASSED" in outputs["validate"] and "as the manifest records" in outputs["validate"]
    assert "the robot executes step 0: [" in outputs["plan"] and "gripper" in outputs["plan"]
    # a plan of this size says up front what it costs, then each CEM step as it finishes
    assert "this plan: " in outputs["plan"] and "GFLOP/s measured on 16 samples" in outputs["plan"]
    assert "CEM step 1/3: " in outputs["plan"] and "CEM step 3/3: " in outputs["plan"]
    loop = outputs["robot_loop.py"]
    assert "7-dim actions" in loop and loop.count("-> pose") == 3, loop
    assert "serving franka" in outputs["serve"]

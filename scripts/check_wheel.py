"""Build the wheel and check the runtime side installs and runs with numpy + onnxruntime alone, as
on a robot (docs/jetson.md): no torch, no onnx.

1. `pip wheel . --no-deps` builds vitac_deploy-*.whl (pure Python) into a temporary folder (from a
   copy of pyproject.toml, README.md and vitac_deploy/, so the clone gets no build/ folder).
2. A fresh virtual environment gets the wheel, numpy and onnxruntime, and nothing else (the wheel's
   own dependencies, typer and rich, come with it for the CLI).
3. This environment (which has torch) exports a small 7-dim predictor and its encoder.
4. In the fresh one: `vitac_deploy.runtimes` imports, torch and onnx are absent, `open_runtime` rolls
   out, `open_encoder` encodes camera frames and `planning.plan` plans; `vitac-deploy plan` runs.

    python scripts/check_wheel.py            # prints each step; exit 0 when all passed
    python scripts/check_wheel.py --keep DIR # keep the wheel, the venv and the artifact in DIR

Everything is written inside a temporary folder (or --keep DIR, which must not exist).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what runs in the fresh environment: imports, absence of torch/onnx, a rollout, an encoding, a plan
RUNTIME_CHECK = """
import sys
import numpy as np
import vitac_deploy.runtimes as runtimes
from vitac_deploy.planning import CEMOptions, plan
art = sys.argv[1]
for name in ("torch", "onnx"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} is installed in the fresh environment: the check proves nothing")
rt = runtimes.open_runtime(art, backend="onnxruntime")
cfg = rt.cfg
rng = np.random.default_rng(0)
pred = rt.rollout(rng.standard_normal((1, 1, cfg.tokens_per_frame, cfg.embed_dim)).astype(np.float32),
                  np.zeros((1, 3, cfg.action_dim), np.float32), np.zeros((1, 3, cfg.action_dim), np.float32), 3)
enc = runtimes.open_encoder(art + "/encoder", backend="onnxruntime")
feats = enc.encode(rng.integers(0, 256, (2, 1, 120, 160, 3), dtype=np.uint8))
res = plan(rt, feats[0:1], feats[1:2], np.array([[0.45, 0, 0.35, 3.14, 0, 0, 0]], np.float32),
           CEMOptions(samples=16, topk=4, cem_steps=2))
assert pred.shape == (1, 3, cfg.tokens_per_frame, cfg.embed_dim) and np.isfinite(pred).all()
assert res.actions.shape == (2, 7) and np.isfinite(res.actions).all()
assert not any(m.split(".")[0] in ("torch", "onnx") for m in sys.modules)
print(f"runtime ok: rollout {list(pred.shape)}, features {list(feats.shape)}, "
      f"action {[round(float(v), 4) for v in res.actions[0]]}")
"""


def run(cmd: list, what: str = "") -> subprocess.CompletedProcess:
    """Run a step, print what it is and its time; raise with its output if it fails."""
    t0 = time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    shown = what or " ".join(Path(str(c)).name if i == 0 else str(c) for i, c in enumerate(cmd[:3]))
    print(f"  [{time.perf_counter() - t0:5.1f} s] {shown} -> exit {p.returncode}", flush=True)
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


def check(work: Path) -> None:
    """The four steps above, inside `work`."""
    from vitac_deploy.exporters import EncoderExportOptions, ExportOptions, export_artifact, export_encoder
    from vitac_deploy.config import PredictorConfig
    from vitac_deploy.encoder import EncoderConfig
    from vitac_deploy.reference import random_encoder, random_predictor

    print("1. building the wheel")
    # from a copy of what the wheel is made of: setuptools would leave build/ in the clone, and
    # a stale build/lib can carry files the tree no longer has into a later wheel
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "vitac_deploy", src / "vitac_deploy", ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-w", work / "dist"])
    wheel = next((work / "dist").glob("vitac_deploy-*.whl"))
    print(f"   {wheel.name} ({wheel.stat().st_size / 1e3:.0f} kB)")
    print("2. a fresh virtual environment with the wheel, numpy and onnxruntime")
    run([sys.executable, "-m", "venv", work / "venv"])
    py = work / "venv" / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    run([py, "-m", "pip", "install", "-q", wheel, "numpy", "onnxruntime"])
    listed = run([py, "-m", "pip", "list", "--format=freeze"]).stdout
    print("   installed: " + ", ".join(line.split("==")[0] for line in listed.split()))
    print("3. exporting a small 7-dim predictor and its encoder here (this environment has torch)")
    art = work / "art"
    cfg = PredictorConfig(embed_dim=64, predictor_embed_dim=64, depth=2, num_heads=2, action_dim=7,
                          grid_height=4, grid_width=4, max_frames=4)
    export_artifact(random_predictor(cfg, 0), art, ExportOptions(precisions=["fp32"], first_frame_graph=False))
    export_encoder(random_encoder(EncoderConfig(img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=2), 1),
                   art / "encoder", EncoderExportOptions(precisions=["fp32"]))
    print("4. the runtime side in the fresh environment")
    print("   " + run([py, "-c", RUNTIME_CHECK, art], "open_runtime, open_encoder, plan (no torch, no onnx)").stdout.strip())
    frames = work / "frame.npy"
    run([py, "-c", f"import numpy as np; np.save({str(frames)!r}, np.full((120, 160, 3), 90, np.uint8))"],
        "a camera frame as .npy")
    cli = work / "venv" / "bin" / "vitac-deploy"
    out = run([cli, "plan", art, "--observation", frames, "--goal", frames, "--pose", "0.45,0,0.35,3.14,0,0,0",
               "--samples", "16", "--topk", "4", "--cem-steps", "2"], "vitac-deploy plan").stdout
    line = next(x for x in out.splitlines() if x.startswith("the robot executes"))
    print(f"   vitac-deploy plan: {line}")
    print("all passed: the wheel installs and its runtime side runs with numpy + onnxruntime alone")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, help="a new folder to keep the wheel, the venv and the artifact in")
    a = ap.parse_args(argv)
    if a.keep is not None:
        if a.keep.exists():
            ap.error(f"--keep {a.keep} exists: give a new folder")
        a.keep.mkdir(parents=True)
        check(a.keep)
        return 0
    work = Path(tempfile.mkdtemp(prefix="vitac-wheel-"))
    try:
        check(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

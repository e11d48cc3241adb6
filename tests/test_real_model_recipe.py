"""docs/real-model.md's command sequence, every line, on a small checkpoint written in the published
V-JEPA 2-AC layout (one torch.save of `encoder`, `target_encoder` and `predictor` with their
`module.backbone.` prefixes, and a training counter beside them): the sizes swapped for `--config`
files, the download skipped (no network), the engines built ahead of time with TensorRT for RTX
where it is installed, and the plan on engines refused in one line where there is no GPU."""

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "docs" / "real-model.md"
URL = "https://dl.fbaipublicfiles.com/vjepa2/vjepa2-ac-vitg.pt"
PREDICTOR = {"embed_dim": 64, "predictor_embed_dim": 64, "depth": 2, "num_heads": 2, "action_dim": 7,
             "grid_height": 4, "grid_width": 4, "max_frames": 4}
ENCODER = {"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 1, "num_heads": 2}


def recipe_lines() -> list:
    """The lines of the bash block that follows the recipe marker."""
    text = RECIPE.read_text()
    block = re.search(r"<!-- the recipe:.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "docs/real-model.md lost its recipe block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def published_checkpoint(path: Path) -> None:
    import torch

    from vitac_deploy import PredictorConfig
    from vitac_deploy.encoder import EncoderConfig
    from vitac_deploy.reference import random_encoder, random_predictor

    enc = random_encoder(EncoderConfig(**ENCODER), 1).state_dict()
    pred = random_predictor(PredictorConfig(**PREDICTOR), 2).state_dict()
    prefixed = lambda sd, shift=0.0: {f"module.backbone.{k}": v + shift for k, v in sd.items()}  # noqa: E731
    torch.save({"encoder": prefixed(enc), "target_encoder": prefixed(enc, 0.5), "predictor": prefixed(pred),
                "epoch": 315}, path)


def test_every_command_of_the_real_model_recipe_runs(tmp_path):
    from PIL import Image

    from vitac_deploy.encoder import EncoderConfig
    from vitac_deploy.validation import validation_images

    lines = recipe_lines()
    assert lines[0] == f"wget {URL}"
    published_checkpoint(tmp_path / "vjepa2-ac-vitg.pt")
    (tmp_path / "predictor.json").write_text(json.dumps(PREDICTOR))
    (tmp_path / "encoder.json").write_text(json.dumps(ENCODER))
    frames = validation_images(EncoderConfig(**ENCODER), 2, 3, size=(120, 160))[0]
    Image.fromarray(frames[0]).save(tmp_path / "now.png")
    Image.fromarray(frames[1]).save(tmp_path / "goal.png")
    rtx = importlib.util.find_spec("tensorrt_rtx") is not None
    ran = []
    for line in lines[1:]:
        line = line.replace("--preset vjepa2-ac-vitg", "--config predictor.json")
        line = line.replace("--preset vit-g", "--config encoder.json")
        args = shlex.split(line)
        assert args[0] == "vitac-deploy", line
        command = args[1]
        if command == "build-engine" and rtx:
            args += ["--flavour", "tensorrt-rtx"]      # ahead of time, no GPU needed
        p = subprocess.run([sys.executable, "-m", "vitac_deploy", *args[1:]], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
        on_engines = command == "plan" and args[2].endswith(".plan")
        if (command == "build-engine" and not rtx) or on_engines:
            # no TensorRT to build with, or no GPU to run an engine on: one line, exit 2, nothing else
            if p.returncode == 0:   # a machine with a GPU and TensorRT ran it
                ran.append(command)
                continue
            assert p.returncode == 2, (line, p.stderr)
            last = p.stderr.strip().splitlines()[-1]
            assert last.startswith("error: ") and "Traceback" not in p.stderr, (line, p.stderr)
            continue
        assert p.returncode == 0, (line, p.stdout[-2000:], p.stderr[-2000:])
        ran.append(command)
        if command == "validate":
            assert "PASSED" in p.stdout
        if command == "plan":
            assert "the robot executes step 0" in p.stdout
    assert ran[:6] == ["info", "export", "export-encoder", "validate", "validate", "plan"], ran
    manifest = json.loads((tmp_path / "vitg" / "manifest.json").read_text())
    assert manifest["source"]["checkpoint"] == "vjepa2-ac-vitg.pt" and len(manifest["source"]["checkpoint_sha256"]) == 64
    if rtx:
        assert (tmp_path / "vitg.plan").is_file() and (tmp_path / "vitg-encoder.plan").is_file()


def test_the_recipe_takes_the_encoder_key_the_file_has(tmp_path):
    """`--encoder-key target_encoder` reads the other entry of the same file (different weights here)."""
    from vitac_deploy.encoder import EncoderConfig
    from vitac_deploy.reference.checkpoint import load_encoder

    published_checkpoint(tmp_path / "ck.pt")
    a = load_encoder(tmp_path / "ck.pt", EncoderConfig(**ENCODER)).state_dict()["norm.weight"]
    b = load_encoder(tmp_path / "ck.pt", EncoderConfig(**ENCODER), key="target_encoder").state_dict()["norm.weight"]
    assert np.allclose(b.numpy() - a.numpy(), 0.5)

"""Camera frames from files within bounds: a frame above MAX_IMAGE_PIXELS is refused from its header
(one line, exit 2, never decoded), and a large frame that is accepted is cropped and resized before
anything becomes float (peak resident memory of a real `vitac-deploy plan` read from /proc)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_landscape_bounds import PEAK
from vitac_deploy import VitacError
from vitac_deploy.encoder import read_images
from vitac_deploy.encoder.preprocess import MAX_IMAGE_PIXELS
from vitac_deploy.benchmarks.serving import tiny_artifact

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    art = tiny_artifact(d / "art")
    huge = Image.new("RGB", (9000, 9000), (30, 90, 150))            # 81 Mpx: a few hundred KB as PNG
    huge.save(d / "huge.png", compress_level=1)
    big = Image.new("RGB", (6000, 4000), (200, 10, 60))             # 24 Mpx: accepted
    big.paste((0, 255, 0), (2000, 1000, 3000, 3000))
    big.save(d / "big.png", compress_level=1)
    small = Image.new("RGB", (64, 48), (1, 2, 3))
    small.save(d / "small.png")
    (d / "peak.py").write_text(PEAK)
    return d, art


def _plan(d, art, observation) -> tuple[subprocess.CompletedProcess, int]:
    p = subprocess.run([sys.executable, str(d / "peak.py"), "plan", str(art), "--observation", str(observation),
                        "--goal", str(d / "small.png"), "--pose", "0,0,0,0,0,0,0.5", "--samples", "8", "--topk", "3",
                        "--cem-steps", "1"], capture_output=True, text=True, timeout=600)
    peak = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("PEAK_MIB")]
    return p, peak[0] if peak else -1


def test_a_frame_above_the_pixel_cap_is_refused_from_its_header(files):
    d, art = files
    assert 9000 * 9000 > MAX_IMAGE_PIXELS
    with pytest.raises(VitacError, match="81 Mpx"):
        read_images([d / "huge.png"])
    np.save(d / "huge.npy", np.zeros((1, 7000, 7000, 3), np.uint8))
    with pytest.raises(VitacError, match="49 Mpx"):
        read_images([d / "huge.npy"])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux) to read peak RSS")
def test_plan_on_huge_and_large_frames_stays_small(files):
    d, art = files
    p, peak = _plan(d, art, d / "huge.png")
    lines = [line for line in p.stderr.splitlines() if line.startswith("error")]
    assert p.returncode == 2 and len(lines) == 1 and "Mpx" in lines[0], p.stderr
    assert 0 < peak < 400, f"peak {peak} MiB refusing a 9000 x 9000 PNG"
    p, peak = _plan(d, art, d / "big.png")
    assert p.returncode == 0, p.stderr
    # the decoded frame is 72 MB (uint8; Pillow and numpy hold a few copies); its float64 crop alone
    # was 384 MB before
    assert 0 < peak < 600, f"peak {peak} MiB planning from a 6000 x 4000 PNG"

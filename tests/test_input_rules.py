"""One set of input rules for every entry point: the same frame, seed or tolerance gets the same
answer from `plan`, the server, `debug-precision` and the Python API (exit 2, one line)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vitac_deploy.encoder.preprocess import MIN_IMAGE_SIDE, preprocess, read_images
from vitac_deploy.errors import VitacError
from vitac_deploy.inputs import MAX_SEED, check_seed, check_tolerance
from vitac_deploy.serving.protocol import RequestError, ServeOptions, parse_request


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *args], capture_output=True, text=True)


def _png(path, h, w):
    from PIL import Image

    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("h,w", [(1, 1), (1, 100), (100, 1)])
def test_a_frame_too_small_is_refused_by_plan_the_server_and_python_alike(tmp_path, h, w):
    frame = np.zeros((h, w, 3), np.uint8)
    want = f"must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, got {h}x{w}"
    with pytest.raises(RequestError, match=want):
        parse_request({"observation/image": frame, "observation/state": np.zeros(7, np.float32)}, ServeOptions(), 7)
    with pytest.raises(VitacError, match=want):
        preprocess(frame[None], 16)
    png = _png(tmp_path / "tiny.png", h, w)
    with pytest.raises(VitacError, match=want):
        read_images([png])
    # plan checks the frames before it opens anything: no artifact is needed to be told
    p = _cli("plan", str(tmp_path / "no-artifact"), "--observation", str(png), "--goal", str(png), "--pose", "0,0")
    assert p.returncode == 2 and want in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_an_npz_with_no_frame_is_an_input_error(tmp_path):
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(VitacError, match="holds no frame"):
        read_images([tmp_path / "empty.npz"])
    p = _cli("plan", str(tmp_path / "no-artifact"), "--observation", str(tmp_path / "empty.npz"),
             "--goal", str(tmp_path / "empty.npz"), "--pose", "0,0")
    assert p.returncode == 2 and "holds no frame" in p.stderr, p.stderr


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**64])
def test_a_seed_has_one_range_everywhere(tmp_path, seed):
    with pytest.raises(VitacError, match=r"seed must be an integer in 0\.\.2\*\*63-1"):
        check_seed(seed)
    with pytest.raises(RequestError, match=r"seed must be an integer in 0\.\.2\*\*63-1"):
        parse_request({"observation/image": np.zeros((8, 8, 3), np.uint8),
                       "observation/state": np.zeros(7, np.float32), "seed": seed}, ServeOptions(), 7)
    p = _cli("plan", str(tmp_path / "a"), "--observation", "x.png", "--goal", "x.png", "--pose", "0", "--seed", str(seed))
    assert p.returncode == 2 and "2**63-1" in p.stderr, p.stderr
    assert check_seed(MAX_SEED) == MAX_SEED and check_seed(np.int64(3)) == 3


def test_the_planner_takes_the_same_seed_range():
    from vitac_deploy.planning.cem import PlanRequest, _robot, ActionSpace, CEMOptions

    class Rt:   # only what _robot reads: the config
        from tests.conftest import SMALL as cfg

    cfg = Rt.cfg
    feats = np.zeros((1, cfg.tokens_per_frame, cfg.embed_dim), np.float32)
    req = PlanRequest(feats, feats, np.zeros((1, cfg.action_dim), np.float32), seed=2**64)
    with pytest.raises(VitacError, match=r"0\.\.2\*\*63-1"):
        _robot(req, CEMOptions(samples=4, topk=2), ActionSpace.for_dim(cfg.action_dim), Rt())


@pytest.mark.parametrize("atol", ["nan", "inf", "-1", "0"])
def test_a_tolerance_that_would_pass_everything_is_refused(tmp_path, atol):
    with pytest.raises(VitacError, match="--atol must be a finite number > 0"):
        check_tolerance(float(atol))
    out = tmp_path / "layers.json"
    p = _cli("debug-precision", str(tmp_path / "no-artifact"), "--atol", atol, "--json", str(out))
    assert p.returncode == 2 and "--atol must be a finite number > 0" in p.stderr, p.stderr
    assert not out.exists()

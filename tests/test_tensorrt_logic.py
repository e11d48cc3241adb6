"""The TensorRT side that needs neither TensorRT nor a GPU: profiles, compatibility checks, CLI errors.
Engine building itself needs both (marked `tensorrt`, skipped here with the reason)."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR
from vitac_deploy import VitacError
from vitac_deploy.contract import past_names, step_io
from vitac_deploy.runtimes.tensorrt.compat import check_engine_compat
from vitac_deploy.runtimes.tensorrt.profiles import ProfileOptions, check_profile_options, step_profile


SMALL_NO_NORM = SMALL.__class__.from_dict({**SMALL.to_dict(), "normalize_reps": False})


def _graph(first=False):
    ins, outs = step_io(SMALL, "float16", first)
    return {"inputs": [s.to_dict() for s in ins]}


def test_step_profile_covers_whole_frames():
    o = check_profile_options(ProfileOptions(1, 8, 64, 0, 1), SMALL)
    p = step_profile(_graph(), SMALL, o)
    L, H, hd = SMALL.tokens_per_step, SMALL.num_heads, SMALL.head_dim
    assert p["past_key.0"] == ((1, H, L, hd), (8, H, 2 * L, hd), (64, H, 3 * L, hd))  # max_frames 4 -> 3 cached
    assert p["features"] == ((1, 16, 32), (8, 16, 32), (64, 16, 32))
    assert p["action"][2] == (64, SMALL.action_dim)
    first = step_profile(_graph(True), SMALL, ProfileOptions(1, 8, 64, 4, 0))
    assert "past_key.0" not in first and first["features"][0] == (1, 16, 32)
    zero = step_profile(_graph(), SMALL, ProfileOptions(1, 1, 1, 4, 0))
    assert zero["past_value.1"][0][2] == 0


@pytest.mark.parametrize("opts, msg", [
    (ProfileOptions(2, 1, 4), "--min-batch"),
    (ProfileOptions(1, 1, 1, 9), "--max-frames"),
])
def test_profile_option_errors(opts, msg):
    with pytest.raises(VitacError, match=msg):
        check_profile_options(opts, SMALL)


ENGINE = {"tensorrt": {"flavour": "tensorrt", "version": "10.3.0"},
          "gpu": {"name": "Orin", "compute_capability": "8.7"}, "build_flags": {}}


def test_compat_accepts_the_building_setup():
    check_engine_compat(ENGINE, "10.3.0", "tensorrt", "Orin", "8.7")


@pytest.mark.parametrize("version, flavour, cc, msg", [
    ("10.13.0", "tensorrt", "8.7", "TensorRT 10.13.0"),
    ("10.3.0", "tensorrt", "9.0", "compute capability 9.0"),
    ("10.3.0", "tensorrt-rtx", "8.7", "tensorrt-rtx"),
])
def test_compat_refusals_say_where_it_was_built(version, flavour, cc, msg):
    with pytest.raises(VitacError, match=msg) as e:
        check_engine_compat(ENGINE, version, flavour, "GPU", cc)
    assert "built with tensorrt 10.3.0 on Orin" in str(e.value) and "rebuild" in str(e.value)


def test_compat_without_a_gpu_says_engines_need_one():
    with pytest.raises(VitacError, match="built with tensorrt 10.3.0 on Orin .* no CUDA GPU is visible here"):
        check_engine_compat(ENGINE, "10.3.0", "tensorrt", None, None)


RTX = {"tensorrt": {"flavour": "tensorrt-rtx", "version": "1.7.1.116"}, "gpu": None, "build_flags": {}}


def test_compat_rtx_engines_follow_their_target_list():
    check_engine_compat({**RTX, "compute_capabilities": ["8.6", "8.9"]}, "1.7.1.116", "tensorrt-rtx", "RTX 4090", "8.9")
    check_engine_compat({**RTX, "compute_capabilities": ["default"]}, "1.7.1.116", "tensorrt-rtx", "RTX 5090", "12.0")
    with pytest.raises(VitacError, match=r"without a GPU .* for compute capability 8.6.*--compute-capability 8.9"):
        check_engine_compat({**RTX, "compute_capabilities": ["8.6"]}, "1.7.1.116", "tensorrt-rtx", "RTX 4090", "8.9")
    with pytest.raises(VitacError, match="Ampere and newer.*--compute-capability 7.5"):
        check_engine_compat({**RTX, "compute_capabilities": ["default"]}, "1.7.1.116", "tensorrt-rtx", "RTX 2080", "7.5")


def test_compat_flags_widen_what_runs():
    eng = {**ENGINE, "build_flags": {"version_compatible": True, "hardware_compatible": True}}
    check_engine_compat(eng, "10.13.0", "tensorrt", "H100", "9.0")
    with pytest.raises(VitacError):
        check_engine_compat(eng, "11.0.0", "tensorrt", "H100", "9.0")  # not across major versions


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_is_one_line_exit_2(tmp_path):
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(validate=False))
    p = subprocess.run([sys.executable, "-m", "vitac_deploy", "build-engine", str(art), "--out", str(tmp_path / "e.plan")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: tensorrt is not installed")
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "e.plan").exists()


@pytest.mark.tensorrt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="needs TensorRT and a CUDA GPU")
def test_build_engine_for_real(tmp_path):
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor
    from vitac_deploy.runtimes.tensorrt.build import EngineOptions, build_engine

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(validate=False))
    data = build_engine(art, tmp_path / "e.plan", EngineOptions(profile=ProfileOptions(1, 2, 4)))
    assert (tmp_path / "e.plan").stat().st_size > 0 and (tmp_path / "e.first.plan").is_file()
    assert data["engines"][0]["sha256"]


@pytest.mark.parametrize("cfg", [SMALL, SMALL_SWIGLU_EXTR, SMALL_NO_NORM], ids=["small", "swiglu_extr", "no_norm"])
@pytest.mark.parametrize("first_engine", [True, False])
def test_frame_binding_covers_the_contract_and_fits_the_profiles(cfg, first_engine):
    """Every frame of a rollout binds exactly the engine's IO (from the contract), with input
    shapes inside the optimization profiles build-engine gives that engine, past and present in
    different arenas, and the prediction read from where the graph writes it."""
    from vitac_deploy.runtimes.tensorrt.binding import FrameBuffers, bind_frame

    B = 3
    o = check_profile_options(ProfileOptions(1, 2, 4, 0, 1 if first_engine else 0), cfg)
    profiles = {role: step_profile({"inputs": [s.to_dict() for s in step_io(cfg, "float16", role == "first")[0]]},
                                   cfg, ProfileOptions(o.min_batch, o.opt_batch, o.max_batch, o.max_frames,
                                                       0 if role == "first" else o.min_past_frames))
                for role in ("step", "first")}
    past = {n: 1000 + i for i, n in enumerate(past_names(cfg))}
    present = {n: 2000 + i for i, n in enumerate(past_names(cfg))}
    cond = {"action": 11, "state": 12, **({"extrinsics": 13} if cfg.use_extrinsics else {})}
    for t in range(cfg.max_frames):
        past, present = present, past          # the runtime swaps arenas every frame
        b = bind_frame(cfg, B, t, first_engine, FrameBuffers(features=7, cond=cond, past=past, present=present,
                                                            prediction=8, raw_out=9,
                                                            rope={"rope_cos": 100000, "rope_sin": 200000},
                                                            rope_row_bytes=64))
        assert b.role == ("first" if t == 0 and first_engine else "step")
        ins, outs = step_io(cfg, "float16", b.role == "first")
        assert set(b.shapes) == {s.name for s in ins}
        assert set(b.addresses) == {s.name for s in ins} | {s.name for s in outs}
        for name, shape in b.shapes.items():
            lo, _, hi = profiles[b.role][name]
            assert all(lo_d <= d <= hi_d for lo_d, d, hi_d in zip(lo, shape, hi)), (t, name, shape, lo, hi)
        for i in range(cfg.depth):
            assert b.addresses[f"present_key.{i}"] == present[f"past_key.{i}"]
            if b.role == "step":
                assert b.addresses[f"past_key.{i}"] == past[f"past_key.{i}"] != b.addresses[f"present_key.{i}"]
                assert b.shapes[f"past_value.{i}"][2] == t * cfg.tokens_per_step
        if b.role == "step":   # the frame's RoPE row: row t of the device tables
            assert b.addresses["rope_cos"] == 100000 + 64 * t and b.addresses["rope_sin"] == 200000 + 64 * t
        assert b.prediction == b.addresses["next_features"] == (8 if cfg.normalize_reps else 9)
        if cfg.normalize_reps:
            assert b.addresses["next_features_raw"] == 9


@pytest.mark.parametrize("want", [1, 2, 3, 7, 8, 300])
def test_tile_copies_broadcast_row_zero(want):
    """The device-side cache broadcast (CUDA backends): replaying its copies on a host array gives
    row 0 in every row, in ceil(log2(want)) copies that never read rows not yet written."""
    from vitac_deploy.runtimes.gpu import tile_copies

    buf = np.arange(want * 5, dtype=np.float32).reshape(want, 5)
    buf[1:] = -1
    copies = tile_copies(1, want)
    for first, n in copies:
        assert n <= first                      # sources (rows 0..n-1) are already filled
        buf[first:first + n] = buf[:n]
    assert (buf == buf[:1]).all() and len(copies) == int(np.ceil(np.log2(want)))


def test_static_contract_needs_the_kv_cache_layer():
    """build-engine and the runtime refuse the static contract, in one line naming the version, on a
    TensorRT without IKVCacheUpdateLayer (8.6 and 10.3 of JetPack 6); concat passes everywhere."""
    import types

    from vitac_deploy.runtimes.tensorrt.compat import check_kv_cache_support

    old = types.SimpleNamespace(__name__="tensorrt", __version__="10.3.0")
    new = types.SimpleNamespace(__name__="tensorrt", __version__="10.15.1", IKVCacheUpdateLayer=object)
    check_kv_cache_support(old, "tensorrt", "concat")
    check_kv_cache_support(new, "tensorrt", "static")
    with pytest.raises(VitacError, match=r"^tensorrt 10\.3\.0 cannot run the static .*needs TensorRT >= 10\.15"):
        check_kv_cache_support(old, "tensorrt", "static")
    rtx = types.SimpleNamespace(__name__="tensorrt_rtx", __version__="1.2.0")
    with pytest.raises(VitacError, match="TensorRT for RTX with IKVCacheUpdateLayer"):
        check_kv_cache_support(rtx, "tensorrt-rtx", "static")

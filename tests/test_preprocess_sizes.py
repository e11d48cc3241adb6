"""Preprocessing exact at frame sizes the golden cases do not cover (they resize 256 -> 64 and
60 -> 48, where every scale is exact in float32): non-square, odd, smaller than the crop.

The expected pixels come from an implementation of planner.md section 1 written here, in float64,
independent of the package's (a resize MATRIX per axis built entry by entry with Python scalars,
where the package gathers rows and columns with numpy): the center crop at floor offsets, torch's
bilinear resize (align_corners=False, no antialias) with the source coordinates torch computes for
a float32 tensor (upstream converts frames to float32 first), normalization in 0..255 units.

How we know it is upstream's: the same pixels come out of torch.nn.functional.interpolate itself
on float32 tensors (the operation upstream calls), checked below wherever torch's CPU kernels agree
with each other. Where they do not (x86 without FMA, ATEN_CPU_CAPABILITY=default, rounds
`scale * (dst + 0.5) - 0.5` twice; AVX2/AVX-512, aarch64 and CUDA builds fuse it), the fused form
is the one taken: case D pins it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitac_deploy.encoder import preprocess

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOL = 1e-5   # tests/golden/README.md: pixels
# (T, H, W, crop): non-square, odd sides, (W-H) % 4 == 3 where a round()ed crop offset would differ
CASES = {
    "A 77x132 -> 48": (2, 77, 132, 48),      # float64 source coordinates are 1.7e-5 off here
    "B 37x30 -> 64": (2, 37, 30, 64),        # smaller than the crop: upsampled
    "C 301x210 -> 224": (1, 301, 210, 224),
    "D 211x300 -> 224": (1, 211, 300, 224),  # fused vs twice-rounded coordinates: 9.6e-6 apart
}
TORCH_AGREES = ("A 77x132 -> 48", "B 37x30 -> 64", "C 301x210 -> 224")


def f32(v: float) -> float:
    return float(np.float32(v))


def resize_matrix(n_in: int, n_out: int, fused: bool = True, float64_coords: bool = False) -> np.ndarray:
    """[n_out, n_in]: row j holds the two weights torch's bilinear resize gives output j."""
    r = np.zeros((n_out, n_in))
    scale = n_in / n_out if float64_coords else f32(n_in / n_out)
    for j in range(n_out):
        if float64_coords:
            src = scale * (j + 0.5) - 0.5
        elif fused:      # float64 holds scale * (j + 0.5) - 0.5 exactly: one rounding, as an FMA
            src = f32(scale * (j + 0.5) - 0.5)
        else:
            src = f32(f32(scale * (j + 0.5)) - 0.5)
        src = max(src, 0.0)
        i0 = min(math.floor(src), n_in - 1)
        lam = min(max(src - i0, 0.0), 1.0)
        w0 = 1.0 - lam if float64_coords else f32(1.0 - lam)
        r[j, i0] += w0
        r[j, min(i0 + 1, n_in - 1)] += lam
    return r


def upstream_pixels(frames: np.ndarray, crop: int, round_offset: bool = False, **kw) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [3, T, crop, crop] float64, planner.md section 1 (`round_offset`: the
    crop offsets torchvision's CenterCrop takes, round() instead of floor, for the test that the
    cases tell them apart)."""
    T, H, W, _ = frames.shape
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    if round_offset:
        top, left = int(round((H - side) / 2)), int(round((W - side) / 2))
    x = frames[:, top:top + side, left:left + side].astype(np.float64)
    r = resize_matrix(side, crop, **kw)
    out = np.einsum("ih,thwc,jw->ctij", r, x, r, optimize=True)   # two matrix products
    return (out - 255 * np.array(MEAN)[:, None, None, None]) / (255 * np.array(STD)[:, None, None, None])


def frames_of(case: str) -> tuple[np.ndarray, int]:
    T, H, W, crop = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    return rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8), crop


@pytest.mark.parametrize("case", list(CASES))
def test_preprocessing_matches_upstream_at_other_sizes(case):
    frames, crop = frames_of(case)
    want = upstream_pixels(frames, crop)
    got = preprocess(frames, crop)[0]
    assert got.shape == (3, len(frames), crop, crop) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-6, np.abs(got - want).max()


def test_these_cases_tell_the_roundings_and_the_crop_apart():
    """The cases can fail: float64 source coordinates miss A and D by more than the tolerance, the
    twice-rounded coordinates miss D, and a round()ed crop offset misses A, B and C."""
    a, a_crop = frames_of("A 77x132 -> 48")
    d, d_crop = frames_of("D 211x300 -> 224")
    assert np.abs(upstream_pixels(a, a_crop, float64_coords=True) - upstream_pixels(a, a_crop)).max() > TOL
    assert np.abs(upstream_pixels(d, d_crop, float64_coords=True) - upstream_pixels(d, d_crop)).max() > TOL
    assert np.abs(upstream_pixels(d, d_crop, fused=False) - upstream_pixels(d, d_crop)).max() > 5e-6
    for case in TORCH_AGREES:
        frames, crop = frames_of(case)
        assert (max(frames.shape[1:3]) - min(frames.shape[1:3])) % 4 == 3   # round() != floor here
        moved = upstream_pixels(frames, crop, round_offset=True)
        assert np.abs(moved - upstream_pixels(frames, crop)).max() > 0.1


@pytest.mark.parametrize("case", TORCH_AGREES)
def test_the_expected_pixels_are_torchs_own(case):
    """torch.nn.functional.interpolate on the float32 crop (upstream's call) gives the same pixels."""
    frames, crop = frames_of(case)
    T, H, W, _ = frames.shape
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    x = torch.from_numpy(frames).to(torch.float32).permute(3, 0, 1, 2)[:, :, top:top + side, left:left + side]
    y = torch.nn.functional.interpolate(x, size=(crop, crop), mode="bilinear", align_corners=False)
    mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None, None] * 255
    std = torch.tensor(STD, dtype=torch.float32)[:, None, None, None] * 255
    torch_pixels = ((y - mean) / std).numpy()
    assert np.abs(torch_pixels - upstream_pixels(frames, crop)).max() < 1e-6


def test_a_huge_frame_is_resized_without_a_full_size_float_copy():
    """9000 x 6000 uint8 (162 MB): the float64 crop alone was 1.3 GB; only what the resize reads
    is converted now."""
    import tracemalloc

    frames = np.zeros((1, 6000, 9000, 3), np.uint8)
    frames[0, ::7, ::5] = 200
    tracemalloc.start()
    out = preprocess(frames, 64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (1, 3, 1, 64, 64)
    assert peak < 20 << 20, f"peak {peak >> 20} MiB of Python/numpy allocations"

"""The reference against the upstream golden outputs, and the cache against full recompute."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitac_deploy import PredictorConfig, VitacError
from vitac_deploy.reference import normalize_features, random_predictor

TOL_GOLDEN = 1e-4


def _t(a):
    return None if a is None else torch.from_numpy(a)


def test_teacher_forcing_matches_golden(golden):
    a = golden.arrays
    h = normalize_features(torch.from_numpy(a["features_raw"]))
    ex = golden.extrinsics()
    with torch.no_grad():
        z = golden.model(h[:, :-golden.N], _t(a["actions"]), _t(a["states"])[:, :-1],
                         None if ex is None else _t(ex)[:, :-1])
    err = np.abs(z.numpy() - a["z_tf_raw"]).max()
    assert err < TOL_GOLDEN, err


@pytest.mark.parametrize("use_cache", [True, False])
def test_rollout_matches_golden(golden, use_cache):
    a = golden.arrays
    pred = golden.model.rollout(_t(golden.frames()[:, :1]), _t(a["actions"]), _t(a["states"]), golden.steps,
                                _t(golden.extrinsics()), use_cache=use_cache)
    assert pred.shape == (golden.B, golden.steps, golden.N, golden.cfg.embed_dim)
    err = np.abs(pred.numpy() - golden.z_ar()).max()
    assert err < TOL_GOLDEN, err


def test_cache_equals_recompute_on_golden(golden):
    a = golden.arrays
    args = (_t(golden.frames()[:, :1]), _t(a["actions"]), _t(a["states"]), golden.steps, _t(golden.extrinsics()))
    diff = (golden.model.rollout(*args, use_cache=True) - golden.model.rollout(*args, use_cache=False)).abs().max()
    assert diff < 1e-5, diff


def test_max_frames_refused(small_cfg):
    m = random_predictor(small_cfg, 0)
    B, A, N, D = 1, small_cfg.action_dim, small_cfg.tokens_per_frame, small_cfg.embed_dim
    ctx = torch.randn(B, 2, N, D)
    acts = torch.randn(B, 8, A)
    with pytest.raises(VitacError, match="max_frames=4"):
        m.rollout(ctx, acts, acts, horizon=4)
    m.rollout(ctx, acts, acts, horizon=3)  # 2 + 3 - 1 = 4 frames: allowed
    with pytest.raises(VitacError, match="max_frames"):
        m(torch.randn(B, 5 * N, D), acts[:, :5], acts[:, :5])


def test_bad_shapes_refused(small_cfg):
    m = random_predictor(small_cfg, 0)
    N, D, A = small_cfg.tokens_per_frame, small_cfg.embed_dim, small_cfg.action_dim
    with pytest.raises(VitacError, match="actions must be"):
        m.rollout(torch.randn(1, 1, N, D), torch.randn(1, 1, A), torch.randn(1, 3, A), horizon=3)
    with pytest.raises(VitacError, match="context must be"):
        m.rollout(torch.randn(1, 1, N + 1, D), torch.randn(1, 3, A), torch.randn(1, 3, A), horizon=3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    heads=st.sampled_from([1, 2, 3]), head_dim=st.sampled_from([6, 8, 10, 16]), depth=st.integers(1, 2),
    grid=st.tuples(st.integers(1, 3), st.integers(1, 4)), A=st.integers(2, 4), extr=st.booleans(),
    silu=st.booleans(), C=st.integers(1, 2), horizon=st.integers(1, 3), B=st.integers(1, 2),
)
def test_cache_equals_recompute_property(heads, head_dim, depth, grid, A, extr, silu, C, horizon, B):
    cfg = PredictorConfig(embed_dim=20, predictor_embed_dim=heads * head_dim, depth=depth, num_heads=heads,
                          action_dim=A, grid_height=grid[0], grid_width=grid[1], max_frames=C + horizon,
                          use_extrinsics=extr, use_silu=silu)
    m = random_predictor(cfg, seed=head_dim + depth).double()
    g = torch.Generator().manual_seed(0)
    F = C + horizon - 1
    ctx = 10 * torch.randn(B, C, cfg.tokens_per_frame, 20, generator=g, dtype=torch.float64)
    acts, states = (torch.randn(B, F, A, generator=g, dtype=torch.float64) for _ in range(2))
    ex = torch.randn(B, F, A - 1, generator=g, dtype=torch.float64) if extr else None
    a = m.rollout(ctx, acts, states, horizon, ex, use_cache=True)
    b = m.rollout(ctx, acts, states, horizon, ex, use_cache=False)
    assert (a - b).abs().max() < 1e-10

"""The numpy pose update against the upstream golden outputs and against scipy itself."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.conftest import golden_path
from vitac_deploy.errors import VitacError
from vitac_deploy.planning.pose import (
    compute_new_pose,
    euler_to_quaternion,
    quaternion_to_euler,
)

PI32 = float(np.float32(np.pi))  # float32 rounds pi up: the output range, seen in float32
HALF_PI32 = float(np.float32(np.pi / 2))


@pytest.mark.golden
def test_golden_upstream_pose_update():
    path = golden_path("mpc_franka")
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        pose_in, pose_action, pose_out = z["pose_in"], z["pose_action"], z["pose_out"]
    out = compute_new_pose(pose_in, pose_action)
    assert out.dtype == np.float32 and out.shape == pose_out.shape == (64, 7)
    assert np.abs(out - pose_out).max() <= 2e-5


# --- against scipy: the upstream formula, written with scipy as upstream does ---------------


@pytest.fixture(scope="module")
def Rotation():
    return pytest.importorskip("scipy.spatial.transform").Rotation


def scipy_new_pose(Rotation, pose: np.ndarray, action: np.ndarray) -> np.ndarray:
    pose = pose.astype(np.float32)
    action = action.astype(np.float32)
    mats = (Rotation.from_euler("xyz", action[:, 3:6].astype(np.float64)).as_matrix()
            @ Rotation.from_euler("xyz", pose[:, 3:6].astype(np.float64)).as_matrix())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Gimbal lock detected")
        angles = Rotation.from_matrix(mats).as_euler("xyz")
    grip = np.clip(pose[:, 6:] + action[:, 6:], 0, 1)
    return np.concatenate([pose[:, :3] + action[:, :3], angles.astype(np.float32), grip], axis=-1)


def matrices(Rotation, angles: np.ndarray) -> np.ndarray:
    return Rotation.from_euler("xyz", np.asarray(angles, dtype=np.float64)).as_matrix()


def wrapped_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| modulo 2*pi, in [0, pi]."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.abs((d + np.pi) % (2 * np.pi) - np.pi)


def assert_in_range(out: np.ndarray) -> None:
    ang = out[:, 3:6]
    assert np.all(np.isfinite(out))
    assert np.all(np.abs(ang[:, [0, 2]]) <= PI32)
    assert np.all(np.abs(ang[:, 1]) <= HALF_PI32)
    assert np.all((out[:, 6] >= 0) & (out[:, 6] <= 1))


def random_poses(
    rng: np.random.Generator, n: int, angle_scale: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    pose = np.concatenate([
        rng.uniform(-1, 1, (n, 3)),
        rng.uniform(-np.pi, np.pi, (n, 3)) * [1, 0.5, 1],
        rng.uniform(0, 1, (n, 1)),
    ], axis=1).astype(np.float32)
    action = np.concatenate([
        rng.normal(0, 0.1, (n, 3)),
        rng.normal(0, angle_scale, (n, 3)),
        rng.normal(0, 0.5, (n, 1)),
    ], axis=1).astype(np.float32)
    return pose, action


def test_random_matches_scipy(Rotation):
    pose, action = random_poses(np.random.default_rng(0), 4000)
    out = compute_new_pose(pose, action)
    ref = scipy_new_pose(Rotation, pose, action)
    assert out.dtype == np.float32 and out.shape == (4000, 7)
    np.testing.assert_array_equal(out[:, :3], ref[:, :3])
    np.testing.assert_array_equal(out[:, 6], ref[:, 6])
    assert np.abs(out - ref).max() <= 1e-6
    assert_in_range(out)


def test_large_actions_match_scipy(Rotation):
    # Angles far outside the canonical ranges, and gripper actions that clip on both sides.
    rng = np.random.default_rng(1)
    pose, action = random_poses(rng, 2000, angle_scale=3.0)
    pose[:, 3:6] = rng.uniform(-3 * np.pi, 3 * np.pi, (2000, 3))
    action[:, 6] *= 4
    out = compute_new_pose(pose, action)
    ref = scipy_new_pose(Rotation, pose, action)
    assert wrapped_diff(out[:, 3:6], ref[:, 3:6]).max() <= 1e-6
    assert np.abs(matrices(Rotation, out[:, 3:6]) - matrices(Rotation, ref[:, 3:6])).max() <= 1e-6
    np.testing.assert_array_equal(out[:, [0, 1, 2, 6]], ref[:, [0, 1, 2, 6]])
    assert set(np.unique(out[:, 6])) >= {0.0, 1.0}
    assert_in_range(out)


def test_identity_action_keeps_pose(Rotation):
    pose, _ = random_poses(np.random.default_rng(2), 500)
    action = np.zeros_like(pose)
    out = compute_new_pose(pose, action)
    np.testing.assert_array_equal(out, scipy_new_pose(Rotation, pose, action))
    np.testing.assert_allclose(out, pose, rtol=0, atol=1e-6)


def near_lock_targets(rng: np.random.Generator) -> np.ndarray:
    """Euler angles whose second angle sits 1e-9 .. 1e-3 from +-pi/2."""
    deltas = np.repeat(np.logspace(-9, -3, 13), 16)
    sides = np.resize([1.0, -1.0], deltas.size)
    n = deltas.size
    return np.stack([rng.uniform(-np.pi, np.pi, n), sides * (np.pi / 2 - deltas),
                     rng.uniform(-np.pi, np.pi, n)], axis=1)


def test_near_gimbal_lock_quaternion_to_euler(Rotation):
    # float64 end to end, where scipy's own rounding is the only difference.
    target = near_lock_targets(np.random.default_rng(3))
    q = Rotation.from_euler("xyz", target).as_quat()
    ours = quaternion_to_euler(q)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Gimbal lock detected")  # the 1e-9 rows are locked
        ref = Rotation.from_quat(q).as_euler("xyz")
    assert np.abs(matrices(Rotation, ours) - matrices(Rotation, ref)).max() <= 1e-12
    assert np.abs(ours - ref).max() <= 1e-12
    np.testing.assert_allclose(ours[:, 1], ref[:, 1], rtol=0, atol=1e-12)


def test_near_gimbal_lock_pose_update(Rotation):
    # Actions chosen so that the NEW pose is near lock: R(d) = R(target) @ R(pose)^T.
    rng = np.random.default_rng(4)
    target = near_lock_targets(rng)
    pose, _ = random_poses(rng, target.shape[0])
    r_pose = matrices(Rotation, pose[:, 3:6])
    d = Rotation.from_matrix(matrices(Rotation, target) @ np.swapaxes(r_pose, 1, 2)).as_euler("xyz")
    action = np.zeros_like(pose)
    action[:, 3:6] = d
    # Poses near lock with no rotation at all: the input itself is the hard case.
    hold = np.zeros_like(pose)
    hold[:, 3:6] = target
    pose = np.concatenate([pose, hold])
    action = np.concatenate([action, np.zeros_like(hold)])

    out = compute_new_pose(pose, action)
    ref = scipy_new_pose(Rotation, pose, action)
    assert_in_range(out)
    assert np.abs(matrices(Rotation, out[:, 3:6]) - matrices(Rotation, ref[:, 3:6])).max() <= 1e-6
    assert np.abs(out[:, 4] - ref[:, 4]).max() <= 1e-6


def test_exact_gimbal_lock(Rotation):
    angles = np.array([[0.3, np.pi / 2, 0.2], [-1.0, -np.pi / 2, 2.5], [3.0, np.pi / 2, 3.0]])
    q = Rotation.from_euler("xyz", angles).as_quat()
    with pytest.warns(UserWarning, match="Gimbal lock"):
        ref = Rotation.from_quat(q).as_euler("xyz")
    ours = quaternion_to_euler(q)
    np.testing.assert_array_equal(ours[:, 2], 0.0)  # scipy's convention: third angle zeroed
    assert np.abs(ours - ref).max() <= 1e-12

    # float32 pi/2 is 4.4e-8 above pi/2: still inside scipy's 1e-7 lock band.
    pose = np.zeros((3, 7), np.float32)
    pose[:, 3:6] = angles
    out = compute_new_pose(pose, np.zeros_like(pose))
    np.testing.assert_array_equal(out[:, 5], 0.0)
    assert np.abs(out - scipy_new_pose(Rotation, pose, np.zeros_like(pose))).max() <= 1e-6
    assert_in_range(out)


def test_wrap_edges(Rotation):
    # First/third angles at and next to +-pi, with no, tiny and small rotations applied.
    rng = np.random.default_rng(5)
    edges = np.array([np.pi, -np.pi, PI32, -PI32, np.nextafter(np.pi, 0), -np.nextafter(np.pi, 0),
                      np.pi - 1e-7, -np.pi + 1e-7, np.pi + 1e-7, -np.pi - 1e-7])
    first, third = np.meshgrid(edges, edges)
    n = first.size
    base = np.stack([first.ravel(), rng.uniform(-1.2, 1.2, n), third.ravel()], axis=1)
    pose = np.zeros((3 * n, 7), np.float32)
    pose[:, 3:6] = np.tile(base, (3, 1))
    action = np.zeros_like(pose)
    action[n:2 * n, 3:6] = rng.choice([-1e-7, 0.0, 1e-7], (n, 3))
    action[2 * n:, 3:6] = rng.normal(0, 1e-3, (n, 3))

    out = compute_new_pose(pose, action)
    ref = scipy_new_pose(Rotation, pose, action)
    assert_in_range(out)
    assert wrapped_diff(out[:, 3:6], ref[:, 3:6]).max() <= 1e-6
    assert np.abs(matrices(Rotation, out[:, 3:6]) - matrices(Rotation, ref[:, 3:6])).max() <= 1e-6


def test_quaternion_helpers_match_scipy(Rotation):
    rng = np.random.default_rng(6)
    angles = rng.uniform(-np.pi, np.pi, (1000, 3)) * [1, 0.5, 1]
    q = euler_to_quaternion(angles)
    ref_q = Rotation.from_euler("xyz", angles).as_quat()
    assert np.abs(np.abs(np.sum(q * ref_q, axis=1)) - 1).max() <= 1e-12  # same rotation
    np.testing.assert_allclose(quaternion_to_euler(q), angles, rtol=0, atol=1e-9)
    # Unnormalized quaternions of either sign.
    raw = rng.normal(size=(1000, 4)) * rng.choice([-3.0, 0.5], (1000, 1))
    ref = Rotation.from_quat(raw).as_euler("xyz")
    assert wrapped_diff(quaternion_to_euler(raw), ref).max() <= 1e-9


def test_module_imports_numpy_only():
    # It runs on robots without scipy or torch.
    import ast
    from pathlib import Path

    import vitac_deploy.planning.pose as pose_module

    tree = ast.parse(Path(pose_module.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert roots <= {"__future__", "numpy", "vitac_deploy"}


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("pose_shape, action_shape", [
    ((4, 6), (4, 7)),
    ((4, 7), (4, 8)),
    ((7,), (7,)),
    ((4, 1, 7), (4, 1, 7)),
    ((4, 7), (3, 7)),
])
def test_bad_shapes_raise(pose_shape, action_shape):
    with pytest.raises(VitacError, match=r"\[B, 7\]"):
        compute_new_pose(np.zeros(pose_shape, np.float32), np.zeros(action_shape, np.float32))


def test_bad_helper_widths_raise():
    with pytest.raises(VitacError, match=r"\[B, 3\]"):
        euler_to_quaternion(np.zeros((2, 4)))
    with pytest.raises(VitacError, match=r"\[B, 4\]"):
        quaternion_to_euler(np.zeros((2, 3)))

"""The upstream V-JEPA 2-AC pose update (`compute_new_pose`), reimplemented exactly in numpy.

Upstream composes rotations with scipy (`Rotation.from_euler("xyz")`, matrix product,
`Rotation.from_matrix(...).as_euler("xyz")`). The planner runs on robots that have numpy but
not scipy, so this module uses numpy only: the composition goes through quaternions and the
conversion back to Euler angles follows scipy's algorithm (Bernardes & Viollet 2022, scipy >=
1.11) branch for branch, so that the angles agree with scipy's, not merely the rotations.
"""

from __future__ import annotations

import numpy as np

from vitac_deploy.errors import VitacError

__all__ = ["compute_new_pose", "euler_to_quaternion", "quaternion_to_euler"]

# scipy's threshold on the middle angle (before the -pi/2 shift) for declaring gimbal lock.
_GIMBAL_EPS = 1e-7


def _check_width(name: str, x: np.ndarray, width: int) -> None:
    if x.ndim != 2 or x.shape[1] != width:
        raise VitacError(f"{name} must have shape [B, {width}], got {list(x.shape)}")


def euler_to_quaternion(angles: np.ndarray) -> np.ndarray:
    """Extrinsic "xyz" Euler angles [B, 3] (radians) -> unit quaternions [B, 4] as (x, y, z, w).

    Extrinsic xyz means rotate about the fixed x, then y, then z: q = q_z(c) * q_y(b) * q_x(a).
    """
    angles = np.asarray(angles, dtype=np.float64)
    _check_width("angles", angles, 3)
    half = 0.5 * angles
    cx, cy, cz = np.cos(half).T
    sx, sy, sz = np.sin(half).T
    return np.stack(
        [
            cz * cy * sx - sz * sy * cx,
            cz * sy * cx + sz * cy * sx,
            sz * cy * cx - cz * sy * sx,
            cz * cy * cx + sz * sy * sx,
        ],
        axis=-1,
    )


def _quat_mul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton product p * q of (x, y, z, w) quaternions: the rotation q, then p."""
    pv, pw = p[:, :3], p[:, 3:]
    qv, qw = q[:, :3], q[:, 3:]
    v = pw * qv + qw * pv + np.cross(pv, qv)
    w = pw * qw - np.sum(pv * qv, axis=-1, keepdims=True)
    return np.concatenate([v, w], axis=-1)


def _like_from_matrix_sign(q: np.ndarray) -> np.ndarray:
    """Flip q so its largest-magnitude component is positive (first one on ties).

    Upstream goes through a rotation matrix, and scipy's `from_matrix` returns the quaternion
    whose largest component is positive. The Euler angles do not depend on the sign except
    where an angle lands on the +-pi seam; there this keeps us on the same side as upstream.
    """
    idx = np.argmax(np.abs(q), axis=-1)
    lead = np.take_along_axis(q, idx[:, None], axis=-1)
    return np.where(lead < 0, -q, q)


def quaternion_to_euler(q: np.ndarray) -> np.ndarray:
    """Quaternions [B, 4] as (x, y, z, w) -> extrinsic "xyz" Euler angles [B, 3] (radians).

    Same result as scipy's `Rotation.from_quat(q).as_euler("xyz")`: first and third angles in
    [-pi, pi], second in [-pi/2, pi/2]. In gimbal lock (second angle within 1e-7 of +-pi/2) the
    third angle is 0, as in scipy; unlike scipy, no warning is issued (the planner calls this
    thousands of times per plan). q need not be normalized.
    """
    q = np.asarray(q, dtype=np.float64)
    _check_width("q", q, 4)
    x, y, z, w = q.T
    # Bernardes & Viollet rotate the quaternion so that the Tait-Bryan sequence x-y-z is
    # handled like a proper Euler sequence x-y-x; for xyz the permutation sign is +1.
    a = w - y
    b = x + z
    c = y + w
    d = z - x
    middle = 2.0 * np.arctan2(np.hypot(c, d), np.hypot(a, b))  # in [0, pi]
    half_sum = np.arctan2(b, a)
    half_diff = np.arctan2(d, c)

    lock_low = np.abs(middle) <= _GIMBAL_EPS
    # scipy tests the two singular cases as if/elif: a near-0 middle angle wins.
    lock_high = ~lock_low & (np.abs(middle - np.pi) <= _GIMBAL_EPS)
    locked = lock_low | lock_high

    first = np.where(
        lock_low, 2.0 * half_sum, np.where(lock_high, -2.0 * half_diff, half_sum - half_diff)
    )
    third = np.where(locked, 0.0, half_sum + half_diff)
    second = middle - np.pi / 2

    angles = np.stack([first, second, third], axis=-1)
    # One shift of 2*pi suffices (all raw values lie in [-2pi, 2pi]); scipy keeps exactly +-pi
    # as they are, which a modulo would fold to -pi.
    angles = np.where(angles < -np.pi, angles + 2 * np.pi, angles)
    angles = np.where(angles > np.pi, angles - 2 * np.pi, angles)
    return angles


def compute_new_pose(pose: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Apply a 7-dim action to a 7-dim pose, as upstream: [B, 7] x [B, 7] -> [B, 7] float32.

    Layout: xyz, extrinsic "xyz" Euler angles (radians), gripper. xyz and gripper add (the
    gripper clipped to [0, 1]) in float32; the rotation is R(d_theta) @ R(theta) in float64.
    """
    pose = np.asarray(pose)
    action = np.asarray(action)
    for name, x in (("pose", pose), ("action", action)):
        if x.ndim != 2 or x.shape[1] != 7:
            raise VitacError(f"{name} must have shape [B, 7], got {list(x.shape)}")
    if pose.shape != action.shape:
        raise VitacError(
            f"pose and action must both have shape [B, 7], got {list(pose.shape)} "
            f"and {list(action.shape)}"
        )
    # Upstream receives float32 tensors and adds their numpy views: keep that rounding.
    pose = pose.astype(np.float32, copy=False)
    action = action.astype(np.float32, copy=False)

    xyz = pose[:, :3] + action[:, :3]
    # Rotating by theta, then by d_theta is the matrix product R(d_theta) @ R(theta).
    q = _quat_mul(euler_to_quaternion(action[:, 3:6]), euler_to_quaternion(pose[:, 3:6]))
    angles = quaternion_to_euler(_like_from_matrix_sign(q))
    gripper = np.clip(pose[:, 6:] + action[:, 6:], np.float32(0), np.float32(1))
    return np.concatenate([xyz, angles.astype(np.float32), gripper], axis=-1)

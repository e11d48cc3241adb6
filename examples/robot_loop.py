"""A robot's control loop against `vitac-deploy serve`: model-predictive control at a set rate.

Every tick: read the camera and the end-effector pose, ask the server for a plan towards the goal
image, execute the FIRST action only, and re-plan at the next tick. The robot here is simulated (a
pose that moves by the executed action; camera frames from a seeded generator, or image files), so
the loop runs anywhere; replace `SimulatedRobot` with your robot's driver.

Needs only numpy, websockets and msgpack (`vitac_deploy.client`, Python 3.8+), or openpi-client:

    vitac-deploy serve art/ &                                   # on the GPU box (loopback by default)
    python examples/robot_loop.py --port 8000 --rate 2 --steps 20
    python examples/robot_loop.py --openpi                      # the same loop through openpi-client

The pose and action size come from the server's metadata (`action_dim`): a 7-dim model (the
Franka space of V-JEPA 2-AC, e.g. the `franka-small` preset) gets a Franka pose, any other size a
pose of that many numbers that moves by each action.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional

import numpy as np


FRANKA_HOME = (0.45, 0.0, 0.35, 3.14, 0.0, 0.0, 0.0)   # x, y, z, extrinsic xyz Euler angles, gripper


class SimulatedRobot:
    """A pose of `action_dim` numbers that moves by each executed action (for 7: a Franka pose x, y,
    z, rx, ry, rz, gripper), and a camera that returns a frame (seeded noise, or an image file's
    pixels)."""

    def __init__(self, action_dim: int, seed: int = 0, image: Optional[str] = None, size: tuple = (120, 160),
                 pose: Optional[list] = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.franka = action_dim == 7
        if pose is not None and len(pose) != action_dim:
            raise SystemExit(f"--pose has {len(pose)} numbers; the served model takes {action_dim}")
        home = FRANKA_HOME if self.franka else [0.0] * action_dim
        self.pose = np.array(home if pose is None else pose, np.float32)
        self.frame = _read(image) if image else self.rng.integers(0, 256, (*size, 3), dtype=np.uint8)

    def observe(self) -> tuple:
        noise = self.rng.integers(-3, 4, self.frame.shape)            # sensor noise: a new frame every tick
        return np.clip(self.frame.astype(np.int16) + noise, 0, 255).astype(np.uint8), self.pose.copy()

    def execute(self, action: np.ndarray) -> None:
        if not self.franka:                                            # a pose that moves by the action
            self.pose += action
            return
        self.pose[:3] += action[:3]                                    # xyz deltas (the plan's angles are 0)
        self.pose[6] = np.clip(self.pose[6] + action[6], 0.0, 1.0)     # gripper


def _read(path: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description="MPC loop against a vitac-deploy policy server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key-env", help="environment variable holding the server's API key")
    ap.add_argument("--rate", type=float, default=2.0, help="control rate (Hz); a plan slower than a tick delays it")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--image-key", default="observation/image")
    ap.add_argument("--goal", help="goal image file (default: a seeded frame)")
    ap.add_argument("--camera", help="camera image file the simulated camera returns (default: seeded noise)")
    ap.add_argument("--pose", help="the robot's starting pose, comma-separated (default: a Franka home pose "
                                   "for 7-dim models, zeros otherwise)")
    ap.add_argument("--openpi", action="store_true", help="use openpi-client's WebsocketClientPolicy")
    a = ap.parse_args(argv)
    key = os.environ[a.api_key_env] if a.api_key_env else None
    if a.openpi:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        policy = WebsocketClientPolicy(a.host, a.port, api_key=key)
        metadata = policy.get_server_metadata()
    else:
        from vitac_deploy.client import PolicyClient

        policy = PolicyClient(a.host, a.port, api_key=key)
        metadata = policy.metadata
    action_dim = int(metadata["action_dim"])
    print(f"connected: {metadata['server']}, {metadata['backend']} {metadata['precision']}, "
          f"{metadata['cem']['samples']} samples x {metadata['cem']['cem_steps']} CEM steps, horizon {metadata['rollout']}, "
          f"{action_dim}-dim actions")
    start = [float(v) for v in a.pose.split(",")] if a.pose else None
    robot = SimulatedRobot(action_dim, 0, a.camera, pose=start)
    goal = _read(a.goal) if a.goal else np.random.default_rng(1).integers(0, 256, robot.frame.shape, dtype=np.uint8)
    period = 1.0 / a.rate
    next_tick = time.monotonic()
    for step in range(a.steps):
        image, pose = robot.observe()
        obs = {a.image_key: image, "observation/state": pose}
        if step == 0:
            obs["goal/image"] = goal          # the server caches its features for this connection
        reply = policy.infer(obs)
        action = np.asarray(reply["actions"][0])
        robot.execute(action)                 # MPC: the first action only, then plan again
        t = reply["server_timing"]
        print(f"step {step}: action {np.round(action.astype(float), 4).tolist()} (seed {int(reply['seed'])}, "
              f"energy {float(reply['energies'][-1]):.4f}, {t['infer_ms']:.0f} ms on the server) -> pose "
              f"{np.round(robot.pose.astype(float), 3).tolist()}", flush=True)
        next_tick += period
        late = time.monotonic() - next_tick
        if late < 0:
            time.sleep(-late)
        else:
            next_tick = time.monotonic()      # the plan took longer than a tick: keep going, don't burst
    policy.close() if hasattr(policy, "close") else None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

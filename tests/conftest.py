from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vitac_deploy import PredictorConfig

GOLDEN_CASES = ["seed_l384", "swiglu_extr_h64"]


GOLDEN_DIRS = ("VITAC_GOLDEN_DIR", Path(__file__).resolve().parent / "golden",
               Path(__file__).resolve().parents[1].parent / "shared" / "golden")


def golden_path(name: str) -> Path | None:
    """NAME.json of a golden case: from $VITAC_GOLDEN_DIR, the project's own copy (tests/golden),
    or ../shared/golden (where new cases arrive), in that order."""
    for d in GOLDEN_DIRS:
        root = os.environ.get(d) if isinstance(d, str) else d
        if root and Path(root, f"{name}.json").is_file():
            return Path(root, f"{name}.json")
    return None


class Golden:
    """One golden case: upstream config, weights rebuilt from the recipe, inputs and outputs."""

    def __init__(self, name: str, root: Path):
        self.name = name
        self.meta = json.loads((root / f"{name}.json").read_text())
        with np.load(root / f"{name}.npz", allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files}
        self.cfg = PredictorConfig.from_upstream(self.meta["upstream_kwargs"])
        self.N = self.meta["tokens_per_frame"]
        self.T = self.meta["frames"]
        self.B = self.meta["batch"]
        self.steps = self.meta["auto_steps"]
        self._model = None

    @property
    def model(self):
        if self._model is None:
            import torch
            from vitac_deploy.reference import Predictor, recipe_state_dict

            m = Predictor(self.cfg)
            sd = recipe_state_dict(self.meta["param_shapes"], self.meta["weight_seed"])
            m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
            self._model = m.eval()
        return self._model

    def frames(self) -> np.ndarray:
        """features_raw as [B, T, N, D]."""
        return self.arrays["features_raw"].reshape(self.B, self.T, self.N, -1)

    def extrinsics(self):
        return self.arrays.get("extrinsics")

    def z_ar(self) -> np.ndarray:
        return self.arrays["z_ar"].reshape(self.B, self.steps, self.N, -1)

    def tf_normalized(self) -> np.ndarray:
        """layer_norm(z_tf_raw) per frame: [B, T-1, N, D]."""
        z = self.arrays["z_tf_raw"].astype(np.float64)
        z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
        return z.reshape(self.B, self.T - 1, self.N, -1)


_cache: dict[str, Golden] = {}


def load_golden(name: str) -> Golden:
    path = golden_path(name)
    if path is None:
        pytest.skip(f"golden case {name} not found (tests/golden, $VITAC_GOLDEN_DIR or ../shared/golden)")
    if name not in _cache:
        _cache[name] = Golden(name, path.parent)
    return _cache[name]


@pytest.fixture(params=GOLDEN_CASES)
def golden(request) -> Golden:
    return load_golden(request.param)


# Small configs keep the suite fast; each exercises a different upstream option.
SMALL = PredictorConfig(embed_dim=32, predictor_embed_dim=48, depth=2, num_heads=2, action_dim=3,
                        grid_height=4, grid_width=4, max_frames=4)
SMALL_SWIGLU_EXTR = PredictorConfig(embed_dim=24, predictor_embed_dim=64, depth=2, num_heads=4,
                                    action_dim=4, grid_height=3, grid_width=5, max_frames=5,
                                    use_extrinsics=True, use_silu=True)


@pytest.fixture
def small_cfg() -> PredictorConfig:
    return SMALL


class MpcGolden:
    """The planner case (mpc_franka): its predictor with the recipe's planner variants, the
    normalized features of the current and goal frames, poses, and the upstream plan."""

    def __init__(self, path: Path):
        self.meta = json.loads(path.read_text())
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files}
        self.cfg = PredictorConfig.from_upstream(self.meta["predictor_upstream_kwargs"])
        self.N = self.meta["tokens_per_frame"]
        feats = self.arrays["features"].reshape(1, 2, self.N, -1)
        self.current, self.goal = feats[:, 0], feats[:, 1]            # [1, N, D] each, normalized
        self.pose = self.arrays["poses"][:, 0]                         # [1, 7]
        self._model = None

    @property
    def model(self):
        if self._model is None:
            import torch
            from vitac_deploy.reference import Predictor, recipe_state_dict

            m = Predictor(self.cfg)
            sd = recipe_state_dict(self.meta["predictor_param_shapes"], self.meta["predictor_weight_seed"],
                                   self.meta["predictor_linear_std"], self.meta["predictor_weight_overrides"])
            m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
            self._model = m.eval()
        return self._model


def load_mpc_golden() -> MpcGolden:
    path = golden_path("mpc_franka")
    if path is None:
        pytest.skip("golden case mpc_franka not found (tests/golden, $VITAC_GOLDEN_DIR or ../shared/golden)")
    if "mpc_franka" not in _cache:
        _cache["mpc_franka"] = MpcGolden(path)
    return _cache["mpc_franka"]

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vitac_deploy import PredictorConfig

GOLDEN_CASES = ["seed_l384", "swiglu_extr_h64"]


GOLDEN_DIR = Path(__file__).resolve().parent / "golden"   # the project's own copy, shipped with it


def golden_dir() -> Path:
    """Where golden cases are read: $VITAC_GOLDEN_DIR when set (e.g. new cases in ../shared/golden),
    otherwise the project's copy in tests/golden. One place, no fallback: a fallback would hide a lost
    file behind another copy of it."""
    env = os.environ.get("VITAC_GOLDEN_DIR")
    return Path(env) if env else GOLDEN_DIR


# The test being set up or run, so that golden_path can check it is marked `golden` (see below).
_current_item: pytest.Item | None = None


def golden_path(name: str) -> Path:
    """NAME.json of a golden case; its NAME.npz beside it. A missing file fails the test (never a
    skip) and names the path, so a lost golden file turns CI red."""
    if _current_item is not None and _current_item.get_closest_marker("golden") is None:
        pytest.fail(f"{_current_item.nodeid} reads golden case {name} but is not marked `golden` "
                    "(mark it, or use a golden fixture: tests/conftest.py GOLDEN_FIXTURES)", pytrace=False)
    root = golden_dir()
    for suffix in (".json", ".npz"):
        f = root / f"{name}{suffix}"
        if not f.is_file():
            where = "$VITAC_GOLDEN_DIR" if os.environ.get("VITAC_GOLDEN_DIR") else "the project's copy, tests/golden"
            pytest.fail(f"golden file missing: {f} ({where}; see tests/golden/README.md)", pytrace=False)
    return root / f"{name}.json"


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


_cache: dict[str, Golden | MpcGolden] = {}   # by path: $VITAC_GOLDEN_DIR may differ per test


def load_golden(name: str) -> Golden:
    """A predictor golden case, loaded once per session; missing files fail the test."""
    path = golden_path(name)
    if str(path) not in _cache:
        _cache[str(path)] = Golden(name, path.parent)
    return _cache[str(path)]


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
    """The planner golden case, loaded once per session; missing files fail the test."""
    path = golden_path("mpc_franka")
    if str(path) not in _cache:
        _cache[str(path)] = MpcGolden(path)
    return _cache[str(path)]


# --- golden-dependent tests: marked, never skipped, counted --------------------------------------

# Fixtures that read golden files: a test using one is golden-dependent (marked `golden` at collection).
# A test that reads them itself carries @pytest.mark.golden; golden_path fails an unmarked reader.
GOLDEN_FIXTURES = {"golden", "golden_artifacts", "golden_extr_artifact", "golden_art", "mpc", "mpc_artifact"}
# Markers of hardware a machine may lack: a golden test that also needs one may skip (with its reason).
HARDWARE_MARKERS = ("gpu", "tensorrt")
_outcomes: dict = {}   # this session's counts, filled by pytest_runtest_logreport


def pytest_configure(config: pytest.Config) -> None:
    from tests.deletion_guard import install

    install()   # no test deletes outside the temporary folder (tests/deletion_guard.py)
    config.addinivalue_line("markers", "golden: reads the upstream golden files (tests/golden); never skips")
    _outcomes.clear()
    _outcomes.update(passed=0, failed=0, error=0, skipped=[], golden_skipped=[], golden_ran=0)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    for item in items:
        if GOLDEN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.golden)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _current_item
    _current_item = item


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    global _current_item
    _current_item = None


def _skip_reason(report) -> str:
    """The reason of a skip report: longrepr is (file, line, 'Skipped: reason')."""
    lr = report.longrepr
    msg = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return msg[len("Skipped: "):] if msg.startswith("Skipped: ") else msg


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    o = _outcomes
    golden = "golden" in report.keywords
    hardware = any(m in report.keywords for m in HARDWARE_MARKERS)
    if report.skipped and report.when in ("setup", "call"):
        o["skipped"].append(_skip_reason(report))
        if golden and not hardware:
            o["golden_skipped"].append(f"{report.nodeid}: {_skip_reason(report)}")
    elif report.when == "call":
        o["passed" if report.passed else "failed"] += 1
        o["golden_ran"] += golden
    elif report.failed:   # setup or teardown errors
        o["error"] += 1


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # a module that skips as a whole (pytest.importorskip at its top: the Ray tests without ray)
    # is one skip in pytest's own count: count it here too, with its reason
    if report.skipped:
        _outcomes["skipped"].append(_skip_reason(report))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.deletion_guard import uninstall

    # the tests are over: the net comes off before pytest's cache provider writes its folder
    uninstall()
    # A golden-dependent test that skipped (other than for hardware) did not check what the project
    # promises: the run fails, even if everything else passed.
    if _outcomes["golden_skipped"] and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """What ran and what did not, in one block a log reader sees: counts, skips grouped by reason,
    and the golden-dependent tests' own count."""
    from collections import Counter

    o = _outcomes
    tr = terminalreporter
    ran = o["passed"] + o["failed"]
    tr.write_sep("=", "vitac-deploy test summary")
    tr.write_line(f"ran {ran} ({o['passed']} passed, {o['failed']} failed), {o['error']} errors, "
                  f"skipped {len(o['skipped'])}; golden-dependent: {o['golden_ran']} ran, "
                  f"{len(o['golden_skipped'])} skipped")
    for reason, n in sorted(Counter(o["skipped"]).items(), key=lambda kv: (-kv[1], kv[0])):
        tr.write_line(f"  skipped {n:3d}: {reason}")
    for line in o["golden_skipped"]:
        tr.write_line(f"FAIL golden-dependent test did not run: {line}", red=True)

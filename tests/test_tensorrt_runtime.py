"""The TensorRT runtime for real: build an engine, roll out, compare with the PyTorch reference.
Needs TensorRT (or TensorRT for RTX on an RTX GPU) and a CUDA GPU; skipped with the reason elsewhere."""

import importlib.util

import numpy as np
import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR


def _gpu():
    from vitac_deploy.runtimes.gpu import gpu_info

    try:
        return gpu_info(required=False)
    except Exception:  # noqa: BLE001 - cuda-python missing: no GPU for us
        return None


FLAVOURS = [
    pytest.param("tensorrt", marks=pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                                      reason="needs TensorRT (not installable from PyPI here)")),
    pytest.param("tensorrt-rtx", marks=pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                                          reason="needs tensorrt_rtx")),
]
pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="needs cuda-python"),
              pytest.mark.skipif(_gpu() is None, reason="needs a CUDA GPU")]


def _rtx_supports_this_gpu() -> bool:
    import tensorrt_rtx as trt

    cc = "SM" + _gpu()["compute_capability"].replace(".", "")
    return cc in trt.ComputeCapability.__members__


def _engine(tmp_path, cfg, flavour, first_frame=1):
    if flavour == "tensorrt-rtx" and not _rtx_supports_this_gpu():
        pytest.skip(f"TensorRT for RTX does not target compute capability {_gpu()['compute_capability']}")
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor
    from vitac_deploy.runtimes.tensorrt.build import EngineOptions, build_engine
    from vitac_deploy.runtimes.tensorrt.profiles import ProfileOptions

    model = random_predictor(cfg, 0)
    art = tmp_path / "a"
    export_artifact(model, art, ExportOptions(validate=False))
    opts = EngineOptions(flavour=flavour, profile=ProfileOptions(1, 2, 4, 0, first_frame))
    build_engine(art, tmp_path / "e.plan", opts)
    return model, tmp_path / "e.plan"


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("cfg", [SMALL, SMALL_SWIGLU_EXTR], ids=["small", "swiglu_extr"])
def test_rollout_matches_reference_fp16(tmp_path, flavour, cfg):
    from vitac_deploy.validation import TOLERANCES, within
    from vitac_deploy.runtimes import open_runtime
    from vitac_deploy.validation import ParityInputs, check_parity

    model, plan = _engine(tmp_path, cfg, flavour)
    inputs = ParityInputs.make(cfg, batch=3, frames=cfg.max_frames, seed=3)
    for graphs in (True, False):
        rt = open_runtime(plan, cuda_graphs=graphs)
        report = check_parity(rt, model, inputs, "fp16")
        assert report.passed, report.to_dict()
        again = check_parity(rt, model, inputs, "fp16")   # second pass replays the captured graphs
        assert again.passed and within(again.rollout, TOLERANCES["fp16"])
        rt.close()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_zero_past_engine_and_torch_cuda_inputs(tmp_path, flavour):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    from vitac_deploy.runtimes import open_runtime
    from vitac_deploy.validation import ParityInputs

    model, plan = _engine(tmp_path, SMALL, flavour, first_frame=0)
    inputs = ParityInputs.make(SMALL, batch=2, frames=4, seed=5)
    rt = open_runtime(plan)
    host = rt.rollout(inputs.context, inputs.actions, inputs.states, inputs.horizon)
    dev = rt.rollout(torch.from_numpy(inputs.context).cuda(), torch.from_numpy(inputs.actions).cuda(),
                     torch.from_numpy(inputs.states).cuda(), inputs.horizon)
    np.testing.assert_array_equal(host, dev)
    assert rt.device_memory()["cache_and_io_buffers_mib"] > 0

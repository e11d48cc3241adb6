"""`build_engine` against the fake TensorRT's build API across versions, then the engines it writes
run by the TensorRT runtime on the fakes: TensorRT 11 builds strongly typed only (no FP16 or
OBEY_PRECISION_CONSTRAINTS flag exists there, with or without the STRONGLY_TYPED creation flag),
8.6 builds the float32 graph with the FP16 flag and normalization pinned, and every version is
asked only for the graph forms it can parse. What the fake parser's layers are is a table, not
TensorRT: the real layer census is tests/test_tensorrt_rtx_build.py (TensorRT for RTX's parser)."""

import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR
from tests.fakes import FakeCudart, FakeTensorRT
from vitac_deploy import VitacError
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import gpu, open_runtime
from vitac_deploy.runtimes.tensorrt import backend as trt_backend
from vitac_deploy.runtimes.tensorrt import build as trt_build
from vitac_deploy.runtimes.tensorrt.build import EngineOptions, build_engine
from vitac_deploy.runtimes.tensorrt.profiles import ProfileOptions
from vitac_deploy.validation import ParityInputs, check_parity


@pytest.fixture
def fakes(monkeypatch):
    """A FakeCudart (an H100 by its properties) and a FakeTensorRT of the asked version, injected
    into the builder and the runtime."""
    def inject(version="11.0.0", **trt_kw):
        cu = FakeCudart(name="Fake H100", major=9, minor=0)
        trt = FakeTensorRT(cu, version=version, **trt_kw)
        monkeypatch.setattr(gpu, "import_cudart", lambda: cu)
        monkeypatch.setattr(trt_backend, "import_cudart", lambda: cu)
        monkeypatch.setattr(trt_backend, "import_tensorrt", lambda flavour: trt)
        monkeypatch.setattr(trt_build, "import_tensorrt", lambda flavour: trt)
        return cu, trt
    return inject


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One model in each graph form (trt-attention with both cache contracts)."""
    model = random_predictor(SMALL, 0)
    root = tmp_path_factory.mktemp("forms")
    arts = {}
    for form, cache in (("portable", "concat"), ("ort-fused", "concat"), ("trt-attention", "concat"),
                        ("trt-attention", "static")):
        arts[form, cache] = root / f"{form}-{cache}"
        export_artifact(model, arts[form, cache], ExportOptions(validate=False, graph_form=form, cache=cache,
                                                                cache_frames=3 if cache == "static" else None))
    return model, arts


def _builds(trt):
    return [e[1] for e in trt.log if e[0] == "build"]


@pytest.mark.parametrize("typed_flag", [True, False], ids=["flag", "no-flag"])
def test_tensorrt_11_builds_strongly_typed_only(tmp_path, fakes, artifacts, typed_flag):
    """TensorRT 11: the fp16 graph, strongly typed, no weak-typing flag (none exists to set), nothing
    pinned; the engines run (v1 device-memory API absent) and match the reference."""
    cu, trt = fakes("11.0.0", strongly_typed_flag=typed_flag)
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")
    model, arts = artifacts
    out = tmp_path / "e.plan"
    data = build_engine(arts["portable", "concat"], out, EngineOptions(profile=ProfileOptions(1, 2, 4)))
    assert "strongly typed" in data["precision_how"] and data["tensorrt"]["version"] == "11.0.0"
    assert data["graph_form"] == "portable"
    builds = _builds(trt)
    assert [b["onnx"].rsplit("/", 1)[1] for b in builds] == ["step.fp16.onnx", "first.fp16.onnx", "energy.onnx"]
    for b in builds[:2]:
        assert b["strongly_typed"] and not b["pinned_fp32"] and "TF32" not in b["flags"]
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(out.read_bytes())
    assert not hasattr(engine, "device_memory_size") and engine.device_memory_size_v2 >= 0   # the v1 API is gone
    rt = open_runtime(out)
    report = check_parity(rt, model, ParityInputs.make(SMALL, batch=2, frames=SMALL.max_frames, seed=1), "fp16")
    assert report.passed, report.to_dict()
    rt.close()


def test_tensorrt_8_6_builds_fp16_from_the_fp32_graph_with_norms_pinned(tmp_path, fakes, artifacts):
    """TensorRT 8.6 (JetPack 5/6-era API): no strong typing, so the fp32 graph with the FP16 and
    OBEY_PRECISION_CONSTRAINTS flags, every normalization layer pinned to float32, cache IO half."""
    cu, trt = fakes("8.6.1")
    model, arts = artifacts
    data = build_engine(arts["portable", "concat"], tmp_path / "e.plan", EngineOptions(profile=ProfileOptions(1, 2, 4)))
    assert "FP16 builder flag" in data["precision_how"]
    step = _builds(trt)[0]
    assert step["onnx"].endswith("/step.onnx") and not step["strongly_typed"]
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(step["flags"])
    assert len(step["pinned_fp32"]) == 2 * SMALL.depth + 1 + 2   # norm1, norm2 per block, final, feature norms
    assert step["io_types"]["past_key.0"] == "HALF" and step["io_types"]["features"] == "FLOAT"


@pytest.mark.parametrize("version", ["10.16.0", "11.0.0"])
@pytest.mark.parametrize("cache", ["concat", "static"])
def test_trt_attention_form_builds_and_runs_where_tensorrt_has_iattention(tmp_path, fakes, artifacts, version, cache):
    cu, trt = fakes(version)
    model, arts = artifacts
    out = tmp_path / "e.plan"
    data = build_engine(arts["trt-attention", cache], out, EngineOptions(profile=ProfileOptions(1, 2, 4)))
    assert data["graph_form"] == "trt-attention" and data["cache"]["contract"] == cache
    step = _builds(trt)[0]
    assert step["layer_types"].count("ATTENTION_INPUT") == SMALL.depth and "SOFTMAX" not in step["layer_types"]
    rt = open_runtime(out)
    assert "trt-attention graphs" in rt.describe()
    frames = 3 if cache == "static" else SMALL.max_frames
    report = check_parity(rt, model, ParityInputs.make(SMALL, batch=2, frames=frames, seed=2), "fp16")
    assert report.passed, report.to_dict()
    rt.close()


@pytest.mark.parametrize("version, form, cache, msg", [
    ("10.3.0", "trt-attention", "concat", r"cannot build the trt-attention graphs: .*TensorRT >= 10\.15"),
    ("8.6.1", "trt-attention", "concat", r"TensorRT >= 10\.15"),
    ("11.0.0", "ort-fused", "concat", "ort-fused form .*parser does not import them"),
    ("10.16.0", "ort-fused", "concat", "re-export with `vitac-deploy export --graph-form portable`"),
])
def test_forms_a_tensorrt_cannot_parse_are_refused_before_parsing(tmp_path, fakes, artifacts, version, form, cache,
                                                                 msg):
    cu, trt = fakes(version)
    with pytest.raises(VitacError, match=msg):
        build_engine(artifacts[1][form, cache], tmp_path / "e.plan", EngineOptions(profile=ProfileOptions(1, 2, 4)))
    assert not _builds(trt) and not list(tmp_path.iterdir())


def test_the_fake_parser_refuses_what_tensorrt_refuses(tmp_path, fakes, artifacts):
    """The fake parser itself (not our pre-check): contrib operators and Attention before 10.15."""
    cu, trt = fakes("10.3.0")
    _, arts = artifacts
    for form, op in (("ort-fused", "SkipLayerNormalization|MultiHeadAttention|LayerNormalization"),
                     ("trt-attention", "Attention")):
        net = trt.Builder(trt.Logger()).create_network(0)
        parser = trt.OnnxParser(net, trt.Logger())
        assert not parser.parse_from_file(str(arts[form, "concat"] / "step.fp16.onnx"))
        assert "No importer registered for op" in parser.get_error(0)


def test_swiglu_extrinsics_model_on_tensorrt_11(tmp_path, fakes):
    cu, trt = fakes("11.4.0")
    model = random_predictor(SMALL_SWIGLU_EXTR, 3)
    art = tmp_path / "a"
    export_artifact(model, art, ExportOptions(validate=False, graph_form="trt-attention"))
    out = tmp_path / "e.plan"
    build_engine(art, out, EngineOptions(profile=ProfileOptions(1, 2, 3)))
    rt = open_runtime(out)
    report = check_parity(rt, model, ParityInputs.make(SMALL_SWIGLU_EXTR, batch=3, frames=4, seed=0), "fp16")
    assert report.passed, report.to_dict()
    rt.close()

"""The GPU paths' logic that runs without a GPU: ONNX Runtime's CUDA provider options,
its silent CPU fallback refused, the graph-id version gate, its device buffers (through the fake
CUDA runtime: partial copies only, broadcast finished before the next run), and TensorRT's build
switches on a real TensorRT for RTX builder (TF32 cleared, weak-typing cache IO, parser opset)."""

import importlib.util

import numpy as np
import pytest

from tests.conftest import SMALL
from tests.fakes import FakeCudart
from vitac_deploy import VitacError
from vitac_deploy.errors import BackendUnavailable
from vitac_deploy.runtimes import gpu
from vitac_deploy.runtimes.onnxruntime.backend import (GRAPH_ID_MIN_VERSION, check_providers, cuda_provider_failure,
                                                       cuda_provider_options, version_tuple)
from vitac_deploy.runtimes.tensorrt.build import check_parser_opset


def test_cuda_provider_options_keep_fp32_fp32():
    assert cuda_provider_options(cuda_graphs=False, tf32=False) == {"use_tf32": "0"}
    assert cuda_provider_options(cuda_graphs=True, tf32=True) == {"use_tf32": "1", "enable_cuda_graph": "1"}


def test_a_session_that_fell_back_to_the_cpu_is_refused():
    check_providers(True, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    check_providers(False, ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable, match=r"could not start its CUDA execution provider \(libcublasLt.so.12: "
                                                 r"cannot open shared object file\).*CPUExecutionProvider"):
        check_providers(True, ["CPUExecutionProvider"], "libcublasLt.so.12: cannot open shared object file")


def test_the_cuda_provider_library_is_named_when_missing():
    import onnxruntime as ort

    why = cuda_provider_failure(ort)
    if "CUDAExecutionProvider" not in ort.get_available_providers():   # the CPU wheel: the library is not there
        assert "libonnxruntime_providers_cuda.so" in why and "onnxruntime-gpu" in why


@pytest.mark.parametrize("version, graphs", [("1.17.3", False), ("1.18.0", True), ("1.31.0", True),
                                             ("1.20.0rc1", True), ("2.0", True)])
def test_gpu_graph_id_needs_onnxruntime_1_18(version, graphs):
    assert (version_tuple(version) >= GRAPH_ID_MIN_VERSION) == graphs


@pytest.fixture
def cu(monkeypatch):
    fake = FakeCudart()
    monkeypatch.setattr(gpu, "import_cudart", lambda: fake)
    return fake


def test_onnxruntime_device_buffers_move_only_what_changes(cu):
    """The old buffers copied the WHOLE arena through the host on every read and write."""
    from vitac_deploy.runtimes.onnxruntime.memory import CudaMemory

    mem = CudaMemory()
    buf = mem.alloc(300 * 1000, np.float32)              # an arena for 300 rows of 1000
    rows = np.arange(3000, dtype=np.float32).reshape(3, 1000)
    cu.reset_counters()
    mem.upload(buf, rows)
    assert cu.bytes_moved["h2d"] == rows.nbytes
    got = mem.download(buf, (3, 1000))
    assert cu.bytes_moved["d2h"] == rows.nbytes and np.array_equal(got, rows)


def test_onnxruntime_cache_broadcast_is_finished_before_the_next_run(cu):
    """Device-to-device copies return before they finish, and ONNX Runtime computes on a stream of
    its own: the broadcast must be complete when `_broadcast_cache` returns (the fake runs streams
    lazily, so an unsynchronized copy shows as stale memory)."""
    from vitac_deploy.runtimes.onnxruntime.backend import OnnxRuntimeRuntime
    from vitac_deploy.runtimes.onnxruntime.memory import CudaMemory

    rt = OnnxRuntimeRuntime.__new__(OnnxRuntimeRuntime)   # the broadcast alone: no CUDA session here
    rt.cfg, rt._mem, rt.frames, rt._capacity, rt._cur, rt._raw_cur = SMALL, CudaMemory(), 2, 4, 0, 0
    row = SMALL.num_heads * 2 * SMALL.tokens_per_step * SMALL.head_dim
    rt._arenas = [{"past_key.0": rt._mem.alloc(4 * row, np.float32)}]
    first = np.random.default_rng(0).standard_normal(row).astype(np.float32)
    rt._mem.upload(rt._arenas[0]["past_key.0"], first)
    rt._broadcast_cache(4)
    seen = cu.read(rt._arenas[0]["past_key.0"].ptr, (4, row))   # what ONNX Runtime would read now
    assert np.array_equal(seen, np.broadcast_to(first, (4, row)))


@pytest.mark.parametrize("source", ["host", "device"])
def test_onnxruntime_staged_context_is_broadcast_on_the_device(cu, source):
    """A staged context (host array, or a CUDA array taken by pointer after its producer's stream)
    crosses once; each rollout's features are filled device to device by group of rows, finished
    before ONNX Runtime runs, and not again while the buffer holds them."""
    from vitac_deploy.runtimes.arrays import DeviceArray
    from vitac_deploy.runtimes.onnxruntime.backend import OnnxRuntimeRuntime
    from vitac_deploy.runtimes.onnxruntime.memory import CudaMemory
    from vitac_deploy.runtimes.staging import StagedContext, StagedFrames

    rt = OnnxRuntimeRuntime.__new__(OnnxRuntimeRuntime)   # the staging alone: no CUDA session here
    rt.device, rt._mem, rt._traffic, rt._context_buf, rt._feat_holds = "cuda", CudaMemory(), [0, 0], None, None
    N, D = SMALL.tokens_per_frame, SMALL.embed_dim
    ctx = np.random.default_rng(1).standard_normal((2, 2, N, D)).astype(np.float32)   # 2 contexts of 2 frames
    rt._feat = rt._mem.alloc(5 * N * D, np.float32)
    cu.reset_counters()
    if source == "host":
        rt._stage_host(ctx)
        assert cu.bytes_moved["h2d"] == ctx.nbytes == rt.host_traffic.to_device
    else:
        devs = [DeviceArray(cu.alloc_device_array(c[None]), (1, 2, N, D), np.dtype(np.float32)) for c in ctx]
        cu.reset_counters()
        assert rt._stage_device(devs, normalized=False) and not rt._stage_device(devs, normalized=True)
        assert cu.bytes_moved["h2d"] == 0 and rt.host_traffic.to_device == 0
    staged = StagedContext(1, 1, 2, 2)
    frames = StagedFrames(staged, 1, ((0, 3, 1), (3, 5, 0)))
    rt._load_staged(frames)
    seen = cu.read(rt._feat.ptr, (5, N, D))               # what ONNX Runtime would read now
    assert np.array_equal(seen, np.concatenate([np.broadcast_to(ctx[1, 1], (3, N, D)),
                                                np.broadcast_to(ctx[0, 1], (2, N, D))]))
    moved = dict(cu.bytes_moved)
    rt._load_staged(frames)                               # held already: nothing moves
    assert cu.bytes_moved == moved and moved["h2d"] == (ctx.nbytes if source == "host" else 0)


def test_stream_capture_uses_instantiate_with_flags_on_cuda_python_11(monkeypatch):
    """cuda-python 11.x's cudaGraphInstantiate takes (graph, logBuffer, bufferSize): calling it as
    (graph, 0) raised TypeError on JetPack 5. WithFlags is the same in 11.8 and 13."""
    fake = FakeCudart(api="11.8")
    monkeypatch.setattr(gpu, "import_cudart", lambda: fake)
    s = gpu.Stream(fake)
    ptr = fake.alloc_device_array(np.zeros(4, np.float32))
    src = np.arange(4, dtype=np.float32)
    s.copy(ptr, src.ctypes.data, 16, "h2d")
    s.synchronize()
    graph = s.capture(lambda: s.copy(ptr, ptr, 0, "d2d") or True)
    s.launch(graph)
    s.synchronize()
    assert [c[0] for c in fake.calls].count("cudaGraphInstantiateWithFlags") == 1
    assert "cudaGraphInstantiate" not in [c[0] for c in fake.calls]


def test_a_failed_capture_reports_its_cause(monkeypatch):
    fake = FakeCudart()
    s = gpu.Stream(fake)
    monkeypatch.setattr(gpu, "import_cudart", lambda: fake)

    def enqueue():
        raise RuntimeError("the enqueue itself broke")

    with pytest.raises(VitacError, match="stream capture failed: the enqueue itself broke"):
        s.capture(enqueue)
    assert not fake.stream_is_capturing(s.handle)   # the capture was ended anyway


@pytest.mark.parametrize("version, opset, ok", [("8.5.2", 17, False), ("8.5.2", 16, True), ("8.6.1", 17, True),
                                                ("10.3.0", 17, True)])
def test_tensorrt_8_5_cannot_parse_opset_17(version, opset, ok):
    if ok:
        check_parser_opset(version, "tensorrt", opset)
    else:
        with pytest.raises(VitacError, match="--opset 16"):
            check_parser_opset(version, "tensorrt", opset)


rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="needs tensorrt_rtx")


@rtx
def test_tf32_is_cleared_on_a_real_builder_config():
    import tensorrt_rtx as trt

    from vitac_deploy.runtimes.tensorrt.build import set_tf32

    config = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
    set_tf32(trt, config, False)
    assert not config.get_flag(trt.BuilderFlag.TF32)
    set_tf32(trt, config, True)
    assert config.get_flag(trt.BuilderFlag.TF32)


@rtx
def test_weak_typing_declares_the_cache_io_float16(tmp_path):
    """TensorRT 8.x builds fp16 from the fp32 graph: its cache IO would stay float32 (twice the
    memory). The builder declares past/present and the RoPE rows float16. The tensor names come from
    TensorRT for RTX's real parser; RTX networks are strongly typed (no dtype setter), so the
    declaration is applied to stand-ins carrying those names."""
    import tensorrt_rtx as trt

    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor
    from vitac_deploy.runtimes.tensorrt.build import _cache_io_half

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(precisions=["fp32"], validate=False,
                                                                    first_frame_graph=False))
    logger = trt.Logger(trt.Logger.ERROR)
    parsed = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(parsed, logger).parse_from_file(str(art / "step.onnx"))

    class Tensor:
        def __init__(self, t):
            self.name, self.dtype = t.name, t.dtype

    class Network:
        inputs = [Tensor(parsed.get_input(i)) for i in range(parsed.num_inputs)]
        outputs = [Tensor(parsed.get_output(i)) for i in range(parsed.num_outputs)]
        num_inputs, num_outputs = len(inputs), len(outputs)
        get_input, get_output = inputs.__getitem__, outputs.__getitem__

    net = Network()
    assert _cache_io_half(trt, net) == 4 * SMALL.depth + 2
    ins = {t.name: t.dtype for t in net.inputs}
    outs = {t.name: t.dtype for t in net.outputs}
    assert ins["past_key.0"] == ins["rope_cos"] == outs["present_value.1"] == trt.float16
    assert ins["features"] == ins["action"] == outs["next_features"] == trt.float32


def test_onnxruntime_graph_keys_do_not_outlive_their_buffers(tmp_path):
    """A captured ONNX Runtime graph replays the addresses it was captured with: a re-allocation
    (a larger batch) must drop every frame key's run options and staged inputs, and a graph id is
    never handed out twice (a reused id would replay a graph of freed memory)."""
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.reference import random_predictor
    from vitac_deploy.runtimes import open_runtime

    art = tmp_path / "a"
    export_artifact(random_predictor(SMALL, 0), art, ExportOptions(precisions=["fp32"], validate=False,
                                                                    first_frame_graph=False))
    rt = open_runtime(art, backend="onnxruntime")
    rt.reset(1)
    rt._run_options[(1, 0, 0, 0, False)] = "options of a graph captured at batch 1"
    rt._staged[("action", (1, SMALL.action_dim))] = "a staged input"
    ids = [next(rt._graph_ids) for _ in range(3)]
    rt.reset(3)                        # grows the buffers
    assert not rt._run_options and not rt._staged
    assert next(rt._graph_ids) > max(ids)

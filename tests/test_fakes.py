"""Tests of the CUDA runtime and TensorRT fakes (tests/fakes): they must behave like the real APIs
where our runtime depends on it (signatures, stream ordering, capture/replay, memory bounds), and
be strict where the real thing would misbehave silently. CPU only, no GPU needed."""

import gc
import inspect

import numpy as np
import pytest

from tests.fakes import FakeCudart, FakeTensorRT, cudaError_t, write_fake_engine
from tests.fakes.cudart import cudaMemcpyKind, cudaStreamCaptureMode

E = cudaError_t
H2D, D2H, D2D = (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToHost,
                 cudaMemcpyKind.cudaMemcpyDeviceToDevice)
GLOBAL, RELAXED = cudaStreamCaptureMode.cudaStreamCaptureModeGlobal, cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed


def ok(result):
    """Unpack a successful (err, *values) tuple."""
    err, *values = result
    assert err == E.cudaSuccess, err
    return values[0] if len(values) == 1 else tuple(values) if values else None


def api_functions(fake):
    return {n: getattr(fake, n) for n in dir(fake) if n.startswith("cuda") and inspect.isfunction(getattr(fake, n))}


@pytest.fixture
def cu():
    return FakeCudart()


def stream(cu, flags=1):
    return ok(cu.cudaStreamCreateWithFlags(flags))


def device(cu, array):
    return cu.alloc_device_array(np.asarray(array, np.float32))


# -- FakeCudart: the API surface ----------------------------------------------------------------------

def test_signatures_match_cuda_python():
    real = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    fns = api_functions(FakeCudart(api="13"))
    assert len(fns) >= 30
    for name, fn in fns.items():
        want = list(inspect.signature(getattr(real, name)).parameters)
        assert list(inspect.signature(fn).parameters) == want, name


def test_enums_and_constants_match_cuda_python():
    real = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    fake = FakeCudart()
    for enum_name in ("cudaError_t", "cudaMemcpyKind", "cudaStreamCaptureMode", "cudaStreamCaptureStatus"):
        for member in getattr(fake, enum_name):
            assert int(getattr(getattr(real, enum_name), member.name)) == int(member), (enum_name, member.name)
    for const in ("cudaStreamNonBlocking", "cudaStreamDefault", "cudaEventDisableTiming", "cudaStreamLegacy",
                  "cudaStreamPerThread", "cudaEventDefault", "cudaEventWaitDefault"):
        assert int(getattr(real, const)) == getattr(fake, const), const
    for err in fake.cudaError_t:
        assert fake.cudaGetErrorString(err) == real.cudaGetErrorString(real.cudaError_t(int(err))), err.name


def test_cuda_11_8_graph_instantiate_has_the_old_signature(cu):
    old = FakeCudart(api="11.8")
    assert list(inspect.signature(old.cudaGraphInstantiate).parameters) == ["graph", "pLogBuffer", "bufferSize"]
    assert list(inspect.signature(old.cudaGraphInstantiateWithFlags).parameters) == ["graph", "flags"]
    new, old_fns = api_functions(cu), api_functions(old)
    assert set(new) == set(old_fns)
    for name in set(new) - {"cudaGraphInstantiate"}:
        assert inspect.signature(new[name]) == inspect.signature(old_fns[name]), name
    s = stream(old)
    ok(old.cudaStreamBeginCapture(s, GLOBAL))
    graph = ok(old.cudaStreamEndCapture(s))
    with pytest.raises(TypeError):
        old.cudaGraphInstantiate(graph, 0)          # what gpu.Stream.capture does: fails on 11.8
    graph_exec, error_node = ok(old.cudaGraphInstantiate(graph, None, 0))
    assert int(graph_exec) and int(error_node) == 0
    assert ok(cu.cudaGraphInstantiate(ok(cu.cudaStreamEndCapture(_capturing(cu))), 0))


def _capturing(cu):
    s = stream(cu)
    ok(cu.cudaStreamBeginCapture(s, GLOBAL))
    return s


def test_handles_errors_and_device_identity():
    cu = FakeCudart(name="Fake Orin", major=8, minor=7, total_memory=8 << 30)
    s, ev = stream(cu), ok(cu.cudaEventCreateWithFlags(cu.cudaEventDisableTiming))
    assert int(s) and int(ev) and int(s) != int(ev)
    ok(cu.cudaStreamSynchronize(int(s)))                       # plain ints are accepted
    for legacy in (0, None, cu.cudaStreamLegacy, cu.cudaStreamPerThread):
        ok(cu.cudaStreamSynchronize(legacy))
    assert cu.cudaStreamSynchronize(ev) == (E.cudaErrorInvalidResourceHandle,)   # an event is no stream
    with pytest.raises(TypeError):
        cu.cudaStreamSynchronize("stream")
    with pytest.raises(TypeError):
        cu.cudaMalloc()
    props = ok(cu.cudaGetDeviceProperties(0))
    assert (props.name, props.major, props.minor, props.totalGlobalMem) == (b"Fake Orin", 8, 7, 8 << 30)
    assert cu.cudaGetDeviceProperties(1)[0] == E.cudaErrorInvalidDevice
    assert ok(cu.cudaRuntimeGetVersion()) == 13000
    assert ok(cu.cudaGetErrorString(E.cudaErrorIllegalAddress)) == b"an illegal memory access was encountered"
    err = cu.cudaStreamDestroy(0)[0]
    assert err and int(err) == 400 and err == E.cudaErrorInvalidResourceHandle
    assert not E.cudaSuccess                                    # truthiness like cuda-python's enum


def test_fail_next_and_call_records(cu):
    cu.fail_next("cudaStreamEndCapture", E.cudaErrorStreamCaptureInvalidated)
    s = _capturing(cu)
    assert cu.cudaStreamEndCapture(s) == (E.cudaErrorStreamCaptureInvalidated, None)
    assert ok(cu.cudaStreamEndCapture(s))           # the injected failure did nothing: still capturing
    assert [c[0] for c in cu.calls] == ["cudaStreamCreateWithFlags", "cudaStreamBeginCapture",
                                        "cudaStreamEndCapture", "cudaStreamEndCapture"]
    assert cu.calls[1] == ("cudaStreamBeginCapture", (s, GLOBAL))
    cu.reset_counters()
    assert cu.calls == [] and cu.bytes_moved == {"h2d": 0, "d2h": 0, "d2d": 0, "h2h": 0}


def test_an_injected_failure_does_nothing_else(cu):
    cu.fail_next("cudaMalloc", E.cudaErrorMemoryAllocation)
    assert cu.cudaMalloc(64) == (E.cudaErrorMemoryAllocation, None)
    assert cu.live_allocations() == []
    assert ok(cu.cudaMalloc(64))


# -- memory --------------------------------------------------------------------------------------------

def test_memory_is_real_aligned_and_accounted(cu):
    free0, total = ok(cu.cudaMemGetInfo())
    ptr = ok(cu.cudaMalloc(1000))
    assert ptr % 256 == 0 and (cu.view(ptr, (1000,), np.uint8) == 0).all()
    assert ok(cu.cudaMemGetInfo()) == (free0 - 1000, total)
    host = ok(cu.cudaMallocHost(64))
    assert cu.allocation_at(host).kind == "pinned" and ok(cu.cudaMemGetInfo())[0] == free0 - 1000
    assert cu.cudaMalloc(total)[0] == E.cudaErrorMemoryAllocation
    ok(cu.cudaFree(ptr))
    assert ok(cu.cudaMemGetInfo())[0] == free0
    ok(cu.cudaFree(0))                                          # freeing NULL is a no-op


def test_copies_are_bounds_checked(cu):
    s, src = stream(cu), np.arange(8, dtype=np.float32)
    dst = ok(cu.cudaMalloc(32))
    assert cu.cudaMemcpyAsync(dst, src.ctypes.data, 36, H2D, s) == (E.cudaErrorInvalidValue,)
    assert "4 bytes past the end" in cu.errors[-1][2]
    assert cu.cudaMemcpyAsync(dst + 4, src.ctypes.data, 32, H2D, s)[0] == E.cudaErrorInvalidValue
    assert cu.cudaMemcpyAsync(src.ctypes.data, dst, 32, H2D, s)[0] == E.cudaErrorInvalidValue   # wrong kind
    other = ok(cu.cudaMalloc(32))
    assert cu.cudaMemcpyAsync(dst, other, 32, H2D, s)[0] == E.cudaErrorInvalidValue   # host side in device memory
    pinned = ok(cu.cudaMallocHost(16))
    assert cu.cudaMemcpyAsync(dst, pinned, 32, H2D, s)[0] == E.cudaErrorInvalidValue  # past the pinned buffer
    assert cu.cudaMemcpyAsync(dst, 0, 4, H2D, s)[0] == E.cudaErrorInvalidValue
    assert cu.cudaMemcpyAsync(dst, src.ctypes.data, 32, 7, s)[0] == E.cudaErrorInvalidMemcpyDirection
    ok(cu.cudaMemcpyAsync(dst, src.ctypes.data, 32, H2D, s))
    ok(cu.cudaMemcpyAsync(other, dst, 32, cudaMemcpyKind.cudaMemcpyDefault, s))   # inferred: D2D
    ok(cu.cudaStreamSynchronize(s))
    np.testing.assert_array_equal(cu.view(other, (8,)), src)
    assert cu.bytes_moved == {"h2d": 32, "d2h": 0, "d2d": 32, "h2h": 0}
    assert len(cu.errors) == 7 and cu.sticky_error is None


def test_use_after_free_and_double_free(cu):
    s, host = stream(cu), np.zeros(4, np.float32)
    ptr = ok(cu.cudaMalloc(16))
    ok(cu.cudaFree(ptr))
    assert cu.cudaFree(ptr) == (E.cudaErrorInvalidValue,)
    assert cu.cudaMemcpyAsync(host.ctypes.data, ptr, 16, D2H, s)[0] == E.cudaErrorInvalidValue
    assert "use after free" in cu.errors[-1][2]
    assert cu.cudaFree(ok(cu.cudaMalloc(16)) + 4)[0] == E.cudaErrorInvalidValue      # not an allocation's start
    assert cu.cudaFreeHost(ok(cu.cudaMalloc(16)))[0] == E.cudaErrorInvalidValue      # device pointer
    with pytest.raises(ValueError, match="use after free"):
        cu.view(ptr, (4,))


def test_freeing_memory_with_pending_work_faults_when_it_runs(cu):
    s, host = stream(cu), np.ones(4, np.float32)
    ptr = ok(cu.cudaMalloc(16))
    ok(cu.cudaMemcpyAsync(ptr, host.ctypes.data, 16, H2D, s))
    ok(cu.cudaFree(ptr))                       # cudaFree "may" synchronize: the fake does not
    assert cu.cudaStreamSynchronize(s) == (E.cudaErrorIllegalAddress,)
    assert "when the copy ran" in cu.errors[-1][2]
    assert cu.cudaMalloc(16) == (E.cudaErrorIllegalAddress, None)   # sticky, like a real fault
    cu.clear_sticky_error()
    assert ok(cu.cudaMalloc(16))
    polite = FakeCudart(free_synchronizes=True)
    s, ptr = stream(polite), ok(polite.cudaMalloc(16))
    ok(polite.cudaMemcpyAsync(ptr, host.ctypes.data, 16, H2D, s))
    ok(polite.cudaFree(ptr))
    ok(polite.cudaStreamSynchronize(s))


# -- lazy streams, events, the legacy stream ----------------------------------------------------------

def test_async_copies_wait_for_a_synchronize(cu):
    s = stream(cu)
    host = ok(cu.cudaMallocHost(16))
    cu.view(host, (4,))[:] = [1, 2, 3, 4]
    dev = ok(cu.cudaMalloc(16))
    ok(cu.cudaMemcpyAsync(dev, host, 16, H2D, s))
    assert (cu.view(dev, (4,)) == 0).all()                      # not yet
    ok(cu.cudaStreamSynchronize(0))                             # the legacy stream: unrelated to s
    assert (cu.view(dev, (4,)) == 0).all()
    ok(cu.cudaStreamSynchronize(s))
    np.testing.assert_array_equal(cu.view(dev, (4,)), [1, 2, 3, 4])
    assert cu.warnings == []                                    # pinned: no pageable-memory warning
    pageable = np.zeros(4, np.float32)
    ok(cu.cudaMemcpyAsync(pageable.ctypes.data, dev, 16, D2H, s))
    assert (pageable == 0).all() and "pageable" in cu.warnings[0]
    ok(cu.cudaDeviceSynchronize())
    np.testing.assert_array_equal(pageable, [1, 2, 3, 4])


def test_cross_stream_reads_are_stale_without_an_event(cu):
    a, b = stream(cu), stream(cu)
    src = device(cu, [1, 2, 3, 4])
    mid, dst = device(cu, [0] * 4), device(cu, [0] * 4)
    ok(cu.cudaMemcpyAsync(mid, src, 16, D2D, a))                # producer on a
    ok(cu.cudaMemcpyAsync(dst, mid, 16, D2D, b))                # consumer on b, no dependency
    ok(cu.cudaStreamSynchronize(b))
    assert (cu.view(dst, (4,)) == 0).all()                      # stale: a never ran for b
    ok(cu.cudaStreamSynchronize(a))
    assert (cu.view(dst, (4,)) == 0).all()

    ev = ok(cu.cudaEventCreateWithFlags(cu.cudaEventDisableTiming))
    src2, mid2, dst2 = device(cu, [5, 6, 7, 8]), device(cu, [0] * 4), device(cu, [0] * 4)
    ok(cu.cudaMemcpyAsync(mid2, src2, 16, D2D, a))
    ok(cu.cudaEventRecord(ev, a))
    ok(cu.cudaMemcpyAsync(src2, src, 16, D2D, a))               # after the record: not waited for
    ok(cu.cudaStreamWaitEvent(b, ev, 0))
    ok(cu.cudaMemcpyAsync(dst2, mid2, 16, D2D, b))
    ok(cu.cudaStreamSynchronize(b))
    np.testing.assert_array_equal(cu.view(dst2, (4,)), [5, 6, 7, 8])
    np.testing.assert_array_equal(cu.view(src2, (4,)), [5, 6, 7, 8])   # a's later copy still pending
    ok(cu.cudaEventSynchronize(ev))
    np.testing.assert_array_equal(cu.view(src2, (4,)), [5, 6, 7, 8])
    ok(cu.cudaStreamSynchronize(a))
    np.testing.assert_array_equal(cu.view(src2, (4,)), [1, 2, 3, 4])
    ok(cu.cudaStreamWaitEvent(b, ok(cu.cudaEventCreate()), 0))          # never recorded: no-op


def test_synchronous_memcpy_runs_on_the_legacy_stream(cu):
    host, back = np.array([1, 2, 3, 4], np.float32), np.zeros(4, np.float32)
    a, b = device(cu, [0] * 4), device(cu, [0] * 4)
    ok(cu.cudaMemcpy(a, host.ctypes.data, 16, H2D))             # completes before returning
    np.testing.assert_array_equal(cu.view(a, (4,)), host)
    ok(cu.cudaMemcpy(b, a, 16, D2D))                            # may return before completion
    assert (cu.view(b, (4,)) == 0).all()
    ok(cu.cudaMemcpy(back.ctypes.data, b, 16, D2H))             # flushes the legacy stream first
    np.testing.assert_array_equal(back, host)
    c = device(cu, [0] * 4)
    ok(cu.cudaMemcpy(c, a, 16, D2D))
    ok(cu.cudaStreamSynchronize(cu.cudaStreamLegacy))
    np.testing.assert_array_equal(cu.view(c, (4,)), host)


def test_blocking_streams_synchronize_with_the_legacy_stream(cu):
    blocking, nonblocking = stream(cu, cu.cudaStreamDefault), stream(cu, cu.cudaStreamNonBlocking)
    src = device(cu, [1, 2, 3, 4])
    x, y, back = device(cu, [0] * 4), device(cu, [0] * 4), np.zeros(4, np.float32)
    ok(cu.cudaMemcpyAsync(x, src, 16, D2D, blocking))
    ok(cu.cudaMemcpyAsync(y, src, 16, D2D, nonblocking))
    ok(cu.cudaMemcpy(back.ctypes.data, x, 16, D2H))             # legacy work waits for the blocking stream
    np.testing.assert_array_equal(back, [1, 2, 3, 4])
    ok(cu.cudaMemcpy(back.ctypes.data, y, 16, D2H))             # ... but not for a non-blocking one
    assert (back == 0).all()
    z = device(cu, [0] * 4)
    ok(cu.cudaMemcpy(x, y, 16, D2D))                            # lazy, on the legacy stream
    ok(cu.cudaMemcpyAsync(z, x, 16, D2D, blocking))             # the blocking stream waits for it
    ok(cu.cudaStreamSynchronize(blocking))
    assert (cu.view(z, (4,)) == 0).all() and (cu.view(x, (4,)) == 0).all()   # y was still 0 then
    ok(cu.cudaDeviceSynchronize())
    np.testing.assert_array_equal(cu.view(y, (4,)), [1, 2, 3, 4])


def test_memcpy_2d_copies_rows_with_pitches(cu):
    s = stream(cu)
    src = device(cu, np.arange(12).reshape(3, 4))               # 3 rows of 16 bytes
    dst = device(cu, np.zeros((3, 2)))
    ok(cu.cudaMemcpy2DAsync(dst, 8, src + 8, 16, 8, 3, D2D, s))  # the last two columns
    ok(cu.cudaStreamSynchronize(s))
    np.testing.assert_array_equal(cu.view(dst, (3, 2)), [[2, 3], [6, 7], [10, 11]])
    assert cu.cudaMemcpy2DAsync(dst, 8, src, 16, 16, 3, D2D, s)[0] == E.cudaErrorInvalidPitchValue
    assert cu.cudaMemcpy2DAsync(dst, 8, src + 16, 16, 8, 3, D2D, s)[0] == E.cudaErrorInvalidValue   # past the end


def test_destroyed_streams_finish_their_work(cu):
    s, src, dst = stream(cu), device(cu, [1, 2]), device(cu, [0, 0])
    ok(cu.cudaMemcpyAsync(dst, src, 8, D2D, s))
    ok(cu.cudaStreamDestroy(s))
    assert cu.cudaStreamSynchronize(s) == (E.cudaErrorInvalidResourceHandle,)
    ok(cu.cudaDeviceSynchronize())
    np.testing.assert_array_equal(cu.view(dst, (2,)), [1, 2])


# -- capture and graphs --------------------------------------------------------------------------------

def test_capture_records_and_launch_replays(cu):
    s = stream(cu)
    host = ok(cu.cudaMallocHost(16))
    dev, out = device(cu, [0] * 4), device(cu, [0] * 4)
    ran = []
    ok(cu.cudaStreamBeginCapture(s, GLOBAL))
    assert ok(cu.cudaStreamIsCapturing(s)) == cu.cudaStreamCaptureStatus.cudaStreamCaptureStatusActive
    ok(cu.cudaMemcpyAsync(dev, host, 16, H2D, s))
    assert cu.enqueue(s, lambda: ran.append(cu.read(dev, (4,))), "kernel") == E.cudaSuccess
    ok(cu.cudaMemcpyAsync(out, dev, 16, D2D, s))
    graph = ok(cu.cudaStreamEndCapture(s))
    graph_exec = ok(cu.cudaGraphInstantiate(graph, 0))
    ok(cu.cudaGraphDestroy(graph))                              # the exec outlives its graph
    ok(cu.cudaDeviceSynchronize())
    assert ran == [] and (cu.view(out, (4,)) == 0).all() and cu.bytes_moved["h2d"] == 0   # nothing ran

    for value in (1.0, 2.0):
        cu.view(host, (4,))[:] = value                          # the graph reads the same addresses
        ok(cu.cudaGraphLaunch(graph_exec, s))
        assert (cu.view(out, (4,)) != value).all()              # lazy, like any stream work
        ok(cu.cudaStreamSynchronize(s))
        np.testing.assert_array_equal(cu.view(out, (4,)), [value] * 4)
    assert len(ran) == 2 and cu.bytes_moved == {"h2d": 32, "d2h": 0, "d2d": 32, "h2h": 0}
    ok(cu.cudaGraphExecDestroy(graph_exec))
    assert cu.cudaGraphLaunch(graph_exec, s) == (E.cudaErrorInvalidResourceHandle,)
    assert cu.cudaGraphInstantiate(graph, 0) == (E.cudaErrorInvalidResourceHandle, None)


def test_graph_keeps_capture_time_arguments(cu):
    """A captured op keeps the pointers it was given; the replay_check hook runs before replays only."""
    s, a, b = stream(cu), device(cu, [1, 1]), device(cu, [0, 0])
    target = {"ptr": b}
    checks = []
    ok(cu.cudaStreamBeginCapture(s, GLOBAL))
    ok(cu.cudaMemcpyAsync(target["ptr"], a, 8, D2D, s))
    cu.enqueue(s, lambda: None, "kernel", replay_check=lambda: checks.append("replay"))
    graph_exec = ok(cu.cudaGraphInstantiateWithFlags(ok(cu.cudaStreamEndCapture(s)), 0))
    target["ptr"] = device(cu, [0, 0])                          # rebinding later changes nothing
    ok(cu.cudaGraphLaunch(graph_exec, s))
    ok(cu.cudaStreamSynchronize(s))
    np.testing.assert_array_equal(cu.view(b, (2,)), [1, 1])
    assert (cu.view(target["ptr"], (2,)) == 0).all() and checks == ["replay"]
    cu.enqueue(s, lambda: None, "direct", replay_check=lambda: checks.append("direct"))
    ok(cu.cudaStreamSynchronize(s))
    assert checks == ["replay"]


def test_launches_of_one_exec_are_ordered(cu):
    a, b = stream(cu), stream(cu)
    order = []
    ok(cu.cudaStreamBeginCapture(a, GLOBAL))
    cu.enqueue(a, lambda: order.append(len(order)), "count")
    graph_exec = ok(cu.cudaGraphInstantiate(ok(cu.cudaStreamEndCapture(a)), 0))
    ok(cu.cudaGraphLaunch(graph_exec, a))
    ok(cu.cudaGraphLaunch(graph_exec, b))                       # waits for the launch on a
    ok(cu.cudaStreamSynchronize(b))
    assert order == [0, 1]


@pytest.mark.parametrize("call", ["memcpy", "sync", "device_sync", "malloc", "free", "event_record"])
def test_illegal_calls_invalidate_a_capture(cu, call):
    s = stream(cu)
    host, dev = np.zeros(4, np.float32), device(cu, [0] * 4)
    ok(cu.cudaStreamBeginCapture(s, GLOBAL))
    ok(cu.cudaMemcpyAsync(dev, host.ctypes.data, 16, H2D, s))
    err = {"memcpy": lambda: cu.cudaMemcpy(dev, host.ctypes.data, 16, H2D),
           "sync": lambda: cu.cudaStreamSynchronize(s),
           "device_sync": lambda: cu.cudaDeviceSynchronize(),
           "malloc": lambda: cu.cudaMalloc(16),
           "free": lambda: cu.cudaFree(dev),
           "event_record": lambda: cu.cudaEventRecord(ok(cu.cudaEventCreate()), s)}[call]()[0]
    assert err == E.cudaErrorStreamCaptureUnsupported
    assert ok(cu.cudaStreamIsCapturing(s)) == cu.cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated
    assert cu.cudaStreamEndCapture(s) == (E.cudaErrorStreamCaptureInvalidated, None)
    assert ok(cu.cudaStreamIsCapturing(s)) == cu.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
    assert (cu.view(dev, (4,)) == 0).all() and cu.sticky_error is None


def test_capture_rules(cu):
    assert cu.cudaStreamBeginCapture(0, GLOBAL) == (E.cudaErrorStreamCaptureUnsupported,)   # legacy stream
    s, dev = stream(cu), device(cu, [0])
    ok(cu.cudaStreamBeginCapture(s, RELAXED))
    assert cu.cudaStreamBeginCapture(s, RELAXED) == (E.cudaErrorIllegalState,)
    ok(cu.cudaMalloc(16))                                       # relaxed mode allows it
    ev = ok(cu.cudaEventCreate())
    ok(cu.cudaEventRecord(ev, stream(cu)))
    assert cu.cudaStreamWaitEvent(s, ev, 0) == (E.cudaErrorStreamCaptureIsolation,)
    assert cu.cudaStreamEndCapture(s)[0] == E.cudaErrorStreamCaptureInvalidated
    blocking = stream(cu, 0)                                    # legacy work while a blocking stream captures
    ok(cu.cudaStreamBeginCapture(blocking, RELAXED))
    assert cu.cudaMemcpy(dev, dev, 4, D2D) == (E.cudaErrorStreamCaptureImplicit,)
    assert cu.cudaStreamEndCapture(blocking)[0] == E.cudaErrorStreamCaptureInvalidated
    assert cu.cudaStreamEndCapture(s) == (E.cudaErrorIllegalState, None)   # not capturing any more


def test_sticky_fault_from_an_enqueued_kernel(cu):
    from tests.fakes import FakeCudaError

    def crash():
        raise FakeCudaError(E.cudaErrorIllegalAddress, "boom")

    s = stream(cu)
    assert cu.enqueue(s, crash, "bad kernel") == E.cudaSuccess
    assert cu.cudaStreamSynchronize(s) == (E.cudaErrorIllegalAddress,)
    assert cu.errors[-1] == ("cudaStreamSynchronize", E.cudaErrorIllegalAddress, "boom")
    assert cu.enqueue(s, lambda: None, "next") == E.cudaErrorIllegalAddress
    assert ok(cu.cudaGetErrorString(E.cudaErrorIllegalAddress))                # still answers


# -- FakeTensorRT ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def step_onnx(tmp_path_factory):
    """A tiny step graph: y = 2x, present = concat(past, fp16(y)) on a dynamic cache axis."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["x", "two"], ["y"]),
             helper.make_node("Unsqueeze", ["y", "axis1"], ["y1"]),
             helper.make_node("Cast", ["y1"], ["y16"], to=TensorProto.FLOAT16),
             helper.make_node("Concat", ["past", "y16"], ["present"], axis=1)]
    graph = helper.make_graph(
        nodes, "step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4]),
         helper.make_tensor_value_info("past", TensorProto.FLOAT16, ["B", "P", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4]),
         helper.make_tensor_value_info("present", TensorProto.FLOAT16, ["B", "P1", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
         helper.make_tensor("axis1", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "step.onnx"
    onnx.save(model, path)
    return path


PROFILE = {"x": ((1, 4), (2, 4), (4, 4)), "past": ((1, 0, 4), (2, 2, 4), (4, 8, 4))}


@pytest.fixture
def plan(tmp_path, step_onnx):
    return write_fake_engine(tmp_path / "step.plan", step_onnx, PROFILE, device_memory_size=4096)


def make_engine(trt, plan, allow_host_code=False):
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    runtime.engine_host_code_allowed = allow_host_code
    return runtime.deserialize_cuda_engine(plan.read_bytes())


class Step:
    """Device buffers for one execution of the step graph, bound to a context."""

    def __init__(self, cu, ctx, B=2, P=3, seed=0):
        rng = np.random.default_rng(seed)
        self.cu, self.B, self.P = cu, B, P
        self.x = rng.standard_normal((B, 4)).astype(np.float32)
        self.past = rng.standard_normal((B, P, 4)).astype(np.float16)
        self.ptr = {"x": device(cu, self.x), "past": cu.alloc_device_array(self.past),
                    "y": ok(cu.cudaMalloc(B * 4 * 4)), "present": ok(cu.cudaMalloc(B * (P + 1) * 4 * 2))}
        assert ctx.set_input_shape("x", (B, 4)) and ctx.set_input_shape("past", (B, P, 4))
        for name, ptr in self.ptr.items():
            assert ctx.set_tensor_address(name, ptr)

    def outputs(self):
        return (self.cu.read(self.ptr["y"], (self.B, 4)),
                self.cu.read(self.ptr["present"], (self.B, self.P + 1, 4), np.float16))

    def expected(self):
        y = self.x * 2
        return y, np.concatenate([self.past, y[:, None].astype(np.float16)], axis=1)


def test_engine_introspection(cu, plan):
    trt = FakeTensorRT(cu)
    assert (trt.__name__, trt.__version__) == ("tensorrt", "10.3.0")
    engine = make_engine(trt, plan)
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["x", "past", "y", "present"]
    assert [engine.get_tensor_mode(n) for n in names] == [trt.TensorIOMode.INPUT] * 2 + [trt.TensorIOMode.OUTPUT] * 2
    assert engine.get_tensor_dtype("past") == trt.float16 and trt.nptype(trt.float16) is np.float16
    assert engine.get_tensor_dtype("y") == trt.float32 and engine.get_tensor_shape("past") == (-1, -1, 4)
    assert engine.get_tensor_profile_shape("past", 0) == [(1, 0, 4), (2, 2, 4), (4, 8, 4)]
    assert engine.device_memory_size_v2 == engine.get_device_memory_size_for_profile_v2(0) == 4096
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert not hasattr(runtime, "get_engine_validity") and not hasattr(engine, "create_runtime_config")
    with pytest.raises(TypeError):
        trt.Runtime(None)
    with pytest.raises(TypeError):
        trt.nptype(trt.bfloat16)


def test_execute_runs_the_onnx_graph_lazily(cu, plan):
    trt = FakeTensorRT(cu)
    ctx = make_engine(trt, plan).create_execution_context()
    step, s = Step(cu, ctx), stream(cu)
    assert ctx.get_tensor_shape("present") == (2, 4, 4)
    assert ctx.execute_async_v3(int(s))
    assert (step.outputs()[0] == 0).all()                       # enqueued, not run
    ok(cu.cudaStreamSynchronize(s))
    for got, want in zip(step.outputs(), step.expected()):
        np.testing.assert_array_equal(got, want)
    assert trt.log[-1][:3] == ("executed", 1, False)
    assert [c[0] for c in trt.contexts[0].calls] == ["set_input_shape"] * 2 + ["set_tensor_address"] * 4 + [
        "execute_async_v3"]


def test_an_enqueued_execution_uses_the_bindings_of_its_enqueue(cu, plan):
    trt = FakeTensorRT(cu)
    ctx = make_engine(trt, plan).create_execution_context()
    step, s = Step(cu, ctx), stream(cu)
    assert ctx.execute_async_v3(s)                              # a stream object is taken too
    elsewhere = ok(cu.cudaMalloc(32))
    assert ctx.set_tensor_address("y", elsewhere) and ctx.set_input_shape("x", (1, 4))
    ok(cu.cudaStreamSynchronize(s))
    np.testing.assert_array_equal(step.outputs()[0], step.expected()[0])
    assert (cu.view(elsewhere, (8,)) == 0).all()


def test_bindings_are_validated(cu, plan):
    trt = FakeTensorRT(cu)
    ctx = make_engine(trt, plan).create_execution_context()
    assert not ctx.set_input_shape("x", (5, 4))                 # batch above the profile
    assert not ctx.set_input_shape("x", (2, 5))                 # static dimension
    assert not ctx.set_input_shape("past", (2, 4))              # rank
    assert not ctx.set_input_shape("y", (2, 4))                 # an output
    assert not ctx.set_tensor_address("nope", 256)
    s = stream(cu)
    assert not ctx.execute_async_v3(s)
    text = " ".join(m for _, m in trt.messages)
    assert "input shape of 'x' not set" in text and "address of 'present' not set" in text
    Step(cu, ctx)
    assert ctx.execute_async_v3(s)


def test_execution_faults_are_reported_at_synchronize(cu, plan):
    trt = FakeTensorRT(cu)
    ctx = make_engine(trt, plan).create_execution_context()
    step, s = Step(cu, ctx), stream(cu)
    assert ctx.set_tensor_address("present", ok(cu.cudaMalloc(16)))   # too small for the grown cache
    assert ctx.execute_async_v3(s)
    assert cu.cudaStreamSynchronize(s) == (E.cudaErrorIllegalAddress,)
    assert "output 'present'" in cu.errors[-1][2]
    cu.clear_sticky_error()
    assert ctx.set_tensor_address("present", step.ptr["present"])
    assert ctx.set_tensor_address("y", step.ptr["x"])              # aliasing an input it reads
    assert ctx.execute_async_v3(s)
    assert cu.cudaStreamSynchronize(s) == (E.cudaErrorLaunchFailure,)
    assert "overlaps" in cu.errors[-1][2]


def test_capture_and_replay(cu, plan):
    trt = FakeTensorRT(cu)
    ctx = make_engine(trt, plan).create_execution_context()
    step, s = Step(cu, ctx), stream(cu)
    ok(cu.cudaStreamBeginCapture(s, GLOBAL))                    # first enqueue after a shape change:
    assert not ctx.execute_async_v3(s)                          # TensorRT's deferred work is uncapturable
    assert cu.cudaStreamEndCapture(s)[0] == E.cudaErrorStreamCaptureInvalidated

    assert ctx.execute_async_v3(s)                              # warm-up run, then capture
    ok(cu.cudaStreamSynchronize(s))
    ok(cu.cudaStreamBeginCapture(s, GLOBAL))
    assert ctx.execute_async_v3(s)
    graph_exec = ok(cu.cudaGraphInstantiate(ok(cu.cudaStreamEndCapture(s)), 0))
    for seed in (1, 2):                                         # new inputs at the same addresses
        step.x[:] = np.random.default_rng(seed).standard_normal((2, 4))
        cu.write(step.ptr["x"], step.x)
        ok(cu.cudaGraphLaunch(graph_exec, s))
        ok(cu.cudaStreamSynchronize(s))
        for got, want in zip(step.outputs(), step.expected()):
            np.testing.assert_array_equal(got, want)
    assert [e[2] for e in trt.log if e[0] == "executed"] == [False, True, True]

    assert ctx.set_input_shape("past", (2, 3, 4))               # same value: still a reconfiguration
    ok(cu.cudaGraphLaunch(graph_exec, s))
    assert cu.cudaStreamSynchronize(s) == (E.cudaErrorIllegalAddress,)
    assert "reconfigured" in cu.errors[-1][2] and trt.log[-1] == ("stale_replay", 1)


def test_replay_checks_only_real_changes_when_not_strict(cu, plan):
    trt = FakeTensorRT(cu, strict_reconfigure=False)
    ctx = make_engine(trt, plan).create_execution_context()
    step, s = Step(cu, ctx), stream(cu)
    assert ctx.execute_async_v3(s)
    ok(cu.cudaStreamBeginCapture(s, GLOBAL))
    assert ctx.execute_async_v3(s)
    graph_exec = ok(cu.cudaGraphInstantiate(ok(cu.cudaStreamEndCapture(s)), 0))
    assert ctx.set_tensor_address("y", step.ptr["y"])           # unchanged
    ok(cu.cudaGraphLaunch(graph_exec, s))
    ok(cu.cudaStreamSynchronize(s))
    assert ctx.set_input_shape("past", (2, 2, 4))               # changed
    ok(cu.cudaGraphLaunch(graph_exec, s))
    assert cu.cudaStreamSynchronize(s) == (E.cudaErrorIllegalAddress,)


def test_user_managed_device_memory(cu, plan):
    trt = FakeTensorRT(cu)
    engine = make_engine(trt, plan)
    free0 = ok(cu.cudaMemGetInfo())[0]
    static = engine.create_execution_context()
    assert ok(cu.cudaMemGetInfo())[0] == free0 - 4096          # a STATIC context owns its scratch
    del static
    gc.collect()
    assert ok(cu.cudaMemGetInfo())[0] == free0

    strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
    a, b = engine.create_execution_context(strategy), engine.create_execution_context(strategy)
    step_a, step_b, s = Step(cu, a, seed=1), Step(cu, b, B=1, P=0, seed=2), stream(cu)
    assert not a.execute_async_v3(s) and "set_device_memory" in trt.messages[-1][1]
    memory = ok(cu.cudaMalloc(4096))
    a.set_device_memory(memory, 2048)
    assert not a.execute_async_v3(s)                            # smaller than device_memory_size_v2
    a.set_device_memory(memory + 8, 4096)
    assert not a.execute_async_v3(s)                            # past the allocation (and unaligned)
    a.set_device_memory(memory, 4096)
    b.set_device_memory(memory, 4096)                           # shared: fine on one stream
    assert a.execute_async_v3(s) and b.execute_async_v3(s)
    ok(cu.cudaStreamSynchronize(s))
    for step in (step_a, step_b):
        for got, want in zip(step.outputs(), step.expected()):
            np.testing.assert_array_equal(got, want)
    ok(cu.cudaFree(memory))
    assert not a.execute_async_v3(s)
    assert [r.strategy for r in trt.contexts] == ["STATIC", "USER_MANAGED", "USER_MANAGED"]
    assert not trt.contexts[0].alive and trt.contexts[1].alive


def test_deserialization_refusals(cu, plan, step_onnx, tmp_path):
    trt = FakeTensorRT(cu)
    assert make_engine(trt, plan) is not None
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(b"\x00not a plan") is None
    versioned = write_fake_engine(tmp_path / "v.plan", step_onnx, PROFILE, version="10.3.0")
    assert make_engine(trt, versioned) is not None
    newer = FakeTensorRT(cu, "10.13.0")
    assert make_engine(newer, versioned) is None
    assert "not compatible with this version" in newer.messages[-1][1]
    vc = write_fake_engine(tmp_path / "vc.plan", step_onnx, PROFILE, version="10.0.0", version_compatible=True)
    assert make_engine(trt, vc) is None
    assert "setEngineHostCodeAllowed" in trt.messages[-1][1]
    assert make_engine(trt, vc, allow_host_code=True) is not None
    rtx_plan = write_fake_engine(tmp_path / "rtx.plan", step_onnx, PROFILE, flavour="tensorrt_rtx")
    assert make_engine(trt, rtx_plan) is None
    with pytest.raises(ValueError, match="dynamic inputs without a profile"):
        write_fake_engine(tmp_path / "bad.plan", step_onnx, {"x": PROFILE["x"]})
    with pytest.raises(ValueError, match="does not match"):
        write_fake_engine(tmp_path / "bad.plan", step_onnx, {**PROFILE, "x": ((1, 5), (1, 5), (1, 5))})


def test_tensorrt_8_api(cu, plan):
    trt = FakeTensorRT(cu, "8.6.1")
    engine = make_engine(trt, plan)
    assert not hasattr(trt, "ExecutionContextAllocationStrategy")
    assert not hasattr(engine, "device_memory_size_v2") and engine.device_memory_size == 4096
    with pytest.raises(TypeError):
        engine.create_execution_context(0)
    ctx = engine.create_execution_context_without_device_memory()
    assert not hasattr(ctx, "set_device_memory") and not hasattr(ctx, "is_stream_capturable")
    step, s = Step(cu, ctx), stream(cu)
    assert not ctx.execute_async_v3(s)
    ctx.device_memory = ok(cu.cudaMalloc(4096))
    assert ctx.execute_async_v3(s)
    ok(cu.cudaStreamSynchronize(s))
    np.testing.assert_array_equal(step.outputs()[0], step.expected()[0])
    new = FakeTensorRT(cu, "10.0.1")
    assert hasattr(new, "ExecutionContextAllocationStrategy")
    engine = make_engine(new, plan)
    assert not hasattr(engine, "device_memory_size_v2") and hasattr(engine, "device_memory_size")
    assert not hasattr(engine.create_execution_context(), "set_device_memory")


def test_tensorrt_rtx_flavour(cu, plan, step_onnx, tmp_path):
    trt = FakeTensorRT(cu, flavour="tensorrt_rtx")
    assert (trt.__name__, trt.__version__) == ("tensorrt_rtx", "1.7.1.116")
    rtx_plan = write_fake_engine(tmp_path / "rtx.plan", step_onnx, PROFILE, flavour="tensorrt_rtx")
    runtime = trt.Runtime(trt.Logger())
    assert runtime.get_engine_validity(rtx_plan.read_bytes()) == (trt.EngineValidity.VALID, 0)
    assert runtime.get_engine_validity(b"junk") == (trt.EngineValidity.INVALID,
                                                    int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE))
    engine = runtime.deserialize_cuda_engine(rtx_plan.read_bytes())
    assert not hasattr(engine, "device_memory_size") and engine.device_memory_size_v2 == 4096
    config = engine.create_runtime_config()
    config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    config.set_execution_context_allocation_strategy(trt.ExecutionContextAllocationStrategy.STATIC)
    ctx = engine.create_execution_context(config)
    assert ctx.get_runtime_config() is config and ctx.is_stream_capturable(0)
    step, s = Step(cu, ctx), stream(cu)
    assert ctx.execute_async_v3(s)
    ok(cu.cudaStreamSynchronize(s))
    np.testing.assert_array_equal(step.outputs()[0], step.expected()[0])
    del config
    gc.collect()
    assert not ctx.execute_async_v3(s) and "IRuntimeConfig" in trt.messages[-1][1]
    bad = write_fake_engine(tmp_path / "bad.plan", step_onnx, PROFILE, flavour="tensorrt_rtx",
                            validity="INVALID", diagnostics=["UNSUPPORTED_CC"])
    assert runtime.get_engine_validity(bad.read_bytes()) == (trt.EngineValidity.INVALID, 2)
    assert runtime.deserialize_cuda_engine(bad.read_bytes()) is None

"""The TensorRT runtime's own logic, end to end, without a GPU: its CUDA layer and TensorRT replaced
by the fakes of tests/fakes (strict lazy streams, bounds-checked device memory, CUDA graphs that
replay what they captured, engines that run the artifact's real ONNX graphs with ONNX Runtime on
the CPU). What this proves: bindings, buffer parity, graph capture/replay bookkeeping, stream
ordering, what crosses to the host, lifetimes. What it cannot: TensorRT's kernels (see
docs/gpu-validation.md)."""

import gc
import json
import logging

import numpy as np
import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR, load_mpc_golden
from tests.fakes import FakeCudart, FakeTensorRT, cudaError_t, write_fake_engine
from vitac_deploy import VitacError
from vitac_deploy.config import PredictorConfig
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.artifacts import read_manifest, seal, sha256_file, write_json_atomic
from vitac_deploy.validation import TOLERANCES
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import gpu, open_runtime
from vitac_deploy.runtimes.tensorrt import backend as trt_backend
from vitac_deploy.runtimes.tensorrt.build import EngineOptions, energy_profile, engine_manifest
from vitac_deploy.runtimes.tensorrt.profiles import ProfileOptions, check_profile_options, step_profile
from vitac_deploy.validation import ParityInputs, check_parity

SMALL_NO_NORM = PredictorConfig.from_dict({**SMALL.to_dict(), "normalize_reps": False})


def fake_engine(tmp_path, model, precision="fp16", first_engine=True, energy=True, version="10.3.0",
                flavour="tensorrt", batch=(1, 2, 4), cache="concat", **flags):
    """An artifact of `model` and fake engines of it with the manifest build-engine writes."""
    cfg = model.cfg
    art = tmp_path / ("artifact" if cache == "concat" else f"artifact-{cache}")
    if not art.exists():
        export_artifact(model, art, ExportOptions(validate=False, cache=cache))
    manifest = read_manifest(art)
    first_engine = first_engine and cache == "concat"   # the static step engine runs frame 0 itself
    prof = check_profile_options(ProfileOptions(*batch, 0, 1 if first_engine else 0), cfg)
    out = tmp_path / ("e.plan" if cache == "concat" else f"e-{cache}.plan")
    jobs = [("step", f"step.{precision}", out, prof.min_past_frames)]
    if first_engine:
        jobs.append(("first", f"first.{precision}", out.with_name(out.stem + ".first.plan"), 0))
    engines = []
    for role, key, path, min_past in jobs:
        graph = manifest["graphs"][key]
        shapes = step_profile(graph, cfg, ProfileOptions(prof.min_batch, prof.opt_batch, prof.max_batch,
                                                         prof.max_frames, min_past))
        write_fake_engine(path, art / graph["file"], shapes, version=version, flavour=flavour.replace("-", "_"),
                          version_compatible=flags.get("version_compatible", False))
        engines.append({"role": role, "file": path.name, "sha256": sha256_file(path), "profile": shapes})
    if energy:
        path = out.with_name(out.stem + ".energy.plan")
        write_fake_engine(path, art / "energy.onnx", energy_profile(cfg, prof), version=version,
                          flavour=flavour.replace("-", "_"), device_memory_size=256)
        engines.append({"role": "energy", "file": path.name, "sha256": sha256_file(path)})
    opts = EngineOptions(precision=precision, profile=prof, flavour=flavour, **flags)
    gpu_desc = {"name": "Fake H100", "compute_capability": "9.0"}
    data = engine_manifest(art, cfg, flavour, version, None if flavour == "tensorrt-rtx" else gpu_desc,
                           ["default"], opts, prof, "fake", engines, manifest.get("cache"))
    write_json_atomic(out.with_name(out.name + ".json"), data)
    return out


@pytest.fixture
def fakes(monkeypatch):
    """Inject a FakeCudart (cuda-python 13 API) and a FakeTensorRT 10.3; returns a function that
    re-injects other versions."""
    def inject(api="13", version="10.3.0", flavour="tensorrt", malloc_fill=None, **trt_kw):
        cu = FakeCudart(api=api, malloc_fill=malloc_fill)
        trt = FakeTensorRT(cu, version=version, flavour=flavour, **trt_kw)
        monkeypatch.setattr(gpu, "import_cudart", lambda: cu)
        monkeypatch.setattr(trt_backend, "import_cudart", lambda: cu)
        monkeypatch.setattr(trt_backend, "import_tensorrt", lambda flavour: trt)
        return cu, trt
    return inject


def _stale(trt):
    return [e for e in trt.log if e[0] == "stale_replay"]


@pytest.mark.parametrize("cfg", [SMALL, SMALL_SWIGLU_EXTR, SMALL_NO_NORM], ids=["small", "swiglu_extr", "no_norm"])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_rollout_matches_the_reference(tmp_path, fakes, cfg, graphs):
    """fp16 engines (the strongly typed graphs) against the reference, streaming and rollout, twice
    (the second pass replays every captured graph); replay equals eager execution exactly."""
    cu, trt = fakes()
    model = random_predictor(cfg, 0)
    plan = fake_engine(tmp_path, model)
    inputs = ParityInputs.make(cfg, batch=3, frames=cfg.max_frames, seed=3)
    rt = open_runtime(plan, cuda_graphs=graphs)
    assert rt.graphs_in_use == graphs
    first = check_parity(rt, model, inputs, "fp16")
    again = check_parity(rt, model, inputs, "fp16")
    assert first.passed and again.passed, first.to_dict()
    eager = open_runtime(plan)
    want = eager.rollout(inputs.context, inputs.actions, inputs.states, inputs.horizon, inputs.extrinsics)
    got = rt.rollout(inputs.context, inputs.actions, inputs.states, inputs.horizon, inputs.extrinsics)
    np.testing.assert_array_equal(got, want)
    assert not _stale(trt) and cu.sticky_error is None
    if graphs:
        assert rt.graphs_in_use and len(rt._graphs) >= cfg.max_frames - 1
        assert any(e[0] == "executed" and e[2] for e in trt.log)   # graphs were replayed, not just captured
        # one context per captured graph, never reconfigured after its capture
        assert len(rt._keyed) == len(rt._graphs)
    rt.close()
    eager.close()


@pytest.mark.parametrize("api, version", [("11.8", "8.6.1"), ("13", "10.0.1"), ("13", "10.16.0")])
def test_api_generations(tmp_path, fakes, api, version):
    """cuda-python 11.8 (JetPack 5: cudaGraphInstantiate takes 3 arguments; we call ...WithFlags) with
    TensorRT 8.6 (contexts without device memory + the device_memory property), and TensorRT 10.0
    (no *_v2 sizes) and 10.16: graphs capture and replay, the activation buffer is shared."""
    cu, trt = fakes(api=api, version=version)
    model = random_predictor(SMALL, 0)
    plan = fake_engine(tmp_path, model, version=version)
    inputs = ParityInputs.make(SMALL, batch=2, frames=SMALL.max_frames, seed=1)
    rt = open_runtime(plan, cuda_graphs=True)
    for _ in range(2):
        assert check_parity(rt, model, inputs, "fp16").passed
    assert rt.graphs_in_use and rt._graphs and not _stale(trt)
    # every context got the one shared activation buffer, none allocated its own
    assert {r.strategy for r in trt.contexts} <= {"USER_MANAGED", "WITHOUT_DEVICE_MEMORY"}
    rt.close()


class _InvalidatingContext:
    """A context whose enqueue inside a capture does something uncapturable (as a TensorRT plugin
    or a driver might): the capture is invalidated and cudaStreamEndCapture reports it."""

    def __init__(self, ctx, cu):
        self._ctx, self._cu = ctx, cu

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def execute_async_v3(self, stream):
        if self._cu.stream_is_capturing(stream):
            self._cu.invalidate_capture(stream, "test: uncapturable work")
        return self._ctx.execute_async_v3(stream)


@pytest.mark.parametrize("where", ["capture", "instantiate"])
def test_graph_capture_failure_falls_back_to_eager(tmp_path, fakes, caplog, where):
    cu, trt = fakes()
    model = random_predictor(SMALL, 0)
    plan = fake_engine(tmp_path, model)
    inputs = ParityInputs.make(SMALL, batch=2, frames=SMALL.max_frames, seed=2)
    rt = open_runtime(plan, cuda_graphs=True)
    if where == "capture":
        create = rt._contexts.create
        rt._contexts.create = lambda engine: _InvalidatingContext(create(engine), cu)
    else:   # cuda-python's instantiate failing (e.g. out of memory)
        cu.fail_next("cudaGraphInstantiateWithFlags", cudaError_t.cudaErrorMemoryAllocation)
    with caplog.at_level(logging.WARNING, logger="vitac_deploy"):
        report = check_parity(rt, model, inputs, "fp16")
    assert report.passed and not rt.graphs_in_use
    assert "CUDA graph capture failed" in caplog.text and "running without CUDA graphs" in caplog.text
    assert "no CUDA graphs" in rt.describe() and cu.sticky_error is None


@pytest.mark.golden
def test_mpc_golden_plan_through_the_tensorrt_runtime(tmp_path, fakes):
    """The upstream planner through the TensorRT runtime (fp32 engines, energy engine): the golden
    energies and plan, and per rollout only the energies cross to the host."""
    from vitac_deploy.planning import CEMOptions, energies, plan

    cu, trt = fakes()
    g = load_mpc_golden()
    eng = fake_engine(tmp_path, g.model, precision="fp32", batch=(1, 25, 25))
    rt = open_runtime(eng, max_frames=2)
    opts = CEMOptions(**{k: v for k, v in g.meta["mpc_args"].items() if k != "verbose"})
    calls = []
    rt._prediction = lambda: calls.append(1)
    cu.reset_counters()
    res = plan(rt, g.current, g.goal, g.pose, opts, noise=g.arrays["cem_noise"])
    assert np.abs(res.energies - g.arrays["cem_energies"]).max() < 1e-5
    assert np.abs(res.actions - g.arrays["cem_action"]).max() < 1e-5
    assert calls == []
    assert cu.bytes_moved["d2h"] == opts.cem_steps * opts.samples * 4   # the energies, nothing else
    grid = energies(rt, g.current, g.goal, g.pose, g.arrays["grid_actions"][:25, None])
    assert np.abs(grid - g.arrays["grid_energy"][:25]).max() < 1e-5


@pytest.mark.parametrize("chunk", [None, 3])
def test_a_cem_step_moves_the_conditioning_in_and_the_energies_out(tmp_path, fakes, chunk):
    """Per CEM step: the samples' actions and poses in, their energies out, as the runtime counts
    them and as the fake CUDA saw them cross; the observation is staged once (host to device) and
    broadcast into the features buffer device to device only when it does not hold it already."""
    from vitac_deploy.planning import CEMOptions, plan, planning_problem

    cu, trt = fakes()
    model = random_predictor(SMALL, 4)
    rt = open_runtime(fake_engine(tmp_path, model, precision="fp32", batch=(1, 8, 8)), max_frames=2)
    current, goal, pose = planning_problem(SMALL, 0)
    S, A = 8, SMALL.action_dim
    marks = []

    def mark(*_):   # after a step's last energies were read: its copies have run
        marks.append((rt.host_traffic, dict(cu.bytes_moved)))

    cu.reset_counters()
    res = plan(rt, current, goal, pose, CEMOptions(samples=S, topk=2, cem_steps=3), seed=2, chunk=chunk, on_step=mark)
    assert np.isfinite(res.energies).all()
    for (t0, c0), (t1, c1) in zip(marks, marks[1:]):
        assert (t1 - t0).to_device == c1["h2d"] - c0["h2d"] == S * 2 * 2 * A * 4
        assert (t1 - t0).to_host == c1["d2h"] - c0["d2h"] == S * 4
        # one chunk: the features buffer still holds the broadcast observation, nothing is copied.
        # Chunks of 3, 3, 2: the first and last broadcast it again on the device (1 row + doubling:
        # 3 rows, then 2), never through the host
        row = SMALL.tokens_per_frame * SMALL.embed_dim * 4
        assert c1["d2d"] - c0["d2d"] == (0 if chunk is None else 5 * row)
    t_all = rt.host_traffic
    assert t_all.to_device == cu.bytes_moved["h2d"] and t_all.to_host == cu.bytes_moved["d2h"]


@pytest.mark.golden
def test_engine_without_energy_engine_scores_on_the_host(tmp_path, fakes):
    from vitac_deploy.planning import energies

    cu, trt = fakes()
    g = load_mpc_golden()
    eng = fake_engine(tmp_path, g.model, precision="fp32", energy=False, batch=(1, 25, 25))
    rt = open_runtime(eng, max_frames=2)
    e = energies(rt, g.current, g.goal, g.pose, g.arrays["grid_actions"][:25, None])
    assert np.abs(e - g.arrays["grid_energy"][:25]).max() < 1e-5


class _CudaArray:
    """What PyTorch/CuPy hand over: a device pointer and the stream the data is written on."""

    def __init__(self, ptr, shape, stream):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (ptr, False), "version": 3,
                                         "strides": None, "stream": stream}


def test_device_inputs_wait_for_their_producer_stream(tmp_path, fakes):
    """A caller's CUDA array still being written on its own stream: the runtime's copy must wait
    for that stream (an event), or it reads stale memory. The fake runs streams adversarially."""
    cu, trt = fakes()
    model = random_predictor(SMALL, 0)
    plan = fake_engine(tmp_path, model)
    inputs = ParityInputs.make(SMALL, batch=2, frames=4, seed=5)
    rt = open_runtime(plan)
    want = rt.rollout(inputs.context, inputs.actions, inputs.states, inputs.horizon)

    def producer_writes_context():
        """A device buffer of zeros, filled by a copy still pending on the producer's stream."""
        _, producer = cu.cudaStreamCreateWithFlags(cu.cudaStreamNonBlocking)
        ptr = cu.alloc_device_array(np.zeros_like(inputs.context))
        host = np.ascontiguousarray(inputs.context)
        cu.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, cu.cudaMemcpyKind.cudaMemcpyHostToDevice, producer)
        return ptr, int(producer), host

    ptr, producer, keep = producer_writes_context()
    got = rt.rollout(_CudaArray(ptr, inputs.context.shape, producer), inputs.actions, inputs.states, inputs.horizon)
    np.testing.assert_array_equal(got, want)
    # the control: a producer that wrongly claims nothing to wait for gets stale (zero) features
    ptr, producer, keep = producer_writes_context()
    stale = rt.rollout(_CudaArray(ptr, inputs.context.shape, None), inputs.actions, inputs.states, inputs.horizon)
    assert np.abs(stale - want).max() > 1e-2
    cu.cudaDeviceSynchronize()


def test_version_compatible_engines_allow_host_code(tmp_path, fakes):
    cu, trt = fakes()
    model = random_predictor(SMALL, 0)
    plan = fake_engine(tmp_path, model, version_compatible=True)
    rt = open_runtime(plan)
    assert rt._runtime.engine_host_code_allowed is True
    inputs = ParityInputs.make(SMALL, batch=2, frames=3, seed=1)
    assert check_parity(rt, model, inputs, "fp16").passed


def test_tensorrt_rtx_keeps_its_runtime_configs_alive(tmp_path, fakes):
    """TensorRT for RTX reads a context's runtime config for the context's whole life (the fake
    fails the context's executions once its config is collected)."""
    cu, trt = fakes(version="1.7.1.116", flavour="tensorrt_rtx")
    model = random_predictor(SMALL, 0)
    plan = fake_engine(tmp_path, model, version="1.7.1.116", flavour="tensorrt-rtx")
    rt = open_runtime(plan)
    gc.collect()
    inputs = ParityInputs.make(SMALL, batch=2, frames=4, seed=1)
    assert check_parity(rt, model, inputs, "fp16").passed
    assert "no CUDA graphs" in rt.describe()   # whole-graph capture is off unless asked for


def test_shared_context_broadcast_and_regrowth(tmp_path, fakes):
    """Two context frames shared at batch 1 then broadcast on the device; a larger batch re-allocates
    (every captured graph and keyed context is dropped with the old buffers: the fake faults on any
    use of freed memory)."""
    cu, trt = fakes()
    model = random_predictor(SMALL, 0)
    plan = fake_engine(tmp_path, model, batch=(1, 2, 4))
    onnx_rt = open_runtime(tmp_path / "artifact", backend="onnxruntime", precision="fp16")
    rt = open_runtime(plan, cuda_graphs=True, max_batch=4)
    rng = np.random.default_rng(0)
    N, D, A = SMALL.tokens_per_frame, SMALL.embed_dim, SMALL.action_dim
    ctx = (12 * rng.standard_normal((1, 2, N, D))).astype(np.float32)
    for B in (2, 4):
        acts = rng.standard_normal((B, 3, A)).astype(np.float32)
        acts[:, 0] = acts[0, 0]                       # frame 0's conditioning shared: it runs once at batch 1
        states = np.broadcast_to(rng.standard_normal((1, 3, A)), (B, 3, A)).astype(np.float32)
        want = onnx_rt.rollout(ctx, acts, states, 2)
        got = rt.rollout(ctx, acts, states, 2)
        assert np.abs(got - want).max() < TOLERANCES["fp16"].max_abs
    assert cu.sticky_error is None and not _stale(trt)


def test_engine_and_manifest_disagreeing_is_one_line(tmp_path, fakes):
    """A manifest that lists an engine whose tensors differ (here the step plan under the energy
    role) is refused with one line naming the tensor, not a TensorRT crash."""
    cu, trt = fakes()
    model = random_predictor(SMALL, 0)
    plan = fake_engine(tmp_path, model, batch=(1, 1, 1))
    meta_path = plan.with_name("e.plan.json")
    meta = json.loads(meta_path.read_text())
    energy = next(e for e in meta["engines"] if e["role"] == "energy")
    energy["file"], energy["sha256"] = "e.plan", meta["engines"][0]["sha256"]
    meta_path.write_text(json.dumps(seal(meta)))   # resealed: the disagreement itself is what is tested
    rt = open_runtime(plan)
    from vitac_deploy.planning import energies
    from vitac_deploy.planning.problem import planning_problem

    cur, goal, pose = planning_problem(SMALL, 0)
    with pytest.raises(VitacError, match="refused .*prediction|engine and manifest disagree"):
        energies(rt, cur, goal, pose, np.zeros((1, 1, SMALL.action_dim), np.float32))


def test_a_closed_runtime_says_so(tmp_path, fakes):
    cu, trt = fakes()
    model = random_predictor(SMALL, 0)
    rt = open_runtime(fake_engine(tmp_path, model))
    inputs = ParityInputs.make(SMALL, batch=2, frames=3, seed=1)
    rt.rollout(inputs.context, inputs.actions, inputs.states, inputs.horizon)
    rt.close()
    with pytest.raises(VitacError, match="was closed: open a new one"):
        rt.rollout(inputs.context, inputs.actions, inputs.states, inputs.horizon)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
@pytest.mark.parametrize("flavour, version", [("tensorrt", "10.16.0"), ("tensorrt-rtx", "1.7.1.116")])
def test_static_contract_in_place(tmp_path, fakes, graphs, flavour, version):
    """The static engine on a TensorRT with the KV-cache update layer: present bound to past's own
    address (the fake faults otherwise), one zeroed arena per layer (device memory starts as NaN
    bytes here, as cudaMalloc gives no zeros), half the cache bytes, and what the concat engine gives."""
    cu, trt = fakes(version=version, flavour=flavour, malloc_fill=0xFF)
    model = random_predictor(SMALL_SWIGLU_EXTR, 0)
    static = fake_engine(tmp_path, model, cache="static", version=version, flavour=flavour)
    concat = fake_engine(tmp_path, model, version=version, flavour=flavour)
    inputs = ParityInputs.make(SMALL_SWIGLU_EXTR, batch=3, frames=SMALL_SWIGLU_EXTR.max_frames, seed=3)
    rt = open_runtime(static, cuda_graphs=graphs)
    assert rt.cache == "static" and "static cache" in rt.describe() and "first" not in rt._engines
    for _ in range(2):   # the second pass replays the captured graphs
        report = check_parity(rt, model, inputs, "fp16")
        assert report.passed, report.to_dict()
    ref = open_runtime(concat)
    got = rt.rollout(inputs.context[:1], inputs.actions, inputs.states, inputs.horizon, inputs.extrinsics)
    want = ref.rollout(inputs.context[:1], inputs.actions, inputs.states, inputs.horizon, inputs.extrinsics)
    assert np.abs(got - want).max() <= TOLERANCES["fp16"].max_abs
    assert len(rt._arenas) == 1 and rt.cache_bytes * 2 == ref.cache_bytes
    # fixed shapes and fixed row slots: bindings (and graphs) per (batch, parity), not per frame index
    assert len(rt._bindings) <= 4 < SMALL_SWIGLU_EXTR.max_frames + 1
    if graphs and flavour == "tensorrt":   # (RTX captures whole graphs itself)
        assert 0 < len(rt._graphs) <= 4
        assert any(e[0] == "executed" and e[2] for e in trt.log)
    bind = next(iter(rt._bindings.values()))
    assert bind.addresses["present_key.0"] == bind.addresses["past_key.0"]
    assert not _stale(trt) and cu.sticky_error is None
    rt.close()
    ref.close()


def test_static_engine_refused_without_the_kv_cache_layer(tmp_path, fakes):
    """TensorRT 10.3 (JetPack 6) has no IKVCacheUpdateLayer: a static engine is refused in one line
    naming the version needed, before anything is deserialized."""
    fakes(version="10.16.0")
    model = random_predictor(SMALL, 0)
    plan = fake_engine(tmp_path, model, cache="static", version="10.16.0")
    fakes(version="10.3.0")
    with pytest.raises(VitacError, match=r"needs TensorRT >= 10\.15 .*--cache concat"):
        open_runtime(plan)

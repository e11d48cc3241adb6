"""`vitac-deploy bench`: runtimes against the upstream way (full recompute), measured in one run.

Two modes: rollouts (per-frame and rollout latency per backend and batch) and `plan` (one plan of
the upstream CEM planner, end to end, its defaults 400 samples x top 10 x 10 steps x horizon 2;
per row also its FLOP and device-memory byte counts, their fractions of the device's peak where
known, and the bytes that crossed the host boundary per CEM step).
Either way the baseline is the upstream way, the PyTorch reference recomputing the whole sequence
for every predicted frame (and, planning, scoring on the host), timed in the same run on the same
device and precision; every backend's output is compared with it (planning: the same draws, so the
same plan is expected).
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import VitacError
from ..precision import precision as get_precision
from ..artifacts import now_iso, save_figure, versions
from ..planning import CEMOptions, plan, planning_problem
from ..planning.cem import ActionSpace
from ..planning.memory import plan_flops, plan_memory, upstream_plan_flops
from ..runtimes import registry
from ..runtimes.torch.full_recompute import FullRecompute
from ..validation import ParityInputs
from ..planning.traffic import fractions, peak_for, plan_bytes

CONTEXT_STAGING = ("staged", "host")   # --plan: the observation staged once per plan, or sent every rollout (before)


@dataclass
class BenchOptions:
    """Every `vitac-deploy bench` flag, as a Python argument."""

    backends: Sequence[str] = ("onnxruntime", "torch")
    device: str = "cpu"
    precision: str = "fp32"
    batches: Sequence[int] = (1,)
    horizon: int = 7
    context: int = 1
    repeats: int = 3
    warmup: int = 1
    baseline: str = "full-recompute"      # or "none" (long plans on slow machines)
    seed: int = 0
    plan: Optional[CEMOptions] = None     # set: time one CEM plan instead of rollouts
    chunk: Optional[int] = None           # --plan: samples rolled out at once (default: all)
    cuda_graphs: str = "off"              # off, on or both (a row each): onnxruntime (CUDA), tensorrt, torch
    caches: Sequence[str] = ("concat",)   # KV cache contracts of the graph backends (a row each, side by side)
    graph_forms: Sequence[str] = ("portable",)   # step-graph forms of the graph backends (a row each)
    roofline_device: Optional[str] = None  # vitac_deploy.roofline key; None: the GPU's own, if it is a named one
    compile_modes: Sequence[str] = ("default",)   # torch-compile: a row per torch.compile mode
    context_staging: Sequence[str] = ("staged",)  # --plan: staged (once per plan) and/or host (every rollout)
    extra: dict[str, Any] = field(default_factory=dict)


def _reset_peak_rss() -> bool:
    """Restart the process's peak-RSS count (Linux: VmHWM, via /proc/self/clear_refs), so that each
    row reports its own peak, not the largest of every row before it. False where not possible.
    Free heap goes back to the OS first (glibc malloc_trim): buffers below malloc's mmap threshold
    would otherwise reuse pages an earlier row (or the export) left resident, and not show."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    """Peak resident memory (MiB) since the last `_reset_peak_rss` (since the start where it failed)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _time_rollout(fn: Callable[[Optional[Callable]], np.ndarray], repeats: int, warmup: int, frames: int):
    """Median rollout time and per-frame-index times (seconds) over `repeats` runs."""
    for _ in range(warmup):
        fn(None)
    totals, per_frame, out = [], [], None
    for _ in range(repeats):
        stamps = [time.perf_counter()]
        out = fn(lambda done, total: stamps.append(time.perf_counter()))
        totals.append(time.perf_counter() - stamps[0])
        if len(stamps) == frames + 1:
            per_frame.append(np.diff(stamps))
    return float(np.median(totals)), (np.median(per_frame, axis=0) if per_frame else None), per_frame, out


def runs_graphs(backend: str) -> bool:
    """Whether `backend` runs the artifact's exported graphs (a row per cache contract and form)."""
    return registry.get(backend)[0].runs_exported_graphs


def _variants(backend: str, opts: BenchOptions, mode: Optional[str] = None) -> list[bool]:
    """The CUDA-graph settings a backend is timed with: one row each (none for a torch.compile mode
    that captures graphs itself)."""
    from ..runtimes.torch.fast import GRAPHING_MODES

    b, implied = registry.get(backend)
    if opts.device != "cuda" or not b.has_cuda_graphs(implied) or mode in GRAPHING_MODES:
        return [False]
    return {"off": [False], "on": [True], "both": [False, True]}[opts.cuda_graphs]


def _open(artifact: Path, backend: str, opts: BenchOptions, max_batch: int, workdir: Path,
          say: Callable[[str], None], graphs: bool = False, max_frames: Optional[int] = None, cache: str = "concat",
          mode: Optional[str] = None):
    from ..runtimes import open_runtime

    b = registry.get(backend)[0]
    target = b.prepare(Path(artifact), opts.precision, max_batch, workdir, say)
    extra = {"cuda_graphs": True} if graphs else {}
    if mode is not None:   # a torch.compile mode of its own (the variant's default otherwise)
        extra["compile"] = mode
    if target != Path(artifact):   # what the backend built (an engine) runs as it was built
        return open_runtime(target, backend=backend, max_frames=max_frames, **extra)
    return open_runtime(artifact, backend=backend, device=opts.device, precision=opts.precision,
                        max_batch=max_batch, max_frames=max_frames, **extra)


def _free_device_bytes() -> Optional[int]:
    """Free memory of GPU 0 after torch hands back its cached blocks (the baseline's), or None."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            return int(torch.cuda.mem_get_info()[0])
    except ImportError:
        pass
    try:
        from ..runtimes.gpu import import_cudart

        err, free, _ = import_cudart().cudaMemGetInfo()
        return int(free) if int(err) == 0 else None
    except VitacError:
        return None


def does_not_fit(cfg, backend: str, batch: int, horizon: int, context: int, precision: str,
                 free_bytes: Optional[int], cache: str = "concat") -> Optional[str]:
    """Why a runtime for `batch` would run out of GPU memory by the memory model, given the free
    device memory (None: unknown, assume it fits); None when it fits. Checked before a runtime
    opens, so a row that cannot fit is reported as such instead of ending the bench."""
    if free_bytes is None:
        return None
    double = cache == "concat"
    layout = registry.get(backend)[0].memory_layout
    if layout is None:   # no model to judge by: let it try
        return None
    need = plan_memory(cfg, batch, horizon, context, precision, backend=layout, double_buffered=double).device_total
    if need <= free_bytes:
        return None
    return (f"does not fit: needs about {need / 2**30:.1f} GiB by the memory model (KV cache "
            f"{'double-buffered' if double else 'in place'}), {free_bytes / 2**30:.1f} GiB free")


def variant(cache: str, form: str = "portable") -> str:
    """The key of an artifact (and of a row's graphs) by cache contract and graph form:
    "concat", "static", "concat/ort-fused", ..."""
    return cache if form == "portable" else f"{cache}/{form}"


def _split(key: str) -> tuple[str, str]:
    cache, _, form = key.partition("/")
    return cache, form or "portable"


def _label(backend: str, graphs: bool, opts: BenchOptions, cache: str = "concat", mode: Optional[str] = None,
           staging: str = "staged") -> str:
    label = f"{backend}:{mode}" if mode not in (None, "default") else backend
    label = f"{label}+graphs" if graphs else label
    contract, form = _split(cache)
    label = f"{label} static" if contract == "static" else label
    label = label if form == "portable" else f"{label} {form}"
    return f"{label} host-context" if staging == "host" else label


def _runs(backend: str, cache: str, form: str) -> bool:
    from ..graph_forms import FORMS

    return form in registry.get(backend)[0].graph_forms and cache in FORMS[form].caches


def _modes(backend: str, opts: BenchOptions) -> list:
    """The torch.compile modes a row each: for a backend name that compiles (torch-compile)."""
    return list(opts.compile_modes) if "compile" in registry.get(backend)[1] else [None]


def _rows(opts: BenchOptions) -> list[tuple[str, bool, str]]:
    """(backend, CUDA graphs, artifact key) of every row; cache contracts and graph forms side by
    side per graph backend (a form a backend cannot run is skipped)."""
    return [(b, g, c) for b in opts.backends for g in _variants(b, opts)
            for c in ([variant(c, f) for c in opts.caches for f in opts.graph_forms if _runs(b, c, f)]
                      if runs_graphs(b) else ("concat",))]


def _plan_rows(opts: BenchOptions) -> list[tuple[str, bool, str, Optional[str], str]]:
    """(backend, CUDA graphs, cache contract, compile mode, context staging) of every --plan row."""
    return [(b, g, c, m, s) for b in opts.backends for m in _modes(b, opts) for g in _variants(b, opts, m)
            for c in ([variant(c, f) for c in opts.caches for f in opts.graph_forms if _runs(b, c, f)]
                      if runs_graphs(b) else ("concat",))
            for s in opts.context_staging]


def _device_memory(rt, device: str) -> dict[str, Any]:
    mem = rt.device_memory() if hasattr(rt, "device_memory") else None
    if mem is None and device == "cuda":
        try:
            import torch

            mem = {"peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}
        except ImportError:
            mem = None
    return {"device_memory": mem}


def _machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                            "cpu_count": os.cpu_count()}
    if device == "cuda":
        try:
            from ..runtimes.gpu import gpu_info

            g = gpu_info()
            info.update(gpu=g["name"], compute_capability=g["compute_capability"], gpu_memory_mib=g.get("memory_mib"))
        except VitacError:
            pass
    return info


def check_options(opts: BenchOptions) -> None:
    """Refuse bad options before any work (export, baseline) is done."""
    for name in opts.backends:
        b = registry.get(name)[0]   # an unknown name: one line listing the known ones
        if opts.device not in b.devices:
            raise VitacError(f"the {b.name} backend runs on --device {' or '.join(b.devices)}")
    if opts.baseline not in ("full-recompute", "none"):
        raise VitacError(f"--baseline must be full-recompute or none, got {opts.baseline}")
    if opts.device not in ("cpu", "cuda"):
        raise VitacError(f"--device must be cpu or cuda, got {opts.device}")
    if opts.cuda_graphs not in ("off", "on", "both"):
        raise VitacError(f"--cuda-graphs must be off, on or both, got {opts.cuda_graphs}")
    if opts.cuda_graphs != "off" and opts.device != "cuda":
        raise VitacError("--cuda-graphs needs --device cuda")
    if opts.device == "cuda":
        from ..runtimes.gpu import gpu_info

        gpu_info(required=True)   # one line, before minutes of export, when there is no GPU
    bad = [c for c in opts.caches if c not in ("concat", "static")]
    if bad or not opts.caches:
        raise VitacError(f"--cache takes a comma list of concat, static, got {','.join(opts.caches)}")
    from ..graph_forms import GRAPH_FORMS

    bad = [f for f in opts.graph_forms if f not in GRAPH_FORMS]
    if bad or not opts.graph_forms:
        raise VitacError(f"--graph-form takes a comma list of {', '.join(GRAPH_FORMS)}, got {','.join(opts.graph_forms)}")
    if any(runs_graphs(b) for b in opts.backends) and not [r for r in _rows(opts) if runs_graphs(r[0])]:
        raise VitacError("no graph form of --graph-form runs with these --backend and --cache (ort-fused: onnxruntime, "
                         "concat cache)")
    if opts.roofline_device is not None:
        from ..roofline import roofline_device

        roofline_device(opts.roofline_device)
    from ..runtimes.torch.fast import COMPILE_MODES

    bad = [m for m in opts.compile_modes if m not in COMPILE_MODES]
    if bad or not opts.compile_modes:
        raise VitacError(f"--compile-mode takes a comma list of {', '.join(COMPILE_MODES)}, got "
                         f"{','.join(opts.compile_modes)}")
    if tuple(opts.compile_modes) != ("default",) and not any(_modes(b, opts) != [None] for b in opts.backends):
        # as --context-staging without --plan: a flag that would change no row is refused, not ignored
        raise VitacError("--compile-mode applies to torch-compile rows: add --backend torch-compile")
    bad = [s for s in opts.context_staging if s not in CONTEXT_STAGING]
    if bad or not opts.context_staging:
        raise VitacError(f"--context-staging takes a comma list of {', '.join(CONTEXT_STAGING)}, got "
                         f"{','.join(opts.context_staging)}")
    if opts.plan is None and tuple(opts.context_staging) != ("staged",):
        raise VitacError("--context-staging applies with --plan")
    if opts.plan is not None:
        opts.plan.check()
        if opts.chunk is not None and opts.chunk < 1:
            raise VitacError(f"--chunk must be >= 1, got {opts.chunk}")


def run_bench(model, artifact, opts: BenchOptions, say: Callable[[str], None] = lambda m: None,
              on_row: Callable[[dict[str, Any]], None] = lambda r: None) -> dict[str, Any]:
    """Time every backend (and batch, or one CEM plan) against the reference recomputing the whole
    sequence; returns every figure (JSON-ready). `artifact`: one artifact directory, or a dict of
    one per cache contract in `opts.caches`. `on_row(result so far)` follows every row, so a
    bench stopped midway (a time limit, Ctrl-C) keeps what it measured; `result["complete"]` is
    False until the last row."""
    check_options(opts)
    if not isinstance(artifact, dict):
        from ..artifacts import cache_contract, read_manifest
        from ..graph_forms import graph_form

        manifest = read_manifest(artifact)
        artifact = {variant(cache_contract(manifest), graph_form(manifest)): Path(artifact)}
    missing = sorted({c for b, _, c in _rows(opts) if runs_graphs(b) and c not in artifact})
    if missing:
        raise VitacError(f"no artifact with the {', '.join(missing)} cache contract / graph form to bench")
    artifact = {**artifact, "any": next(iter(artifact.values()))}   # torch rows read the weights of any
    cfg = model.cfg
    C = 1 if opts.plan else opts.context
    H = opts.plan.rollout if opts.plan else opts.horizon
    F = C + H - 1
    if F > cfg.max_frames:
        raise VitacError(f"--context {C} + --horizon {H} - 1 = {F} frames exceed max_frames={cfg.max_frames}")
    result: dict[str, Any] = {
        "date": now_iso(), "mode": "plan" if opts.plan else "rollout", "machine": _machine(opts.device),
        "versions": versions(), "config": cfg.to_dict(),
        "options": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in opts.__dict__.items()
                    if k != "plan"},
        "entries": [], "baseline": {}, "skipped": [], "complete": False,
    }
    if opts.plan:
        result["options"]["plan"] = dict(opts.plan.__dict__)
    baseline = FullRecompute(model, opts.device, opts.precision, opts.chunk) if opts.baseline != "none" else None
    with tempfile.TemporaryDirectory() as tmp:
        if opts.plan:
            _bench_plan(baseline, artifact, opts, result, Path(tmp), say, on_row)
        else:
            _bench_rollouts(baseline, artifact, opts, result, Path(tmp), say, on_row)
    result["complete"] = True
    return result


def _bench_rollouts(baseline, artifact, opts: BenchOptions, result, workdir: Path, say, on_row) -> None:
    from ..config import PredictorConfig

    cfg = PredictorConfig.from_dict(result["config"])
    C, H = opts.context, opts.horizon
    F = C + H - 1
    elem = get_precision(opts.precision).bytes
    for B in opts.batches:
        rows = _rows(opts)
        free = _free_device_bytes() if opts.device == "cuda" else None
        misfits = {(b, g, c): does_not_fit(cfg, b, B, H, C, opts.precision, free, _split(c)[0]) for b, g, c in rows}
        for (b, g, c), why in misfits.items():
            if why:
                say(f"batch {B}: {_label(b, g, opts, c)} skipped, {why}")
                result["skipped"].append({"backend": _label(b, g, opts, c), "batch": B, "reason": why})
        rows = [r for r in rows if not misfits[r]]
        if not rows:
            continue
        inp = ParityInputs.make(cfg, batch=B, frames=F, context=C, seed=opts.seed)
        ref, b_time = None, None
        if baseline is not None:
            say(f"batch {B}: baseline (torch, full recompute every step)")
            b_time, _, _, ref = _time_rollout(
                lambda _cb: baseline.rollout(inp.context, inp.actions, inp.states, H, inp.extrinsics),
                opts.repeats, opts.warmup, F)
            result["baseline"][str(B)] = {"rollout_s": b_time, "frames_per_s": B * H / b_time}
            on_row(result)
        for backend, graphs, cache in rows:
            label = _label(backend, graphs, opts, cache)
            say(f"batch {B}: {label}")
            if opts.device == "cuda":
                _free_device_bytes()   # torch's cached blocks (the baseline's) back to the driver first
            _reset_peak_rss()
            rt = _open(artifact[cache if runs_graphs(backend) else "any"], backend, opts, B, workdir, say,
                       graphs, max_frames=F, cache=cache)

            def run(cb, rt=rt):
                return rt.rollout(inp.context, inp.actions, inp.states, H, inp.extrinsics, on_frame=cb)

            r_time, frame_times, all_frames, out = _time_rollout(run, opts.repeats, opts.warmup, F)
            steps = np.concatenate(all_frames) if all_frames else np.array([r_time / F])
            result["entries"].append({
                "backend": label, "runtime": rt.describe(), "device": opts.device, "precision": opts.precision,
                "batch": B, "cuda_graphs_requested": graphs, "cuda_graphs_used": bool(getattr(rt, "graphs_in_use", False)),
                "step_latency_median_ms": float(np.median(steps) * 1e3),
                "step_latency_p90_ms": float(np.percentile(steps, 90) * 1e3),
                "per_frame_ms": [float(x * 1e3) for x in frame_times] if frame_times is not None else None,
                "rollout_ms": r_time * 1e3,
                "predicted_frames_per_s": B * H / r_time, "rollouts_per_s": B / r_time,
                "cache": rt.cache, "cache_bytes": rt.cache_bytes,
                "peak_host_rss_mib": _peak_rss_mib(), **_device_memory(rt, opts.device),
                "kv_cache_mib": cfg.kv_bytes_per_frame(elem) * F * B / 2**20,
                "baseline_rollout_ms": b_time * 1e3 if b_time else None,
                "speedup_vs_baseline": b_time / r_time if b_time else None,
                "max_abs_vs_baseline": float(np.abs(out - ref).max()) if ref is not None else None,
                "graph_form": _split(cache)[1] if runs_graphs(backend) else None,
            })
            if runs_graphs(backend):
                from ..exporters.cost import rollout_cost

                r = _roofline(result, opts, f"{cache}@b{B}", artifact[cache],
                              lambda a, B=B: rollout_cost(a, opts.precision, B, F))
                result["entries"][-1].update(roofline_s=r["seconds"], roofline_device=r["device"])
            _close(rt)
            # the next row's peak RSS must not hold this runtime's session (weights, arena): drop it first
            del rt, run, out
            gc.collect()
            on_row(result)


def _bench_plan(baseline, artifact, opts: BenchOptions, result, workdir: Path, say, on_row) -> None:
    """One plan of the upstream planner per backend, after an untimed one-step warm-up, and the
    baseline's: the same problem and the same standard-normal draws, so the same plan is expected."""
    from ..config import PredictorConfig

    cfg = PredictorConfig.from_dict(result["config"])
    p = opts.plan
    current, goal, pose = planning_problem(cfg, opts.seed)
    space = ActionSpace.for_dim(cfg.action_dim)
    noise = np.random.default_rng(opts.seed).standard_normal((p.cem_steps * p.rollout, p.samples, len(space.sampled)))
    flops = plan_flops(cfg, p.samples, p.rollout, p.cem_steps)
    peak = peak_for(result["machine"].get("gpu")) if opts.device == "cuda" else None
    result["plan"] = {"flops": flops, "upstream_flops": upstream_plan_flops(cfg, p.samples, p.rollout, p.cem_steps),
                      "bytes_model": plan_bytes(cfg, p.samples, p.rollout, p.cem_steps, opts.precision, chunk=opts.chunk),
                      "peak": peak.ceilings() if peak else None,
                      "problem": "planning_problem(cfg, seed), draws numpy default_rng(seed)"}
    warm = CEMOptions(**{**p.__dict__, "cem_steps": 1})

    def timed(rt, label: str, stage: bool = True):
        say(f"{label}: warm-up (one CEM step)")
        plan(rt, current, goal, pose, warm, noise=noise[:p.rollout], space=space, chunk=opts.chunk, stage=stage)
        say(f"{label}: plan of {p.samples} samples x top {p.topk} x {p.cem_steps} steps x horizon {p.rollout}")
        marks = [getattr(rt, "host_traffic", None)]

        def step(i, n, e):
            marks.append(getattr(rt, "host_traffic", None))
            say(f"{label}: step {i}/{n}")
        res = plan(rt, current, goal, pose, p, noise=noise, space=space, chunk=opts.chunk, on_step=step, stage=stage)
        res.host_traffic = marks if marks[0] is not None else None
        return res

    base = None
    if baseline is not None:
        base = timed(baseline, "baseline")
        result["baseline"]["plan"] = {"plan_s": base.seconds, "step_s_median": float(np.median(base.step_seconds)),
                                      "actions": base.actions.tolist(), "chunk": base.chunk,
                                      # how far apart the samples' energies are: agreement on the elites
                                      # means something only where this is well above rounding
                                      "energy_spread_step0": float(np.ptp(base.energies[0]))}
        on_row(result)
    for backend, graphs, cache, mode, staging in _plan_rows(opts):
        label = _label(backend, graphs, opts, cache, mode, staging)
        _reset_peak_rss()
        rt = _open(artifact[cache if runs_graphs(backend) else "any"], backend, opts, opts.chunk or p.samples,
                   workdir, say, graphs, max_frames=p.rollout, cache=cache, mode=mode)
        res = timed(rt, label, stage=staging == "staged")
        entry = {
            "backend": label, "runtime": rt.describe(), "device": opts.device, "precision": opts.precision,
            "cuda_graphs_requested": graphs, "cuda_graphs_used": bool(getattr(rt, "graphs_in_use", False)),
            "compile_mode": mode, "context_staging": staging,
            "batch": res.chunk, "plan_s": res.seconds, "step_s_median": float(np.median(res.step_seconds)),
            "rollouts_per_s": p.samples * p.cem_steps / res.seconds,
            "predicted_frames_per_s": p.samples * p.cem_steps * p.rollout / res.seconds,
            "flops": flops, "bytes_model": result["plan"]["bytes_model"],
            **fractions(flops, result["plan"]["bytes_model"], res.seconds, peak, opts.precision),
            **_traffic(res.host_traffic),
            "actions": res.actions.tolist(), "cache": rt.cache, "cache_bytes": rt.cache_bytes,
            "peak_host_rss_mib": _peak_rss_mib(), **_device_memory(rt, opts.device),
            "kv_cache_mib": cfg.kv_bytes_per_frame(get_precision(opts.precision).bytes) * p.rollout * res.chunk / 2**20,
            "baseline_plan_s": base.seconds if base else None,
            "speedup_vs_baseline": base.seconds / res.seconds if base else None,
            "graph_form": _split(cache)[1] if runs_graphs(backend) else None,
        }
        if runs_graphs(backend):
            from ..exporters.cost import plan_cost

            art = artifact[cache]
            r = _roofline(result, opts, cache, art, lambda a: plan_cost(a, opts.precision, p.samples, p.rollout,
                                                                         p.cem_steps, opts.chunk or p.samples))
            entry["roofline_s"], entry["roofline_device"] = r["seconds"], r["device"]
        if base is not None:
            # same draws: step 0 scores the same samples, so its energies compare one to one; later
            # steps agree as long as the elites do (samples within rounding can swap places)
            entry["energy_max_abs_step0"] = float(np.abs(res.energies[0] - base.energies[0]).max())
            entry["same_elites_every_step"] = bool(all(
                set(np.argsort(a, kind="stable")[:p.topk]) == set(np.argsort(b, kind="stable")[:p.topk])
                for a, b in zip(res.energies, base.energies)))
            entry["action_max_abs_vs_baseline"] = float(np.abs(res.actions - base.actions).max())
        result["entries"].append(entry)
        _close(rt)
        del rt, res   # as in _bench_rollouts: nothing of this row stays for the next row's peak RSS
        gc.collect()
        on_row(result)


def _roofline(result: dict[str, Any], opts: BenchOptions, key: str, artifact: Path, cost) -> dict[str, Any]:
    """The graph cost model's roofline of a row's graphs (`exporters.cost`), once per artifact key:
    on the named device (--roofline-device, or the GPU's own when it is a named one) and on all."""
    cache = result.setdefault("roofline", {})
    if key not in cache:
        from ..roofline import device_for_gpu, roofline_device

        try:
            c = cost(artifact)
        except ImportError:   # onnx is not installed: no cost model
            cache[key] = {"device": None, "seconds": None}
            return cache[key]
        from ..exporters.cost import plan_summary

        summary = plan_summary(c)
        device = (roofline_device(opts.roofline_device).key if opts.roofline_device   # an alias: its key
                  else device_for_gpu(result["machine"].get("gpu")))
        cache[key] = {"device": device, "seconds": summary["roofline_s"].get(device) if device else None,
                      "kernels_per_frame": c.kernels_per_frame[0], "bytes": c.nbytes, "flops": c.flops,
                      "per_device_s": summary["roofline_s"]}
    return cache[key]


def _traffic(marks: Optional[list]) -> dict[str, Any]:
    """Host<->device bytes per CEM step (the median over the steps after the first, which also
    staged the observation and goal; the first where there is one step) and over the whole plan."""
    if not marks:
        return {"host_to_device_bytes_per_step": None, "device_to_host_bytes_per_step": None,
                "host_to_device_bytes_plan": None, "device_to_host_bytes_plan": None}
    steps = [b - a for a, b in zip(marks, marks[1:])]
    later = steps[1:] or steps
    total = marks[-1] - marks[0]
    return {"host_to_device_bytes_per_step": int(np.median([s.to_device for s in later])),
            "device_to_host_bytes_per_step": int(np.median([s.to_host for s in later])),
            "host_to_device_bytes_plan": total.to_device, "device_to_host_bytes_plan": total.to_host}


def _close(rt) -> None:
    if hasattr(rt, "close"):
        rt.close()


def plot_per_frame(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.8, 4.2), layout="constrained")
    times = []
    for e in result["entries"]:
        if e.get("per_frame_ms"):
            ax.plot(range(1, len(e["per_frame_ms"]) + 1), e["per_frame_ms"], "o-",
                    label=f"{e['backend']} {e['precision']} batch {e['batch']}")
            times += [t for t in e["per_frame_ms"] if t > 0]
    if times and max(times) > 20 * min(times):
        ax.set_yscale("log")   # backends orders of magnitude apart: each line readable
    else:
        ax.set_ylim(bottom=0)   # growth read against zero, not exaggerated
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("frame (1 = the context frame; later frames attend to a longer cache)")
    ax.set_ylabel("time per frame (ms)")
    ax.set_title(f"cached runtime: per-frame cost vs cache length ({result['machine'].get('gpu') or 'cpu'})",
                 fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path)

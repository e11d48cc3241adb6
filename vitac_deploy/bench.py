"""`vitac-deploy bench`: runtimes against the upstream way (full recompute), measured in one run.

Two modes: rollouts (per-frame and rollout latency per backend and batch) and `plan` (one CEM
plan end to end). Either way the baseline is the PyTorch reference recomputing the whole sequence
every step, timed in the same run on the same device and precision, and every backend's output is
compared with it.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .errors import VitacError
from .manifest import now_iso, save_figure, versions
from .planning import CEMOptions, cem_plan, planning_problem
from .validation import ParityInputs

BENCH_BACKENDS = ("onnxruntime", "torch", "torch-compile", "tensorrt")


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
    cuda_graphs: bool = True              # onnxruntime (CUDA) and tensorrt
    extra: dict[str, Any] = field(default_factory=dict)


def _peak_rss_mib() -> float:
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


class FullRecompute:
    """The upstream way behind the runtime's `rollout` API: the PyTorch reference recomputing the
    whole sequence at every step (`use_cache=False`), on the benchmark's device and precision."""

    backend = "baseline (torch, full recompute)"

    def __init__(self, model, device: str, precision: str):
        import torch

        self._torch, self.device = torch, device
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.cfg = model.cfg

    def rollout(self, context, actions, states, horizon, extrinsics=None, state_update=None, on_frame=None):
        torch = self._torch
        B, C = actions.shape[0], context.shape[1]
        if state_update == "delta":   # as Runtime.rollout does
            full = np.empty(actions.shape, np.float32)
            full[:, :C] = states[:, :C]
            for t in range(C - 1, actions.shape[1] - 1):
                full[:, t + 1] = full[:, t] + actions[:, t]
            states = full
        t = lambda a: None if a is None else torch.from_numpy(np.array(a, np.float32)).to(self.device, self.dtype)  # noqa: E731
        ctx = t(np.broadcast_to(context, (B,) + context.shape[1:]))
        with torch.no_grad():
            out = self.model.rollout(ctx, t(actions), t(states), horizon, t(extrinsics), use_cache=False)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return out.float().cpu().numpy()


def _open(artifact: Path, backend: str, opts: BenchOptions, max_batch: int, workdir: Path,
          say: Callable[[str], None]):
    from .runtimes import open_runtime

    if backend == "tensorrt":
        from .runtimes.tensorrt.build import EngineOptions, build_engine
        from .runtimes.tensorrt.profiles import ProfileOptions

        import importlib.util

        flavour = "tensorrt" if importlib.util.find_spec("tensorrt") or not importlib.util.find_spec("tensorrt_rtx") \
            else "tensorrt-rtx"
        plan = workdir / f"bench-b{max_batch}.plan"
        if not plan.is_file():
            say(f"building a {flavour} engine for batch <= {max_batch}")
            build_engine(artifact, plan, EngineOptions(precision=opts.precision, flavour=flavour,
                                                       profile=ProfileOptions(1, max_batch, max_batch)), say=say)
        return open_runtime(plan, cuda_graphs=opts.cuda_graphs)
    extra = {"cuda_graphs": True} if backend == "onnxruntime" and opts.device == "cuda" and opts.cuda_graphs else {}
    return open_runtime(artifact, backend=backend, device=opts.device, precision=opts.precision,
                        max_batch=max_batch, **extra)


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
            from .runtimes.gpu import gpu_info

            g = gpu_info()
            info.update(gpu=g["name"], compute_capability=g["compute_capability"], gpu_memory_mib=g.get("memory_mib"))
        except VitacError:
            pass
    return info


def check_options(opts: BenchOptions) -> None:
    """Refuse bad options before any work (export, baseline) is done."""
    for b in opts.backends:
        if b not in BENCH_BACKENDS:
            raise VitacError(f"unknown backend {b!r} (choose from {', '.join(BENCH_BACKENDS)})")
    if "tensorrt" in opts.backends and opts.device != "cuda":
        raise VitacError("the tensorrt backend runs on --device cuda")
    if opts.baseline not in ("full-recompute", "none"):
        raise VitacError(f"--baseline must be full-recompute or none, got {opts.baseline}")
    if opts.device not in ("cpu", "cuda"):
        raise VitacError(f"--device must be cpu or cuda, got {opts.device}")


def run_bench(model, artifact: Path, opts: BenchOptions, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Time every backend (and batch, or one CEM plan) against the reference recomputing the whole
    sequence; returns every figure (JSON-ready)."""
    check_options(opts)
    cfg = model.cfg
    C = opts.context
    H = opts.plan.horizon if opts.plan else opts.horizon
    F = C + H - 1
    if F > cfg.max_frames:
        raise VitacError(f"--context {C} + --horizon {H} - 1 = {F} frames exceed max_frames={cfg.max_frames}")
    if opts.plan and C < 1:
        raise VitacError("--context must be >= 1")
    result: dict[str, Any] = {
        "date": now_iso(), "mode": "plan" if opts.plan else "rollout", "machine": _machine(opts.device),
        "versions": versions(), "config": cfg.to_dict(),
        "options": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in opts.__dict__.items()
                    if k != "plan"},
        "entries": [], "baseline": {},
    }
    if opts.plan:
        result["options"]["plan"] = dict(opts.plan.__dict__)
    baseline = FullRecompute(model, opts.device, opts.precision) if opts.baseline != "none" else None
    with tempfile.TemporaryDirectory() as tmp:
        if opts.plan:
            _bench_plan(baseline, artifact, opts, result, Path(tmp), say)
        else:
            _bench_rollouts(baseline, artifact, opts, result, Path(tmp), say)
    return result


def _bench_rollouts(baseline, artifact, opts: BenchOptions, result, workdir: Path, say) -> None:
    from .config import PredictorConfig

    cfg = PredictorConfig.from_dict(result["config"])
    C, H = opts.context, opts.horizon
    F = C + H - 1
    elem = 2 if opts.precision == "fp16" else 4
    for B in opts.batches:
        inp = ParityInputs.make(cfg, batch=B, frames=F, context=C, seed=opts.seed)
        ref, b_time = None, None
        if baseline is not None:
            say(f"batch {B}: baseline (torch, full recompute every step)")
            b_time, _, _, ref = _time_rollout(
                lambda _cb: baseline.rollout(inp.context, inp.actions, inp.states, H, inp.extrinsics),
                opts.repeats, opts.warmup, F)
            result["baseline"][str(B)] = {"rollout_s": b_time, "frames_per_s": B * H / b_time}
        for backend in opts.backends:
            say(f"batch {B}: {backend}")
            rt = _open(artifact, backend, opts, B, workdir, say)

            def run(cb, rt=rt):
                return rt.rollout(inp.context, inp.actions, inp.states, H, inp.extrinsics, on_frame=cb)

            r_time, frame_times, all_frames, out = _time_rollout(run, opts.repeats, opts.warmup, F)
            steps = np.concatenate(all_frames) if all_frames else np.array([r_time / F])
            result["entries"].append({
                "backend": backend, "runtime": rt.describe(), "device": opts.device, "precision": opts.precision,
                "batch": B,
                "step_latency_median_ms": float(np.median(steps) * 1e3),
                "step_latency_p90_ms": float(np.percentile(steps, 90) * 1e3),
                "per_frame_ms": [float(x * 1e3) for x in frame_times] if frame_times is not None else None,
                "rollout_ms": r_time * 1e3,
                "predicted_frames_per_s": B * H / r_time, "rollouts_per_s": B / r_time,
                "peak_host_rss_mib": _peak_rss_mib(), **_device_memory(rt, opts.device),
                "kv_cache_mib": cfg.kv_bytes_per_frame(elem) * F * B / 2**20,
                "baseline_rollout_ms": b_time * 1e3 if b_time else None,
                "speedup_vs_baseline": b_time / r_time if b_time else None,
                "max_abs_vs_baseline": float(np.abs(out - ref).max()) if ref is not None else None,
            })
            _close(rt)


def _bench_plan(baseline, artifact, opts: BenchOptions, result, workdir: Path, say) -> None:
    """One CEM plan per backend (after one untimed warm-up iteration), and the baseline's."""
    from .config import PredictorConfig

    cfg = PredictorConfig.from_dict(result["config"])
    p = opts.plan
    problem = planning_problem(cfg, opts.context, opts.seed)
    frames = p.samples * p.iterations * p.horizon

    def timed(rt, label: str):
        say(f"{label}: warm-up iteration")
        cem_plan(rt, *problem, CEMOptions(p.samples, p.elites, 1, p.horizon, p.seed))
        say(f"{label}: plan of {p.samples} samples x {p.iterations} iterations x horizon {p.horizon}")
        return cem_plan(rt, *problem, p, on_iteration=lambda i, n, s: say(f"{label}: iteration {i}/{n}"))

    base = None
    if baseline is not None:
        base = timed(baseline, "baseline")
        result["baseline"]["plan"] = {"plan_s": base.seconds, "best_score": base.score,
                                      "iteration_s_median": float(np.median(base.iteration_seconds))}
    for backend in opts.backends:
        rt = _open(artifact, backend, opts, p.samples, workdir, say)
        res = timed(rt, backend)
        result["entries"].append({
            "backend": backend, "runtime": rt.describe(), "device": opts.device, "precision": opts.precision,
            "batch": p.samples, "plan_s": res.seconds,
            "iteration_s_median": float(np.median(res.iteration_seconds)),
            "rollouts_per_s": p.samples * p.iterations / res.seconds,
            "predicted_frames_per_s": frames / res.seconds,
            "best_score": res.score,
            "peak_host_rss_mib": _peak_rss_mib(), **_device_memory(rt, opts.device),
            "kv_cache_mib": cfg.kv_bytes_per_frame(2 if opts.precision == "fp16" else 4)
            * (opts.context + p.horizon - 1) * p.samples / 2**20,
            "baseline_plan_s": base.seconds if base else None,
            "speedup_vs_baseline": base.seconds / res.seconds if base else None,
            # same seed, same samples: the best scores agree when the rollouts do (the actions
            # themselves can differ where samples score within rounding of each other)
            "score_diff_vs_baseline": abs(res.score - base.score) if base else None,
        })
        _close(rt)


def _close(rt) -> None:
    if hasattr(rt, "close"):
        rt.close()


def plot_per_frame(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for e in result["entries"]:
        if e.get("per_frame_ms"):
            ax.plot(range(1, len(e["per_frame_ms"]) + 1), e["per_frame_ms"], "o-",
                    label=f"{e['backend']} {e['precision']} batch {e['batch']}")
    ax.set_xlabel("frame index (1 = first context frame)")
    ax.set_ylabel("time per frame (ms)")
    ax.set_ylim(bottom=0)   # growth read against zero, not exaggerated
    ax.set_title(f"cached runtime: per-frame cost vs cache length ({result['machine'].get('gpu') or 'cpu'})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)

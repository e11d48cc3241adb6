"""`vitac-deploy bench`: runtimes against the upstream way (full recompute), measured in one run."""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .manifest import now_iso, save_figure, versions
from .validation import ParityInputs


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
    baseline: str = "full-recompute"
    seed: int = 0
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


def run_bench(model, artifact: Path, opts: BenchOptions, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Time every backend and batch against the reference recomputing the whole sequence."""
    import torch

    from .runtimes import open_runtime

    cfg = model.cfg
    C, H = opts.context, opts.horizon
    F = C + H - 1
    if F > cfg.max_frames:
        from .errors import VitacError

        raise VitacError(f"--context {C} + --horizon {H} - 1 = {F} frames exceed max_frames={cfg.max_frames}")
    dtype = torch.float16 if opts.precision == "fp16" else torch.float32
    base_model = model.to(device=opts.device, dtype=dtype).eval()
    elem = 2 if opts.precision == "fp16" else 4
    result: dict[str, Any] = {
        "date": now_iso(), "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                       "cpu_count": os.cpu_count(), **_gpu_info(opts.device)},
        "versions": versions(), "config": cfg.to_dict(), "options": {
            k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in opts.__dict__.items()},
        "entries": [], "baseline": {},
    }
    for B in opts.batches:
        inp = ParityInputs.make(cfg, batch=B, frames=F, context=C, seed=opts.seed)
        t = lambda a: None if a is None else torch.from_numpy(a).to(opts.device, dtype)  # noqa: E731
        targs = (t(inp.context), t(inp.actions), t(inp.states), H, t(inp.extrinsics))
        say(f"batch {B}: baseline (torch, full recompute every step)")

        def baseline(_cb):
            with torch.no_grad():
                out = base_model.rollout(*targs, use_cache=False)
            if opts.device == "cuda":
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

        b_time, _, _, ref = _time_rollout(baseline, opts.repeats, opts.warmup, F)
        result["baseline"][str(B)] = {"rollout_s": b_time, "frames_per_s": B * H / b_time}
        for backend in opts.backends:
            say(f"batch {B}: {backend}")
            rt = open_runtime(artifact, backend=backend, device=opts.device, precision=opts.precision, max_batch=B)

            def run(cb, rt=rt):
                return rt.rollout(inp.context, inp.actions, inp.states, H, inp.extrinsics, on_frame=cb)

            r_time, frame_times, all_frames, out = _time_rollout(run, opts.repeats, opts.warmup, F)
            steps = np.concatenate(all_frames) if all_frames else np.array([r_time / F])
            result["entries"].append({
                "backend": backend, "device": opts.device, "precision": opts.precision, "batch": B,
                "step_latency_median_ms": float(np.median(steps) * 1e3),
                "step_latency_p90_ms": float(np.percentile(steps, 90) * 1e3),
                "per_frame_ms": [float(x * 1e3) for x in frame_times] if frame_times is not None else None,
                "rollout_ms": r_time * 1e3,
                "predicted_frames_per_s": B * H / r_time, "rollouts_per_s": B / r_time,
                "peak_host_rss_mib": _peak_rss_mib(),
                "kv_cache_mib": cfg.kv_bytes_per_frame(elem) * F * B / 2**20,
                "baseline_rollout_ms": b_time * 1e3,
                "speedup_vs_baseline": b_time / r_time,
                "max_abs_vs_baseline": float(np.abs(out - ref).max()),
            })
    return result


def _gpu_info(device: str) -> dict[str, Any]:
    if device != "cuda":
        return {}
    try:
        import torch

        p = torch.cuda.get_device_properties(0)
        return {"gpu": p.name, "compute_capability": f"{p.major}.{p.minor}"}
    except Exception:  # noqa: BLE001 - informative only
        return {}


def plot_per_frame(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for e in result["entries"]:
        if e["per_frame_ms"]:
            ax.plot(range(1, len(e["per_frame_ms"]) + 1), e["per_frame_ms"], "o-",
                    label=f"{e['backend']} {e['precision']} batch {e['batch']}")
    ax.set_xlabel("frame index (1 = first context frame)")
    ax.set_ylabel("time per frame (ms)")
    ax.set_title("cached runtime: per-frame cost vs cache length")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)

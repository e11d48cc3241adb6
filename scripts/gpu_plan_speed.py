#!/usr/bin/env python3
"""The upstream plan's speed, side by side in one process, with the raw figures in one JSON:

1. the device's own ceilings: an 8192^3 fp16 GEMM, a device-to-device copy, host-to-device copies
   (pageable and pinned) of the size the host used to broadcast every CEM step, and that host
   broadcast itself;
2. one plan of the upstream planner (400 samples x top 10 x 10 steps x horizon 2, fp16) as it ran
   before (the reference model, the observation broadcast on the host and copied every rollout)
   and with each change: the observation staged once (reference model), the fast torch path
   (eager, CUDA graphs), torch.compile (modes), ONNX Runtime before/after staging; every row with
   its FLOP and byte counts, fraction of the datasheet peak, host<->device bytes per CEM step, and
   its energies and plan against the first row (same draws);
3. torch.profiler over one rollout (its frames and the energy): kernel count and GPU kernel time,
   reference vs fast path (eager, CUDA graphs);
4. the ViT-g-shaped model's plan on the fast path.

Each section is written to the JSON as soon as it is done (`"complete": false` until the end), and
a row that does not fit what is left of `--budget` seconds is listed as skipped, so a run cut off
by a time limit keeps what it measured. On a CPU (`--device cpu --tiny`: small sizes) every part
runs but the CUDA-only rows: the dry run of everything but the GPU.

    python scripts/gpu_plan_speed.py --out DIR                       # on the GPU (scripts/gpu_check.sh)
    python scripts/gpu_plan_speed.py --device cpu --tiny --out DIR   # the dry run
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitac_deploy.config import PredictorConfig  # noqa: E402
from vitac_deploy.artifacts import now_iso, versions, write_json_atomic  # noqa: E402
from vitac_deploy.planning import CEMOptions, plan, planning_problem  # noqa: E402
from vitac_deploy.planning.cem import ActionSpace  # noqa: E402
from vitac_deploy.planning.memory import plan_flops  # noqa: E402
from vitac_deploy.planning.traffic import fractions, peak_for, plan_bytes  # noqa: E402

TINY = PredictorConfig(embed_dim=64, predictor_embed_dim=48, depth=2, num_heads=2, action_dim=7,
                       grid_height=4, grid_width=4, max_frames=4)


# -- the variants ------------------------------------------------------------------------------------
# (name, backend, runtime options, stage the observation, needs cuda)
VARIANTS = [
    ("before: torch-reference, host context", "torch-reference", {}, False, False),
    ("torch-reference, staged context", "torch-reference", {}, True, False),
    ("torch, eager", "torch", {}, True, False),
    ("torch, CUDA graphs", "torch", {"cuda_graphs": True}, True, True),
]
ORT_VARIANTS = [
    ("before: onnxruntime, host context", "onnxruntime", {}, False, False),
    ("onnxruntime, staged context", "onnxruntime", {}, True, False),
    ("onnxruntime + CUDA graphs, staged context", "onnxruntime", {"cuda_graphs": True}, True, True),
]
COMPILE_VARIANTS = [
    ("torch-compile default", "torch-compile", {"compile": "default"}, True, False),
    ("torch-compile default + CUDA graphs", "torch-compile", {"compile": "default", "cuda_graphs": True}, True, True),
    ("torch-compile reduce-overhead", "torch-compile", {"compile": "reduce-overhead"}, True, True),
    ("torch-compile max-autotune-no-cudagraphs + CUDA graphs", "torch-compile",
     {"compile": "max-autotune-no-cudagraphs", "cuda_graphs": True}, True, True),
]
VITG_VARIANTS = [
    ("vitg torch, CUDA graphs", "torch", {"cuda_graphs": True}, True, True),
    ("vitg torch, eager", "torch", {}, True, False),
]
VITG_BEFORE = [("vitg before: torch-reference, host context", "torch-reference", {}, False, False)]


class Run:
    """The JSON being written, the time budget, and the runtime factory."""

    def __init__(self, args: argparse.Namespace):
        import torch

        self.torch, self.args = torch, args
        self.t0 = time.monotonic()
        self.out = Path(args.out) / "plan_speed.json"
        self.device, self.precision = args.device, args.precision
        gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
        self.peak = peak_for(gpu)
        self.result: dict[str, Any] = {
            "date": now_iso(), "versions": versions(), "command": " ".join(sys.argv),
            "device": {"kind": args.device, "gpu": gpu, "peak_datasheet": self.peak.ceilings() if self.peak else None,
                       "torch_cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads()},
            "options": vars(args), "ceilings": {}, "plans": [], "profile": [], "skipped": [], "errors": [],
            "complete": False}
        self.save()

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.t0)

    def save(self) -> None:
        write_json_atomic(self.out, self.result)

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {msg}", flush=True)

    def section(self, name: str, fn: Callable[[], None]) -> None:
        """Run a section; an error is recorded (with its traceback's last line) and the run goes on."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - recorded, the next section still runs
            self.result["errors"].append({"section": name, "error": f"{type(e).__name__}: {e}"[:500],
                                          "where": traceback.format_exc().strip().splitlines()[-3:]})
            self.say(f"{name}: FAILED {type(e).__name__}: {e}")
        self.save()

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def model(self, cfg: PredictorConfig):
        """The seeded random reference model of a config (float32, on the CPU), made once."""
        from vitac_deploy.reference import random_predictor

        cache = self.__dict__.setdefault("_models", {})
        key = cfg.to_json()
        if key not in cache:
            cache.clear()   # one model at a time in host memory
            cache[key] = random_predictor(cfg, 0)
        return cache[key]


# -- 1. ceilings --------------------------------------------------------------------------------------
def _timed(run: Run, fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Mean seconds of fn over `repeats` calls, after `warmup`, timed on the device's clock."""
    torch = run.torch
    for _ in range(warmup):
        fn()
    if run.device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def ceilings(run: Run, cfg: PredictorConfig, samples: int) -> None:
    torch, dev, tiny = run.torch, run.device, run.args.tiny
    c = run.result["ceilings"]
    n = 512 if tiny else 8192
    dt = torch.float16 if dev == "cuda" else torch.float32   # CPU fp16 GEMMs are not the CPU's arithmetic
    a, b = (torch.randn(n, n, device=dev, dtype=dt) for _ in range(2))
    s = _timed(run, lambda: torch.mm(a, b), 3 if tiny else 10)
    c["gemm"] = {"n": n, "dtype": str(dt), "seconds": s, "tflops_per_s": 2 * n**3 / s / 1e12, "data": "randn"}
    run.say(f"GEMM {n}^3 {dt}: {c['gemm']['tflops_per_s']:.1f} TFLOP/s")
    del a, b
    nbytes = (64 if tiny else 2048) * 2**20
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    s = _timed(run, lambda: dst.copy_(src), 5 if tiny else 20)
    c["copy_on_device"] = {"bytes": nbytes, "seconds": s, "tbytes_per_s_read_plus_write": 2 * nbytes / s / 1e12}
    run.say(f"device copy of {nbytes >> 20} MiB: {c['copy_on_device']['tbytes_per_s_read_plus_write']:.2f} TB/s (r+w)")
    del src, dst
    N, D = cfg.tokens_per_frame, cfg.embed_dim
    ctx = np.random.default_rng(0).standard_normal((1, N, D)).astype(np.float32)
    s = _timed(run, lambda: np.ascontiguousarray(np.broadcast_to(ctx, (samples, N, D))), 3, warmup=1)
    c["host_broadcast_before"] = {"shape": [samples, N, D], "bytes": samples * N * D * 4, "seconds": s,
                                  "note": "what every CEM step built on the host before staging"}
    run.say(f"host broadcast [{samples}, {N}, {D}] float32: {s * 1e3:.1f} ms")
    if dev == "cuda":
        host = torch.empty(samples * N * D * 4, dtype=torch.uint8)
        pinned = host.pin_memory()
        gpu = torch.empty(host.numel(), dtype=torch.uint8, device="cuda")
        for kind, h in (("pageable", host), ("pinned", pinned)):
            s = _timed(run, lambda h=h: gpu.copy_(h, non_blocking=kind == "pinned"), 5, warmup=1)
            c[f"copy_to_device_{kind}"] = {"bytes": host.numel(), "seconds": s, "gbytes_per_s": host.numel() / s / 1e9}
            run.say(f"host-to-device {kind} {host.numel() >> 20} MiB: {s * 1e3:.1f} ms")
        del host, pinned, gpu
    run.free()


# -- 2. plans -----------------------------------------------------------------------------------------
def open_variant(run: Run, model, backend: str, options: dict, max_batch: int, max_frames: int, artifact):
    from vitac_deploy.runtimes import open_runtime
    from vitac_deploy.runtimes.torch import FastTorchRuntime, TorchRuntime

    kw = dict(precision=run.precision, device=run.device, max_batch=max_batch, max_frames=max_frames)
    if backend == "torch-reference":
        return TorchRuntime(copy.deepcopy(model), **kw, **options)
    if backend in ("torch", "torch-compile"):
        return FastTorchRuntime(model, **kw, **options)
    return open_runtime(artifact, backend=backend, verify=False, **kw, **options)


def plans(run: Run, label: str, cfg: PredictorConfig, variants: list, artifact=None) -> None:
    """One plan per variant (after a one-step warm-up: compilation and capture happen there), the
    same problem and draws for all."""
    a = run.args
    opts = CEMOptions(rollout=a.horizon, samples=a.samples, topk=a.topk, cem_steps=a.cem_steps)
    current, goal, pose = planning_problem(cfg, 0)
    space = ActionSpace.for_dim(cfg.action_dim)
    noise = np.random.default_rng(0).standard_normal((opts.cem_steps * opts.rollout, opts.samples, len(space.sampled)))
    warm = CEMOptions(**{**opts.__dict__, "cem_steps": 1})
    flops = plan_flops(cfg, opts.samples, opts.rollout, opts.cem_steps)
    nbytes = plan_bytes(cfg, opts.samples, opts.rollout, opts.cem_steps, run.precision)
    model = run.model(cfg)
    first = None
    last_cost = 30.0
    for name, backend, options, stage, cuda_only in variants:
        row = {"model": label, "variant": name, "backend": backend, "options": options, "staged_context": stage}
        if cuda_only and run.device != "cuda":
            run.result["skipped"].append({**row, "reason": "needs cuda"})
            continue
        if run.left() < max(20.0, 1.2 * last_cost):
            run.result["skipped"].append({**row, "reason": f"time: {run.left():.0f} s left of --budget"})
            run.say(f"{name}: skipped (time)")
            continue

        def one(row=row, name=name, backend=backend, options=options, stage=stage):
            nonlocal first, last_cost
            t_open = time.monotonic()
            rt = open_variant(run, model, backend, options, opts.samples, opts.rollout, artifact)
            t_warm = time.monotonic()
            plan(rt, current, goal, pose, warm, noise=noise[:opts.rollout], space=space, stage=stage)
            run.sync()
            warm_s = time.monotonic() - t_warm
            marks = []
            res = plan(rt, current, goal, pose, opts, noise=noise, space=space, stage=stage,
                       on_step=lambda *_: marks.append(rt.host_traffic))
            steps = [b - a for a, b in zip(marks, marks[1:])] or [marks[0]]
            row.update({"runtime": rt.describe(), "plan_s": res.seconds, "step_s": res.step_seconds,
                        "first_step_s_with_compile_or_capture": warm_s, "open_s": t_warm - t_open,
                        "host_to_device_bytes_per_step": int(np.median([s.to_device for s in steps])),
                        "device_to_host_bytes_per_step": int(np.median([s.to_host for s in steps])),
                        "flops": flops, "bytes_model": nbytes, **fractions(flops, nbytes, res.seconds, run.peak,
                                                                           run.precision),
                        "device_memory": rt.device_memory(), "actions": res.actions.tolist()})
            if first is None:
                first = res
            else:
                row["energy_max_abs_step0_vs_first"] = float(np.abs(res.energies[0] - first.energies[0]).max())
                row["action_max_abs_vs_first"] = float(np.abs(res.actions - first.actions).max())
            run.result["plans"].append(row)
            run.say(f"{label} | {name}: plan {res.seconds:.3f} s (first step {warm_s:.1f} s), "
                    f"{row['tflops_per_s']:.2f} TFLOP/s, host->device {row['host_to_device_bytes_per_step']:,} B/step")
            rt.close()
            del rt
            run.free()
            last_cost = time.monotonic() - t_open
        run.section(f"{label} | {name}", one)


# -- 3. profile ---------------------------------------------------------------------------------------
def profile(run: Run, cfg: PredictorConfig) -> None:
    """torch.profiler over one rollout_energy (its frames and the energy), after a warm one."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from vitac_deploy.planning.energy import default_pose_update, graph_context

    torch, a = run.torch, run.args
    model = run.model(cfg)
    current, goal, pose = planning_problem(cfg, 0)
    S, H = a.samples, a.horizon
    actions = np.random.default_rng(0).uniform(-0.05, 0.05, (S, H, cfg.action_dim)).astype(np.float32)
    states = np.repeat(pose[:, None], S, 0).astype(np.float32)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device == "cuda" else [])
    for name, backend, options, _, cuda_only in VARIANTS[1:]:
        if cuda_only and run.device != "cuda":
            run.result["skipped"].append({"profile": name, "reason": "needs cuda"})
            continue

        def one(name=name, backend=backend, options=options):
            rt = open_variant(run, model, backend, options, S, H, None)
            rt.set_goal(goal)
            staged = rt.stage_context(graph_context(current, cfg))
            go = lambda: rt.rollout_energy(staged, actions, states, H, state_update=default_pose_update(cfg.action_dim))  # noqa: E731
            go()
            go()   # graphs captured, caches warm
            run.sync()
            with torch_profile(activities=activities) as prof:
                go()
                run.sync()
            events = prof.events()
            kernels = [e for e in events if e.device_type == DeviceType.CUDA]
            ops = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
            row = {"variant": name, "runtime": rt.describe(), "batch": S, "frames": H,
                   "what": "one rollout_energy: its frames and the energy, after two warm ones",
                   "kernels": len(kernels), "gpu_kernel_ms": sum(e.time_range.elapsed_us() for e in kernels) / 1e3,
                   "kernels_per_frame": len(kernels) / H, "aten_ops": len(ops),
                   "top_kernels": _top(kernels), "top_ops": _top(ops) if not kernels else []}
            run.result["profile"].append(row)
            run.say(f"profile {name}: {row['kernels']} kernels, {row['gpu_kernel_ms']:.2f} ms GPU, "
                    f"{row['aten_ops']} aten ops")
            rt.close()
            del rt
            run.free()
        run.section(f"profile | {name}", one)


def _top(events, n: int = 12) -> list:
    """The n names with the most time (kernels: GPU time; ops: CPU time), with counts."""
    by: dict[str, list] = {}
    for e in events:
        s = by.setdefault(e.name[:120], [0, 0.0])
        s[0] += 1
        s[1] += e.time_range.elapsed_us()
    return [{"name": k, "count": c, "ms": t / 1e3} for k, (c, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:n]]


# -- main ---------------------------------------------------------------------------------------------
def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for plan_speed.json")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--precision", default=None, choices=("fp16", "fp32"), help="default: fp16 on cuda, fp32 on cpu")
    p.add_argument("--tiny", action="store_true", help="small model and sizes (the CPU dry run)")
    p.add_argument("--budget", type=float, default=330.0, help="seconds: rows that no longer fit are skipped")
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--cem-steps", type=int, default=None)
    p.add_argument("--horizon", type=int, default=2)
    p.add_argument("--no-onnxruntime", action="store_true", help="skip the ONNX Runtime rows (and their export)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--no-vitg", action="store_true", help="skip the ViT-g-shaped plans")
    a = p.parse_args(argv)
    a.precision = a.precision or ("fp16" if a.device == "cuda" else "fp32")
    a.samples = a.samples or (16 if a.tiny else 400)
    a.topk = min(a.topk, a.samples)
    a.cem_steps = a.cem_steps or (2 if a.tiny else 10)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    run = Run(a)
    torch = run.torch
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --tiny for the dry run", file=sys.stderr)
        return 2
    cfg = TINY if a.tiny else PredictorConfig.preset("vitac-l384")
    run.say(f"{run.result['device']}; model {cfg.num_parameters():,} parameters; plan {a.samples} x top {a.topk} x "
            f"{a.cem_steps} steps x horizon {a.horizon}, {a.precision}; budget {a.budget:.0f} s")
    vitg = TINY if a.tiny else PredictorConfig.preset("vjepa2-ac-vitg")
    # in order of value: what a cut-off run loses is at the end
    run.section("ceilings", lambda: ceilings(run, cfg, a.samples))
    run.section("plans", lambda: plans(run, "default", cfg, VARIANTS))
    run.section("profile", lambda: profile(run, cfg))
    if not a.no_vitg:
        run.section("vitg", lambda: plans(run, "vitg", vitg, VITG_VARIANTS))
    if not a.no_compile:
        run.section("compile", lambda: plans(run, "default", cfg, COMPILE_VARIANTS))
    if not a.no_onnxruntime:
        run.section("onnxruntime", lambda: _onnxruntime_rows(run, cfg))
    if not a.no_vitg:
        run.section("vitg before", lambda: plans(run, "vitg", vitg, VITG_BEFORE))
    run.result["complete"] = True
    run.result["seconds"] = time.monotonic() - run.t0
    run.save()
    run.say(f"done: {len(run.result['plans'])} plans, {len(run.result['skipped'])} skipped, "
            f"{len(run.result['errors'])} errors -> {run.out}")
    return 1 if run.result["errors"] else 0


def _onnxruntime_rows(run: Run, cfg: PredictorConfig) -> None:
    """ONNX Runtime before and after staging, on an artifact of the same random weights."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        run.result["skipped"].append({"variant": "onnxruntime", "reason": "onnxruntime is not installed"})
        return
    import onnxruntime as ort

    if run.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        run.result["skipped"].append({"variant": "onnxruntime", "reason": "no CUDAExecutionProvider"})
        return
    from vitac_deploy.exporters import ExportOptions, export_artifact

    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        art = Path(tmp) / "art"
        export_artifact(run.model(cfg), art, ExportOptions(precisions=sorted({run.precision, "fp32"}),
                                                                      validate=False, first_frame_graph=False))
        run.say(f"exported the ONNX artifact in {time.monotonic() - t:.1f} s")
        plans(run, "default", cfg, ORT_VARIANTS, artifact=art)


if __name__ == "__main__":
    sys.exit(main())

"""Graph forms on a GPU, side by side in one run: the full upstream plan (400 samples x top 10 x 10
CEM steps x horizon 2, fp16) on ONNX Runtime CUDA in each step-graph form (portable, ort-fused,
trt-attention) and on torch, for the default model and a ViT-g-shaped one; beside each plan its
roofline (the graph cost model on this GPU's datasheet ceilings), the CUDA kernels one frame
launches and their GPU time (torch's profiler, CUPTI), and the attention kernel ONNX Runtime chose
(ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 makes it print its choice, in a child process that runs
one frame, whose output is kept).

    python scripts/gpu_graph_forms.py --out graph_forms.json            # what scripts/gpu_check.sh runs
    python scripts/gpu_graph_forms.py --device cpu --models tiny --samples 8 --topk 2 --cem-steps 1 \\
        --out /tmp/forms.json                                             # the CPU dry run

Every row is written to --out as it finishes ("complete": false until the end), so a run stopped by
a time limit keeps what it measured. Random weights of the named shapes (`--models`: default =
vitac-l384, vitg = vjepa2-ac-vitg, tiny = a 2-block model for dry runs). The ViT-g shape runs ONNX
Runtime rows only unless --vitg-torch (its export and torch rows would not fit gpu_check's budget).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMS = ("portable", "ort-fused", "trt-attention")
MODELS = {"default": "vitac-l384", "vitg": "vjepa2-ac-vitg", "tiny": None}


def frame_kernels(artifact: Path, precision: str, batch: int, past_frames: int, device: str) -> dict[str, Any]:
    """One frame of the step graph through ONNX Runtime with I/O bound on the device: the CUDA
    kernels it launches and their GPU time (torch profiler; None without torch CUDA). Run in a child
    process with ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 (`frame_kernels_child`): ONNX Runtime
    then prints the attention kernel it picks at every call, which would flood the plan rows."""
    import numpy as np
    import onnxruntime as ort

    from vitac_deploy.config import PredictorConfig
    from vitac_deploy.contract import dummy_inputs
    from vitac_deploy.graph_forms import graph_form
    from vitac_deploy.artifacts import read_manifest
    from vitac_deploy.runtimes.onnxruntime.backend import cuda_provider_options

    man = read_manifest(artifact)
    cfg = PredictorConfig.from_dict(man["config"])
    feeds = dummy_inputs(cfg, batch, past_frames, "float16" if precision == "fp16" else "float32")
    providers: list = ["CPUExecutionProvider"]
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(
            False, False, strict_skip_norm=graph_form(man) == "ort-fused")))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(artifact / man["graphs"][f"step.{precision}"]["file"]), so, providers=providers)
    b = sess.io_binding()
    for name, arr in feeds.items():
        b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0))
    for o in sess.get_outputs():
        b.bind_output(o.name, device)
    for _ in range(2):
        sess.run_with_iobinding(b)
        b.synchronize_outputs()
    sys.stdout.flush()
    out: dict[str, Any] = {"batch": batch, "past_frames": past_frames, "providers": sess.get_providers()}
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return out
    if device != "cuda" or not torch.cuda.is_available():
        return out
    runs = 3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            sess.run_with_iobinding(b)
            b.synchronize_outputs()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    out.update(cuda_kernels_per_frame=len(kernels) / runs,
               gpu_ms_per_frame=sum(e.device_time for e in kernels) / runs / 1e3,
               attention_kernels=sorted({e.name[:80] for e in kernels if "fmha" in e.name.lower() or
                                         "flash" in e.name.lower() or "attention" in e.name.lower()})[:6])
    return out


def frame_kernels_child(artifact: Path, precision: str, batch: int, past_frames: int, device: str) -> dict[str, Any]:
    """`frame_kernels` in a child process with the attention kernel debug output on: its result, and
    the lines ONNX Runtime printed about the attention kernels it chose (first 8 distinct)."""
    import subprocess

    env = {**os.environ, "ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO": "1"}
    p = subprocess.run([sys.executable, __file__, "--frame-only", str(artifact), "--frame-precision", precision,
                        "--frame-batch", str(batch), "--frame-past", str(past_frames), "--device", device],
                       capture_output=True, text=True, env=env, timeout=300)
    lines = p.stdout.splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    out = json.loads(lines[-1])
    debug = [ln for ln in lines[:-1] if "ttention" in ln or "Operator=" in ln or "Flash" in ln]
    out["attention_kernel_debug"] = list(dict.fromkeys(debug))[:8]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="JSON of every figure (required but with --frame-only)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--models", default="default,vitg", help="comma list of default, vitg, tiny")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--backends", default="onnxruntime,torch", help="bench backends (graph forms apply to onnxruntime)")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--cem-steps", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=2)
    ap.add_argument("--baseline", default="none", choices=("none", "full-recompute"))
    ap.add_argument("--cuda-graphs", default="off", choices=("off", "on", "both"))
    ap.add_argument("--vitg-torch", action="store_true", help="also torch rows for the ViT-g shape")
    ap.add_argument("--frame-only", type=Path, help=argparse.SUPPRESS)   # the child of frame_kernels_child
    ap.add_argument("--frame-precision", default="fp16", help=argparse.SUPPRESS)
    ap.add_argument("--frame-batch", type=int, default=400, help=argparse.SUPPRESS)
    ap.add_argument("--frame-past", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.frame_only is not None:
        print(json.dumps(frame_kernels(a.frame_only, a.frame_precision, a.frame_batch, a.frame_past, a.device)))
        return 0
    if a.out is None:
        ap.error("--out is required")

    import onnxruntime as ort

    from vitac_deploy.benchmarks.rollouts import BenchOptions, run_bench, variant
    from vitac_deploy.config import PredictorConfig
    from vitac_deploy.exporters import ExportOptions, export_artifact
    from vitac_deploy.exporters.cost import ort_optimized, plan_cost, plan_summary
    from vitac_deploy.artifacts import now_iso, versions, write_json_atomic
    from vitac_deploy.planning import CEMOptions
    from vitac_deploy.reference import random_predictor
    from vitac_deploy.roofline import device_for_gpu

    forms = [f.strip() for f in a.forms.split(",") if f.strip()]
    gpu = None
    if a.device == "cuda":
        from vitac_deploy.runtimes.gpu import gpu_info

        gpu = gpu_info()
    result: dict[str, Any] = {"date": now_iso(), "gpu": gpu, "device": a.device, "versions": versions(),
                              "onnxruntime": ort.__version__, "roofline_device": device_for_gpu(gpu and gpu["name"]),
                              "plan": {"samples": a.samples, "topk": a.topk, "cem_steps": a.cem_steps,
                                       "horizon": a.horizon, "precision": "fp16"},
                              "models": {}, "complete": False}
    precision = "fp16" if a.device == "cuda" else "fp32"   # fp16 on a CPU is not fp16 arithmetic
    result["plan"]["precision"] = precision

    def save() -> None:
        write_json_atomic(a.out, result)

    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        cfg = (PredictorConfig(embed_dim=32, predictor_embed_dim=48, depth=2, num_heads=2, action_dim=3,
                               grid_height=4, grid_width=4, max_frames=4) if name == "tiny"
               else PredictorConfig.preset(MODELS[name]))
        row: dict[str, Any] = result["models"].setdefault(name, {"config": cfg.to_dict(), "forms": {}})
        model = random_predictor(cfg, 0)
        backends = [b.strip() for b in a.backends.split(",") if b.strip()]
        if name == "vitg" and not a.vitg_torch:
            backends = [b for b in backends if b == "onnxruntime"]
        precisions = sorted({precision, "fp32"} if any(b.startswith("torch") for b in backends) or
                            a.baseline != "none" else {precision})
        with tempfile.TemporaryDirectory(prefix="vitac-forms-") as tmp:
            arts = {}
            for form in forms:
                t0 = time.perf_counter()
                arts[variant("concat", form)] = art = Path(tmp) / form
                export_artifact(model, art, ExportOptions(precisions=precisions, validate=False,
                                                          first_frame_graph=False, graph_form=form))
                info: dict[str, Any] = {"export_s": round(time.perf_counter() - t0, 1)}
                cost = plan_cost(art, precision, a.samples, a.horizon, a.cem_steps)
                info["cost"] = plan_summary(cost)
                if name != "vitg":   # the same graph structure at any size; ViT-g's would cost half a minute each
                    opt = ort_optimized(art / ("step.fp16.onnx" if precision == "fp16" else "step.onnx"))
                    info["ort_optimized_kernels_per_frame"] = opt.kernels
                    info["ort_cpu_inserted_casts"] = opt.cpu_inserted_casts
                try:
                    info["frame"] = frame_kernels_child(art, precision, a.samples, 1, a.device)
                except Exception as e:  # noqa: BLE001 - recorded, the plan rows still run
                    info["frame"] = {"error": str(e).splitlines()[0][:300]}
                row["forms"][form] = info
                print(f"{name} {form}: exported in {info['export_s']} s; roofline "
                      f"{info['cost']['roofline_s']}; kernels/frame graph {cost.kernels_per_frame[1]}, after ORT's "
                      f"optimizer {info.get('ort_optimized_kernels_per_frame')}; frame {info['frame']}", flush=True)
                save()
            opts = BenchOptions(backends=backends, device=a.device, precision=precision, baseline=a.baseline,
                                plan=CEMOptions(rollout=a.horizon, samples=a.samples, topk=a.topk,
                                                cem_steps=a.cem_steps),
                                cuda_graphs=a.cuda_graphs if a.device == "cuda" else "off", caches=["concat"],
                                graph_forms=forms)

            def on_row(r: dict[str, Any]) -> None:
                row["bench"] = r
                save()

            row["bench"] = run_bench(model, arts, opts, say=lambda m: print(f"  {name}: {m}", flush=True),
                                     on_row=on_row)
            for e in row["bench"]["entries"]:
                print(f"{name} {e['backend']}: plan {e['plan_s']:.3f} s, roofline {e.get('roofline_s')} s "
                      f"({e.get('roofline_device')}), energy diff {e.get('energy_max_abs_step0')}", flush=True)
            save()
    result["complete"] = True
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

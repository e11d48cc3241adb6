"""Where ONNX Runtime spends one step of the predictor: its own profiler on the exported step graph,
time summed per operator type and the slowest nodes, so a gap to another backend has a name.

    python scripts/profile_ort_step.py ARTIFACT [--device cuda] [--precision fp16] [--batch 400]
        [--past-frames 1] [--runs 5] [--json OUT]

Inputs and outputs are bound on the device (I/O binding), as the runtime binds them: with numpy
feeds, `model_run` would time copying the cache to and from the GPU. On CUDA, ONNX Runtime's node
timings are launch times, not GPU time (its kernels run asynchronously); where torch with CUDA is
installed, the GPU kernels themselves are also timed through torch's profiler (CUPTI sees every
kernel of the process, ONNX Runtime's included) and listed by GPU time.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def _gpu_kernels(work, runs: int) -> "collections.Counter[str] | None":
    """GPU time per kernel name (microseconds per run) of `work`, through torch's profiler; None
    without torch CUDA."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        work()
        torch.cuda.synchronize()
    out: "collections.Counter[str]" = collections.Counter()
    for e in prof.events():
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            out[e.name] += e.device_time / runs
    return out or None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="fp16", choices=("fp32", "fp16"))
    ap.add_argument("--batch", type=int, default=400)
    ap.add_argument("--past-frames", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import onnxruntime as ort

    from vitac_deploy.config import PredictorConfig
    from vitac_deploy.contract import dummy_inputs
    from vitac_deploy.artifacts import read_manifest
    from vitac_deploy.runtimes.onnxruntime.backend import cuda_provider_options

    man = read_manifest(a.artifact)
    cfg = PredictorConfig.from_dict(man["config"])
    graph = a.artifact / ("step.fp16.onnx" if a.precision == "fp16" else "step.onnx")
    cache = "float16" if a.precision == "fp16" else "float32"
    feeds = dummy_inputs(cfg, a.batch, a.past_frames, cache)
    if hasattr(ort, "preload_dlls") and a.device == "cuda":
        ort.preload_dlls()
    from vitac_deploy.graph_forms import graph_form

    strict = graph_form(man) == "ort-fused"   # as the runtime opens that form: SkipLayerNorm in float32
    providers = ([("CUDAExecutionProvider", cuda_provider_options(False, False, strict))] if a.device == "cuda"
                 else []) + ["CPUExecutionProvider"]
    def bound(sess):
        """An I/O binding with every input on the device and every output left there."""
        b = sess.io_binding()
        for name, arr in feeds.items():
            b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, a.device, 0))
        for o in sess.get_outputs():
            b.bind_output(o.name, a.device)
        return b

    def run(sess, b):
        sess.run_with_iobinding(b)
        b.synchronize_outputs()

    # warm-up outside the profile: the first runs pick algorithms and allocate
    sess = ort.InferenceSession(str(graph), providers=providers)
    b = bound(sess)
    for _ in range(2):
        run(sess, b)
    kernels = _gpu_kernels(lambda: [run(sess, b) for _ in range(a.runs)], a.runs) if a.device == "cuda" else None
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(graph), so, providers=providers)
        b = bound(sess)
        for _ in range(2 + a.runs):
            run(sess, b)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][2:]
    t0 = runs[0]["ts"] if runs else 0
    by_type: dict[str, float] = collections.Counter()
    by_node: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t0:
            op = e.get("args", {}).get("op_name", "?")
            by_type[op] += e["dur"] / a.runs
            by_node[f'{e["name"][:-12]} ({op})'] += e["dur"] / a.runs
    run_ms = float(np.median([r["dur"] for r in runs])) / 1e3 if runs else float("nan")
    total = sum(by_type.values())
    print(f"onnxruntime {ort.__version__} {a.device} {a.precision}: step graph, batch {a.batch}, "
          f"{a.past_frames} cached frame(s): model_run median {run_ms:.2f} ms over {a.runs} runs, "
          f"node kernels {total / 1e3:.2f} ms")
    print(f"{'op type':<28}{'ms/run':>10}{'share':>8}")
    for op, us in by_type.most_common():
        print(f"{op:<28}{us / 1e3:>10.3f}{us / total:>8.1%}")
    print(f"slowest {a.top} nodes{' (launch times on CUDA)' if a.device == 'cuda' else ''}:")
    for node, us in by_node.most_common(a.top):
        print(f"  {us / 1e3:8.3f} ms  {node}")
    if kernels:
        gpu_total = sum(kernels.values())
        print(f"GPU kernels (torch profiler / CUPTI): {gpu_total / 1e3:.2f} ms of GPU time per run; top {a.top}:")
        for name, us in kernels.most_common(a.top):
            print(f"  {us / 1e3:8.3f} ms {us / gpu_total:6.1%}  {name[:110]}")
    if a.json:
        a.json.write_text(json.dumps({"onnxruntime": ort.__version__, "device": a.device, "precision": a.precision,
                                      "batch": a.batch, "past_frames": a.past_frames, "run_ms_median": run_ms,
                                      "by_type_ms": {k: v / 1e3 for k, v in by_type.items()},
                                      "top_nodes_ms": {k: v / 1e3 for k, v in by_node.most_common(50)},
                                      "gpu_kernels_ms": {k: v / 1e3 for k, v in (kernels or {}).items()}},
                                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

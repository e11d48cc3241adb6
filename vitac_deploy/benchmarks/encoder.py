"""The encoder's rows of `vitac-deploy bench`: time per call and per frame of each backend, at the
batches the planner uses (1 frame, and 2: current + goal), against the PyTorch reference encoding
the same frames in the same run."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import VitacError
from ..precision import precision as get_precision


def _median_s(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_encoder(encoder: str | Path, backends: Sequence[str], device: str = "cpu", precision: str = "fp32",
                  batches: Sequence[int] = (1, 2), repeats: int = 3, warmup: int = 1, seed: int = 0,
                  say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """`encoder`: an encoder artifact directory (the reference reads its fp32 weights) or a preset
    (seeded random weights, exported to a temp artifact). Returns JSON-ready figures."""
    import torch

    from ..encoder import ENCODER_PRESETS, EncoderConfig, preprocess
    from ..artifacts import read_encoder_manifest
    from ..exporters import EncoderExportOptions, export_encoder
    from ..validation import validation_images
    from ..reference import random_encoder
    from ..reference import encoder_from_graph
    from ..runtimes import open_encoder

    from ..runtimes import registry

    # backends with an encoder runtime (a variant such as torch-compile times as its backend does not)
    backends = [b for b in backends if b in registry.backends() and {registry.ENCODER, registry.ENCODER_ENGINE}
                & set(registry.backends()[b].opens)] or ["onnxruntime"]
    if any(b < 1 for b in batches):
        raise VitacError("encoder batches must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        if str(encoder) in ENCODER_PRESETS:
            cfg = EncoderConfig.preset(str(encoder))
            model = random_encoder(cfg, seed)
            path = Path(tmp) / "encoder"
            say(f"exporting encoder {encoder} (seeded random weights) to a temp artifact")
            export_encoder(model, path, EncoderExportOptions(validate=False))
        else:
            path = Path(encoder)
            manifest = read_encoder_manifest(path)
            cfg = EncoderConfig.from_dict(manifest["config"])
            model = encoder_from_graph(path / manifest["graphs"]["encoder.fp32"]["file"], cfg)
        dtype = get_precision(precision).torch_dtype(torch)
        model = model.to(device=device, dtype=dtype)
        images = validation_images(cfg, max(batches), seed + 3)
        pixels = preprocess(images, cfg.img_size)[0].transpose(1, 0, 2, 3).copy()   # [M, 3, S, S]
        result: dict[str, Any] = {"config": cfg.to_dict(), "parameters": cfg.num_parameters(),
                                  "gflop_per_frame": cfg.frame_flops() / 1e9, "device": device,
                                  "precision": precision, "entries": [], "reference": {}}

        def reference(B: int) -> np.ndarray:
            with torch.no_grad():
                x = torch.from_numpy(pixels[:B]).to(device, dtype)[:, :, None].repeat(1, 1, cfg.tubelet_size, 1, 1)
                out = torch.nn.functional.layer_norm(model(x).float(), (cfg.embed_dim,), eps=cfg.feature_norm_eps)
                return out.cpu().numpy()

        for B in batches:
            say(f"encoder batch {B}: PyTorch reference")
            ref_s, ref = _median_s(lambda: reference(B), repeats, warmup)
            result["reference"][str(B)] = {"call_ms": ref_s * 1e3, "frame_ms": ref_s * 1e3 / B}
            for backend in backends:
                say(f"encoder batch {B}: {backend}")
                target = registry.backends()[backend].prepare(path, precision, max(batches), Path(tmp), say)
                enc = open_encoder(target, backend=backend, device=device,
                                   precision=precision if target == path else None, max_batch=max(batches))
                secs, got = _median_s(lambda: enc.encode_pixels(pixels[:B]), repeats, warmup)
                result["entries"].append({
                    "backend": backend, "runtime": enc.describe(), "batch": B, "call_ms": secs * 1e3,
                    "frame_ms": secs * 1e3 / B, "frames_per_s": B / secs,
                    "tflops_per_s": cfg.frame_flops() * B / secs / 1e12,
                    "reference_call_ms": ref_s * 1e3, "speedup_vs_reference": ref_s / secs,
                    "max_abs_vs_reference": float(np.abs(got - ref).max())})
                enc.close()
    return result


def encoder_rows_table(result: dict[str, Any], where: str):
    """The encoder rows as a rich table."""
    from rich.table import Table

    cfg = result["config"]
    table = Table(title=f"encoder: {result['parameters']:,} parameters ({cfg['img_size']} px, "
                        f"{result['gflop_per_frame']:.3g} GFLOP per frame), {where}, {result['precision']}; "
                        f"reference = PyTorch in the same run", header_style="bold")
    for col in ("backend", "frames", "per call", "per frame", "frames/s", "TFLOP/s", "speedup", "max abs err"):
        table.add_column(col, justify="right")
    for e in result["entries"]:
        table.add_row(e["backend"], str(e["batch"]), f"{e['call_ms']:.1f} ms", f"{e['frame_ms']:.1f} ms",
                      f"{e['frames_per_s']:.1f}", f"{e['tflops_per_s']:.3f}", f"{e['speedup_vs_reference']:.2f}x",
                      f"{e['max_abs_vs_reference']:.1e}")
    for b, v in result["reference"].items():
        table.add_row("reference", b, f"{v['call_ms']:.1f} ms", f"{v['frame_ms']:.1f} ms",
                      f"{int(b) / v['call_ms'] * 1e3:.1f}", "-", "1.00x", "0")
    return table

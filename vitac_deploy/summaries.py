"""What `info` and `inspect` report, as plain JSON-ready data (numbers in bytes and FLOPs, not
formatted text): a config and its KV cache, the memory and FLOPs of a CEM plan against a budget,
an encoder, the registered backends, and an artifact, encoder artifact, engine or ONNX file. The
commands render these as tables, or print them with `--json`. No torch, no onnx (but for an
`.onnx` file, which needs onnx)."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from .config import PredictorConfig
from .errors import VitacError, first_line
from .inputs import MAX_SAMPLES


def config_summary(cfg: PredictorConfig, parameters: Optional[int] = None) -> dict[str, Any]:
    """The config's fields and its derived sizes; `parameters` counted in a checkpoint, if given."""
    kv = {name: cfg.kv_bytes_per_frame(nbytes) for name, nbytes in (("float16", 2), ("float32", 4))}
    return {
        "config": cfg.to_dict(),
        "parameters": int(parameters if parameters is not None else cfg.num_parameters()),
        "head_dim": cfg.head_dim, "rope_dims_per_axis": cfg.rope_dim,
        "tokens_per_frame": cfg.tokens_per_frame, "conditioning_tokens": cfg.cond_tokens,
        "kv_cache_bytes_per_frame": kv,
        "kv_cache_bytes_at_max_frames": {k: v * cfg.max_frames for k, v in kv.items()},
    }


def _positive(flag: str, value: Optional[int], default: int) -> int:
    """A count option of a plan: at least 1; --samples and --cem-steps at most what a plan takes."""
    value = default if value is None else value
    if value < 1:
        raise VitacError(f"{flag} must be at least 1, got {value}")
    if flag in ("--samples", "--cem-steps") and value > MAX_SAMPLES:
        raise VitacError(f"{flag} must be at most {MAX_SAMPLES:,}, got {value}")
    return value


def plan_summary(cfg: PredictorConfig, samples: int, horizon: Optional[int] = None, context: Optional[int] = None,
                 cem_steps: Optional[int] = None, chunk: Optional[int] = None, budget: Optional[str] = None,
                 device_budget: Optional[str] = None, unified: Optional[bool] = None,
                 precision: Optional[str] = None, backend: Optional[str] = None, engines: Optional[int] = None,
                 fused_attention: Optional[bool] = None) -> dict[str, Any]:
    """Memory of a chunk of a CEM plan by component, its totals and FLOPs, and against a budget
    (`budget` like "8GiB", or a named `device_budget`) the largest chunk that fits (None: the
    defaults of `vitac-deploy info`: horizon 2, context 1, 10 CEM steps, all samples at once, fp16,
    TensorRT). A bad option is a VitacError, raised before anything is computed."""
    from .planning.memory import (affine_terms, chunks_needed, device, largest_chunk, memory_layout, parse_bytes,
                                  plan_flops, plan_memory, upstream_plan_flops)
    from .precision import precision as get_precision

    S = _positive("--samples", samples, 1)
    H = _positive("--horizon", horizon, 2)
    C = _positive("--context", context, 1)
    steps = _positive("--cem-steps", cem_steps, 10)
    chunk = min(_positive("--chunk", chunk, S), S)   # as a plan rolls out: never more rows than samples
    precision = get_precision(precision or "fp16", "--precision").name
    backend = backend or "tensorrt"
    layout = memory_layout(backend)   # a backend without a memory model: one line naming those with one
    engines = engines if engines is not None else layout.default_weight_copies
    if engines not in layout.weight_copies:
        raise VitacError(f"--engines must be {' or '.join(map(str, layout.weight_copies))} for {backend}, got {engines}")
    if budget is not None and device_budget is not None:
        raise VitacError("give either --budget or --device-budget, not both")
    if device_budget is not None and unified is not None:
        raise VitacError("--unified/--discrete go with --budget; a --device-budget knows its memory")
    budget_bytes, shared, dev = None, bool(unified), None
    if budget is not None:
        budget_bytes = parse_bytes(budget)
    elif device_budget is not None:
        dev = device(device_budget)
        budget_bytes, shared = dev.budget, dev.unified
    fused = bool(fused_attention)
    kw = {"horizon": H, "context": C, "precision": precision, "backend": backend, "engines": engines,
          "fused_attention": fused}
    mem = plan_memory(cfg, chunk, **kw)
    fixed, per_sample = affine_terms(cfg, unified=shared, **kw)
    out: dict[str, Any] = {
        "samples": S, "horizon": H, "context": C, "cem_steps": steps, "chunk": chunk, "precision": precision,
        "backend": backend, "engines": engines, "fused_attention": fused,
        "memory_bytes": {f.name: getattr(mem, f.name) for f in fields(mem)},
        "memory_labels": {f.name: label for f, (label, _) in zip(fields(mem), mem.rows())},
        "device_total_bytes": mem.device_total, "unified_total_bytes": mem.total(unified=True),
        "unified": shared, "fixed_bytes": fixed, "per_sample_bytes": per_sample,
        "flops": plan_flops(cfg, S, H, steps, C, chunk), "upstream_flops": upstream_plan_flops(cfg, S, H, steps, C),
        "budget": None,
    }
    if budget_bytes is not None:
        best = largest_chunk(cfg, budget_bytes, samples=S, unified=shared, **kw)
        b: dict[str, Any] = {"bytes": budget_bytes, "device": None, "chunk_fits": mem.total(shared) <= budget_bytes,
                             "largest_chunk": best, "chunks_per_cem_step": chunks_needed(S, best) if best else None,
                             "plan_fits": bool(best), "compute_limit_seconds": None}
        if dev is not None:
            b["device"] = {"key": device_budget, "name": dev.name, "total_bytes": dev.total,
                           "reserve_bytes": dev.reserve, "unified": dev.unified,
                           "fp16_dense_tflops": dev.fp16_dense_tflops,
                           "fp16_derived": "fp16_dense_tflops" in dev.derived}
            if dev.fp16_dense_tflops:
                b["compute_limit_seconds"] = plan_flops(cfg, S, H, steps, C, best or chunk) / (dev.fp16_dense_tflops * 1e12)
        out["budget"] = b
    return out


def encoder_summary(encoder: str | os.PathLike, precision: str = "fp16", fused_attention: bool = False) -> dict[str, Any]:
    """An encoder's size, FLOPs per frame and memory for 1 and 2 frames at once (current + goal):
    `encoder` is a preset (vit-l, vit-g, ...) or an encoder artifact directory."""
    from .encoder import ENCODER_PRESETS, EncoderConfig
    from .planning.memory import encoder_memory

    if str(encoder) in ENCODER_PRESETS:
        ecfg = EncoderConfig.preset(str(encoder))
    else:
        from .artifacts import read_encoder_manifest

        ecfg = EncoderConfig.from_dict(read_encoder_manifest(encoder)["config"])
    memory = []
    for batch in (1, 2):
        m = encoder_memory(ecfg, batch, precision, fused_attention)
        memory.append({"frames": batch, "weights_bytes": m.weights, "io_bytes": m.io,
                       "activations_bytes": m.activations, "total_bytes": m.total})
    return {"encoder": str(encoder), "config": ecfg.to_dict(), "parameters": ecfg.num_parameters(),
            "img_size": ecfg.img_size, "tokens_per_frame": ecfg.tokens_per_frame, "embed_dim": ecfg.embed_dim,
            "flops_per_frame": ecfg.frame_flops(), "precision": precision, "fused_attention": fused_attention,
            "memory": memory}


def backends_summary() -> list[dict[str, Any]]:
    """The registered backends and their declared capabilities (runtimes/registry.py)."""
    from .runtimes.registry import backends

    out = []
    for b in backends().values():
        layout = b.memory_layout
        out.append({"backend": b.name, "variants": list(b.variants), "opens": list(b.opens),
                    "devices": list(b.devices), "precisions": list(b.precisions),
                    "cache_contracts": list(b.cache_contracts), "graph_forms": list(b.graph_forms),
                    "cuda_graphs": bool(b.cuda_graphs),
                    "memory_layout": None if layout is None else
                    {"frame_buffers": layout.frame_buffers, "pinned_staging": bool(layout.pinned_staging)},
                    "installed": bool(b.installed())})
    return out


def tolerance_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per precision of an artifact's manifest: its tolerance and what export measured."""
    rows = []
    validation = manifest.get("validation") if isinstance(manifest.get("validation"), dict) else {}
    tolerances = manifest.get("tolerances") if isinstance(manifest.get("tolerances"), dict) else {}
    for p, tol in tolerances.items():
        tol = tol if isinstance(tol, dict) else {}
        v = validation.get(p) if isinstance(validation.get(p), dict) else None
        measured_max = v.get("worst_max_abs", v.get("max_abs")) if v else None
        measured_cos = v.get("worst_cosine", v.get("cosine")) if v else None
        rows.append({"precision": p, "max_abs": tol.get("max_abs"), "mean_abs": tol.get("mean_abs"),
                     "cosine_min": tol.get("cosine_min"), "measured_max_abs": measured_max,
                     "measured_cosine": measured_cos, "passed": (v.get("passed") is True) if v else None})
    return rows


def _io(specs: list) -> list[dict[str, Any]]:
    return [{"name": s["name"], "dtype": s["dtype"], "shape": list(s["shape"])} for s in specs]


def artifact_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What `inspect` shows of an artifact, an encoder artifact, an engine (ENGINE.plan) or an
    `.onnx` file: its kind, manifest summary, tolerances and the graphs' inputs and outputs."""
    from .artifacts import ENGINE_SUFFIXES, artifact_kind, read_encoder_manifest, read_engine_manifest, read_manifest

    p = Path(path)
    if not p.exists():
        raise VitacError(f"not found: {p}")
    if p.suffix in ENGINE_SUFFIXES:
        m = read_engine_manifest(p)
        return {"path": str(p), "kind": "engine", "engine_kind": m.get("kind", "predictor"),
                "created": m.get("created"), "tensorrt": m.get("tensorrt"), "gpu": m.get("gpu"),
                "compute_capabilities": m.get("compute_capabilities"), "precision": m.get("precision"),
                "precision_how": m.get("precision_how"), "first_frame": m.get("first_frame"),
                "build_flags": m.get("build_flags"), "artifact": m.get("artifact"), "config": m.get("config"),
                "engines": [{k: e.get(k) for k in ("role", "file", "source_onnx", "build_s", "profile")}
                            for e in m.get("engines", []) if isinstance(e, dict)]}
    if p.is_dir():
        encoder = artifact_kind(p) == "encoder"
        m = read_encoder_manifest(p) if encoder else read_manifest(p)
        out = {"path": str(p), "kind": "encoder" if encoder else "predictor", "created": m.get("created"),
               "opset": m.get("opset"), "exporter": m.get("exporter", {}), "config": m["config"],
               "source": m.get("source", {}), "tolerances": tolerance_rows(m),
               "graphs": {key: {"file": g["file"], "role": g.get("role"), "precision": g.get("precision"),
                                "inputs": _io(g["inputs"]), "outputs": _io(g["outputs"])}
                          for key, g in m["graphs"].items()}}
        if not encoder:
            out["cache"] = m.get("cache", {"contract": "concat"})
            out["graph_form"] = m.get("graph_form", "portable")
        else:
            out["parameters"] = m.get("parameters")
        return out
    if p.suffix != ".onnx":
        raise VitacError(f"inspect takes an artifact directory, an .onnx file or an ENGINE.plan, got {p}")
    return onnx_summary(p)


def onnx_summary(path: Path) -> dict[str, Any]:
    """Opset, node and initializer counts and the inputs and outputs of an `.onnx` file (needs onnx)."""
    try:
        import onnx
    except ImportError:
        raise VitacError("inspecting an .onnx file needs onnx: pip install onnx") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise many kinds
        raise VitacError(f"cannot read {path}: {first_line(e)}") from None
    if model.ir_version == 0 or not model.opset_import or not model.graph.node:
        # protobuf parses an empty (or zeroed) file as an empty message: not a model
        raise VitacError(f"{path} is not an ONNX model (empty or damaged: no IR version, opset or nodes)")

    def spec(v) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        except (KeyError, ValueError, TypeError):   # undefined or exotic element type
            dtype = f"elem_type {t.elem_type}"
        return {"name": v.name, "dtype": dtype, "shape": dims}

    inits = {i.name for i in model.graph.initializer}
    return {"path": str(path), "kind": "onnx", "opset": [o.version for o in model.opset_import],
            "nodes": len(model.graph.node), "initializers": len(inits),
            "inputs": [spec(v) for v in model.graph.input if v.name not in inits],
            "outputs": [spec(v) for v in model.graph.output]}

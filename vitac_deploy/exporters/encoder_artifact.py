"""`export-encoder`: reference encoder -> validated encoder artifact (graphs, weights, manifest),
atomically, like the predictor's `export` (artifact.py)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence


from .. import __version__
from ..errors import ValidationError, VitacError
from ..precision import parse_list as parse_precisions, precision as get_precision
from ..artifacts import (ENCODER_FORMAT, ENCODER_FORMAT_VERSION, MANIFEST, Progress, file_digest, now_iso,
                         publishing, seal, versions, write_json_atomic)
from ..precision import TOLERANCES
from ..validation.encoder import encoder_parity, validation_images
from .artifact import PRECISIONS
from .encoder_graph import build_encoder_graph, encoder_io
from .step_graph import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from .weights import save_with_shared_data


def encoder_files(precision: str) -> dict[str, str]:
    suffix = get_precision(precision).file_suffix
    return {"graph": f"encoder{suffix}.onnx", "weights": f"encoder.weights.{precision}.bin"}


@dataclass
class EncoderExportOptions:
    """Every `vitac-deploy export-encoder` flag, as a Python argument."""

    precisions: Sequence[str] = PRECISIONS
    opset: int = DEFAULT_OPSET
    validate: bool = True
    validation_frames: int = 2
    validation_seed: int = 0
    force: bool = False
    source: dict[str, Any] = field(default_factory=dict)


def export_encoder(model, out: str | os.PathLike, options: Optional[EncoderExportOptions] = None,
                   progress: Optional[Progress] = None) -> dict[str, Any]:
    """Write the reference `model`'s per-frame encoder graphs to `out` and return the manifest.

    Each graph is validated with ONNX Runtime (CPU) against the reference's planner path
    (`Encoder.encode_frames`) unless `options.validate` is False; outside its tolerance it raises
    ValidationError and nothing is left at `out`. `out` is replaced (with `options.force`) only if
    it is empty or an encoder artifact of ours, as `export` does."""
    opts = options or EncoderExportOptions()
    parse_precisions(opts.precisions)
    if not MIN_OPSET <= opts.opset <= MAX_OPSET:
        raise VitacError(f"--opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opts.opset}")
    say = progress or (lambda msg: None)
    with publishing(out, opts.force, (ENCODER_FORMAT,), say) as tmp:
        manifest = _write_encoder(model, tmp, opts, say)
    return manifest


def _write_encoder(model, tmp: Path, opts: EncoderExportOptions, say: Progress) -> dict[str, Any]:
    """Graphs, weights and the sealed manifest into `tmp`, validated (ValidationError if not within
    tolerance)."""
    import onnx

    cfg = model.cfg
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    graphs: dict[str, Any] = {}
    timings: dict[str, float] = {}
    ins, outs = encoder_io(cfg)
    for precision in opts.precisions:
        names = encoder_files(precision)
        t0 = time.perf_counter()
        say(f"building the {precision} encoder graph")
        graph = build_encoder_graph(cfg, weights, precision, opts.opset)
        save_with_shared_data([(graph, tmp / names["graph"])], tmp / names["weights"])
        onnx.checker.check_model(str(tmp / names["graph"]), full_check=False)
        graphs[f"encoder.{precision}"] = {
            "file": names["graph"], "role": "encoder", "precision": precision, "external_data": names["weights"],
            "inputs": [{"name": n, "dtype": "float32", "shape": s} for n, s in ins],
            "outputs": [{"name": n, "dtype": "float32", "shape": s} for n, s in outs],
        }
        timings[f"convert_{precision}_s"] = round(time.perf_counter() - t0, 3)
    manifest: dict[str, Any] = {
        "format": ENCODER_FORMAT, "format_version": ENCODER_FORMAT_VERSION, "created": now_iso(),
        "kind": "encoder", "config": cfg.to_dict(), "parameters": cfg.num_parameters(),
        "tokens_per_frame": cfg.tokens_per_frame, "source": opts.source or dict(getattr(model, "weights_source", {})), "opset": opts.opset,
        "exporter": {"name": "vitac_deploy.exporters.encoder_graph", "vitac_deploy": __version__, **versions()},
        "graphs": graphs,
        "contract": "pixels [batch, 3, S, S] float32: single frames preprocessed by vitac_deploy.encoder."
                    "preprocess; each is encoded as a tubelet of itself repeated (the planner's way). "
                    "features [batch, N, D]: layer-normed without affine (what the predictor takes); "
                    "features_raw: before that norm",
        "files": {p.name: file_digest(p) for p in sorted(tmp.iterdir())},
        "tolerances": {p: TOLERANCES[p].to_dict() for p in opts.precisions},
        "validation": {"skipped": not opts.validate},
        "timings": timings,
    }
    manifest = seal(manifest)
    write_json_atomic(tmp / MANIFEST, manifest)
    if opts.validate:
        manifest["validation"] = validate_encoder_graphs(model, tmp, manifest, opts, say)
        failed = [p for p in opts.precisions if not manifest["validation"][p]["passed"]]
        if failed:
            raise ValidationError("exported encoder graph does not match the reference: " + ", ".join(
                f"{p} max abs {manifest['validation'][p]['max_abs']:.3g} > tolerance {TOLERANCES[p].max_abs:g}"
                for p in failed) + " (nothing was written)")
        manifest = seal(manifest)
        write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def validate_encoder_graphs(model, artifact: Path, manifest: dict[str, Any], opts: EncoderExportOptions,
                            say: Progress) -> dict[str, Any]:
    """Every precision's encoder graph through the encoder runtime (ONNX Runtime, CPU) against the
    reference on the same frames."""
    from ..runtimes import open_encoder

    images = validation_images(model.cfg, opts.validation_frames, opts.validation_seed)
    results: dict[str, Any] = {"inputs": {"frames": opts.validation_frames, "seed": opts.validation_seed,
                                          "image_shape": list(images.shape)}}
    for precision in opts.precisions:
        say(f"validating the {precision} encoder graph with ONNX Runtime vs PyTorch")
        enc = open_encoder(artifact, backend="onnxruntime", device="cpu", precision=precision, manifest=manifest)
        results[precision] = encoder_parity(enc, model, images, precision)
    return results

"""`export`: reference model -> validated artifact directory (graphs, weights, manifest), atomically."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .. import __version__
from ..contract import CACHE_CONTRACTS, energy_io, static_max_len, step_io
from ..errors import ValidationError, VitacError
from ..precision import PRECISIONS as _PRECISIONS, parse_list as parse_precisions, precision as get_precision
from ..artifacts import (ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, CONCAT_FORMAT_VERSION, ENCODER_DIR, MANIFEST,
                         Progress, file_digest, now_iso, publishing, seal, versions, write_json_atomic)
from ..validation.metrics import TOLERANCES
from ..graph_forms import FORMS, GRAPH_FORMS, PORTABLE
from .energy_graph import build_energy_graph
from .form_graphs import build_form_graph
from .step_graph import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, STATIC_OPSET
from .weights import save_with_shared_data

PRECISIONS = tuple(_PRECISIONS)
ENERGY_FILE = "energy.onnx"
ENERGY_TOLERANCE = 1e-5   # float32 mean over N x D entries, against float64 (the golden energies' tolerance)


def graph_files(precision: str) -> dict[str, str]:
    suffix = get_precision(precision).file_suffix
    return {"step": f"step{suffix}.onnx", "first": f"first{suffix}.onnx", "weights": f"weights.{precision}.bin"}


@dataclass
class ExportOptions:
    """Every `vitac-deploy export` flag, as a Python argument."""

    precisions: Sequence[str] = PRECISIONS
    opset: Optional[int] = None             # None: 17 for the concat contract, 24 (TensorScatter) for static
    validate: bool = True
    first_frame_graph: bool = True
    validation_frames: int = 4
    validation_batch: int = 2
    validation_seed: int = 0
    force: bool = False
    save_polygraphy: Optional[Path] = None   # write the validated steps for `polygraphy run` here
    source: dict[str, Any] = field(default_factory=dict)   # checkpoint path/sha256 or random-init seed
    cache: str = "concat"                   # KV cache contract: concat (any runtime) or static (in place, opset 24)
    cache_frames: Optional[int] = None      # static: frames the fixed-length cache holds (default max_frames)
    graph_form: str = PORTABLE              # the operators the step graphs are written in (vitac_deploy.graph_forms)

    @property
    def graph_opset(self) -> int:
        """The opset the graphs are written with."""
        if self.opset is not None:
            return self.opset
        if self.graph_form != PORTABLE and self.graph_form in FORMS and self.cache in FORMS[self.graph_form].caches:
            return FORMS[self.graph_form].opset(self.cache)
        return STATIC_OPSET if self.cache == "static" else DEFAULT_OPSET


def _check_options(opts: ExportOptions) -> None:
    parse_precisions(opts.precisions)
    if opts.cache not in CACHE_CONTRACTS:
        raise VitacError(f"--cache must be one of {', '.join(CACHE_CONTRACTS)}, got {opts.cache}")
    if opts.graph_form != PORTABLE:
        _check_form_options(opts)
    elif opts.cache == "static":
        if opts.graph_opset != STATIC_OPSET:
            raise VitacError(f"--cache static writes opset {STATIC_OPSET} (TensorScatter), "
                             f"got --opset {opts.graph_opset}")
    elif not MIN_OPSET <= opts.graph_opset <= MAX_OPSET:
        raise VitacError(f"--opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opts.graph_opset}")
    if opts.cache_frames is not None and opts.cache != "static":
        raise VitacError("--cache-frames applies to --cache static only (the concat cache grows as it goes)")


def check_options(opts: ExportOptions) -> None:
    """Refuse bad export options in one line (VitacError), before any work."""
    _check_options(opts)


def _check_form_options(opts: ExportOptions) -> None:
    """A non-portable graph form: its cache contracts and opsets."""
    if opts.graph_form not in FORMS:
        raise VitacError(f"--graph-form must be one of {', '.join(GRAPH_FORMS)}, got {opts.graph_form}")
    form = FORMS[opts.graph_form]
    if opts.cache not in form.caches:
        raise VitacError(f"--graph-form {form.name} has the {' or '.join(form.caches)} cache contract, not "
                         f"--cache {opts.cache}")
    lo, hi = form.opsets
    if opts.cache == "static" and opts.graph_opset < STATIC_OPSET:
        raise VitacError(f"--cache static writes opset {STATIC_OPSET} (TensorScatter), got --opset {opts.graph_opset}")
    if not lo <= opts.graph_opset <= hi:
        raise VitacError(f"--graph-form {form.name} writes opset {lo}..{hi}, got --opset {opts.graph_opset}")


def export_artifact(model, out: str | os.PathLike, options: Optional[ExportOptions] = None,
                    progress: Optional[Progress] = None) -> dict[str, Any]:
    """Write `model`'s step graphs to the directory `out` and return the manifest.

    Every graph is validated with ONNX Runtime against the reference (full recompute) unless
    `options.validate` is False; a graph outside its tolerance raises ValidationError and
    nothing is left at `out`. An existing `out` is replaced (with `options.force`) only if it is
    empty or one of our artifacts, and only once the new one is complete; a concurrent export to
    the same `out` is refused.
    """
    opts = options or ExportOptions()
    _check_options(opts)
    # each precision once (`--precision fp16,fp16` built, validated and listed fp16 twice)
    opts = replace(opts, precisions=list(parse_precisions(opts.precisions)))
    say = progress or (lambda msg: None)
    out = Path(out)
    if opts.cache == "static":
        try:
            static_max_len(model.cfg, opts.cache_frames)
        except ValueError as e:
            raise VitacError(f"--cache-frames: {e}") from None
    if opts.save_polygraphy is not None:
        if not opts.validate:
            raise VitacError("--save-polygraphy saves what validation checks: drop --no-validate")
        from ..validation.polygraphy import check_save_target

        check_save_target(opts.save_polygraphy)
    with publishing(out, opts.force, (ARTIFACT_FORMAT,), say, carry=(ENCODER_DIR,)) as tmp:
        manifest = _write_artifact(model, tmp, opts, say)
    if opts.save_polygraphy is not None:
        # after the swap: the commands name the artifact where it now is
        from ..validation.polygraphy import save_polygraphy

        say(f"writing the validated steps for `polygraphy run` to {opts.save_polygraphy}")
        save_polygraphy(opts.save_polygraphy, out, model, _validation_inputs(model.cfg, opts), opts.precisions,
                        manifest)
    return manifest


def _write_artifact(model, tmp: Path, opts: ExportOptions, say: Progress) -> dict[str, Any]:
    """Graphs, weights and the sealed manifest into `tmp`, validated (ValidationError if not within
    tolerance)."""
    import onnx

    cfg = model.cfg
    static = opts.cache == "static"
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    graphs: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for precision in opts.precisions:
        names = graph_files(precision)
        t0 = time.perf_counter()
        say(f"building {precision} graphs")
        # the static step graph runs frame 0 itself (fixed shapes: no empty past to express)
        roles = ["step"] + (["first"] if opts.first_frame_graph and not static else [])
        models = [(build_form_graph(cfg, weights, precision, role == "first", opts.graph_opset, opts.cache,
                                    opts.cache_frames, opts.graph_form), tmp / names[role])
                  for role in roles]
        say(f"writing {', '.join(names[r] for r in roles)} + {names['weights']}")
        save_with_shared_data(models, tmp / names["weights"])
        for role in roles:
            onnx.checker.check_model(str(tmp / names[role]), full_check=False)
            ins, outs = step_io(cfg, get_precision(precision).dtype, role == "first",
                                opts.cache, opts.cache_frames)
            graphs[f"{role}.{precision}"] = {
                "file": names[role], "role": role, "precision": precision,
                "cache_dtype": get_precision(precision).dtype,
                "external_data": names["weights"],
                "inputs": [s.to_dict() for s in ins], "outputs": [s.to_dict() for s in outs],
            }
        timings[f"convert_{precision}_s"] = round(time.perf_counter() - t0, 3)
    # the energy graph has no cache: the opset the concat graphs use keeps it readable everywhere
    onnx.save(build_energy_graph(cfg, min(opts.graph_opset, MAX_OPSET)), str(tmp / ENERGY_FILE))
    e_ins, e_outs = energy_io(cfg)
    graphs["energy"] = {"file": ENERGY_FILE, "role": "energy", "precision": "fp32",
                        "inputs": [s.to_dict() for s in e_ins], "outputs": [s.to_dict() for s in e_outs]}

    files = {p.name: file_digest(p) for p in sorted(tmp.iterdir())}
    frames = opts.cache_frames or cfg.max_frames
    cache = ({"contract": "static", "frames": frames, "max_len": static_max_len(cfg, frames),
              "inputs": "write_index, attn_bias: row t of vitac_deploy.contract.static_rows; present_* "
                        "is past_* updated in place (bind both to one buffer)"} if static
             else {"contract": "concat"})
    manifest: dict[str, Any] = {
        "format": ARTIFACT_FORMAT, "format_version": ARTIFACT_FORMAT_VERSION if static else CONCAT_FORMAT_VERSION,
        "created": now_iso(), "cache": cache,
        "config": cfg.to_dict(),
        "tokens": {"per_frame": cfg.tokens_per_frame, "conditioning": cfg.cond_tokens,
                   "per_cache_frame": cfg.tokens_per_step},
        "source": opts.source or dict(getattr(model, "weights_source", {})),
        "opset": opts.graph_opset,
        "graph_form": opts.graph_form,
        "exporter": {"name": "vitac_deploy.exporters.step_graph", "vitac_deploy": __version__, **versions()},
        "graphs": graphs,
        "first_frame": ("first.* graphs take no past inputs: TensorRT profiles may not express "
                        "past_len = 0; step.* graphs accept past_len = 0 on ONNX Runtime"),
        "rope": "step.* graphs take the frame's RoPE rows (rope_cos, rope_sin): row t of "
                "vitac_deploy.contract.rope_rows for the frame after t cached frames",
        "files": files,
        "tolerances": {p: TOLERANCES[p].to_dict() for p in opts.precisions},
        "validation": {"skipped": not opts.validate},
        "timings": timings,
    }
    manifest = seal(manifest)
    write_json_atomic(tmp / MANIFEST, manifest)

    if opts.validate:
        manifest["validation"] = validate_artifact(model, tmp, opts, say)
        failed = [p for p in opts.precisions if not manifest["validation"][p]["passed"]]
        if not manifest["validation"]["energy"]["passed"]:
            raise ValidationError(f"exported energy graph is off by {manifest['validation']['energy']['max_abs']:.3g} "
                                  f"(> {ENERGY_TOLERANCE:g}; nothing was written)")
        if failed:
            worst = {p: manifest["validation"][p]["worst_max_abs"] for p in failed}
            raise ValidationError(
                "exported graph does not match the reference: " + ", ".join(
                    f"{p} max abs {worst[p]:.3g} > tolerance {TOLERANCES[p].max_abs:g}" for p in failed)
                + " (nothing was written)")
        manifest = seal(manifest)   # after the checks: a failed graph's NaN errors are no JSON
        write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def _validation_inputs(cfg, opts: ExportOptions):
    """The seeded rollout inputs the export validates with."""
    from ..validation import ParityInputs

    frames = opts.validation_frames
    if opts.cache == "static":   # a rollout fits the fixed cache
        frames = min(frames, opts.cache_frames or cfg.max_frames)
    return ParityInputs.make(cfg, opts.validation_batch, frames, seed=opts.validation_seed)


def validate_artifact(model, artifact: Path, opts: ExportOptions, say: Progress) -> dict[str, Any]:
    """Each precision's step graph through the ONNX Runtime runtime (CPU) and each first-frame
    graph directly, against the reference recomputing the whole sequence."""
    from ..runtimes import open_runtime
    from ..validation import check_parity

    inputs = _validation_inputs(model.cfg, opts)
    results: dict[str, Any] = {"inputs": {"batch": opts.validation_batch, "context_frames": 1,
                                          "horizon": inputs.horizon, "seed": opts.validation_seed,
                                          "raw_max_abs": float(np.abs(inputs.context).max())}}
    for precision in opts.precisions:
        say(f"validating {precision}: {inputs.horizon}-frame rollout with ONNX Runtime vs PyTorch (full recompute)")
        t0 = time.perf_counter()
        rt = open_runtime(artifact, backend="onnxruntime", device="cpu", precision=precision)
        report = check_parity(rt, model, inputs, precision)
        entry = report.to_dict()
        entry["worst_max_abs"] = report.worst("max_abs")
        entry["worst_cosine"] = report.worst("cosine")
        if opts.first_frame_graph and opts.cache != "static":
            entry["first_frame_graph_max_abs"] = _check_first_graph(artifact, precision, rt, inputs)
            entry["passed"] = entry["passed"] and entry["first_frame_graph_max_abs"] <= report.tolerance.max_abs
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        results[precision] = entry
    results["energy"] = _check_energy_graph(artifact, model.cfg, opts.validation_seed)
    return results


def _quiet(ort):
    """Session options logging errors only: ONNX Runtime's warnings would bury our own lines."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


def _check_energy_graph(artifact: Path, cfg, seed: int) -> dict[str, Any]:
    """The energy graph against numpy in float64 (docs/planner.md section 3)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    pred = rng.standard_normal((3, cfg.tokens_per_frame, cfg.embed_dim)).astype(np.float32)
    goal = rng.standard_normal((1, cfg.tokens_per_frame, cfg.embed_dim)).astype(np.float32)
    sess = ort.InferenceSession(str(artifact / ENERGY_FILE), _quiet(ort), providers=["CPUExecutionProvider"])
    got = sess.run(["energy"], {"prediction": pred, "goal": goal})[0]
    want = np.abs(pred.astype(np.float64) - goal).mean(axis=(1, 2))
    err = float(np.abs(got - want).max())
    return {"max_abs": err, "tolerance": ENERGY_TOLERANCE, "passed": err <= ENERGY_TOLERANCE}


def _check_first_graph(artifact: Path, precision: str, rt, inputs) -> float:
    """The first-frame graph must give what the step graph gives at past_len = 0 (outputs and cache)."""
    import onnxruntime as ort

    names = graph_files(precision)
    sess = ort.InferenceSession(str(artifact / names["first"]), _quiet(ort), providers=["CPUExecutionProvider"])
    B = inputs.context.shape[0]
    feeds = {"features": inputs.context[:, 0], "action": inputs.actions[:, 0], "state": inputs.states[:, 0]}
    if inputs.extrinsics is not None:
        feeds["extrinsics"] = inputs.extrinsics[:, 0]
    first = sess.run(["next_features"], feeds)[0]
    rt.reset(B)
    step = rt.append(feeds["features"], feeds["action"], feeds["state"], feeds.get("extrinsics"))
    return float(np.abs(first - step).max())

"""Build TensorRT engines from an artifact's step graphs (needs tensorrt or tensorrt_rtx, and a GPU).

Written against the TensorRT Python API documentation; version differences are looked up, not
assumed:
- TensorRT >= 9 (and TensorRT for RTX): the float16 graph as a STRONGLY_TYPED network; the ONNX
  types decide precision. TensorRT 11 has no other way: every network is strongly typed (the
  creation flag is accepted and ignored) and the FP16 / OBEY_PRECISION_CONSTRAINTS builder flags
  are gone, so no weak-typing flag is ever set there.
- TensorRT 8.x: no strong typing; the float32 graph with the FP16 builder flag, and the layers
  that the float16 graph keeps in float32 (normalization) pinned to float32 with
  OBEY_PRECISION_CONSTRAINTS. The manifest says so.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ...config import PredictorConfig
from ...errors import VitacError
from ...graph_forms import graph_form
from ...precision import REFERENCE_PRECISION, precision as get_precision
from ...artifacts import (CONCAT_ENGINE_FORMAT_VERSION, ENGINE_FORMAT, ENGINE_FORMAT_VERSION, MANIFEST, cache_contract,
                         now_iso, read_manifest, seal, sha256_file, verify_files, write_json_atomic)
from ..gpu import gpu_info
from .compat import check_graph_form_support, check_kv_cache_support
from .module import import_tensorrt
from .profiles import ProfileOptions, check_profile_options, step_profile



@dataclass
class EngineOptions:
    """Every `vitac-deploy build-engine` flag, as a Python argument."""

    precision: str = "fp16"
    profile: ProfileOptions = field(default_factory=ProfileOptions)
    workspace_mib: Optional[int] = None
    opt_level: Optional[int] = None
    timing_cache: Optional[Path] = None
    version_compatible: bool = False
    hardware_compatible: bool = False
    verbose: bool = False
    flavour: str = "tensorrt"
    compute_capabilities: tuple[str, ...] = ()   # tensorrt-rtx only: target architectures, e.g. ("8.6", "8.9")
    tf32: bool = False      # allow TF32 in float32 layers (off: fp32 means fp32)


def _strongly_typed(trt) -> Optional[int]:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return None if flag is None else 1 << int(flag)


def _network_flags(trt, strongly_typed: bool) -> int:
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(explicit)
    if strongly_typed and _strongly_typed(trt) is not None:   # TensorRT 11 may drop the flag: typed anyway
        flags |= _strongly_typed(trt)
    return flags


NORMALIZATION_NAMES = ("normalize_features", "normalize_prediction", "norm1", "norm2", "predictor_norm")


def normalization_layers(trt, network) -> list:
    """The layers the float16 graph keeps in float32: LayerNorm (one NORMALIZATION layer from opset
    17; ReduceMean/Sub/Pow/... from the decomposition of older opsets, named after their ONNX nodes)."""
    norm_type = getattr(trt.LayerType, "NORMALIZATION", None)
    layers = (network.get_layer(i) for i in range(network.num_layers))
    return [layer for layer in layers
            if any(n in layer.name for n in NORMALIZATION_NAMES) or (norm_type is not None and layer.type == norm_type)]


def _pin_normalization_fp32(trt, network) -> int:
    """TensorRT 8.x weak typing: keep normalization layers (and their reductions) in float32."""
    pinned = normalization_layers(trt, network)
    for layer in pinned:
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
    return len(pinned)


def _compute_capabilities(trt, targets: list[str]) -> list:
    """TensorRT for RTX's ComputeCapability members for "8.6"-style strings, or one line naming the choices."""
    known = {m: getattr(trt.ComputeCapability, m) for m in trt.ComputeCapability.__members__}
    out = []
    for cc in targets:
        key = "SM" + cc.replace(".", "")
        if key not in known:
            choices = ", ".join(f"{k[2:-1]}.{k[-1]}" for k in known if k.startswith("SM"))
            raise VitacError(f"--compute-capability {cc} is not one this TensorRT for RTX builds for ({choices})")
        out.append(known[key])
    return out


def _progress_monitor(trt, say: Callable[[str], None]):
    """Report the builder's top-level phases (TensorRT >= 10 and RTX); None where not supported."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self):
            base.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                say(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True   # never cancel

        def phase_finish(self, phase_name):
            self.steps.pop(phase_name, None)

    return Monitor()


def check_parser_opset(trt_version: str, flavour: str, opset: int) -> None:
    """TensorRT's ONNX parser reads LayerNormalization (opset 17, our default) from 8.6 on: refuse
    the combination that JetPack 5.1 (TensorRT 8.5) cannot parse, before parsing."""
    if flavour != "tensorrt":
        return
    major, minor = (int(x) for x in (trt_version.split(".") + ["0"])[:2])
    if (major, minor) < (8, 6) and opset >= 17:
        raise VitacError(f"TensorRT {trt_version} cannot parse this artifact's LayerNormalization (opset {opset}; "
                         f"TensorRT reads it from 8.6): re-export with `vitac-deploy export --opset 16`")


def _cache_io_half(trt, network) -> int:
    """TensorRT 8.x weak typing keeps a float32 graph's IO in float32 whatever the FP16 flag: declare
    the cache (past/present) and RoPE IO float16, so the cache costs half (it is the memory that
    matters) and matches what the runtime binds."""
    n = 0
    for tensors in ([network.get_input(i) for i in range(network.num_inputs)],
                    [network.get_output(i) for i in range(network.num_outputs)]):
        for t in tensors:
            if t.name.startswith(("past_", "present_", "rope_")):
                t.dtype = trt.float16
                n += 1
    return n


def energy_profile(cfg: PredictorConfig, prof: ProfileOptions) -> dict[str, tuple]:
    frame = (cfg.tokens_per_frame, cfg.embed_dim)
    return {"prediction": tuple((b,) + frame for b in (prof.min_batch, prof.opt_batch, prof.max_batch)),
            "goal": ((1,) + frame,) * 3}


def engine_manifest(artifact: Path, cfg: PredictorConfig, flavour: str, trt_version: str, gpu: Optional[dict],
                    targets: list, opts: EngineOptions, prof: ProfileOptions, how: str,
                    engines: list[dict[str, Any]], cache: Optional[dict[str, Any]] = None,
                    kind: str = "predictor", graph_form: str = "portable") -> dict[str, Any]:
    """ENGINE.plan.json: how, where and from what the engines were built (the runtime checks it
    before deserializing anything), with the artifact's cache contract, sealed with its own sha256.
    `kind`: "predictor", or "encoder" for an encoder's engine (its config is the encoder's)."""
    cache = cache or {"contract": "concat"}
    static = cache["contract"] == "static"
    encoder = kind == "encoder"
    return seal({
        "format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION if static else CONCAT_ENGINE_FORMAT_VERSION,
        "created": now_iso(), "kind": kind, "cache": cache, "graph_form": graph_form,
        "tensorrt": {"flavour": flavour, "version": trt_version},
        "gpu": gpu, "config": cfg.to_dict(), "artifact": str(artifact),
        **({"compute_capabilities": targets} if flavour == "tensorrt-rtx" else {}),
        "precision": opts.precision, "precision_how": how, "tf32": opts.tf32,
        "first_frame": ("-" if encoder else "step engine (static cache: fixed shapes, frame 0 included)" if static
                        else "first engine" if prof.min_past_frames > 0 else "step engine with past_len = 0"),
        "build_flags": {"workspace_mib": opts.workspace_mib, "opt_level": opts.opt_level,
                        "version_compatible": opts.version_compatible, "hardware_compatible": opts.hardware_compatible,
                        "timing_cache": str(opts.timing_cache) if opts.timing_cache else None,
                        "batch": [prof.min_batch, prof.opt_batch, prof.max_batch],
                        "max_frames": 1 if encoder else cache["frames"] if static else prof.max_frames},
        "engines": engines,
    })


def read_artifact_manifest(artifact: Path) -> tuple[dict[str, Any], str]:
    """The manifest of a predictor or an encoder artifact, and which it is ("predictor", "encoder")."""
    from ...artifacts import ENCODER_FORMAT, read_encoder_manifest

    try:
        fmt = json.loads((Path(artifact) / MANIFEST).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None   # read_manifest says what is wrong
    if fmt == ENCODER_FORMAT:
        return read_encoder_manifest(artifact), "encoder"
    return read_manifest(artifact), "predictor"


def check_batch_options(o: ProfileOptions) -> ProfileOptions:
    """An encoder engine's profile spans batch only (frames encoded at once)."""
    if not 1 <= o.min_batch <= o.opt_batch <= o.max_batch:
        raise VitacError(f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                         f"{o.min_batch}, {o.opt_batch}, {o.max_batch}")
    return o


def encoder_profile(graph: dict[str, Any], o: ProfileOptions) -> dict[str, tuple]:
    """(min, opt, max) shapes of the encoder graph's pixels: a batch of frames."""
    (spec,) = graph["inputs"]
    return {spec["name"]: tuple(tuple(b if d == "batch" else int(d) for d in spec["shape"])
                                for b in (o.min_batch, o.opt_batch, o.max_batch))}


def build_engine(artifact: Path, out: Path, opts: EngineOptions,
                 say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Build `out` (step engine), where the first frame needs it `out` with `.first.plan`, and the
    planner's energy engine (`.energy.plan`); write `out.json`. Atomic: nothing is left behind on failure."""
    trt = import_tensorrt(opts.flavour)
    manifest, kind = read_artifact_manifest(artifact)
    verify_files(artifact, manifest)   # TensorRT parses what the hashes vouch for, nothing else
    if kind == "encoder":
        from ...encoder.config import EncoderConfig

        cfg = EncoderConfig.from_dict(manifest["config"])
        prof = check_batch_options(opts.profile)
    else:
        cfg = PredictorConfig.from_dict(manifest["config"])
        prof = check_profile_options(opts.profile, cfg)
    prec = get_precision(opts.precision, "--precision")
    if opts.opt_level is not None and not 0 <= opts.opt_level <= 5:
        raise VitacError(f"--opt-level must be in 0..5, got {opts.opt_level}")
    if opts.workspace_mib is not None and opts.workspace_mib < 1:
        raise VitacError(f"--workspace must be at least 1 MiB, got {opts.workspace_mib}")
    if opts.timing_cache is not None:   # checked before minutes of building, not after the first engine
        check_timing_cache(Path(opts.timing_cache))
    rtx = opts.flavour == "tensorrt-rtx"
    if opts.compute_capabilities and not rtx:
        raise VitacError("--compute-capability is for --flavour tensorrt-rtx (TensorRT builds for the GPU it runs on)")
    if opts.hardware_compatible and rtx:
        raise VitacError("--hardware-compatible is for TensorRT; TensorRT for RTX targets --compute-capability")
    check_parser_opset(trt.__version__, opts.flavour, int(manifest.get("opset", 17)))
    static = cache_contract(manifest, artifact) == "static"
    check_kv_cache_support(trt, opts.flavour, "static" if static else "concat")
    form = graph_form(manifest, artifact)
    check_graph_form_support(trt, opts.flavour, form)
    # TensorRT for RTX compiles ahead of time without a GPU (kernels are JIT-compiled where it runs).
    gpu = gpu_info(required=not rtx)
    targets = list(opts.compute_capabilities) or ([gpu["compute_capability"]] if gpu else ["default"])
    sm_targets = _compute_capabilities(trt, targets) if rtx and targets != ["default"] else []
    major = int(trt.__version__.split(".")[0])
    # TensorRT 11 builds strongly typed networks only, with or without the flag
    strong = opts.flavour == "tensorrt-rtx" or major >= 11 or (major >= 9 and _strongly_typed(trt) is not None)
    if prec.name == REFERENCE_PRECISION:
        source_precision, how = prec.name, "float32 network from the fp32 graphs"
    elif strong and prec.strongly_typed:
        source_precision, how = prec.name, (f"strongly typed network from the {prec.name} graphs (ONNX types decide "
                                            f"precision)")
    elif prec.name == "fp16":   # TensorRT 8.x: the builder flag is how it knows half precision
        source_precision, how = REFERENCE_PRECISION, (
            "FP16 builder flag on the fp32 graphs, normalization layers pinned to float32 "
            "(OBEY_PRECISION_CONSTRAINTS), cache IO float16: TensorRT < 9 has no strong typing")
    else:
        raise VitacError(f"TensorRT {trt.__version__} cannot build {prec.name} engines from this artifact "
                         f"(it needs strong typing)")
    logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)

    def build_one(role: str, graph: dict[str, Any], shapes: dict[str, tuple], target: Path,
                  half: bool) -> dict[str, Any]:
        onnx_path = artifact / graph["file"]
        network = builder.create_network(_network_flags(trt, strong and half))
        parser = trt.OnnxParser(network, logger)
        say(f"parsing {graph['file']}")
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise VitacError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        if opts.workspace_mib:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mib << 20)
        if opts.opt_level is not None and hasattr(config, "builder_optimization_level"):
            config.builder_optimization_level = opts.opt_level
        set_tf32(trt, config, opts.tf32)
        pinned = 0
        if half and not strong:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            pinned = _pin_normalization_fp32(trt, network)
            _cache_io_half(trt, network)
        if opts.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if opts.hardware_compatible:
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        if sm_targets:
            config.num_compute_capabilities = len(sm_targets)
            for i, sm in enumerate(sm_targets):
                config.set_compute_capability(sm, i)
        monitor = _progress_monitor(trt, say)
        if monitor is not None:
            config.progress_monitor = monitor
        cache = None
        if opts.timing_cache is not None:
            try:
                blob = opts.timing_cache.read_bytes() if opts.timing_cache.is_file() else b""
            except OSError as e:
                raise VitacError(f"cannot read --timing-cache {opts.timing_cache}: {e.strerror or e}") from None
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        say(f"building the {role} engine ({how if half else 'float32'}); this can take minutes")
        t0 = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise VitacError(f"TensorRT failed to build the {role} engine (run with --verbose for its log)")
        tmp = target.with_name(target.name + ".partial")
        partials.append(tmp)   # removed if anything below fails: nothing half-built is left
        with open(tmp, "wb") as f:
            f.write(memoryview(plan))
        if cache is not None:
            ser = config.get_timing_cache().serialize()
            tc_tmp = opts.timing_cache.with_name(opts.timing_cache.name + ".partial")
            partials.append(tc_tmp)
            tc_tmp.write_bytes(memoryview(ser))
            os.replace(tc_tmp, opts.timing_cache)
        return {"role": role, "file": target.name, "tmp": tmp, "source_onnx": graph["file"],
                "source_onnx_sha256": manifest["files"].get(graph["file"]), "build_s": round(time.perf_counter() - t0, 1),
                "profile": {k: [list(s) for s in v] for k, v in shapes.items()}, "layers_pinned_fp32": pinned}

    def graph_of(role: str) -> dict[str, Any]:
        graph = manifest["graphs"].get(f"{role}.{source_precision}")
        if graph is None:
            raise VitacError(f"{artifact} has no {role}.{source_precision} graph: re-export with that precision")
        return graph

    def profile_of(role: str, min_past: int) -> dict[str, tuple]:
        return step_profile(graph_of(role), cfg, ProfileOptions(prof.min_batch, prof.opt_batch, prof.max_batch,
                                                                prof.max_frames, min_past))

    half = prec.name != REFERENCE_PRECISION
    if kind == "encoder":
        jobs = [("encoder", graph_of("encoder"), encoder_profile(graph_of("encoder"), prof), out, half)]
    else:
        jobs = [("step", graph_of("step"), profile_of("step", prof.min_past_frames), out, half)]
        # static: every shape but the batch is fixed, frame 0 included: no first-frame engine
        if prof.min_past_frames > 0 and not static:
            jobs.append(("first", graph_of("first"), profile_of("first", 0),
                         out.with_name(out.stem + ".first" + out.suffix), half))
        if "energy" in manifest["graphs"]:
            jobs.append(("energy", manifest["graphs"]["energy"], energy_profile(cfg, prof),
                         out.with_name(out.stem + ".energy" + out.suffix), False))
    built: list[dict[str, Any]] = []
    partials: list[Path] = []
    try:
        for job in jobs:
            built.append(build_one(*job))
        engines = []
        for b in built:
            final = out.parent / b.pop("file")
            os.replace(b.pop("tmp"), final)
            engines.append({**b, "file": final.name, "sha256": sha256_file(final)})
    except BaseException:
        for tmp in partials:
            tmp.unlink(missing_ok=True)
        raise
    data = engine_manifest(artifact, cfg, opts.flavour, trt.__version__, gpu, targets, opts, prof, how, engines,
                           manifest.get("cache"), kind, form)
    write_json_atomic(out.with_name(out.name + ".json"), data)
    return data


def check_timing_cache(path: Path) -> None:
    """`--timing-cache` is read if it is there and replaced after each engine: a regular file (or
    nothing yet) in an existing directory."""
    if path.exists() and not path.is_file():
        raise VitacError(f"--timing-cache {path} exists and is not a file (a timing cache is one file)")
    if not path.parent.is_dir():
        raise VitacError(f"cannot write --timing-cache {path}: {path.parent} does not exist")


def set_tf32(trt, config, allow: bool) -> None:
    """TF32 is on by default in TensorRT's builder: float32 layers would run with a 10-bit mantissa
    on Ampere and newer and miss the fp32 tolerance. fp32 means fp32 unless TF32 is asked for."""
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:
        return
    if allow:
        config.set_flag(flag)
    else:
        config.clear_flag(flag)

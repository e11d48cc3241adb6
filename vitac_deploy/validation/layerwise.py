"""Layer by layer: the fp32 and fp16 step graphs on the same feeds with every named intermediate
tensor marked as an output, through Polygraphy's runners and comparator (`debug-precision`).

The feeds are those of a rollout driven by the fp32 graph itself (its `next_features_raw` fed back,
its `present_*` passed as the next step's `past_*`), so no checkpoint is needed; the fp16 graph gets
the same values in its own dtypes. Each tensor found in both graphs under the same name is compared
(the fp16 graph's own Casts have no fp32 counterpart and are skipped); the first one in graph order
past the tolerance is where precision is lost, and its name carries the upstream module.

Polygraphy is imported only here and in validation/polygraphy.py (the `polygraphy` extra).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..config import PredictorConfig
from ..contract import ROPE_INPUTS, STATIC_INPUTS, past_names, present_names, rope_rows, static_max_len, static_rows
from ..errors import VitacError, first_line
from ..inputs import check_tolerance
from ..artifacts import read_manifest, verify_files, write_json_atomic
from .metrics import TOLERANCES
from ..precision import REFERENCE_PRECISION, precision as get_precision
from .polygraphy import import_polygraphy
from .parity import ParityInputs



@dataclass
class TensorError:
    """One intermediate tensor's error of the graph under test against the fp32 graph, over all steps."""

    name: str
    module: str              # the upstream module the tensor belongs to ("" outside any)
    max_abs: float
    rel: float               # max abs / RMS of the fp32 tensor (per step, worst): the error at its own scale
    rms: float               # RMS of the fp32 tensor (the largest over the steps)
    nan: int                 # in the graph under test
    inf: int
    max_magnitude: float     # largest finite |x| of the graph under test
    flagged: bool            # some element off by more than atol x max(1, rms) (Polygraphy's check)


@dataclass
class LayerwiseReport:
    artifact: str
    reference: str           # "fp32 (onnxruntime cpu)"
    tested: str              # "fp16 (onnxruntime cpu)"
    atol: float
    steps: int
    batch: int
    tensors: list[TensorError] = field(default_factory=list)

    @property
    def first(self) -> Optional[TensorError]:
        """The first flagged tensor in graph order, or None."""
        return next((t for t in self.tensors if t.flagged), None)

    def to_dict(self) -> dict[str, Any]:
        f = self.first
        return {"artifact": self.artifact, "reference": self.reference, "tested": self.tested,
                "atol": self.atol, "steps": self.steps, "batch": self.batch,
                "first": f.name if f else None, "first_module": f.module if f else None,
                "flagged": sum(t.flagged for t in self.tensors),
                "tensors": [_finite_json(asdict(t)) for t in self.tensors]}


def _finite_json(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf/NaN: such errors are written as strings."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def modules_of(initializers: list[str]) -> set[str]:
    """Upstream module names (and their parents) from initializer names like
    `predictor_blocks.3.mlp.fc1.weight.T:float32`."""
    mods: set[str] = set()
    for name in initializers:
        parts = name.split(":")[0].split(".")
        for end in ("weight", "bias"):
            if end in parts:
                parts = parts[:parts.index(end)]
                break
        else:
            continue
        for i in range(1, len(parts) + 1):
            mods.add(".".join(parts[:i]))
    return mods


def module_of(tensor: str, modules: set[str]) -> str:
    """The longest module whose name prefixes `tensor` (present_key.i belongs to block i's attention)."""
    for kind in ("present_key.", "present_value."):
        if tensor.startswith(kind):
            return f"predictor_blocks.{tensor[len(kind):]}.attn"
    parts = tensor.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return ""


def _runner(path: Path, name: str):
    from polygraphy import constants
    from polygraphy.backend.onnx import ModifyOutputs, OnnxFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner

    # the weights are external data: OnnxFromPath reads them from beside the graph
    model = ModifyOutputs(OnnxFromPath(str(path), external_data_dir=str(path.parent)), outputs=constants.MARK_ALL)
    return OnnxrtRunner(_Session(model), name=name)


class _Session:
    """An ONNX Runtime session of the modified model (a callable loader, as Polygraphy's own
    SessionFromOnnx), logging errors only as the runtimes do: the static contract's TensorScatter
    warns on every run that it copies instead of updating in place (no buffers are bound here).
    Set per session, so that no other session of the process loses its warnings."""

    def __init__(self, model_loader):
        self.model_loader = model_loader

    def __call__(self):
        import onnxruntime as ort
        from polygraphy.backend.onnx import BytesFromOnnx

        so = ort.SessionOptions()
        so.log_severity_level = 3
        return ort.InferenceSession(BytesFromOnnx(self.model_loader)(), so, providers=["CPUExecutionProvider"])


def _cast(feed: dict[str, np.ndarray], dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v.astype(dtypes[k])) for k, v in feed.items()}


def compare_layers(artifact: str | os.PathLike, precision: str = "fp16", steps: int = 3, batch: int = 1,
                   seed: int = 0, atol: Optional[float] = None,
                   progress: Optional[Callable[[str], None]] = None) -> LayerwiseReport:
    """Every named tensor of `artifact`'s `precision` step graph against the fp32 step graph, over a
    `steps`-frame rollout of seeded inputs.

    A tensor is flagged when an element is off by more than `atol` x max(1, RMS of the fp32 tensor):
    `atol` (default: the precision's max-abs tolerance) is stated for normalized features (RMS 1),
    and a tensor at a larger scale (the residual stream) carries a proportionally larger rounding
    error without anything being wrong. No relative term: elements near zero would dominate it.
    `progress(message)` hears of each stage (the graphs loaded with every tensor marked as an output,
    each step run and compared): minutes on a large model.
    """
    say = progress or (lambda message: None)
    if atol is not None:   # before anything is read: NaN or inf would pass every tensor
        check_tolerance(atol, "--atol")
    pg = import_polygraphy()
    from polygraphy.comparator import CompareFunc
    from polygraphy.logger import G_LOGGER

    art = Path(artifact)
    manifest = read_manifest(art)
    verify_files(art, manifest)   # a layer table of a damaged artifact would blame the wrong layer
    cfg = PredictorConfig.from_dict(manifest["config"])
    graphs = manifest["graphs"]
    get_precision(precision, "--precision")
    for p in (REFERENCE_PRECISION, precision):
        if f"step.{p}" not in graphs:
            raise VitacError(f"{art} has no {p} step graph (debug-precision compares it with the fp32 one)")
    if precision == REFERENCE_PRECISION:
        raise VitacError("debug-precision compares a lower precision with fp32: give --precision fp16")
    if not 1 <= steps <= cfg.max_frames or batch < 1:
        raise VitacError(f"--steps must be in 1..{cfg.max_frames} (the model's max_frames) and --batch >= 1")
    atol = TOLERANCES[precision].max_abs if atol is None else float(atol)

    inputs = ParityInputs.make(cfg, batch=batch, frames=steps, seed=seed)
    ref_name, test_name = "fp32", precision
    ref_runner = _runner(art / graphs["step.fp32"]["file"], ref_name)
    test_runner = _runner(art / graphs[f"step.{precision}"]["file"], test_name)
    dtypes = {s["name"]: np.dtype(s["dtype"]) for s in graphs[f"step.{precision}"]["inputs"]}
    try:   # Polygraphy >= 0.53 (CompareFunc.simple is deprecated there)
        from polygraphy.comparator import SimpleCompareFunc as simple
    except ImportError:
        simple = CompareFunc.simple

    def exact(name, index, iter_result, base_iter_result=None):
        # exact names only: Polygraphy's default falls back to substrings and positions, which
        # would pair an fp16-only Cast with some fp32 tensor
        return [name] if name in iter_result else None

    # one step at a time, statistics accumulated: every intermediate tensor of a large model,
    # kept for all steps and both graphs, would not fit in memory
    acc: dict[str, dict[str, Any]] = {}
    carry: dict[str, np.ndarray] = {}
    say(f"loading the fp32 and {precision} step graphs with every tensor marked as an output")
    cache = manifest.get("cache") or {}
    static_frames = cache.get("frames") if cache.get("contract") == "static" else None
    # above CRITICAL: Polygraphy logs a failure over several lines before raising it, and the
    # raised message is the one line the command prints
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        try:
            with ref_runner, test_runner:
                for t, feed in enumerate(_rollout_feeds(cfg, inputs, static_frames)):
                    say(f"step {t + 1}/{steps}: running both graphs and comparing their tensors")
                    if t > 0:   # the fp32 graph's own outputs feed the next step
                        feed["features"] = carry["next_features_raw" if cfg.normalize_reps else "next_features"]
                        for p_name, q_name in zip(past_names(cfg), present_names(cfg)):
                            feed[p_name] = carry[q_name]
                    ref_out = dict(ref_runner.infer(feed))
                    test_feed = _cast({k: v for k, v in feed.items() if k != STATIC_INPUTS[1]}, dtypes)
                    if static_frames is not None:   # the bias in the graph's own dtype: its most negative finite value
                        test_feed[STATIC_INPUTS[1]] = static_rows(cfg, static_frames, dtypes[STATIC_INPUTS[1]].name,
                                                                  1)[1][t]
                    test_out = dict(test_runner.infer(test_feed))
                    fed_back = present_names(cfg) + ["next_features", "next_features_raw"]
                    carry = {k: np.array(ref_out[k]) for k in fed_back if k in ref_out}
                    if static_frames is not None:
                        _unmask(ref_out, test_out)
                    _compare_step(ref_out, test_out, ref_name, test_name, atol, simple, exact, acc)
                    del ref_out, test_out
        except VitacError:
            raise
        except Exception as e:  # noqa: BLE001 - Polygraphy/ORT raise plain exceptions
            raise VitacError(f"cannot run or compare the step graphs of {art}: {first_line(e)}") from None

    import onnx

    model32 = onnx.load(str(art / graphs["step.fp32"]["file"]), load_external_data=False)
    modules = modules_of([i.name for i in model32.graph.initializer])
    order = [o for node in model32.graph.node for o in node.output]
    report = LayerwiseReport(str(art), f"fp32 (onnxruntime cpu, polygraphy {pg.__version__})",
                             f"{precision} (onnxruntime cpu)", atol, steps, batch)
    for name in order:
        if name in acc:
            report.tensors.append(TensorError(name=name, module=module_of(name, modules), **acc[name]))
    return report


def _unmask(ref_out: dict, test_out: dict) -> None:
    """Zero, in both, the elements each graph masked out (the static contract's attn_bias: the
    dtype's most negative finite value, -3.4e38 in fp32 and -65504 in fp16): they are the same
    "no attention" in two dtypes, not an error, and would also swamp the tensor's RMS. An element
    masked in one graph and not in the other stays and is flagged."""
    lo32, lo16 = np.finfo(np.float32).min / 2, np.finfo(np.float16).min / 2
    for name in list(ref_out):
        if name not in test_out:
            continue
        ref, test = _array(ref_out[name]), _array(test_out[name])
        if ref.shape != test.shape:
            continue
        both = (ref <= lo32) & (test <= lo16)
        if both.any():
            ref_out[name], test_out[name] = np.where(both, 0.0, ref), np.where(both, 0.0, test)


def _compare_step(ref_out: dict, test_out: dict, ref_name: str, test_name: str, atol: float, simple, exact,
                  acc: dict[str, dict[str, Any]]) -> None:
    """Compare one step's tensors with Polygraphy's comparator (per-tensor atol scaled by the fp32
    tensor's RMS) and fold the step into `acc` (worst over steps)."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults

    rms = {name: _rms(v) for name, v in ref_out.items()}
    results = RunResults()
    results.append((ref_name, [IterationResult(ref_out, runner_name=ref_name)]))
    results.append((test_name, [IterationResult(test_out, runner_name=test_name)]))
    accuracy = Comparator.compare_accuracy(
        results, compare_func=simple(atol={n: atol * max(1.0, r) for n, r in rms.items()}, rtol=0.0,
                                     find_output_func=exact))
    if not hasattr(accuracy, "values"):   # Polygraphy >= 0.53: one AccuracyResult per compare func
        accuracy = accuracy[0]
    compared = list(accuracy.values())[0][0]   # {tensor: OutputCompareResult} of the one iteration
    for name, result in compared.items():
        a = _array(test_out[name])
        finite = a[np.isfinite(a)]
        max_abs = float(result.max_absdiff)
        rel = max_abs / rms[name] if rms[name] > 0 else (0.0 if max_abs == 0 else math.inf)
        step = {"max_abs": max_abs, "rel": rel, "rms": rms[name], "nan": int(np.isnan(a).sum()),
                "inf": int(np.isinf(a).sum()), "max_magnitude": float(np.abs(finite).max()) if finite.size else 0.0,
                "flagged": not bool(result)}
        old = acc.setdefault(name, step)
        if old is not step:   # counts add up over the steps; everything else is the worst step's
            for key, value in step.items():
                old[key] = old[key] + value if key in ("nan", "inf") else (
                    old[key] or value if key == "flagged" else max(old[key], value))


def _array(value) -> np.ndarray:
    """An IterationResult entry (a LazyArray in Polygraphy >= 0.44) as float64."""
    return np.asarray(value.load() if hasattr(value, "load") else value, np.float64)


def _rms(value) -> float:
    """RMS of one tensor's finite entries."""
    a = _array(value)
    a = a[np.isfinite(a)]
    return float(np.sqrt(np.mean(a * a))) if a.size else 0.0


def _rollout_feeds(cfg: PredictorConfig, inputs: ParityInputs, static_frames: Optional[int] = None):
    """Step t's feed of the seeded inputs (features, conditioning, RoPE rows; empty past at t = 0);
    the caller fills features and past_* of later steps from the fp32 graph's outputs. With
    `static_frames` (the static cache contract), the past is the whole zeroed arena and step t
    also gets row t of write_index and attn_bias (float32)."""
    cos, sin = rope_rows(cfg, "float32")
    B = inputs.context.shape[0]
    past_len = 0 if static_frames is None else static_max_len(cfg, static_frames)
    if static_frames is not None:
        write, bias = static_rows(cfg, static_frames, "float32", B)
    for t in range(inputs.actions.shape[1]):
        feed = {"features": inputs.context[:, 0], "action": inputs.actions[:, t], "state": inputs.states[:, t]}
        if cfg.use_extrinsics:
            feed["extrinsics"] = inputs.extrinsics[:, t]
        feed[ROPE_INPUTS[0]], feed[ROPE_INPUTS[1]] = cos[t], sin[t]
        for name in past_names(cfg):
            feed[name] = np.zeros((B, cfg.num_heads, past_len, cfg.head_dim), np.float32)
        feed = {k: np.ascontiguousarray(v, np.float32) for k, v in feed.items()}
        if static_frames is not None:
            feed[STATIC_INPUTS[0]], feed[STATIC_INPUTS[1]] = np.ascontiguousarray(write[t]), bias[t]
        yield feed


def write_report(path: str | os.PathLike, report: LayerwiseReport) -> None:
    """The report as JSON (key `first`: the first flagged tensor's name), written atomically."""
    try:
        write_json_atomic(path, report.to_dict())
    except OSError as e:
        raise VitacError(f"cannot write {path}: {e.strerror}") from None

"""Parity checks anyone can rerun with Polygraphy (`polygraphy run`), without vitac-deploy.

`save_polygraphy` writes, per validated precision, the step graph's feeds of every step of the
validated rollout (past caches included) in Polygraphy's data-loader JSON, the PyTorch reference's
`next_features` for those steps as Polygraphy `RunResults`, and the one `polygraphy run` command
comparing the graph with them at the artifact's tolerance.

The feeds follow the reference along its own rollout: step t gets the raw features the reference
feeds back (the context for t = 0) and the reference's KV cache of frames 0..t-1 (in the graph's
cache dtype), so each step is checked on its own and errors do not compound as in a closed-loop
rollout. Polygraphy is imported only here (the `polygraphy` extra); the runtimes never need it.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..contract import past_names, rope_rows, static_max_len, static_rows
from ..errors import VitacError
from ..precision import precision as get_precision
from ..artifacts import MANIFEST, cache_contract, check_out, publishing, sha256_file, umask, write_json_atomic
from ..artifacts.manifest import POLYGRAPHY_FORMAT, POLYGRAPHY_STEPS_FORMAT
from .metrics import TOLERANCES
from .parity import ParityInputs

REFERENCE_RUNNER = "pytorch-reference"
COMMAND_FILE = "command.txt"
FLAG = "--save-polygraphy"
COMPARED_OUTPUT = "next_features"   # what the parity check compares (normalized, |x| ~ 1)


def import_polygraphy():
    """The polygraphy package, quiet (its progress lines would land in our stdout), or a one-line
    error naming the extra that installs it."""
    try:
        import polygraphy
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise VitacError("this needs Polygraphy: pip install 'vitac-deploy[polygraphy]' "
                         "(or pip install polygraphy)") from None
    G_LOGGER.colors = False   # else it warns once that the optional 'colored' package is missing
    G_LOGGER.module_severity = G_LOGGER.ERROR
    return polygraphy


def reference_steps(model, inputs: ParityInputs, cache_dtype: str = "float32", cache: str = "concat",
                    cache_frames: Optional[int] = None
                    ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Feeds of the step graph for every step of `inputs`' rollout, and the reference's outputs.

    The reference runs frame by frame on its own KV cache (equal to full recompute, see
    reference/model.py); step t's feed holds that cache of frames 0..t-1 as `past_*`. With the
    static contract `past_*` is that cache zero-padded to the fixed max_len, with the frame's
    `write_index` and `attn_bias` rows (contract.static_rows).
    """
    import torch

    cfg = model.cfg
    C = inputs.context.shape[1]
    frames = C + inputs.horizon - 1
    cos, sin = rope_rows(cfg, cache_dtype)
    t_ = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    feeds: list[dict[str, np.ndarray]] = []
    outputs: list[dict[str, np.ndarray]] = []
    kv = None
    raw = None
    B = inputs.context.shape[0]
    empty = np.zeros((B, cfg.num_heads, 0, cfg.head_dim), cache_dtype)
    if cache == "static":
        frames_cached = cache_frames or cfg.max_frames
        M = static_max_len(cfg, frames_cached)
        write, bias = static_rows(cfg, frames_cached, cache_dtype, B)

    def as_past(kv: np.ndarray) -> np.ndarray:
        if cache != "static":
            return kv
        padded = np.zeros((B, cfg.num_heads, M, cfg.head_dim), cache_dtype)
        padded[:, :, :kv.shape[2]] = kv
        return padded

    with torch.no_grad():
        for t in range(frames):
            features = inputs.context[:, t] if t < C else raw
            feed = {"features": np.ascontiguousarray(features, np.float32),
                    "action": inputs.actions[:, t], "state": inputs.states[:, t]}
            if cfg.use_extrinsics:
                feed["extrinsics"] = inputs.extrinsics[:, t]
            feed["rope_cos"], feed["rope_sin"] = cos[t], sin[t]
            if cache == "static":
                feed["write_index"], feed["attn_bias"] = write[t], bias[t]
            for i, (k_name, v_name) in enumerate(zip(past_names(cfg)[0::2], past_names(cfg)[1::2])):
                if kv is None:
                    feed[k_name], feed[v_name] = as_past(empty), as_past(empty)
                else:
                    feed[k_name] = as_past(kv[i][0].numpy().astype(cache_dtype))
                    feed[v_name] = as_past(kv[i][1].numpy().astype(cache_dtype))
            h = model.normalize(t_(feed["features"]))[:, None]
            ex = None if inputs.extrinsics is None else t_(inputs.extrinsics[:, t:t + 1])
            out, kv = model.forward_frames(h, t_(inputs.actions[:, t:t + 1]), t_(inputs.states[:, t:t + 1]),
                                           ex, kv, start=t)
            raw = out[:, 0].numpy()
            feeds.append(feed)
            outputs.append({COMPARED_OUTPUT: model.normalize(out[:, 0]).numpy().astype(np.float32)})
    return feeds, outputs


def polygraphy_command(graph: Path, inputs_json: Path, reference_json: Path, atol: float,
                       tensorrt: bool = False, strongly_typed: bool = False,
                       shapes: Optional[dict[str, tuple[tuple[int, ...], ...]]] = None) -> str:
    """The `polygraphy run` command comparing `graph` on the saved feeds with the saved reference.

    rtol is 0: Polygraphy flags an element only when it is off by more than atol AND by more than
    rtol relative, so rtol 0 makes it exactly our max-abs check.
    """
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    parts = ["polygraphy", "run", q(graph), "--trt" if tensorrt else "--onnxrt"]
    if tensorrt:
        if strongly_typed:
            parts.append("--strongly-typed")
        for flag, i in (("--trt-min-shapes", 0), ("--trt-opt-shapes", 1), ("--trt-max-shapes", 2)):
            parts.append(flag)
            parts += [q(f"{name}:[{','.join(map(str, s[i]))}]") for name, s in (shapes or {}).items()]
    # only the compared output: Polygraphy matches names loosely (next_features_raw would be
    # compared with next_features, the caches by position), so the graph's other outputs are unmarked
    parts += ["--onnx-outputs", COMPARED_OUTPUT, "--load-inputs", q(inputs_json),
              "--load-outputs", q(reference_json), "--atol", f"{atol:g}", "--rtol", "0"]
    return " ".join(parts)


def _save_run(feeds: Sequence[dict[str, np.ndarray]], outputs: Sequence[dict[str, np.ndarray]],
              inputs_json: Path, reference_json: Path) -> None:
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json

    save_json(list(feeds), str(inputs_json), description="step graph feeds")
    results = RunResults()
    results.append((REFERENCE_RUNNER, [IterationResult(o, runner_name=REFERENCE_RUNNER) for o in outputs]))
    results.save(str(reference_json))


def _profile(feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape per input over `feeds` (the past caches grow; the rest is fixed)."""
    out = {}
    for name in feeds[0]:
        shapes = sorted((f[name].shape for f in feeds), key=lambda s: int(np.prod(s)))
        out[name] = (shapes[0], shapes[len(shapes) // 2], shapes[-1])
    return out


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def check_save_target(out_dir: str | os.PathLike) -> Path:
    """Refuse early what `save_polygraphy` could not write or must not replace (before an export
    spends its minutes): Polygraphy missing, a file in the way, a directory holding anything but
    what an earlier --save-polygraphy wrote and listed, a missing or unwritable parent."""
    import_polygraphy()
    check_out(out_dir, force=True, formats=(POLYGRAPHY_FORMAT,), flag=FLAG)
    return Path(out_dir)


def _listing(folder: Path, fmt: str, **extra: Any) -> None:
    """`folder/manifest.json`: every file written into `folder` (a later run replaces only these)."""
    files = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file()}
    write_json_atomic(folder / MANIFEST, {"format": fmt, "files": files, **extra})


def save_polygraphy(out_dir: str | os.PathLike, artifact: str | os.PathLike, model, inputs: ParityInputs,
                    precisions: Sequence[str], manifest: dict[str, Any],
                    tensorrt: Optional[bool] = None) -> list[str]:
    """Write `out_dir/<precision>/{inputs.json, reference.json, command.txt}` for each precision's
    step graph of `artifact`, and `out_dir/command.txt` with every command; returns the commands.

    `tensorrt` (default: whether TensorRT is importable) adds a `--trt` command per precision on
    `inputs.trt.json` / `reference.trt.json`: the steps after the first, as the project's engines
    run the first frame through first*.onnx (TensorRT profiles may not express past_len = 0).
    Published as export publishes an artifact: written beside `out_dir` and swapped in atomically;
    each folder's `manifest.json` lists what was written, and an existing `out_dir` is replaced only
    if it holds nothing else (what it listed is removed, file by file, nothing more).
    """
    check_save_target(out_dir)
    out = Path(out_dir)
    art = Path(artifact).resolve()
    final = out.resolve()
    trt = tensorrt_available() if tensorrt is None else tensorrt
    commands: list[str] = []
    with publishing(out, force=True, formats=(POLYGRAPHY_FORMAT,), flag=FLAG) as tmp:
        for p in precisions:
            graph = manifest["graphs"].get(f"step.{p}")
            if graph is None:
                raise VitacError(f"{art} has no {p} step graph")
            contract = cache_contract(manifest)
            feeds, outputs = reference_steps(model, inputs, graph["cache_dtype"], contract,
                                             manifest["cache"]["frames"] if contract == "static" else None)
            sub = tmp / p
            sub.mkdir()
            _save_run(feeds, outputs, sub / "inputs.json", sub / "reference.json")
            atol = TOLERANCES[p].max_abs
            lines = [polygraphy_command(art / graph["file"], final / p / "inputs.json",
                                        final / p / "reference.json", atol)]
            if trt and len(feeds) > 1:
                _save_run(feeds[1:], outputs[1:], sub / "inputs.trt.json", sub / "reference.trt.json")
                lines.append(polygraphy_command(art / graph["file"], final / p / "inputs.trt.json",
                                                final / p / "reference.trt.json", atol, tensorrt=True,
                                                strongly_typed=get_precision(p).strongly_typed, shapes=_profile(feeds[1:])))
            (sub / COMMAND_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
            _listing(sub, POLYGRAPHY_STEPS_FORMAT)
            commands += lines
        (tmp / COMMAND_FILE).write_text("\n".join(commands) + "\n", encoding="utf-8")
        _listing(tmp, POLYGRAPHY_FORMAT, artifact=str(art), precisions=list(precisions))
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, 0o666 & ~umask())
            elif f.is_dir():
                os.chmod(f, 0o777 & ~umask())
    return commands

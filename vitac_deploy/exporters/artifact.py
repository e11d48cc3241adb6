"""`export`: reference model -> validated artifact directory (graphs, weights, manifest), atomically."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .. import __version__
from ..contract import CACHE_CONTRACTS, energy_io, static_max_len, step_io
from ..errors import ValidationError, VitacError, first_line
from ..manifest import (ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, CONCAT_FORMAT_VERSION, MANIFEST, file_digest,
                        now_iso, seal, umask, versions, write_json_atomic)
from ..metrics import TOLERANCES
from ..graph_forms import FORMS, GRAPH_FORMS, PORTABLE
from .energy_graph import build_energy_graph
from .form_graphs import build_form_graph
from .step_graph import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, STATIC_OPSET
from .weights import save_with_shared_data

PRECISIONS = ("fp32", "fp16")
ENERGY_FILE = "energy.onnx"
ENERGY_TOLERANCE = 1e-5   # float32 mean over N x D entries, against float64 (the golden energies' tolerance)
Progress = Callable[[str], None]


def graph_files(precision: str) -> dict[str, str]:
    suffix = "" if precision == "fp32" else f".{precision}"
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
    bad = [p for p in opts.precisions if p not in PRECISIONS]
    if bad or not opts.precisions:
        raise VitacError(f"--precision takes a comma list of {', '.join(PRECISIONS)}, got {','.join(opts.precisions)}")
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


_HELD: dict[Path, int] = {}   # targets this process holds the lock of -> the holding thread


def export_lock(out: str | os.PathLike) -> "_OutLock":
    """The lock `export_artifact` takes on `out`, to hold it longer (the CLI holds it from before
    loading the model, so that two commands started together cannot both write `out`)."""
    return _OutLock(_resolve_out(Path(out)))


class _OutLock:
    """An exclusive lock on `--out` for the whole export: a lock file beside it, flock'ed. A second
    writer is refused at once (not queued: it would replace the first one's artifact). The file
    is unlinked on release; the inode check after locking makes that safe against a writer that
    opened the file just before the unlink."""

    def __init__(self, target: Path):
        self.target = target
        self.path = target.parent / f".{target.name}.lock"
        self.fd: Optional[int] = None
        self.nested = False

    def __enter__(self) -> "_OutLock":
        # re-entrant for the thread that holds it (the CLI locks before loading the model, then
        # export_artifact locks again); another thread of this process is another writer
        holder = _HELD.get(self.target)
        if holder == threading.get_ident():
            self.nested = True
            return self
        if holder is not None:
            raise VitacError(f"another export is writing {self.target} (a thread of this process)")
        try:
            import fcntl
        except ImportError:   # not POSIX: no lock (documented in the README)
            return self
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
            except OSError as e:
                raise VitacError(f"cannot write {self.path.parent}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise VitacError(f"another export is writing {self.path.parent / self.path.name[1:-5]} "
                                 f"(pid {owner or '?'}, lock {self.path}): wait for it to finish") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                try:   # the pid is for the message a second writer gets; a full disk only loses that
                    os.ftruncate(fd, 0)
                    os.write(fd, str(os.getpid()).encode())
                except OSError:
                    pass
                self.fd = fd
                _HELD[self.target] = threading.get_ident()
                return self
            os.close(fd)   # the holder unlinked it meanwhile: lock the new one
        raise VitacError(f"cannot lock {self.path}: it keeps changing")

    def __exit__(self, *exc: Any) -> None:
        if self.nested:
            return
        _HELD.pop(self.target, None)
        if self.fd is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def _resolve_out(out: Path) -> Path:
    """The absolute directory `out` names, refused where replacing it could lose what is not ours."""
    if out.is_symlink():
        # renaming onto a link replaces the link, not what it points to: say so before the work
        raise VitacError(f"--out {out} is a symbolic link: give the directory itself ({os.path.realpath(out)})")
    target = out.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise VitacError(f"--out {out} is or contains the working directory: choose a new directory for the artifact")
    if target == target.parent:
        raise VitacError(f"--out {out} is a filesystem root")
    return target


def check_out(out: str | os.PathLike, force: bool = False, formats: tuple[str, ...] = (ARTIFACT_FORMAT,)) -> Path:
    """Refuse an `--out` that export could not write or must not replace (`formats`: the artifacts
    it may replace), before any work; the absolute directory it names otherwise."""
    out = Path(out)
    target = _resolve_out(out)
    if not target.parent.is_dir():
        raise VitacError(f"cannot write {out}: {target.parent} does not exist")
    _check_out(out, target, force, formats)
    try:   # a real probe: root passes os.access() where /proc or a read-only mount still refuses
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent))
    except OSError as e:
        raise VitacError(f"cannot write {out}: {target.parent}: {e.strerror}") from None
    return target


def _artifact_files(target: Path, formats: tuple[str, ...] = (ARTIFACT_FORMAT,)) -> Optional[list[str]]:
    """The entries of `target` if it is provably one of our artifacts (a manifest of ours listing
    every other entry, all regular files; a predictor artifact may also hold its encoder artifact
    in `encoder/`) or empty; None otherwise."""
    from ..encoder.manifest import ENCODER_DIR, ENCODER_FORMAT

    entries = sorted(os.listdir(target))
    if not entries:
        return []
    try:
        data = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") not in formats or not isinstance(data.get("files"), dict):
        return None
    allowed = set(data["files"]) | {MANIFEST}
    for name in entries:
        mode = os.lstat(target / name).st_mode
        if name == ENCODER_DIR and data["format"] == ARTIFACT_FORMAT and stat.S_ISDIR(mode):
            if _artifact_files(target / name, (ENCODER_FORMAT,)) is None:
                return None
            continue
        if name not in allowed or not stat.S_ISREG(mode):
            return None
    return entries


def _check_out(out: Path, target: Path, force: bool,
               formats: tuple[str, ...] = (ARTIFACT_FORMAT,)) -> Optional[list[str]]:
    """What may be replaced at `target`: None if nothing is there, else the entries to remove."""
    if not os.path.lexists(target):
        return None
    if target.is_symlink() or not target.is_dir():
        raise VitacError(f"--out {out} exists and is not a directory")
    try:
        entries = os.listdir(target)
    except OSError as e:
        raise VitacError(f"cannot read --out {out}: {e.strerror}") from None
    if entries and not force:
        raise VitacError(f"--out {out} exists and is not empty (use --force to replace an artifact)")
    ours = _artifact_files(target, formats)
    if ours is None:
        raise VitacError(f"--out {out} holds files that are not part of a vitac-deploy artifact: refusing to "
                         f"replace it, even with --force (remove them yourself, or choose another --out)")
    return ours


_PARTIAL = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.partial")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # EPERM: alive, someone else's
        return True
    return True


def _sweep_partials(target: Path, say: Progress) -> None:
    """Remove the `.partial` directories of killed exports to `target` (their owner's pid gone).
    Only flat directories of regular files, as an export makes them, are removed; others are named."""
    for entry in target.parent.iterdir():
        m = _PARTIAL.fullmatch(entry.name)
        if m is None:
            # written by an older vitac-deploy (no pid in the name): whose it is cannot be told
            if entry.name.startswith(f".{target.name}.") and entry.name.endswith(".partial") and entry.is_dir():
                say(f"left alone: {entry}, a partial export of unknown owner (remove it if no export is running)")
            continue
        if m["name"] != target.name:
            continue
        if int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        try:
            if entry.is_symlink() or not entry.is_dir() or not all(
                    stat.S_ISREG(os.lstat(f).st_mode) for f in entry.iterdir()):
                say(f"left alone: {entry} (not a directory of files as exports leave them)")
                continue
            shutil.rmtree(entry)
            say(f"removed {entry}, left by a killed export (pid {m['pid']})")
        except OSError as e:
            say(f"cannot remove the stale partial export {entry}: {e.strerror}")


def _make_tmp(target: Path) -> Path:
    """A temp dir beside `target` (same filesystem, so the swap is a rename), named with our pid so
    that a later export can tell when its owner is gone."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".partial", dir=target.parent))
    except OSError as e:
        raise VitacError(f"cannot write {target}: {e.strerror}") from None
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; the artifact is an ordinary directory
    return tmp


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(tmp: Path, target: Path, old: Optional[list[str]], say: Progress) -> None:
    """Put `tmp` at `target`. An old artifact there is swapped out (one atomic exchange, or two
    renames with the old one moved back on failure: the old or the new artifact is complete at all
    times) and only then removed, file by file, only the files its check listed."""
    if old is None:
        os.rename(tmp, target)   # fails if a non-empty directory appeared meanwhile
        return
    if _exchange(tmp, target):
        aside = tmp
    else:
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".partial", dir=target.parent))
        os.rmdir(aside)
        os.rename(target, aside)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(aside, target)
            raise
    try:
        for name in old:
            os.unlink(aside / name)
        os.rmdir(aside)
    except OSError as e:   # the new artifact is in place; the old one's rest is named, never lost silently
        say(f"the previous artifact could not be removed completely ({e.strerror}): it is in {aside}")


def _carry_encoder(target: Path, tmp: Path, old: Optional[list[str]]) -> bool:
    """Move the old artifact's encoder (`encoder/`, checked to be ours) into the new one, so that
    re-exporting the predictor keeps the encoder `plan` finds there; True if it was moved."""
    from ..encoder.manifest import ENCODER_DIR

    if not old or ENCODER_DIR not in old or os.path.lexists(tmp / ENCODER_DIR):
        return False
    os.rename(target / ENCODER_DIR, tmp / ENCODER_DIR)
    old.remove(ENCODER_DIR)
    return True


def _discard(tmp: Path, target: Path, carried: bool) -> None:
    """Remove a failed export's temp dir, first moving a carried encoder back where it was."""
    from ..encoder.manifest import ENCODER_DIR

    if carried and (tmp / ENCODER_DIR).is_dir() and not os.path.lexists(target / ENCODER_DIR):
        try:
            os.rename(tmp / ENCODER_DIR, target / ENCODER_DIR)
        except OSError:
            pass   # left in tmp, and said so below: never deleted
    if carried and (tmp / ENCODER_DIR).is_dir():
        raise VitacError(f"the export failed and the previous encoder could not be moved back: it is in "
                         f"{tmp / ENCODER_DIR}")
    shutil.rmtree(tmp, ignore_errors=True)


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
        from ..reproduce import check_save_target

        check_save_target(opts.save_polygraphy)
    target = check_out(out, opts.force)
    with _OutLock(target):
        _sweep_partials(target, say)
        tmp = _make_tmp(target)
        carried = False
        try:
            manifest = _write_artifact(model, tmp, opts, say)
            old = _check_out(out, target, opts.force)   # again, under the lock: it may have changed
            carried = _carry_encoder(target, tmp, old)
            _swap_in(tmp, target, old, say)
        except OSError as e:   # full disk, read-only or vanished directory: a user-side failure
            _discard(tmp, target, carried)
            raise VitacError(f"cannot write {out}: {e.strerror or first_line(e)}") from None
        except BaseException:
            _discard(tmp, target, carried)
            raise
    if opts.save_polygraphy is not None:
        # after the swap: the commands name the artifact where it now is
        from ..reproduce import save_polygraphy

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
            ins, outs = step_io(cfg, "float16" if precision == "fp16" else "float32", role == "first",
                                opts.cache, opts.cache_frames)
            graphs[f"{role}.{precision}"] = {
                "file": names[role], "role": role, "precision": precision,
                "cache_dtype": "float16" if precision == "fp16" else "float32",
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
        "source": opts.source,
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
    """The energy graph against numpy in float64 (planner.md section 3)."""
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

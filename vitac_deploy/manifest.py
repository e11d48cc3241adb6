"""Manifests: every artifact carries one (config, IO contract, versions, hashes). numpy-free."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import VitacError, first_line

ARTIFACT_FORMAT = "vitac-deploy/artifact"
ARTIFACT_FORMAT_VERSION = 3   # 2: RoPE rows as step-graph inputs, energy graph; 3: the static (in-place) cache
CONCAT_FORMAT_VERSION = 2     # concat artifacts are still written as 2: older vitac-deploy keeps reading them,
                              # and refuses a static one ("upgrade vitac-deploy") instead of misbinding it
MANIFEST = "manifest.json"
SEAL = "manifest_sha256"   # sha256 of the manifest's own canonical JSON (every key but this one)
_HEX = frozenset("0123456789abcdef")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions(packages: Iterable[str] = ("numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu",
                                        "tensorrt", "tensorrt-rtx-cu13", "cuda-python", "vitac-deploy")
             ) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    # the installed metadata can name another copy than the one in use (onnxruntime-gpu installed
    # elsewhere on PYTHONPATH beside the CPU package): the module actually imported says which ran
    for module in ("onnxruntime", "tensorrt", "tensorrt_rtx"):
        mod = sys.modules.get(module)
        if mod is not None and getattr(mod, "__version__", None):
            out[f"{module} (imported)"] = str(mod.__version__)
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename: never a half-written file."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # NaN/Infinity are not JSON and strict parsers reject them: written as strings (a report
            # of a broken graph still gets written); allow_nan=False guards what slips through
            json.dump(strict_json(data), f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict_json(x: Any) -> Any:
    """`x` with non-finite floats as the strings "nan", "inf", "-inf" (JSON has no such numbers)."""
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return str(x)
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return x


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in data.items() if k != SEAL}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode("ascii")


def seal(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its seal: the sha256 of its canonical JSON. It detects an edited or damaged
    manifest; it is not a signature (whoever can write the file can recompute it)."""
    out = {k: v for k, v in data.items() if k != SEAL}
    out[SEAL] = hashlib.sha256(_canonical(out)).hexdigest()
    return out


def check_seal(path: Path, data: dict[str, Any], redo: str) -> None:
    """Refuse a manifest without its seal, or whose content no longer matches it."""
    got = data.get(SEAL)
    if not isinstance(got, str):
        raise VitacError(f"{path} has no {SEAL}, so its integrity cannot be established "
                         f"(written by an older vitac-deploy, or edited): {redo}")
    try:
        want = hashlib.sha256(_canonical(data)).hexdigest()
    except (TypeError, ValueError):   # non-finite numbers cannot have been written by us
        want = ""
    if got != want:
        raise VitacError(f"{path} was modified after it was written (its {SEAL} does not match): {redo}")


def check_name(root: Path, name: Any, what: str) -> str:
    """A file name a manifest gives: a plain name inside the artifact directory (no path, no `..`),
    so that nothing outside the artifact is ever read, hashed or handed to a runtime."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name \
            or name != name.strip() or Path(name).is_absolute():
        raise VitacError(f"{root}: the manifest names {what} {name!r}, which is not a plain file name inside "
                         f"the artifact (edited?): refusing it")
    return name


# Hashes already computed in this process, by file identity: (device, inode, size, mtime, ctime).
# Any write to a file changes its ctime, which no user can set back, so an entry stays valid for
# exactly as long as the file is unchanged; a reopened runtime does not hash gigabytes again.
_DIGESTS: dict[tuple[int, ...], str] = {}
_DIGESTS_LOCK = threading.Lock()


def file_digest(path: Path, st: Optional[os.stat_result] = None) -> str:
    """sha256 of a file, cached in-process by its identity and change times."""
    st = st or os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _DIGESTS_LOCK:
        hit = _DIGESTS.get(key)
    if hit is not None:
        return hit
    digest = sha256_file(path)
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        with _DIGESTS_LOCK:   # not cached when the file changed while it was read
            _DIGESTS[key] = digest
    return digest


def umask() -> int:
    """The process umask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    p = Path(path)
    tmp = p.with_name(p.name + ".partial.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, p)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _load_json(path: Path) -> Any:
    """Strict JSON: NaN/Infinity refused, nesting bounded (RecursionError is a user error here)."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constant)


def read_manifest(artifact: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an artifact directory, checked for its format, its seal and its structure:
    every file it names is a plain name inside the directory, listed in `files` with a sha256."""
    p = Path(artifact)
    if not p.exists():
        raise VitacError(f"artifact not found: {p}")
    if not p.is_dir():
        raise VitacError(f"{p} is not an artifact directory (an export artifact is the directory "
                         f"`vitac-deploy export --out` writes)")
    path = p / MANIFEST
    redo = "re-export it with `vitac-deploy export`"
    try:
        data = _load_json(path)
    except FileNotFoundError:
        raise VitacError(f"{p} is not an export artifact (no {MANIFEST}); create one with `vitac-deploy export`") from None
    except (OSError, ValueError, RecursionError) as e:   # ValueError: bad JSON or not UTF-8
        raise VitacError(f"cannot read manifest {path}: {first_line(e)}") from None
    if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
        raise VitacError(f"{path} is not a vitac-deploy artifact manifest")
    _check_format_version(path, data, ARTIFACT_FORMAT_VERSION, redo, oldest=CONCAT_FORMAT_VERSION)
    check_seal(path, data, redo)
    _check_keys(path, data, {"config": dict, "graphs": dict, "files": dict}, redo)
    _check_structure(p, path, data, redo)
    _check_config(path, data, redo)
    cache_contract(data, path)
    return data


def cache_contract(manifest: dict[str, Any], path: Any = "this manifest") -> str:
    """The cache contract a manifest (artifact or engine) records: "concat" when it records none
    (format 2, written before the static contract existed)."""
    cache = manifest.get("cache", {"contract": "concat"})
    contract = cache.get("contract") if isinstance(cache, dict) else None
    if contract not in ("concat", "static"):
        raise VitacError(f"{path} records an unknown cache contract {contract!r} (concat or static): "
                         f"upgrade vitac-deploy or re-export")
    if contract == "static" and not isinstance(cache.get("frames"), int):
        raise VitacError(f"{path} records the static cache contract without its frames (edited?): re-export")
    return contract


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _check_config(path: Path, data: dict[str, Any], redo: str) -> None:
    from .config import PredictorConfig
    from .encoder.config import EncoderConfig

    try:   # an encoder engine's manifest holds the encoder's config
        (EncoderConfig if data.get("kind") == "encoder" else PredictorConfig).from_dict(data["config"])
    except VitacError as e:
        raise VitacError(f"{path}: invalid config ({e}): {redo}") from None


def _check_structure(root: Path, path: Path, data: dict[str, Any], redo: str) -> None:
    """What the commands and runtimes read from a manifest, with the types they expect: a sealed
    manifest can still be hand-made, and a wrong type must not surface later as a crash."""
    def bad(what: str) -> VitacError:
        return VitacError(f"{path}: {what} (edited or damaged?): {redo}")

    for name, digest in data["files"].items():
        check_name(root, name, "a file")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise bad(f"files[{name!r}] is not a sha256")
    for key, g in data["graphs"].items():
        if not isinstance(g, dict) or not all(isinstance(g.get(k), str) for k in ("file", "role", "precision")):
            raise bad(f"graph {key!r} has no file, role or precision")
        for k in ("file", "external_data"):
            if k in g:
                check_name(root, g[k], f"as {key} {k}")
                if g[k] not in data["files"]:
                    raise bad(f"{g[k]} ({key} {k}) has no sha256 in 'files'")
        for k in ("inputs", "outputs"):
            specs = g.get(k)
            if not isinstance(specs, list) or not all(
                    isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("dtype"), str)
                    and isinstance(s.get("shape"), list) for s in specs):
                raise bad(f"graph {key!r} has no valid {k}")
        if g["role"] != "energy" and not isinstance(g.get("cache_dtype"), str):
            raise bad(f"graph {key!r} has no cache_dtype")
    tolerances = data.get("tolerances", {})
    if not isinstance(tolerances, dict) or not all(
            isinstance(t, dict) and isinstance(t.get("max_abs"), (int, float)) for t in tolerances.values()):
        raise bad("'tolerances' is not a map of precisions to tolerances")
    for key, kind in (("created", str), ("opset", int), ("exporter", dict), ("source", dict),
                      ("validation", dict)):
        if key in data and not isinstance(data[key], kind):
            raise bad(f"'{key}' is not a {kind.__name__}")


def verify_files(artifact: str | os.PathLike, manifest: dict[str, Any],
                 names: Optional[Iterable[str]] = None) -> None:
    """Refuse an artifact whose files (all it lists, or `names`) are missing, are not regular files
    inside it, or do not have the sha256 its manifest states. A name without a hash is an error."""
    root = Path(artifact)
    listed = manifest.get("files", {})
    for name in (sorted(listed) if names is None else names):
        check_name(root, name, "a file")
        if name not in listed:
            raise VitacError(f"artifact {root}: {name} has no sha256 in its manifest: re-export it")
        f = root / name
        try:
            st = os.lstat(f)
        except FileNotFoundError:
            raise VitacError(f"artifact {root} is missing {name}") from None
        except OSError as e:
            raise VitacError(f"cannot read {f}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):   # a symlink could point anywhere: only regular files count
            raise VitacError(f"artifact {root}: {name} is not a regular file (a link or a device?): re-export it")
        try:
            digest = file_digest(f, st)
        except OSError as e:
            raise VitacError(f"cannot read {f}: {e.strerror}") from None
        if digest != listed[name]:
            raise VitacError(f"artifact {root}: {name} does not match the sha256 in its manifest "
                             f"(modified or corrupted after export)")


def graph_names(manifest: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """The files graphs `keys` read: each graph and its external weights."""
    out: list[str] = []
    for key in keys:
        g = manifest["graphs"].get(key)
        if g is None:
            continue
        for name in (g.get("file"), g.get("external_data")):
            if name and name not in out:
                out.append(name)
    return out


def _check_keys(path: Path, data: dict[str, Any], keys: dict[str, type], redo: str) -> None:
    for key, kind in keys.items():
        if not isinstance(data.get(key), kind):
            raise VitacError(f"{path} has no valid '{key}' entry (edited or damaged?): {redo}")


def _check_format_version(path: Path, data: dict[str, Any], current: int, redo: str,
                          oldest: Optional[int] = None) -> None:
    version = data.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise VitacError(f"{path} has no valid format_version: {redo}")
    if version > current:
        raise VitacError(f"{path} has format version {version}; this vitac-deploy reads up to {current}: "
                         f"upgrade vitac-deploy")
    if version < (current if oldest is None else oldest):
        raise VitacError(f"{path} has format version {version}, written by an older vitac-deploy whose graphs "
                         f"this one no longer runs (version {current}): {redo}")


ENGINE_FORMAT = "vitac-deploy/engine"
ENGINE_FORMAT_VERSION = 3     # 2: engines of format-2 artifacts, energy engine, shared activation memory; 3: static cache
CONCAT_ENGINE_FORMAT_VERSION = 2   # concat engines still say 2 (see CONCAT_FORMAT_VERSION)


def read_engine_manifest(engine: str | os.PathLike) -> dict[str, Any]:
    """The manifest `build-engine` writes beside an engine (ENGINE.plan.json), checked for its
    format and that it describes this engine."""
    p = Path(engine)
    if not p.is_file():
        raise VitacError(f"engine not found: {p}")
    meta = p.with_name(p.name + ".json")
    redo = "rebuild it with `vitac-deploy build-engine`"
    try:
        data = _load_json(meta)
    except FileNotFoundError:
        raise VitacError(f"{meta} is missing: engines are opened with the manifest `vitac-deploy build-engine` "
                         f"writes beside them (it says where and how the engine was built)") from None
    except (OSError, ValueError, RecursionError) as e:
        raise VitacError(f"cannot read {meta}: {first_line(e)}") from None
    if not isinstance(data, dict):
        raise VitacError(f"{meta} is not the manifest of {p.name} (rebuild with `vitac-deploy build-engine`)")
    engines = data.get("engines") or [{}]
    if data.get("format") != ENGINE_FORMAT or not isinstance(engines, list) or not isinstance(engines[0], dict) \
            or engines[0].get("file") != p.name:
        raise VitacError(f"{meta} is not the manifest of {p.name} (rebuild with `vitac-deploy build-engine`)")
    _check_format_version(meta, data, ENGINE_FORMAT_VERSION, redo, oldest=CONCAT_ENGINE_FORMAT_VERSION)
    check_seal(meta, data, redo)
    _check_keys(meta, data, {"config": dict, "tensorrt": dict, "build_flags": dict}, redo)
    if not all(isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("role"), str)
               for e in engines):
        raise VitacError(f"{meta} lists engines without a file or role (edited?): {redo}")
    for e in engines:
        check_name(p.parent, e["file"], f"as {e['role']} engine")
        digest = e.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            # an engine is deserialized by TensorRT: it is never loaded unchecked
            raise VitacError(f"{meta}: the {e['role']} engine {e['file']} has no sha256: {redo}")
    _check_config(meta, data, redo)
    flags = data["build_flags"]
    batch = flags.get("batch", [1, 1, 1])
    if not (isinstance(batch, list) and len(batch) == 3 and all(_positive_int(b) for b in batch)) \
            or not _positive_int(flags.get("max_frames", 1)):
        raise VitacError(f"{meta} has no valid build_flags (batch [min, opt, max], max_frames): {redo}")
    if not isinstance(data.get("precision"), str):
        raise VitacError(f"{meta} has no valid 'precision' entry (edited or damaged?): {redo}")
    cache_contract(data, meta)
    return data

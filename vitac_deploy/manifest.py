"""Manifests: every artifact carries one (config, IO contract, versions, hashes). numpy-free."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import VitacError, first_line

ARTIFACT_FORMAT = "vitac-deploy/artifact"
ARTIFACT_FORMAT_VERSION = 3   # 2: RoPE rows as step-graph inputs, energy graph; 3: the static (in-place) cache
CONCAT_FORMAT_VERSION = 2     # concat artifacts are still written as 2: older vitac-deploy keeps reading them,
                              # and refuses a static one ("upgrade vitac-deploy") instead of misbinding it
MANIFEST = "manifest.json"


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
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def read_manifest(artifact: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an artifact directory, checked for its format."""
    p = Path(artifact)
    if not p.exists():
        raise VitacError(f"artifact not found: {p}")
    path = p / MANIFEST if p.is_dir() else p
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VitacError(f"{p} is not an export artifact (no {MANIFEST}); create one with `vitac-deploy export`") from None
    except (OSError, ValueError) as e:   # ValueError: bad JSON or not UTF-8
        raise VitacError(f"cannot read manifest {path}: {first_line(e)}") from None
    if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
        raise VitacError(f"{path} is not a vitac-deploy artifact manifest")
    _check_format_version(path, data, ARTIFACT_FORMAT_VERSION, "re-export it with `vitac-deploy export`",
                          oldest=CONCAT_FORMAT_VERSION)
    _check_keys(path, data, {"config": dict, "graphs": dict, "files": dict}, "re-export it with `vitac-deploy export`")
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
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VitacError(f"{meta} is missing: engines are opened with the manifest `vitac-deploy build-engine` "
                         f"writes beside them (it says where and how the engine was built)") from None
    except (OSError, ValueError) as e:
        raise VitacError(f"cannot read {meta}: {first_line(e)}") from None
    if not isinstance(data, dict):
        raise VitacError(f"{meta} is not the manifest of {p.name} (rebuild with `vitac-deploy build-engine`)")
    engines = data.get("engines") or [{}]
    if data.get("format") != ENGINE_FORMAT or not isinstance(engines, list) or not isinstance(engines[0], dict) \
            or engines[0].get("file") != p.name:
        raise VitacError(f"{meta} is not the manifest of {p.name} (rebuild with `vitac-deploy build-engine`)")
    _check_format_version(meta, data, ENGINE_FORMAT_VERSION, "rebuild it with `vitac-deploy build-engine`",
                          oldest=CONCAT_ENGINE_FORMAT_VERSION)
    _check_keys(meta, data, {"config": dict, "tensorrt": dict}, "rebuild it with `vitac-deploy build-engine`")
    if not all(isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("role"), str)
               for e in engines):
        raise VitacError(f"{meta} lists engines without a file or role (edited?): rebuild it with "
                         f"`vitac-deploy build-engine`")
    cache_contract(data, meta)
    return data


def verify_files(artifact: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Refuse an artifact whose files do not have the hashes its manifest states."""
    root = Path(artifact)
    for name, digest in manifest.get("files", {}).items():
        f = root / name
        if not f.is_file():
            raise VitacError(f"artifact {root} is missing {name}")
        if sha256_file(f) != digest:
            raise VitacError(f"artifact {root}: {name} does not match the sha256 in its manifest "
                             f"(modified or corrupted after export)")

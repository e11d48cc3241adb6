"""Manifests: every artifact carries one (config, IO contract, versions, hashes), sealed. Reading
and checking the three kinds (predictor artifact, encoder artifact, engine), and what they tell:
the cache contract, the files a graph reads, their hashes. numpy-free, for the runtime side.
Writing them: `seal` (artifacts.seal) and `publishing` (artifacts.publish)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import stat
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from ..errors import VitacError, first_line
from ..precision import PRECISIONS
from .files import check_name, file_digest, load_json
from .seal import check_format_version, check_keys, check_seal

ARTIFACT_FORMAT = "vitac-deploy/artifact"
ARTIFACT_FORMAT_VERSION = 3   # 2: RoPE rows as step-graph inputs, energy graph; 3: the static (in-place) cache
CONCAT_FORMAT_VERSION = 2     # concat artifacts are still written as 2: older vitac-deploy keeps reading them,
                              # and refuses a static one ("upgrade vitac-deploy") instead of misbinding it
ENCODER_FORMAT = "vitac-deploy/encoder"
ENCODER_FORMAT_VERSION = 1
ENGINE_FORMAT = "vitac-deploy/engine"
ENGINE_FORMAT_VERSION = 3     # 2: engines of format-2 artifacts, energy engine, shared activation memory; 3: static cache
CONCAT_ENGINE_FORMAT_VERSION = 2   # concat engines still say 2 (see CONCAT_FORMAT_VERSION)
MANIFEST = "manifest.json"
ENCODER_DIR = "encoder"   # where `plan ARTIFACT` looks for the encoder: ARTIFACT/encoder
# --save-polygraphy DIR: DIR/manifest.json lists command.txt, DIR/<precision>/manifest.json its files
POLYGRAPHY_FORMAT = "vitac-deploy/polygraphy"
POLYGRAPHY_STEPS_FORMAT = "vitac-deploy/polygraphy-steps"
NESTED = {ARTIFACT_FORMAT: {ENCODER_DIR: ENCODER_FORMAT},   # artifacts an artifact may hold, by folder
          POLYGRAPHY_FORMAT: {name: POLYGRAPHY_STEPS_FORMAT for name in PRECISIONS}}
_HEX = frozenset("0123456789abcdef")


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


ENGINE_SUFFIXES = (".plan", ".engine")


def artifact_kind(path: str | os.PathLike) -> Optional[str]:
    """What `path` is by its manifest's own word, unchecked (for choosing what to open, never for
    trusting it): "predictor" or "encoder" for artifact directories, "engine" or "encoder-engine"
    for engines; None when it is none of ours."""
    p = Path(path)
    engine = p.suffix in ENGINE_SUFFIXES
    meta = p.with_name(p.name + ".json") if engine else p / MANIFEST
    try:
        data = load_json(meta)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    if engine:
        if data.get("format") != ENGINE_FORMAT:
            return None
        return "encoder-engine" if data.get("kind") == "encoder" else "engine"
    return {ARTIFACT_FORMAT: "predictor", ENCODER_FORMAT: "encoder"}.get(data.get("format"))


def _load(path: Path, missing: str) -> Any:
    """A manifest's JSON, strictly parsed; `missing` is the error when there is none."""
    try:
        return load_json(path)
    except FileNotFoundError:
        raise VitacError(missing) from None
    except (OSError, ValueError, RecursionError) as e:   # ValueError: bad JSON or not UTF-8
        raise VitacError(f"cannot read manifest {path}: {first_line(e)}") from None


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
    data = _load(path, f"{p} is not an export artifact (no {MANIFEST}); create one with `vitac-deploy export`")
    if isinstance(data, dict) and data.get("format") == ENCODER_FORMAT:
        raise VitacError(f"{p} is an encoder artifact, not a predictor artifact: it encodes camera frames "
                         f"(vitac_deploy.runtimes.open_encoder; `validate` and `plan --encoder` take it)")
    if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
        raise VitacError(f"{path} is not a vitac-deploy artifact manifest")
    check_format_version(path, data, ARTIFACT_FORMAT_VERSION, redo, oldest=CONCAT_FORMAT_VERSION)
    check_seal(path, data, redo)
    check_keys(path, data, {"config": dict, "graphs": dict, "files": dict}, redo)
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
    from ..config import PredictorConfig
    from ..encoder.config import EncoderConfig

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


def read_encoder_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an encoder artifact directory, checked for its format."""
    p = Path(path)
    if not p.exists():
        raise VitacError(f"encoder artifact not found: {p}")
    m = p / MANIFEST if p.is_dir() else p
    data = _load(m, f"{p} is not an encoder artifact (no {MANIFEST}); create one with `vitac-deploy export-encoder`")
    redo = "re-export it with `vitac-deploy export-encoder`"
    if not isinstance(data, dict) or data.get("format") != ENCODER_FORMAT:
        raise VitacError(f"{m} is not a vitac-deploy encoder manifest ({redo})")
    check_format_version(m, data, ENCODER_FORMAT_VERSION, redo)
    check_seal(m, data, redo)
    check_keys(m, data, {"config": dict, "graphs": dict, "files": dict}, redo)
    for key, g in data["graphs"].items():
        if not isinstance(g, dict) or not all(isinstance(g.get(k), str) for k in ("file", "precision")):
            raise VitacError(f"{m}: graph {key!r} has no file or precision (edited or damaged?): {redo}")
        for name in (g["file"], g.get("external_data")):
            if name is not None:
                check_name(p, name, f"as {key}")
                if name not in data["files"]:
                    raise VitacError(f"{m}: {name} ({key}) has no sha256 in 'files': {redo}")
    from ..encoder.config import EncoderConfig

    try:
        EncoderConfig.from_dict(data["config"])
    except VitacError as e:
        raise VitacError(f"{m}: invalid config ({e}): {redo}") from None
    return data


def find_encoder(artifact: str | os.PathLike, encoder: Optional[str | os.PathLike] = None) -> Path:
    """The encoder for a predictor artifact: `encoder` if given (an encoder artifact directory or
    engine), else ARTIFACT/encoder."""
    if encoder is None and Path(artifact).is_file():
        raise VitacError(f"{artifact} is an engine, not an artifact directory: name the encoder with --encoder "
                         f"(an encoder artifact directory or an encoder engine)")
    p = Path(encoder) if encoder is not None else Path(artifact) / ENCODER_DIR
    if p.suffix in ENGINE_SUFFIXES and p.is_file():
        return p
    if not (p / MANIFEST).is_file():
        where = "--encoder" if encoder is not None else f"{Path(artifact) / ENCODER_DIR} (the default)"
        raise VitacError(f"no encoder artifact at {where}: export one with `vitac-deploy export-encoder "
                         f"--out {p}` or pass --encoder DIR")
    return p


def read_engine_manifest(engine: str | os.PathLike) -> dict[str, Any]:
    """The manifest `build-engine` writes beside an engine (ENGINE.plan.json), checked for its
    format and that it describes this engine."""
    p = Path(engine)
    if not p.is_file():
        raise VitacError(f"engine not found: {p}")
    meta = p.with_name(p.name + ".json")
    redo = "rebuild it with `vitac-deploy build-engine`"
    data = _load(meta, f"{meta} is missing: engines are opened with the manifest `vitac-deploy build-engine` "
                       f"writes beside them (it says where and how the engine was built)")
    if not isinstance(data, dict):
        raise VitacError(f"{meta} is not the manifest of {p.name} (rebuild with `vitac-deploy build-engine`)")
    engines = data.get("engines") or [{}]
    if data.get("format") != ENGINE_FORMAT or not isinstance(engines, list) or not isinstance(engines[0], dict) \
            or engines[0].get("file") != p.name:
        raise VitacError(f"{meta} is not the manifest of {p.name} (rebuild with `vitac-deploy build-engine`)")
    check_format_version(meta, data, ENGINE_FORMAT_VERSION, redo, oldest=CONCAT_ENGINE_FORMAT_VERSION)
    check_seal(meta, data, redo)
    check_keys(meta, data, {"config": dict, "tensorrt": dict, "build_flags": dict}, redo)
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

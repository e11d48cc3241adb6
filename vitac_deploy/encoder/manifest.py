"""The encoder artifact's manifest: reading and checking it (numpy-free, for the runtime side)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from ..errors import VitacError, first_line
from ..manifest import MANIFEST, _check_format_version, _check_keys

ENCODER_FORMAT = "vitac-deploy/encoder"
ENCODER_FORMAT_VERSION = 1
ENCODER_DIR = "encoder"   # where `plan ARTIFACT` looks for the encoder: ARTIFACT/encoder


def read_encoder_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an encoder artifact directory, checked for its format."""
    p = Path(path)
    if not p.exists():
        raise VitacError(f"encoder artifact not found: {p}")
    m = p / MANIFEST if p.is_dir() else p
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VitacError(f"{p} is not an encoder artifact (no {MANIFEST}); create one with "
                         f"`vitac-deploy export-encoder`") from None
    except (OSError, ValueError) as e:
        raise VitacError(f"cannot read manifest {m}: {first_line(e)}") from None
    redo = "re-export it with `vitac-deploy export-encoder`"
    if not isinstance(data, dict) or data.get("format") != ENCODER_FORMAT:
        raise VitacError(f"{m} is not a vitac-deploy encoder manifest ({redo})")
    _check_format_version(m, data, ENCODER_FORMAT_VERSION, redo)
    _check_keys(m, data, {"config": dict, "graphs": dict, "files": dict}, redo)
    return data


def find_encoder(artifact: str | os.PathLike, encoder: Optional[str | os.PathLike] = None) -> Path:
    """The encoder for a predictor artifact: `encoder` if given (an encoder artifact directory or
    engine), else ARTIFACT/encoder."""
    if encoder is None and Path(artifact).is_file():
        raise VitacError(f"{artifact} is an engine, not an artifact directory: name the encoder with --encoder "
                         f"(an encoder artifact directory or an encoder engine)")
    p = Path(encoder) if encoder is not None else Path(artifact) / ENCODER_DIR
    if p.suffix in (".plan", ".engine") and p.is_file():
        return p
    if not (p / MANIFEST).is_file():
        where = "--encoder" if encoder is not None else f"{Path(artifact) / ENCODER_DIR} (the default)"
        raise VitacError(f"no encoder artifact at {where}: export one with `vitac-deploy export-encoder "
                         f"--out {p}` or pass --encoder DIR")
    return p

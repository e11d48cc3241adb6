"""The seal every manifest carries (the sha256 of its own canonical JSON) and the checks every
manifest reader shares: keys, format versions. numpy-free."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from ..errors import VitacError

__all__ = ["SEAL", "seal", "check_seal", "check_keys", "check_format_version"]

SEAL = "manifest_sha256"   # sha256 of the manifest's own canonical JSON (every key but this one)


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


def check_keys(path: Path, data: dict[str, Any], keys: dict[str, type], redo: str) -> None:
    for key, kind in keys.items():
        if not isinstance(data.get(key), kind):
            raise VitacError(f"{path} has no valid '{key}' entry (edited or damaged?): {redo}")


def check_format_version(path: Path, data: dict[str, Any], current: int, redo: str,
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



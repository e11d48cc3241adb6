"""Files of an artifact: hashes (cached by file identity), atomic JSON and figures, safe names.
numpy-free: the runtime side reads artifacts with it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from ..errors import VitacError

__all__ = ["sha256_file", "file_digest", "write_json_atomic", "strict_json", "load_json", "check_name", "umask",
           "save_figure", "check_output"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def load_json(path: Path) -> Any:
    """Strict JSON: NaN/Infinity refused, nesting bounded (RecursionError is a user error here)."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constant)


def check_output(path: Path, flag: str) -> None:
    """Refuse an output file that cannot be written (`flag` names it in the message), before the
    work that would produce it."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise VitacError(f"{flag} {path} is a directory")
    if not parent.is_dir():
        raise VitacError(f"cannot write {flag} {path}: {parent} does not exist")
    # a real probe, not os.access: root passes access() where the filesystem (/proc, read-only
    # mounts) still refuses, and outputs are written as a temp file beside the target anyway
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise VitacError(f"cannot write {flag} {path}: {e.strerror}") from None

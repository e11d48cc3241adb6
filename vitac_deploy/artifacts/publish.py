"""Publishing an artifact: written into a temporary directory beside its destination, then swapped
in atomically, under an exclusive lock; an existing directory is replaced only when it provably
holds one of our artifacts (a manifest of ours listing every other entry), and only the files that
manifest listed are removed. Every writer of a directory (export, export-encoder, the Polygraphy
files) goes through `publishing`. numpy-free."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import VitacError, first_line
from .files import load_json, umask
from .manifest import ARTIFACT_FORMAT, MANIFEST, NESTED

__all__ = ["OutLock", "publish_lock", "check_out", "owned_entries", "publishing"]

Progress = Callable[[str], None]


_HELD: dict[Path, int] = {}   # targets this process holds the lock of -> the holding thread


def publish_lock(out: str | os.PathLike) -> "OutLock":
    """The lock `export_artifact` takes on `out`, to hold it longer (the CLI holds it from before
    loading the model, so that two commands started together cannot both write `out`)."""
    return OutLock(_resolve_out(Path(out)))


class OutLock:
    """An exclusive lock on `--out` for the whole export: a lock file beside it, flock'ed. A second
    writer is refused at once (not queued: it would replace the first one's artifact). The file
    is unlinked on release; the inode check after locking makes that safe against a writer that
    opened the file just before the unlink."""

    def __init__(self, target: Path):
        self.target = target
        self.path = target.parent / f".{target.name}.lock"
        self.fd: Optional[int] = None
        self.nested = False

    def __enter__(self) -> "OutLock":
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


def _resolve_out(out: Path, flag: str = "--out") -> Path:
    """The absolute directory `out` names, refused where replacing it could lose what is not ours."""
    if out.is_symlink():
        # renaming onto a link replaces the link, not what it points to: say so before the work
        raise VitacError(f"{flag} {out} is a symbolic link: give the directory itself ({os.path.realpath(out)})")
    target = out.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise VitacError(f"{flag} {out} is or contains the working directory: choose a new directory")
    if target == target.parent:
        raise VitacError(f"{flag} {out} is a filesystem root")
    return target


def check_out(out: str | os.PathLike, force: bool = False, formats: tuple[str, ...] = (ARTIFACT_FORMAT,),
              flag: str = "--out") -> Path:
    """Refuse an `--out` that export could not write or must not replace (`formats`: the artifacts
    it may replace), before any work; the absolute directory it names otherwise. `flag`: the
    option named in the messages."""
    out = Path(out)
    target = _resolve_out(out, flag)
    if not target.parent.is_dir():
        raise VitacError(f"cannot write {out}: {target.parent} does not exist")
    _check_out(out, target, force, formats, flag)
    try:   # a real probe: root passes os.access() where /proc or a read-only mount still refuses
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent))
    except OSError as e:
        raise VitacError(f"cannot write {out}: {target.parent}: {e.strerror}") from None
    return target


def owned_entries(target: Path, formats: tuple[str, ...] = (ARTIFACT_FORMAT,)) -> Optional[list[str]]:
    """The entries of `target` if it is provably one of our artifacts (a manifest of ours listing
    every other entry, all regular files; an artifact may also hold the artifacts `NESTED` allows
    it, e.g. a predictor artifact its encoder in `encoder/`) or empty; None otherwise."""
    entries = sorted(os.listdir(target))
    if not entries:
        return []
    try:
        data = load_json(target / MANIFEST)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") not in formats or not isinstance(data.get("files"), dict):
        return None
    allowed = set(data["files"]) | {MANIFEST}
    nested = NESTED.get(data["format"], {})
    for name in entries:
        mode = os.lstat(target / name).st_mode
        if name in nested and stat.S_ISDIR(mode):
            if owned_entries(target / name, (nested[name],)) is None:
                return None
            continue
        if name not in allowed or not stat.S_ISREG(mode):
            return None
    return entries


def _check_out(out: Path, target: Path, force: bool, formats: tuple[str, ...] = (ARTIFACT_FORMAT,),
               flag: str = "--out") -> Optional[list[str]]:
    """What may be replaced at `target`: None if nothing is there, else the entries to remove."""
    if not os.path.lexists(target):
        return None
    if target.is_symlink() or not target.is_dir():
        raise VitacError(f"{flag} {out} exists and is not a directory")
    try:
        entries = os.listdir(target)
    except OSError as e:
        raise VitacError(f"cannot read {flag} {out}: {e.strerror}") from None
    if entries and not force:
        raise VitacError(f"{flag} {out} exists and is not empty (use --force to replace an artifact)")
    ours = owned_entries(target, formats)
    if ours is None:
        what = "the files vitac-deploy wrote there" if flag != "--out" else "a vitac-deploy artifact"
        raise VitacError(f"{flag} {out} holds files that are not part of {what}: refusing to replace it"
                         f"{', even with --force' if flag == '--out' else ''} (remove them yourself, or choose "
                         f"another {flag})")
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
        _remove_owned(aside, old)
        os.rmdir(aside)
    except OSError as e:   # the new artifact is in place; the old one's rest is named, never lost silently
        say(f"the previous artifact could not be removed completely ({e.strerror}): it is in {aside}")


def _remove_owned(root: Path, names: list[str]) -> None:
    """Unlink the entries `names` of `root`; a folder among them only if it is itself one of our
    nested artifacts (checked again now), file by file, then the folder (which fails if anything
    else appeared in it: named by the caller, never deleted)."""
    nested = tuple({fmt for folders in NESTED.values() for fmt in folders.values()})
    for name in names:
        path = root / name
        if stat.S_ISDIR(os.lstat(path).st_mode):
            inner = owned_entries(path, nested)
            if inner is None:
                raise OSError(errno.ENOTEMPTY, "it holds files that are not ours", str(path))
            _remove_owned(path, inner)
            os.rmdir(path)
        else:
            os.unlink(path)


def _carry(target: Path, tmp: Path, old: Optional[list[str]], names: tuple[str, ...]) -> list[str]:
    """Move the old artifact's nested artifacts `names` (checked to be ours, e.g. `encoder/`) into
    the new one, so that re-exporting the predictor keeps the encoder `plan` finds there; returns
    what was moved."""
    moved = []
    for name in names:
        if not old or name not in old or os.path.lexists(tmp / name):
            continue
        os.rename(target / name, tmp / name)
        old.remove(name)
        moved.append(name)
    return moved


def _discard(tmp: Path, target: Path, carried: list[str]) -> None:
    """Remove a failed write's temp dir, first moving what was carried back where it was."""
    for name in carried:
        if (tmp / name).is_dir() and not os.path.lexists(target / name):
            try:
                os.rename(tmp / name, target / name)
            except OSError:
                pass   # left in tmp, and said so below: never deleted
        if (tmp / name).is_dir():
            raise VitacError(f"the export failed and the previous {name} could not be moved back: it is in "
                             f"{tmp / name}")
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def publishing(out: str | os.PathLike, force: bool = False, formats: tuple[str, ...] = (ARTIFACT_FORMAT,),
               say: Optional[Progress] = None, carry: tuple[str, ...] = (), flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary directory to write an artifact into; on success it becomes `out`.

    `out` is checked (`check_out`: may be replaced only with `force`, only if it is one of
    `formats`), locked against a concurrent writer, and checked again under the lock once the
    content is written; the old artifact's nested artifacts named in `carry` move into the new one.
    On any failure nothing is left at `out` but what was there, and the temporary directory is
    removed; an OSError becomes one line ("cannot write OUT: ...")."""
    say = say or (lambda msg: None)
    out = Path(out)
    target = check_out(out, force, formats, flag)
    with OutLock(target):
        _sweep_partials(target, say)
        tmp = _make_tmp(target)
        carried: list[str] = []
        try:
            yield tmp
            old = _check_out(out, target, force, formats, flag)   # again, under the lock: it may have changed
            carried = _carry(target, tmp, old, carry)
            _swap_in(tmp, target, old, say)
        except OSError as e:   # full disk, read-only or vanished directory: a user-side failure
            _discard(tmp, target, carried)
            raise VitacError(f"cannot write {out}: {e.strerror or first_line(e)}") from None
        except BaseException:
            _discard(tmp, target, carried)
            raise

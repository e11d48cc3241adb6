"""A net under the tests: while they run, a deletion (shutil.rmtree, os.unlink/remove/rmdir and so
Path.unlink/rmdir) of a path outside the temporary folder raises instead of deleting. Destructive
tests must work in tmp_path or a folder they made with tempfile; a mistake in one (a path computed
from the environment, a missing tmp_path prefix) then fails loudly rather than deleting someone's
files. Deletions by a child process are not covered: they go through the CLI, whose tests give it
temporary paths, and the attack harness refuses to run outside a throwaway folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ALLOWED_ROOTS = [Path(tempfile.gettempdir()).resolve()]


class OutsideTemporaryFolder(RuntimeError):
    """A test tried to delete a path outside the temporary folder."""


def inside_temporary(path) -> bool:
    """Whether `path` (its folder resolved, the last component as it is: unlinking a link removes
    the link) lies strictly inside one of ALLOWED_ROOTS."""
    p = Path(os.path.abspath(os.fsdecode(os.fspath(path))))
    full = p.parent.resolve() / p.name
    return any(root in full.parents for root in ALLOWED_ROOTS)


def _guard(fn, name: str):
    def guarded(path, *args, **kwargs):
        if kwargs.get("dir_fd") is None and not inside_temporary(path):
            raise OutsideTemporaryFolder(f"test safety: refusing {name}({os.fspath(path)!r}): outside "
                                         f"{', '.join(map(str, ALLOWED_ROOTS))}")
        return fn(path, *args, **kwargs)

    guarded.__wrapped__ = fn
    return guarded


_GUARDED = (("shutil", shutil, "rmtree"), ("os", os, "unlink"), ("os", os, "remove"), ("os", os, "rmdir"))


def install() -> None:
    """Wrap the deletion functions until `uninstall` (idempotent)."""
    if getattr(shutil.rmtree, "__wrapped__", None) is not None:
        return
    for module_name, module, name in _GUARDED:
        setattr(module, name, _guard(getattr(module, name), f"{module_name}.{name}"))


def uninstall() -> None:
    """Put the original deletion functions back (idempotent). Called when the tests are over, so
    that pytest's own bookkeeping (its cache folder beside the repository, made through a
    temporary sibling it removes) is not refused."""
    for _, module, name in _GUARDED:
        fn = getattr(module, name)
        setattr(module, name, getattr(fn, "__wrapped__", fn))

"""What every command shares: one-line errors with exit codes, and model-source options."""

from __future__ import annotations

import functools
import os
import tempfile
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

import typer

from ..config import DEFAULT_PRESET, PredictorConfig
from ..errors import VitacError, first_line

if TYPE_CHECKING:
    pass

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int = 2) -> "typer.Exit":
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def cli_errors(fn: F) -> F:
    """Turn VitacError into `error: ...` + its exit code; anything else into one line + exit 1
    (set VITAC_DEBUG=1 for the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except VitacError as e:
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except Exception as e:  # noqa: BLE001 - the CLI promises no tracebacks
            if os.environ.get("VITAC_DEBUG"):
                traceback.print_exc()
            raise fail(f"internal error ({type(e).__name__}): {first_line(e)} (VITAC_DEBUG=1 for details)", 1) from None

    return wrapper  # type: ignore[return-value]


def resolve_config(config: Optional[Path], preset: Optional[str]) -> PredictorConfig:
    """--config JSON (ours or upstream kwargs) wins over --preset; the default preset otherwise."""
    if config is not None:
        return PredictorConfig.from_json(config)
    return PredictorConfig.preset(preset or DEFAULT_PRESET)


def load_model(checkpoint: Optional[Path], config: Optional[Path], preset: Optional[str],
               random_init: bool, seed: int):
    """The reference model from a checkpoint, or seeded random weights with --random-init."""
    from ..reference import load_predictor, random_predictor

    if checkpoint is not None and random_init:
        raise VitacError("give either --checkpoint or --random-init, not both")
    cfg = resolve_config(config, preset)
    if checkpoint is not None:
        return load_predictor(checkpoint, cfg)
    if not random_init:
        raise VitacError("no weights: give --checkpoint PATH, or --random-init for seeded random weights")
    return random_predictor(cfg, seed)


# Piped, logged or in CI, nothing reflows the output later: a table is rendered at its natural width
# (rich never widens a table past its content), so a cell is never cut to `first.fp…` at 80 columns.
LOG_WIDTH = 1000


def stdout_console(**kwargs):
    """The console results go to. It prints text as it is: paths, tensor names and manifest strings
    come from users and files, and Rich markup in them (`[/]`, `[bold]`) must neither crash nor
    style. The terminal's width on a TTY; tables whole when not a TTY."""
    import sys as _sys

    from rich.console import Console

    stream = _sys.stderr if kwargs.get("stderr") else _sys.stdout
    if not stream.isatty():
        kwargs.setdefault("width", LOG_WIDTH)
    return Console(markup=False, highlight=False, **kwargs)


def stderr_console():
    """The console progress and notes go to (stderr)."""
    return stdout_console(stderr=True)


def plain(message: str):
    """`message` as a Rich Text: spinners and progress bars parse plain strings as markup."""
    from rich.text import Text

    return Text(message)


def progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def check_output(path: Path, flag: str) -> None:
    """Refuse an output file that cannot be written, before the work that would produce it."""
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

"""What every command shares: one-line errors with exit codes, and the consoles results and
progress go to."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Callable, TypeVar

import typer

from ..errors import VitacError, first_line

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

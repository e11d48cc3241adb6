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
        except MemoryError as e:   # sizes the user chose (samples, batch, chunk), not a bug: a usage error
            raise fail(f"not enough memory ({first_line(e) or 'MemoryError'}): try smaller sizes "
                       f"(--samples, --batch, --chunk)", 2) from None
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


def format_action(action, digits: int = 4) -> str:
    """An action as plain rounded numbers, `[0.0123, -0.045, 0, ...]` (no padding, no -0): what a
    person reads and a robot script copies."""
    return "[" + ", ".join(f"{round(float(v), digits) + 0.0:g}" for v in action) + "]"


def action_legend(action_dim: int) -> str:
    """What the entries of an action are, where the model says (7: the Franka space)."""
    return " (dx, dy, dz, rotation x, y, z, gripper)" if action_dim == 7 else ""


class live_status:
    """Long work in stages: on a terminal a spinner with the stage and a clock that ticks while it
    runs (never a silent wait); in a log one line per stage that lasts more than `LOG_AFTER_S`, with
    the time so far (quick stages and immediate errors print nothing). Enter it to get `say(message)`."""

    LOG_AFTER_S = 2.0

    def __init__(self, console, message: str) -> None:
        self.console, self.message, self.bar, self.t0, self.timer = console, message, None, 0.0, None

    def __enter__(self):
        import time

        self.t0 = time.perf_counter()
        if progress_enabled():
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(plain(self.message), total=None)
        else:
            self.say(self.message)
        return self.say

    def say(self, message: str) -> None:
        import threading
        import time

        if self.bar is not None:
            self.bar.update(self.task, description=plain(message))
            return
        if self.timer is not None:
            self.timer.cancel()
        log = lambda: self.console.print(plain(f"[{time.perf_counter() - self.t0:5.0f} s] {message}"))  # noqa: E731
        self.timer = threading.Timer(self.LOG_AFTER_S, log)
        self.timer.daemon = True
        self.timer.start()

    def __exit__(self, *exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.bar is not None:
            self.bar.stop()

"""What every command shares: one-line errors with exit codes, and model-source options."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

import typer

from ..config import DEFAULT_PRESET, PredictorConfig
from ..errors import VitacError, first_line

if TYPE_CHECKING:
    from rich.console import Console

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


def stdout_console() -> "Console":
    """The console results go to: the terminal's width on a TTY, tables whole when not a TTY."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=LOG_WIDTH)


def stderr_console() -> "Console":
    """The console progress and notes go to (stderr), tables whole when not a TTY."""
    from rich.console import Console

    return Console(stderr=True, highlight=False) if sys.stderr.isatty() else \
        Console(stderr=True, highlight=False, width=LOG_WIDTH)


def progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")

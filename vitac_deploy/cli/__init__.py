"""The `vitac-deploy` command line."""

from __future__ import annotations

from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from .bench import bench
from .debug import debug_precision
from .demo import demo
from .encoder import export_encoder
from .engine import build_engine
from .export import export, inspect
from .info import info
from .plan import energy_landscape, plan
from .serve import serve
from .run import rollout, validate

def _flags_as_flags(params: list) -> list:
    """Give options that take no value an empty metavar: typer labels every option with its type,
    so a flag's help read `--force <bool>`, as if it wanted a value."""
    for p in params:
        if getattr(p, "is_flag", False) and getattr(p, "metavar", "") is None:
            p.metavar = ""
    return params


class _Command(TyperCommand):
    """A command whose flags read as flags in --help."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _flags_as_flags(super().get_params(ctx))


class _Group(TyperGroup):
    """The top-level group, its flags (--version, --help) read as flags in --help."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _flags_as_flags(super().get_params(ctx))


app = typer.Typer(
    name="vitac-deploy",
    cls=_Group,
    help="Deploy the V-JEPA 2 action-conditioned ViT predictor: reference, ONNX export, runtimes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vitac-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """vitac-deploy."""


app.command(cls=_Command)(info)
app.command(cls=_Command)(export)
app.command(cls=_Command)(inspect)
app.command(cls=_Command)(rollout)
app.command(cls=_Command)(validate)
app.command(cls=_Command)(bench)
app.command(name="export-encoder", cls=_Command)(export_encoder)
app.command(cls=_Command)(plan)
app.command(name="energy-landscape", cls=_Command)(energy_landscape)
app.command(cls=_Command)(serve)
app.command(name="build-engine", cls=_Command)(build_engine)
app.command(cls=_Command)(demo)
app.command(name="debug-precision", cls=_Command)(debug_precision)


HELP_LOG_WIDTH = 120


def _is(e: BaseException, name: str) -> bool:
    """Whether `e` is a click exception of that class (typer vendors its own copy of click)."""
    return any(c.__name__ == name for c in type(e).__mro__)


def usage_line(e: BaseException) -> str:
    """The one line a usage error (a bad option value, an unknown flag) prints, exit 2."""
    ctx = getattr(e, "ctx", None)
    where = f"vitac-deploy {ctx.info_name} --help" if ctx is not None and ctx.parent is not None \
        else "vitac-deploy --help"
    return f"error: {e.format_message()} (see `{where}`)"


def main() -> None:
    """The console script: usage errors (a bad option value, an unknown flag) print one line and
    exit 2, like every other user error, instead of a boxed usage message."""
    import os
    import sys

    if not sys.stdout.isatty() and not os.environ.get("TERMINAL_WIDTH") and not os.environ.get("COLUMNS"):
        # --help piped or logged: rich would wrap it to 80 columns and cut long option names
        # (`--no-first-frame-g…`); a width that fits them, unless the user asked for one.
        from typer import rich_utils

        rich_utils.MAX_WIDTH = HELP_LOG_WIDTH
    try:
        code = app(standalone_mode=False)
    except Exception as e:  # noqa: BLE001 - click's exceptions, recognized by class name below
        if _is(e, "NoArgsIsHelpError"):   # `vitac-deploy` alone: the help
            typer.echo(e.ctx.get_help() if getattr(e, "ctx", None) else str(e))
            sys.exit(0)
        if _is(e, "UsageError"):
            typer.echo(usage_line(e), err=True)
            sys.exit(2)
        if _is(e, "Abort"):
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        raise
    sys.exit(code if isinstance(code, int) else 0)

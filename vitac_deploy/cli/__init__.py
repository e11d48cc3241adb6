"""The `vitac-deploy` command line."""

from __future__ import annotations

from typing import Optional

import typer

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

app = typer.Typer(
    name="vitac-deploy",
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


app.command()(info)
app.command()(export)
app.command()(inspect)
app.command()(rollout)
app.command()(validate)
app.command()(bench)
app.command(name="export-encoder")(export_encoder)
app.command()(plan)
app.command(name="energy-landscape")(energy_landscape)
app.command()(serve)
app.command(name="build-engine")(build_engine)
app.command()(demo)
app.command(name="debug-precision")(debug_precision)


def _is(e: BaseException, name: str) -> bool:
    """Whether `e` is a click exception of that class (typer vendors its own copy of click)."""
    return any(c.__name__ == name for c in type(e).__mro__)


def main() -> None:
    """The console script: usage errors (a bad option value, an unknown flag) print one line and
    exit 2, like every other user error, instead of a boxed usage message."""
    import sys

    try:
        code = app(standalone_mode=False)
    except Exception as e:  # noqa: BLE001 - click's exceptions, recognized by class name below
        if _is(e, "NoArgsIsHelpError"):   # `vitac-deploy` alone: the help
            typer.echo(e.ctx.get_help() if getattr(e, "ctx", None) else str(e))
            sys.exit(0)
        if _is(e, "UsageError"):
            ctx = getattr(e, "ctx", None)
            where = f"vitac-deploy {ctx.info_name} --help" if ctx is not None and ctx.parent is not None \
                else "vitac-deploy --help"
            typer.echo(f"error: {e.format_message()} (see `{where}`)", err=True)
            sys.exit(2)
        if _is(e, "Abort"):
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        raise
    sys.exit(code if isinstance(code, int) else 0)

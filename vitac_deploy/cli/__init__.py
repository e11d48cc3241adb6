"""The `vitac-deploy` command line."""

from __future__ import annotations

from typing import Optional

import typer

from .. import __version__
from .bench import bench
from .demo import demo
from .engine import build_engine
from .export import export, inspect
from .info import info
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
app.command(name="build-engine")(build_engine)
app.command()(demo)


def main() -> None:
    app()

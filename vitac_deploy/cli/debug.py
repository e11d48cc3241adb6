"""`vitac-deploy debug-precision`: where, layer by layer, a lower-precision graph departs from fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text
from rich.table import Table

from ..errors import ValidationError, VitacError
from . import options as o
from ._common import cli_errors, live_status, stderr_console, stdout_console

TOP = 15   # rows of the default table when nothing is flagged


@cli_errors
def debug_precision(
    path: Path = typer.Argument(..., help="Artifact directory (with step.onnx and step.fp16.onnx)."),
    precision: str = typer.Option("fp16", "--precision", help="The graph compared with the fp32 one."),
    steps: int = typer.Option(3, "--steps", help="Frames of the rollout the graphs run (driven by the fp32 graph)."),
    batch: int = typer.Option(1, "--batch", help="Batch of the seeded inputs."),
    seed: int = o.seed("Seed of the inputs."),
    atol: Optional[float] = typer.Option(
        None, "--atol", help="Per-element tolerance at unit scale (a tensor of RMS r > 1 gets atol x r); "
                             "default: the precision's max-abs tolerance."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the table as JSON (key `first`: the "
                                                                 "first tensor past the tolerance)."),
    flagged_only: bool = typer.Option(False, "--flagged-only", help="Print only the tensors past the tolerance."),
    show_all: bool = typer.Option(False, "--all", help="Print every tensor in graph order (a default-size model has "
                                                       "about a thousand); by default the flagged ones, or the "
                                                       f"{TOP} with the largest relative error."),
) -> None:
    """The fp16 step graph against the fp32 one, tensor by tensor (Polygraphy): exit 0 none flagged, 1 some, 2 bad input.

    Both graphs run on the same feeds with every intermediate tensor marked as an output; each
    tensor's error is printed in graph order, the first one past the tolerance on top."""
    from ..validation.layerwise import compare_layers, write_report

    if flagged_only and show_all:
        raise VitacError("give --flagged-only or --all, not both")
    if json_out is not None:
        from ..artifacts import check_output

        check_output(json_out, "--json")   # before minutes of work
    with live_status(stderr_console(), f"debug-precision {path}: opening the graphs") as say:
        report = compare_layers(path, precision=precision, steps=steps, batch=batch, seed=seed, atol=atol,
                                progress=say)
    console = stdout_console()
    first = report.first
    if first is None:
        console.print(Text.assemble(("no tensor past the tolerance", "bold"),
                                    f" ({report.tested} vs {report.reference}, atol {report.atol:g} at unit scale, "
                                    f"{len(report.tensors)} tensors, {report.steps} steps)"))
    else:
        console.print(Text.assemble((f"first tensor past the tolerance: {first.name}", "bold red"),
                                    f" (module {first.module or '-'}): max abs {first.max_abs:.3g} > "
                                    f"{report.atol * max(1.0, first.rms):.3g}"), soft_wrap=True)
    flagged = sum(t.flagged for t in report.tensors)
    worst = max(range(len(report.tensors)), key=lambda i: report.tensors[i].rel, default=None)
    summary = (f"{len(report.tensors)} tensors compared over {report.steps} steps, {flagged} past the tolerance "
               f"(atol {report.atol:g} x max(1, RMS))")
    if worst is not None:
        w = report.tensors[worst]
        summary += f"; largest relative error {w.rel:.2e} at #{worst} {w.name} (module {w.module or '-'})"
    console.print(summary, soft_wrap=True)
    if show_all or flagged_only:
        shown = [i for i, t in enumerate(report.tensors) if show_all or t.flagged]
        what = "every tensor" if show_all else "the tensors past the tolerance"
    elif flagged:
        shown = [i for i, t in enumerate(report.tensors) if t.flagged]
        what = "the tensors past the tolerance"
    else:
        shown = sorted(sorted(range(len(report.tensors)), key=lambda i: -report.tensors[i].rel)[:TOP])
        what = f"the {min(TOP, len(report.tensors))} largest relative errors"
    table = Table(title=f"{path}: {report.tested} vs {report.reference}", header_style="bold")
    for col, justify in (("#", "right"), ("tensor", "left"), ("module", "left"), ("max abs", "right"),
                         ("rel (vs RMS)", "right"), ("NaN", "right"), ("inf", "right"), ("max |x|", "right"),
                         ("", "left")):
        # names are the point of the table: wrapped, never cut with an ellipsis
        table.add_column(col, justify=justify, overflow="fold" if col in ("tensor", "module") else "ellipsis")
    for i in shown:
        t = report.tensors[i]
        style = "red" if t.flagged else None
        table.add_row(str(i), t.name, t.module or "-", f"{t.max_abs:.2e}", f"{t.rel:.2e}", str(t.nan), str(t.inf),
                      f"{t.max_magnitude:.3g}", "FLAG" if t.flagged else "", style=style)
    console.print(table)
    if len(shown) < len(report.tensors):
        console.print(f"{len(shown)} of {len(report.tensors)} tensors shown ({what}, in graph order): --all prints "
                      f"every one" + (f", --json {json_out} holds them all" if json_out is not None
                                      else ", --json OUT keeps them all"), soft_wrap=True)
    if json_out is not None:
        write_report(json_out, report)
    if flagged:
        raise ValidationError(f"{flagged} of {len(report.tensors)} tensors past the tolerance; the first is "
                              f"{first.name}")

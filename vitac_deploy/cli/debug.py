"""`vitac-deploy debug-precision`: where, layer by layer, a lower-precision graph departs from fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text
from rich.table import Table

from ..errors import ValidationError
from . import options as o
from ._common import cli_errors, stdout_console


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
) -> None:
    """The fp16 step graph against the fp32 one, tensor by tensor (Polygraphy): exit 0 none flagged, 1 some, 2 bad input.

    Both graphs run on the same feeds with every intermediate tensor marked as an output; each
    tensor's error is printed in graph order, the first one past the tolerance on top."""
    from ..validation.layerwise import compare_layers, write_report

    report = compare_layers(path, precision=precision, steps=steps, batch=batch, seed=seed, atol=atol)
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
    table = Table(title=f"{path}: {report.tested} vs {report.reference}", header_style="bold")
    for col, justify in (("#", "right"), ("tensor", "left"), ("module", "left"), ("max abs", "right"),
                         ("rel (vs RMS)", "right"), ("NaN", "right"), ("inf", "right"), ("max |x|", "right"),
                         ("", "left")):
        # names are the point of the table: wrapped, never cut with an ellipsis
        table.add_column(col, justify=justify, overflow="fold" if col in ("tensor", "module") else "ellipsis")
    for i, t in enumerate(report.tensors):
        if flagged_only and not t.flagged:
            continue
        style = "red" if t.flagged else None
        table.add_row(str(i), t.name, t.module or "-", f"{t.max_abs:.2e}", f"{t.rel:.2e}", str(t.nan), str(t.inf),
                      f"{t.max_magnitude:.3g}", "FLAG" if t.flagged else "", style=style)
    console.print(table)
    if json_out is not None:
        write_report(json_out, report)
    flagged = sum(t.flagged for t in report.tensors)
    if flagged:
        raise ValidationError(f"{flagged} of {len(report.tensors)} tensors past the tolerance; the first is "
                              f"{first.name}")

"""`vitac-deploy demo`: the main job on the built-in default model, end to end."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.text import Text
from rich.table import Table

from ._common import cli_errors, plain, stderr_console, stdout_console


@cli_errors
def demo(
    preset: str = typer.Option("vitac-l384", "--preset", help="Config to run (seeded random weights)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Keep the artifact here (default: a temp dir)."),
    horizon: int = typer.Option(7, "--horizon", help="Frames to predict from 1 context frame."),
    batch: int = typer.Option(1, "--batch", help="Trajectories rolled out at once."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and inputs."),
) -> None:
    """export -> rollout with ONNX Runtime -> parity and speed against the PyTorch reference."""
    import torch

    from ..config import PredictorConfig
    from ..exporters import ExportOptions, export_artifact
    from ..metrics import TOLERANCES, frame_errors, within
    from ..reference import random_predictor
    from ..runtimes import open_runtime
    from ..validation import ParityInputs
    from .export import summary_table

    console, err = stdout_console(), stderr_console()
    cfg = PredictorConfig.preset(preset)
    console.print(Text.assemble((str(preset), "bold"), f": {cfg.num_parameters():,} parameters, seeded random weights "
                                                        f"(seed {seed})"))
    model = random_predictor(cfg, seed)
    with tempfile.TemporaryDirectory() as tmp:
        art = out or Path(tmp) / "artifact"
        with err.status("exporting") as status:
            manifest = export_artifact(model, art, ExportOptions(force=out is not None),
                                       progress=lambda m: (status.update(plain(m)), err.print(f"  {m}")))
        console.print(summary_table(art, manifest))

        inputs = ParityInputs.make(cfg, batch=batch, frames=horizon, seed=seed + 1)
        H = inputs.horizon
        args = (inputs.context, inputs.actions, inputs.states, H, inputs.extrinsics)
        t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
        targs = tuple(t(a) if isinstance(a, np.ndarray) else a for a in args)

        def timed(fn):
            fn()  # warm-up
            t0 = time.perf_counter()
            res = fn()
            return res, time.perf_counter() - t0

        err.print(f"  timing {H}-frame rollouts (batch {batch}): reference full recompute, reference cached, runtimes")
        ref, t_full = timed(lambda: model.rollout(*targs, use_cache=False).numpy())
        rows = [("torch, full recompute (upstream)", "fp32", t_full, ref)]
        cached, t_cached = timed(lambda: model.rollout(*targs, use_cache=True).numpy())
        rows.append(("torch, KV cache", "fp32", t_cached, cached))
        for precision in ("fp32", "fp16"):
            rt = open_runtime(art, backend="onnxruntime", precision=precision)
            pred, secs = timed(lambda: rt.rollout(*args))
            rows.append(("onnxruntime, KV cache", precision, secs, pred))

    table = Table(title=f"{H}-frame rollout from 1 context frame, batch {batch} (this machine, CPU)",
                  header_style="bold")
    table.add_column("runtime (cpu)")
    for col in ("prec.", "time", "per frame", "speedup", "max abs err", "ok"):
        table.add_column(col, justify="right")
    ok = True
    for name, precision, secs, pred in rows:
        errs = frame_errors(pred, ref)
        good = within(errs, TOLERANCES[precision])
        ok &= good
        table.add_row(name, precision, f"{secs * 1e3:.0f} ms", f"{secs / H * 1e3:.1f} ms", f"{t_full / secs:.2f}x",
                      f"{max(e['max_abs'] for e in errs):.2e}", "yes" if good else "NO")
    console.print(table)
    console.print("speedup: against the full recompute measured in this run; max abs err: against it too "
                  "(normalized features)")
    if not ok:
        raise typer.Exit(1)

"""`vitac-deploy info`: what a config or checkpoint holds and what its KV cache costs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..config import PredictorConfig
from ._common import cli_errors, resolve_config


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def config_table(cfg: PredictorConfig, title: str, n_params: Optional[int] = None) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in cfg.to_dict().items():
        table.add_row(key, str(value))
    table.add_section()
    table.add_row("parameters", f"{n_params if n_params is not None else cfg.num_parameters():,}")
    table.add_row("head_dim / rope dims per axis", f"{cfg.head_dim} / {cfg.rope_dim}")
    table.add_row("tokens per frame (patch + cond)", f"{cfg.tokens_per_frame} + {cfg.cond_tokens}")
    for name, nbytes in (("float16", 2), ("float32", 4)):
        per = cfg.kv_bytes_per_frame(nbytes)
        table.add_row(f"KV cache per frame, batch 1 ({name})", _mib(per))
        table.add_row(f"KV cache at max_frames, batch 1 ({name})", _mib(per * cfg.max_frames))
    return table


@cli_errors
def info(
    preset: Optional[str] = typer.Option(None, "--preset", help="A named config (vitac-l384, vjepa2-ac-vitg)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint to inspect (.pt/.pth/.safetensors)."),
    config: Optional[Path] = typer.Option(None, "--config", help="PredictorConfig JSON or upstream kwargs JSON."),
) -> None:
    """Config table, parameter count, tokens per frame and KV-cache bytes of a preset or checkpoint."""
    cfg = resolve_config(config, preset)
    title = f"preset {preset}" if preset and not config else (str(config) if config else "vitac-l384 (default)")
    n_params = None
    if checkpoint is not None:
        from ..reference.checkpoint import check_state_dict, read_state_dict

        sd = read_state_dict(checkpoint)
        check_state_dict(sd, cfg, source=str(checkpoint))
        n_params = sum(int(v.numel()) for v in sd.values())
        title = f"{checkpoint} ({title})"
    Console().print(config_table(cfg, title, n_params))

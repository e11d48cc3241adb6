"""Which weights an artifact was exported from, as its manifest records them (`source`): a
checkpoint (path and sha256) or seeded random weights (`random_init_seed`). `validate` reads it,
so an artifact exported with `--random-init --seed N` validates without repeating them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import VitacError


@dataclass(frozen=True)
class WeightsSource:
    """The weights a reference is built from: a checkpoint, or seeded random weights."""

    checkpoint: Optional[Path]
    random_init: bool
    seed: int
    from_manifest: bool          # the random init was read from the manifest (not given)
    recorded_seed: Optional[int] = None

    def describe(self) -> str:
        if self.checkpoint is not None:
            return str(self.checkpoint)
        if self.recorded_seed is None:
            return f"seeded random weights (seed {self.seed})"
        if self.recorded_seed == self.seed:
            return f"seeded random weights (seed {self.seed}, as the manifest records)"
        return f"seeded random weights (seed {self.seed}; the manifest records seed {self.recorded_seed})"


def recorded_seed(manifest: Mapping[str, Any]) -> Optional[int]:
    """The seed of the random weights the manifest says the artifact holds, or None."""
    source = manifest.get("source")
    seed = source.get("random_init_seed") if isinstance(source, Mapping) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63 else None


def weights_source(manifest: Optional[Mapping[str, Any]], checkpoint: Optional[str | os.PathLike] = None,
                   random_init: bool = False, seed: Optional[int] = None, what: str = "the artifact") -> WeightsSource:
    """The weights to compare `what` with: the checkpoint given; else seeded random weights, with
    `seed` or the one the manifest records (`source.random_init_seed`), given `random_init` or
    recorded there. Nothing given and nothing recorded: one line saying what to give (and the
    checkpoint the manifest names, if any)."""
    if checkpoint is not None and random_init:
        raise VitacError("give either --checkpoint or --random-init, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise VitacError(f"--seed must be an integer in 0..2**63-1, got {seed!r}")
    if checkpoint is not None:
        return WeightsSource(Path(checkpoint), False, 0, False)
    recorded = recorded_seed(manifest or {})
    if random_init or recorded is not None:
        chosen = seed if seed is not None else recorded if recorded is not None else 0
        return WeightsSource(None, True, chosen, not random_init, recorded)
    source = (manifest or {}).get("source")
    named = source.get("checkpoint") if isinstance(source, Mapping) else None
    if isinstance(named, str) and named:
        raise VitacError(f"give --checkpoint: {what} was exported from {named} (its manifest records no random "
                         f"weights)")
    raise VitacError(f"give --checkpoint (or --random-init --seed N): the manifest of {what} does not say which "
                     f"weights it holds")


def engine_source_manifest(engine: str | os.PathLike, manifest: Mapping[str, Any]) -> Optional[dict]:
    """The manifest of the artifact an engine was built from (`artifact` in ENGINE.plan.json), where it
    is still there and reads as ours; None otherwise (its `source` is then unknown)."""
    from .manifest import read_encoder_manifest, read_manifest

    named = manifest.get("artifact")
    if not isinstance(named, str) or not named:
        return None
    where = Path(named)
    for candidate in ([where] if where.is_absolute() else [where, Path(engine).parent / where]):
        for reader in (read_manifest, read_encoder_manifest):
            try:
                return reader(candidate)
            except (VitacError, OSError):
                continue
    return None

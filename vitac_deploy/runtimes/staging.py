"""What a runtime keeps where it computes across rollouts, and what crosses its host boundary.

- `StagedContext`: raw context features staged once (`Runtime.stage_context`) where the runtime
  computes. A plan stages its observation(s) once; every CEM step then rolls out from it, and each
  backend broadcasts it to the batch on its own device, so no host array of batch x tokens x width
  is built or copied per step.
- `StagedFrames`: frame t of a staged context for one rollout's batch, as a backend's `_run` gets it.
- `HostTraffic`: the bytes a runtime moved between host arrays and its own buffers.

numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

from ..errors import VitacError

Groups = Tuple[Tuple[int, int, int], ...]   # (lo, hi, r): rows lo:hi of a batch read context r


@dataclass(frozen=True)
class StagedContext:
    """Raw context features [R, C, N, D] that one runtime holds where it computes (R contexts, e.g.
    one per robot). Valid on that runtime until its next `stage_context`.

    A rollout given it reads context `robot` in every row, or, with `groups`, context r in rows
    lo:hi for each (lo, hi, r)."""

    runtime: int          # id() of the runtime that staged it
    generation: int       # which stage_context call of that runtime made it
    contexts: int         # R
    frames: int           # C
    robot: int = 0
    groups: Optional[Groups] = None

    def for_robot(self, r: int) -> "StagedContext":
        """Context r in every row."""
        if not 0 <= r < self.contexts:
            raise VitacError(f"context {r} is out of range ({self.contexts} staged)")
        return replace(self, robot=int(r), groups=None)

    def for_groups(self, groups: Sequence[Tuple[int, int, int]]) -> "StagedContext":
        """Context r in rows lo:hi, for each (lo, hi, r): several robots in one batch."""
        return replace(self, groups=tuple((int(lo), int(hi), int(r)) for lo, hi, r in groups))

    def rows(self, batch: int) -> Groups:
        """The (lo, hi, r) groups of a rollout of `batch` rows, checked: in order, covering every row."""
        groups = self.groups if self.groups is not None else ((0, batch, self.robot),)
        at = 0
        for lo, hi, r in groups:
            if lo != at or hi <= lo or not 0 <= r < self.contexts:
                raise VitacError(f"context groups {list(groups)} must cover rows 0..{batch - 1} in order, each "
                                 f"naming one of the {self.contexts} staged contexts")
            at = hi
        if at != batch:
            raise VitacError(f"context groups cover {at} rows, the rollout has {batch}")
        return groups

    @property
    def shared(self) -> bool:
        """One context for every row (so its frames can run once, at batch 1)."""
        return self.groups is None or len({r for _, _, r in self.groups}) == 1


@dataclass(frozen=True)
class StagedFrames:
    """Frame t of a staged context for a batch: rows lo:hi hold frame t of context r."""

    context: StagedContext
    t: int
    groups: Groups

    @property
    def batch(self) -> int:
        return self.groups[-1][1]


@dataclass(frozen=True)
class HostTraffic:
    """Bytes a runtime copied from host arrays into its buffers (`to_device`) and back (`to_host`).
    On CUDA these are the host<->device copies; on the CPU, where both sides are host memory, the
    same copies (or bindings of host arrays) that a CUDA run makes, counted the same way."""

    to_device: int = 0
    to_host: int = 0

    def __sub__(self, other: "HostTraffic") -> "HostTraffic":
        return HostTraffic(self.to_device - other.to_device, self.to_host - other.to_host)

    @property
    def total(self) -> int:
        return self.to_device + self.to_host

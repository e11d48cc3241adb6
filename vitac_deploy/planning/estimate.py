"""What a plan will cost before it runs (numpy only).

Its FLOPs come from the model of `planning/memory.py`; its seconds on this machine from a probe:
a few samples rolled out through the runtime at the plan's horizon (timed on the second call, the
first warms the runtime up), scaled by the FLOP model to the whole plan. `quicker_options` gives
options of the same shape whose estimate fits a time, for the user who finds the estimate long.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .cem import CEMOptions
from .energy import energies
from .memory import plan_flops

PROBE_SAMPLES = 16
# below this many FLOPs a plan takes seconds even on a slow CPU: no probe is worth its time
PROBE_MIN_FLOPS = 1e11


@dataclass(frozen=True)
class PlanEstimate:
    """A plan's FLOPs and, measured on this runtime, its estimated seconds."""

    flops: float                 # the whole plan, with the KV cache (`memory.plan_flops`)
    seconds: float               # estimated wall time of the plan on this runtime
    flops_per_second: float      # measured by the probe
    probe_samples: int
    probe_seconds: float

    def seconds_for(self, cfg, options: CEMOptions, chunk: Optional[int] = None) -> float:
        """The estimate for other options on the same runtime (same measured rate)."""
        return plan_flops(cfg, options.samples, options.rollout, options.cem_steps, chunk=chunk) / self.flops_per_second


def estimate_plan(runtime, current, goal, pose, options: Optional[CEMOptions] = None, chunk: Optional[int] = None,
                  probe_samples: int = PROBE_SAMPLES) -> PlanEstimate:
    """Estimate `plan(runtime, current, goal, pose, options, chunk=chunk)` on this runtime: roll out
    `probe_samples` sequences of the plan's horizon twice (zero actions: the cost does not depend
    on the values) and scale the second call's time by the FLOP model. It also warms the runtime
    up, as the plan's first CEM step would."""
    opts = options or CEMOptions()
    opts.check()
    cfg = runtime.cfg
    n = max(1, min(probe_samples, opts.samples, getattr(runtime, "max_batch", None) or probe_samples))
    actions = np.zeros((n, opts.rollout, cfg.action_dim), np.float32)
    energies(runtime, current, goal, pose, actions)              # warm-up: allocations, first-run kernels
    t0 = time.perf_counter()
    energies(runtime, current, goal, pose, actions)
    probe_s = max(time.perf_counter() - t0, 1e-9)
    rate = plan_flops(cfg, n, opts.rollout, 1) / probe_s
    total = plan_flops(cfg, opts.samples, opts.rollout, opts.cem_steps, chunk=chunk)
    return PlanEstimate(total, total / rate, rate, n, probe_s)


def worth_probing(cfg, options: CEMOptions, chunk: Optional[int] = None) -> bool:
    """Whether a plan is large enough for an estimate to matter (`PROBE_MIN_FLOPS`)."""
    return plan_flops(cfg, options.samples, options.rollout, options.cem_steps, chunk=chunk) >= PROBE_MIN_FLOPS


def quicker_options(cfg, options: CEMOptions, estimate: PlanEstimate, seconds: float) -> CEMOptions:
    """Options of the same horizon whose estimate is at most about `seconds`: fewer CEM steps and
    fewer samples in equal measure (both at least 2 steps and 16 samples, topk at most an eighth
    of the samples and at least 2), or `options` where they already fit."""
    if estimate.seconds <= seconds:
        return options
    shrink = seconds / estimate.seconds
    steps = max(2, min(options.cem_steps, round(options.cem_steps * math.sqrt(shrink))))
    samples = options.samples * shrink * options.cem_steps / steps
    samples = max(16, min(options.samples, int(samples) // 8 * 8))
    topk = max(2, min(options.topk, samples // 8))
    out = replace(options, samples=samples, topk=topk, cem_steps=steps)
    while out.samples > 16 and estimate.seconds_for(cfg, out) > seconds:   # the shared context frame's share
        out = replace(out, samples=out.samples - 8, topk=max(2, min(options.topk, (out.samples - 8) // 8)))
    return out


def format_seconds(seconds: float) -> str:
    """`0.8 s`, `42 s`, `3.5 min`, `1.2 h`: an estimate read at a glance."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

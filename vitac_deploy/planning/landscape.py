"""The upstream energy-landscape example: the energy of every action of a regular grid (numpy only)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import VitacError
from ..inputs import check_action_bound
from .energy import chunk_size, energies

MAX_GRID_ACTIONS = 1_000_000   # --grid 100 in 3 dims; the plot and the JSON hold every point
# Grid actions rolled out at once unless told otherwise. Past a few hundred rows a call gains no
# speed (tiny model, 2-core CPU, --grid 40: chunk 500 took 22 s at 282 MiB peak, chunk 14936 took
# 45 s at 3.8 GiB), and rows cost memory the plan memory model does not count on tiny models.
DEFAULT_CHUNK = 512


def action_grid(action_dim: int, nsamples: int = 5, size: float = 0.075) -> np.ndarray:
    """[nsamples ** k, action_dim]: every combination of `nsamples` values in [-size, size] for the
    first k = min(3, action_dim) entries (xyz), the rest 0, last entry fastest (upstream's order).
    At most MAX_GRID_ACTIONS rows (a VitacError, before any allocation, for more)."""
    if not isinstance(nsamples, int) or isinstance(nsamples, bool) or nsamples < 1:
        raise VitacError(f"--grid must be a positive integer, got {nsamples!r}")
    check_action_bound(size, "--size")
    k = min(3, action_dim)
    if nsamples ** k > MAX_GRID_ACTIONS:
        most = int(round(MAX_GRID_ACTIONS ** (1 / k)))
        while most ** k > MAX_GRID_ACTIONS:
            most -= 1
        raise VitacError(f"--grid {nsamples} gives {nsamples}^{k} = {nsamples ** k:.3g} actions; at most "
                         f"{MAX_GRID_ACTIONS} (--grid {most} in {k} dims)")
    axis = np.linspace(-size, size, nsamples)
    grid = np.zeros((nsamples ** k, action_dim), np.float32)
    # indexing "ij" puts the last entry fastest, as itertools.product does
    grid[:, :k] = np.stack([g.ravel() for g in np.meshgrid(*([axis] * k), indexing="ij")], axis=1)
    return grid


def landscape_chunk(runtime, actions: int, chunk: Optional[int] = None, memory_budget: Optional[int] = None) -> int:
    """Grid actions rolled out at once: at most `chunk` (default DEFAULT_CHUNK), the runtime's
    max_batch, and the largest the memory model fits in `memory_budget` bytes (planning/memory.py);
    a VitacError if not even one fits."""
    n = chunk_size(runtime, actions, chunk or min(actions, DEFAULT_CHUNK))
    if memory_budget is not None:
        from .cem import _fitting_chunk

        n = min(n, _fitting_chunk(runtime, memory_budget, 1, actions))
    return n


def energy_landscape(runtime, current, goal, pose, nsamples: int = 5, size: float = 0.075,
                     chunk: Optional[int] = None, memory_budget: Optional[int] = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(actions [M, A], energies [M]): one predicted frame per grid action from the current
    features and pose, scored against the goal features, rolled out `landscape_chunk` actions at
    a time (a runtime opened without max_batch allocates for the first chunk)."""
    grid = action_grid(runtime.cfg.action_dim, nsamples, size)
    n = landscape_chunk(runtime, len(grid), chunk, memory_budget)
    return grid, energies(runtime, current, goal, pose, grid[:, None], chunk=n)


def plot_landscape(grid: np.ndarray, energy: np.ndarray, nsamples: int, path, title: str = "") -> None:
    """Heatmaps of the energy over (x, y), one panel per z value (or one panel for 2-dim actions),
    on one colour scale with the energies as they are (no offset notation), the grid's minimum
    marked with a star and written below. Needs matplotlib."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    from ..artifacts import save_figure

    k = min(3, grid.shape[1])
    if k < 2:
        raise VitacError("the landscape plot needs actions of at least 2 dims")
    axis = np.unique(grid[:, 0])
    e = energy.reshape((nsamples,) * k)                    # [x, y(, z)]
    if k == 2:
        e = e[..., None]
    panels = e.shape[2]
    best = np.unravel_index(np.argmin(e), e.shape)
    width = 2.6 * panels + 1.6 if panels > 1 else 5.2
    fig, axes = plt.subplots(1, panels, figsize=(width, 3.9 if panels > 1 else 4.8), squeeze=False,
                             layout="constrained")
    vmin, vmax = float(e.min()), float(e.max())
    half = (axis[1] - axis[0]) / 2 if len(axis) > 1 else 0.5
    ext = [axis[0] - half, axis[-1] + half, axis[0] - half, axis[-1] + half]   # cells centred on the grid values
    for z in range(panels):
        ax = axes[0, z]
        im = ax.imshow(e[:, :, z].T, origin="lower", extent=ext, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xlabel("action x")
        if z == 0:
            ax.set_ylabel("action y")
        ticks = [axis[0], axis[len(axis) // 2], axis[-1]] if len(axis) > 2 else list(axis)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        if k == 3:
            ax.set_title(f"z = {axis[z]:+.4g}", fontsize=10)
        if z == best[2]:
            ax.plot(axis[best[0]], axis[best[1]], marker="*", color="red", markersize=15, markeredgecolor="white",
                    clip_on=False, zorder=3)
    bar = fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.9)
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    bar.formatter = formatter
    bar.update_ticks()
    bar.set_label("energy: mean |z_pred - z_goal|")
    where = ", ".join(f"{axis[i]:+.4g}" for i in best[:k])
    names = "x, y, z" if k == 3 else "x, y"
    wrap = max(40, int(width * 11))
    fig.suptitle("\n".join(textwrap.wrap(title or "energy landscape", wrap)), fontsize=11)
    span = vmax - vmin
    digits = max(4, int(np.ceil(-np.log10(span))) + 1) if span > 0 else 4   # enough to tell them apart
    fig.supxlabel(f"red star: the lowest energy, {vmin:.{digits}f} at ({names}) = ({where}); highest "
                  f"{vmax:.{digits}f}", fontsize=9)
    save_figure(fig, path)

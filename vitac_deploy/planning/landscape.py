"""The upstream energy-landscape example: the energy of every action of a regular grid (numpy only)."""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

from ..errors import VitacError
from .energy import energies


def action_grid(action_dim: int, nsamples: int = 5, size: float = 0.075) -> np.ndarray:
    """[nsamples ** k, action_dim]: every combination of `nsamples` values in [-size, size] for the
    first k = min(3, action_dim) entries (xyz), the rest 0, last entry fastest (upstream's order)."""
    if not isinstance(nsamples, int) or isinstance(nsamples, bool) or nsamples < 1:
        raise VitacError(f"--grid must be a positive integer, got {nsamples!r}")
    if not isinstance(size, (int, float)) or isinstance(size, bool) or not 0 < size < np.inf:
        raise VitacError(f"--size must be a finite number > 0, got {size!r}")
    k = min(3, action_dim)
    axis = np.linspace(-size, size, nsamples)
    grid = np.zeros((nsamples ** k, action_dim), np.float32)
    grid[:, :k] = np.array(list(itertools.product(axis, repeat=k)))
    return grid


def energy_landscape(runtime, current, goal, pose, nsamples: int = 5, size: float = 0.075,
                     chunk: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(actions [M, A], energies [M]): one predicted frame per grid action from the current
    features and pose, scored against the goal features."""
    grid = action_grid(runtime.cfg.action_dim, nsamples, size)
    return grid, energies(runtime, current, goal, pose, grid[:, None], chunk=chunk)


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

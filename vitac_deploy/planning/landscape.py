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
    on one colour scale, the grid's minimum marked. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels + 1.2, 3.4), squeeze=False)
    vmin, vmax = float(e.min()), float(e.max())
    ext = [axis[0], axis[-1], axis[0], axis[-1]]
    for z in range(panels):
        ax = axes[0, z]
        im = ax.imshow(e[:, :, z].T, origin="lower", extent=ext, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xlabel("action x")
        if z == 0:
            ax.set_ylabel("action y")
        if k == 3:
            ax.set_title(f"z = {axis[z]:+.4g}")
        if z == best[2]:
            ax.plot(axis[best[0]], axis[best[1]], marker="*", color="red", markersize=14, markeredgecolor="white")
    fig.colorbar(im, ax=axes[0, :].tolist(), label="energy (mean |z_pred - z_goal|)")
    fig.suptitle(title or "energy landscape", fontsize=10)
    save_figure(fig, path)

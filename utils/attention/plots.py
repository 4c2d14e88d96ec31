"""Chapter 01's figures: a Kronecker-product matrix by tiles, matrices side by side, and each
path's contribution to one logit. matplotlib is imported inside each function."""
from __future__ import annotations

from typing import Sequence

import torch


def plot_kron_blocks(matrix: torch.Tensor, block: int, title: str = ""):
    """A Kronecker-product matrix as an image, with lines between its [block x block] tiles."""
    import matplotlib.pyplot as plt

    m = matrix.detach().float().cpu()
    limit = float(m.abs().max()) or 1.0
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    image = ax.imshow(m, cmap="RdBu", vmin=-limit, vmax=limit)
    for edge in range(block, m.shape[0], block):
        ax.axhline(edge - 0.5, color="k", lw=0.6)
        ax.axvline(edge - 0.5, color="k", lw=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def plot_matrices(matrices: Sequence[torch.Tensor], titles: Sequence[str], suptitle: str = ""):
    """Side-by-side heatmaps (red positive, blue negative), each with integer tick labels."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(3.3 * len(matrices) + 0.5, 3.4), squeeze=False)
    for ax, m, title in zip(axes[0], matrices, titles):
        m = torch.as_tensor(m).detach().float().cpu()
        limit = float(m.abs().max()) or 1.0
        ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"{title}\n{tuple(m.shape)}", fontsize=9)
        for axis, n in ((ax.set_yticks, m.shape[0]), (ax.set_xticks, m.shape[1])):
            step = max(1, n // 8)
            axis(range(0, n, step))
        ax.tick_params(labelsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_path_contributions(contributions: torch.Tensor, names: Sequence[str], total: float | None = None,
                            title: str = ""):
    """Bar chart of each path's contribution to one logit; a dashed line at ``total`` (e.g. the
    model's own logit), which the bars should sum to."""
    import matplotlib.pyplot as plt

    values = torch.as_tensor(contributions).detach().float().cpu()
    if len(values) != len(names):
        raise ValueError(f"{len(values)} contributions but {len(names)} names")
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2.5, 3.2))
    colors = ["tab:gray"] + ["tab:blue"] * (len(names) - 2) + ["tab:olive"] if len(names) > 2 else None
    ax.bar(range(len(names)), values, color=colors)
    ax.axhline(0, color="k", lw=0.6)
    if total is not None:
        ax.axhline(total, color="tab:red", ls="--", lw=1, label=f"model logit {total:.3f}")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("contribution to the logit")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig

"""Chapter 02's figures: attention relative to a uniform causal pattern."""
from __future__ import annotations

import torch

from utils.tensors import causal_mask


def plot_relative_attention(patterns: dict, n: int = 48, limit: float = 3.0):
    """Heatmaps of log2(A[i, j] * (i + 1)) for the first ``n`` positions: attention relative to a
    uniform causal pattern (0 = uniform, +1 = twice uniform, -1 = half). One row of panels per
    entry of ``patterns`` (name -> [head, n_ctx, n_ctx]), one column per head."""
    import matplotlib.pyplot as plt

    names = list(patterns)
    n_heads = patterns[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), n_heads, figsize=(2.6 * n_heads + 1, 2.5 * len(names)), squeeze=False)
    rows = torch.arange(1, n + 1, dtype=torch.float32)[:, None]
    for r, name in enumerate(names):
        A = patterns[name][:, :n, :n].detach().float().cpu()
        relative = torch.log2(A * rows).masked_fill(~causal_mask(n), float("nan")).clamp(-limit, limit)
        for h in range(n_heads):
            ax = axes[r, h]
            image = ax.imshow(relative[h], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(f"{name}: head {h}", fontsize=8)
            ax.tick_params(labelsize=6)
            if r == len(names) - 1:
                ax.set_xlabel("key position", fontsize=7)
            if h == 0:
                ax.set_ylabel("query position", fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="log2(attention / uniform)")
    return fig

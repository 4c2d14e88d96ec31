"""Small matplotlib helpers shared by the chapters (static images: they render offline and in CI)."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch


def _show_token(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t") or "''"


def attention_patterns(pattern: torch.Tensor, str_tokens: Sequence[str], title: str = "",
                       head_names: Optional[Sequence[str]] = None):
    """Heatmaps of [n_heads, query, key] patterns, one panel per head; returns the figure."""
    pattern = pattern.detach().float().cpu()
    if pattern.ndim == 2:
        pattern = pattern[None]
    n_heads, n, _ = pattern.shape
    if len(str_tokens) != n:
        raise ValueError(f"{len(str_tokens)} token labels for a pattern over {n} positions")
    labels = [_show_token(t) for t in str_tokens]
    fig, axes = plt.subplots(1, n_heads, figsize=(3.2 * n_heads + 1, 3.4), squeeze=False)
    for h, ax in enumerate(axes[0]):
        image = ax.imshow(pattern[h], vmin=0, vmax=1, cmap="Blues")
        ax.set_title(head_names[h] if head_names else f"head {h}", fontsize=9)
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
        ax.set_xlabel("key (source)", fontsize=8)
    axes[0][0].set_ylabel("query (destination)", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="attention")
    if title:
        fig.suptitle(title)
    return fig


def line(y: torch.Tensor, x: Optional[torch.Tensor] = None, xlabel: str = "", ylabel: str = "", title: str = ""):
    y = torch.as_tensor(y).detach().float().cpu()
    x = torch.arange(len(y)) if x is None else torch.as_tensor(x).cpu()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(x, y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig

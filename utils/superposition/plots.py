"""The chapter's figures: W^T W and the feature norms of a sweep, the feature directions of
2-dimensional instances, feature dimensionality against sparsity, weights in the neuron basis,
and the Johnson-Lindenstrauss curve. Each function returns its matplotlib figure."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch
from jaxtyping import Float
from torch import Tensor

from utils.superposition.exercises import dimensionality, superposition
from utils.superposition.inputs import EPS, REPRESENTED_NORM, as_instance_feature, check_W
from utils.superposition.measures import dims_per_feature, feature_norms, neuron_alignment


def superposition_cmap():
    """The superposition colour scale: black (a dimension of its own) through gold (shared)."""
    from matplotlib.colors import LinearSegmentedColormap

    # black: the feature has a dimension to itself; gold: it shares (the paper's colour code)
    return LinearSegmentedColormap.from_list("superposition", ["#000000", "#3b2f73", "#d9a400", "#ffd700"])


def _p_label(p: float) -> str:
    return f"1-S = {p:.3g}"


def plot_sweep(W: Float[Tensor, "inst d_hidden feat"], feature_probability: Optional[Tensor] = None,
               title: str = "", max_norm: Optional[float] = None):
    """Per instance (columns): W^T W as a heatmap (top) and ||W_i|| as bars coloured by superposition
    (bottom; black = a dimension of its own, gold = shared). Returns the figure."""
    W = check_W(W)
    if W.ndim == 2:
        W = W[None]
    k, m, n = W.shape
    wtw = W.transpose(-1, -2) @ W
    norms, sup = feature_norms(W), superposition(W)
    max_norm = max_norm or max(1.2, float(norms.max()) * 1.05)
    cmap = superposition_cmap()
    fig, axes = plt.subplots(2, k, figsize=(1.6 * k + 0.8, 4.6), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.15]})
    for i in range(k):
        top, bottom = axes[0][i], axes[1][i]
        top.imshow(wtw[i], cmap="RdBu", vmin=-1, vmax=1)
        top.set_xticks([])
        top.set_yticks([])
        if feature_probability is not None:
            top.set_title(_p_label(float(torch.as_tensor(feature_probability).reshape(k, -1)[i, 0])), fontsize=8)
        bottom.barh(range(n), norms[i], color=cmap(sup[i].clamp(0, 1).numpy()), height=0.8)
        bottom.set_xlim(0, max_norm)
        bottom.invert_yaxis()
        bottom.set_yticks([] if i else range(0, n, max(1, n // 5)))
        bottom.tick_params(labelsize=7)
        bottom.set_xlabel("||W_i||", fontsize=7)
    axes[0][0].set_ylabel("W^T W", fontsize=9)
    axes[1][0].set_ylabel("feature i", fontsize=9)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes[1].tolist(), shrink=0.8, pad=0.01,
                 label="superposition (clipped at 1)")
    if title:
        fig.suptitle(title)
    return fig


def plot_geometry(W: Float[Tensor, "inst 2 feat"], titles: Optional[Sequence[str]] = None,
                  importance: Optional[Tensor] = None, title: str = "", ncols: Optional[int] = None):
    """The columns W_i of 2-dimensional instances drawn as arrows in the hidden plane, coloured by
    importance (dark = important), labelled with the feature index."""
    W = check_W(W)
    if W.ndim == 2:
        W = W[None]
    k, m, n = W.shape
    if m != 2:
        raise ValueError(f"plot_geometry draws 2-dimensional hidden spaces; this W has d_hidden = {m}")
    imp = torch.ones(k, n) if importance is None else as_instance_feature(importance, k, n, "importance")
    ncols = ncols or k
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.1 * ncols, 2.2 * nrows + 0.3), squeeze=False)
    lim = max(1.3, float(W.abs().max()) * 1.15)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        colours = plt.cm.viridis((1 - imp[i] / imp[i].max().clamp_min(EPS)).numpy() * 0.85)
        for j in range(n):
            x, y = W[i, 0, j].item(), W[i, 1, j].item()
            ax.plot([0, x], [0, y], color=colours[j], lw=1.5)
            ax.scatter([x], [y], color=colours[j], s=18, zorder=3)
            if math.hypot(x, y) > 0.2:
                ax.annotate(str(j), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", lw=0.5, zorder=0)
        ax.axvline(0, color="0.85", lw=0.5, zorder=0)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# k features spread evenly over d dimensions (a tight frame) each get D = d/k: digon 1/2, triangle 2/3,
# tetrahedron 3/4, pentagon 2/5, hexagon 1/3, square antiprism 3/8.
STICKY_FRACTIONS = {"1": 1.0, "3/4": 0.75, "2/3": 2 / 3, "1/2": 0.5, "2/5": 0.4, "3/8": 0.375, "1/3": 1 / 3}


def plot_dimensionality(W: Float[Tensor, "inst d_hidden feat"], feature_probability: Tensor, title: str = "",
                        ax=None):
    """Feature dimensionality D_i of every represented feature (dots) and dimensions per feature
    m / ||W||_F^2 (line) against 1 / (1 - S), with the sticky fractions as dashed lines. Draws into
    ``ax`` if given; returns the figure."""
    W = check_W(W)
    k = W.shape[0]
    p = torch.as_tensor(feature_probability, dtype=torch.float32).reshape(k, -1)[:, 0]
    D, norms = dimensionality(W), feature_norms(W)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8))
    for name, value in STICKY_FRACTIONS.items():
        ax.axhline(value, color="0.8", ls="--", lw=0.8, zorder=0)
        if name != "3/8":  # too close to 2/5 and 1/3 to label legibly
            ax.text(1 / p.min().item() * 1.25, value, name, va="center", fontsize=8, color="0.4")
    for i in range(k):
        keep = norms[i] > REPRESENTED_NORM
        jitter = torch.linspace(0.97, 1.03, int(keep.sum())) if keep.any() else torch.ones(0)
        ax.scatter((1 / p[i]) * jitter, D[i][keep], s=10, color="tab:blue", alpha=0.6)
    ax.plot(1 / p, dims_per_feature(W), color="black", lw=1.2, label="m / ||W||_F^2")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("1 / (1 - S)   (sparser to the right)")
    ax.set_ylabel("feature dimensionality D_i")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "Feature dimensionality sticks to simple fractions", fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


def plot_neuron_weights(models: dict, titles: Optional[Sequence[str]] = None):
    """W (hidden unit x feature) of each instance, one row per model: a feature lying along one
    hidden unit shows as a single strong cell in its column."""
    names = list(models)
    Ws = [check_W(models[name].W) for name in names]
    k = Ws[0].shape[0]
    fig, axes = plt.subplots(len(names), k, figsize=(2.2 * k + 1, 1.6 * len(names) + 0.6), squeeze=False)
    vmax = 1.2  # fixed, so one large weight in a sparse instance does not wash out the others
    for r, (name, W) in enumerate(zip(names, Ws)):
        align = neuron_alignment(W)
        for i in range(k):
            ax = axes[r][i]
            image = ax.imshow(W[i], cmap="RdBu", vmin=-vmax, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            label = titles[i] if titles is not None else f"instance {i}"
            ax.set_title(f"{label}\nalignment {align[i]:.2f}", fontsize=8)
        axes[r][0].set_ylabel(f"{name}\nhidden unit", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7)
    return fig


def plot_jl(dims: Sequence[int], counts: dict[float, list[int]]):
    """Almost-orthogonal directions found against the dimension, on a log scale, with y = d."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for eps, values in counts.items():
        ax.plot(dims, values, marker="o", label=f"|cos| < {eps}")
    ax.plot(dims, dims, color="0.5", ls="--", label="d (exactly orthogonal)")
    ax.set_yscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("directions that fit")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Almost-orthogonal directions grow exponentially with d")
    fig.tight_layout()
    return fig

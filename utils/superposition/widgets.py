"""The interactive explorer: ``explore`` trains one small instance and draws it; ``explorer``
wraps it in ipywidgets sliders that retrain and redraw on every change."""
from __future__ import annotations

import time

import matplotlib.pyplot as plt
import torch

from utils.superposition.exercises import superposition
from utils.superposition.inputs import decaying_importance
from utils.superposition.measures import feature_norms, n_represented
from utils.superposition.model import ToyConfig, ToyModel
from utils.superposition.plots import superposition_cmap
from utils.superposition.training import train


def explore(feature_probability: float = 0.1, decay: float = 0.9, n_features: int = 5, d_hidden: int = 2,
            relu_output: bool = True, steps: int = 3000, batch_size: int = 512, seed: int = 0):
    """Train one small instance and draw W^T W, the norms and (for d_hidden = 2) the geometry.
    Returns (model, figure); the explorer calls this on every slider change."""
    cfg = ToyConfig(n_features, d_hidden, 1, relu_output=relu_output)
    model = ToyModel(cfg, feature_probability, decaying_importance(n_features, decay), seed=seed)
    train(model, steps=steps, batch_size=batch_size, seed=seed)
    W = model.W.detach()
    panels = 3 if d_hidden == 2 else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.3 * panels, 3.1))
    axes[0].imshow((W[0].T @ W[0]), cmap="RdBu", vmin=-1, vmax=1)
    axes[0].set_title("W^T W", fontsize=9)
    sup = superposition(W)[0]
    axes[1].barh(range(n_features), feature_norms(W)[0], color=superposition_cmap()(sup.clamp(0, 1).numpy()))
    axes[1].invert_yaxis()
    axes[1].set_xlim(0, 1.4)
    axes[1].set_title(f"||W_i|| ({n_represented(W)[0].item()} represented)", fontsize=9)
    if d_hidden == 2:
        ax = axes[2]
        colours = plt.cm.viridis(torch.linspace(0, 0.85, n_features).numpy())
        for j in range(n_features):
            ax.plot([0, W[0, 0, j]], [0, W[0, 1, j]], color=colours[j], lw=1.5)
            ax.annotate(str(j), (W[0, 0, j].item(), W[0, 1, j].item()), fontsize=7)
        ax.set_xlim(-1.4, 1.4)
        ax.set_ylim(-1.4, 1.4)
        ax.set_aspect("equal")
        ax.set_title("feature directions", fontsize=9)
    fig.suptitle(f"{cfg.label}, 1-S = {feature_probability:.3g}, I_i = {decay:.2f}^i", fontsize=9)
    fig.tight_layout()
    return model, fig


def explorer(steps: int = 3000, batch_size: int = 512):
    """Sliders for sparsity, importance decay, the number of features and the output; each change
    retrains a 2-dimensional toy model (about a second) and redraws. Returns the widget."""
    import ipywidgets as widgets
    from IPython.display import display

    controls = {
        "feature_probability": widgets.FloatLogSlider(value=0.1, base=10, min=-3, max=0, step=0.1,
                                                      description="1 - S", continuous_update=False),
        "decay": widgets.FloatSlider(value=0.9, min=0.5, max=1.0, step=0.05, description="importance decay",
                                     continuous_update=False, style={"description_width": "initial"}),
        "n_features": widgets.IntSlider(value=5, min=2, max=10, description="features n", continuous_update=False),
        "relu_output": widgets.ToggleButtons(options=[("ReLU output", True), ("linear", False)], value=True),
    }

    def update(**kwargs):
        start = time.perf_counter()
        _, fig = explore(**kwargs, steps=steps, batch_size=batch_size)
        display(fig)
        plt.close(fig)
        print(f"trained and drawn in {time.perf_counter() - start:.1f} s")

    out = widgets.interactive_output(update, controls)
    return widgets.VBox([widgets.HBox([controls["feature_probability"], controls["decay"]]),
                         widgets.HBox([controls["n_features"], controls["relu_output"]]), out])

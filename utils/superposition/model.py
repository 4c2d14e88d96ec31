"""A stack of toy models: ``ToyConfig`` (shape and kind) and ``ToyModel`` (W, b and each
instance's importance and feature probability), whose forward pass is ``exercises.toy_forward``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

from utils.superposition.exercises import generate_batch, toy_forward
from utils.superposition.inputs import TensorLike, as_instance_feature, check_importance, check_probability


@dataclass(frozen=True)
class ToyConfig:
    """Shape and kind of a stack of toy models."""

    n_features: int = 5
    d_hidden: int = 2
    n_instances: int = 1
    relu_output: bool = True  # False: the linear model x' = W^T W x + b
    relu_hidden: bool = False  # True: h = ReLU(W x), the privileged-basis model

    def __post_init__(self):
        for name in ("n_features", "d_hidden", "n_instances"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")

    @property
    def label(self) -> str:
        hidden = "ReLU hidden, " if self.relu_hidden else ""
        return f"{hidden}{'ReLU' if self.relu_output else 'linear'} output, n={self.n_features}, m={self.d_hidden}"


class ToyModel(nn.Module):
    """``cfg.n_instances`` independent toy models, each with its own importance and feature probability.

    W [inst, d_hidden, feat] starts Xavier-normal (std sqrt(2 / (m + n))) and b [inst, feat] at zero,
    drawn from ``seed`` alone, so two models built with the same arguments are identical.
    """

    def __init__(self, cfg: ToyConfig, feature_probability: TensorLike = 1.0, importance: TensorLike = 1.0,
                 seed: int = 0):
        super().__init__()
        self.cfg = cfg
        k, n, m = cfg.n_instances, cfg.n_features, cfg.d_hidden
        p = as_instance_feature(feature_probability, k, n, "feature_probability")
        imp = as_instance_feature(importance, k, n, "importance")
        check_probability(p)
        check_importance(imp)
        self.register_buffer("feature_probability", p)
        self.register_buffer("importance", imp)
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(k, m, n, generator=g) * math.sqrt(2 / (m + n)))
        self.b = nn.Parameter(torch.zeros(k, n))

    def forward(self, x: Float[Tensor, "inst batch feat"]) -> Float[Tensor, "inst batch feat"]:
        return toy_forward(self.W, self.b, x, self.cfg.relu_output, self.cfg.relu_hidden)

    def generate_batch(self, batch_size: int, generator: Optional[torch.Generator] = None):
        return generate_batch(batch_size, self.feature_probability, generator)

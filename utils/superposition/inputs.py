"""The settings of a stack of toy models: shared constants, broadcasting a setting to every
instance and feature, input validation, and the two standard schedules (the sparsity sweep's
feature probabilities and the decaying importance)."""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

Number = Union[int, float]
TensorLike = Union[Number, Sequence[Number], Tensor]

# A feature counts as "represented" when its embedding is at least this long: trained models put
# features at norm ~1 or ~0, so any threshold in between gives the same count.
REPRESENTED_NORM = 0.5
# Guards 0/0 for features the model dropped (W_i = 0): their superposition and dimensionality are 0.
EPS = 1e-8


def as_instance_feature(value: TensorLike, n_instances: int, n_features: int, name: str) -> Tensor:
    """Broadcast a number, a per-feature vector [n] or a full [inst, n] table to [inst, n] (float32).

    A 1-D input is always per FEATURE; give a per-instance column as shape [inst, 1].
    """
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.ndim > 2:
        raise ValueError(f"{name} must be a number, a [n_features] vector or an [n_instances, n_features] "
                         f"table, got shape {tuple(t.shape)}")
    try:
        return t.expand(n_instances, n_features).contiguous()
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to "
                         f"[n_instances={n_instances}, n_features={n_features}]") from None


def check_probability(p: Tensor) -> None:
    """Raise ValueError unless every feature probability 1 - S lies in (0, 1]."""
    if not torch.isfinite(p).all() or (p <= 0).any() or (p > 1).any():
        raise ValueError("feature_probability (1 - S) must lie in (0, 1]: it is the probability that a "
                         f"feature is present; got values in [{p.min().item():.3g}, {p.max().item():.3g}]")


def check_importance(importance: Tensor) -> None:
    """Raise ValueError unless every importance is finite and non-negative."""
    if not torch.isfinite(importance).all() or (importance < 0).any():
        raise ValueError("importance must be finite and non-negative")


def check_group_probability(group_probability: Tensor, group_size: int) -> Tensor:
    """The group generators' inputs: group_probability as a float [inst, n_groups] table in (0, 1]
    and a positive integer group_size. Returns the table; raises ValueError otherwise."""
    p = torch.as_tensor(group_probability, dtype=torch.float32)
    if p.ndim != 2:
        raise ValueError(f"group_probability must be [n_instances, n_groups], got shape {tuple(p.shape)}")
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size}")
    check_probability(p)
    return p


def check_W(W: Tensor) -> Tensor:
    """W detached as float, after checking it is [inst, d_hidden, feat] (or one instance [d_hidden, feat])."""
    if not isinstance(W, Tensor) or W.ndim not in (2, 3):
        raise ValueError("W must be a tensor of shape [inst, d_hidden, feat] (or [d_hidden, feat])")
    return W.detach().float()


def sweep_probabilities(n: int, lowest: float = 1e-3) -> Float[Tensor, "n"]:
    """n feature probabilities 1 - S, log-spaced from 1 (dense) down to ``lowest`` (very sparse)."""
    if n < 1 or not 0 < lowest <= 1:
        raise ValueError(f"need n >= 1 and 0 < lowest <= 1, got n={n}, lowest={lowest}")
    if n == 1:
        return torch.ones(1)
    return torch.logspace(0, math.log10(lowest), n)


def decaying_importance(n_features: int, decay: float = 0.7) -> Float[Tensor, "feat"]:
    """I_i = decay^i: feature 0 matters most (the paper's choice, decay = 0.7)."""
    if not 0 < decay <= 1:
        raise ValueError(f"importance decay must be in (0, 1], got {decay}")
    return decay ** torch.arange(n_features, dtype=torch.float32)

"""The chapter's other data generators: the textbook two-draw version of ``generate_batch`` and
the correlated feature groups (the graded generators live in ``exercises``)."""
from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from utils.superposition.inputs import check_group_probability, check_probability


def generate_batch_two_draws(
    batch_size: int,
    feature_probability: Float[Tensor, "inst feat"],
    generator: Optional[torch.Generator] = None,
) -> Float[Tensor, "inst batch feat"]:
    """The textbook version of ``generate_batch``: one draw decides presence, another the value."""
    p = torch.as_tensor(feature_probability, dtype=torch.float32)
    if batch_size < 1 or p.ndim != 2:
        raise ValueError("need batch_size >= 1 and feature_probability of shape [n_instances, n_features]")
    check_probability(p)
    shape = (p.shape[0], batch_size, p.shape[1])
    present = torch.rand(shape, generator=generator) < p[:, None, :]
    return torch.rand(shape, generator=generator) * present


def generate_correlated_batch(
    batch_size: int,
    group_probability: Float[Tensor, "inst group"],
    group_size: int,
    generator: Optional[torch.Generator] = None,
) -> Float[Tensor, "inst batch feat"]:
    """Correlated feature groups: the features of a group are present or absent TOGETHER.

    Group k is the block of features k * group_size ... (k + 1) * group_size - 1 (so n_features =
    n_groups * group_size). Independently for every (instance, row, group), the group is active
    with probability p = group_probability[inst, k]; when it is, every one of its features takes
    its own value uniform on [0, 1). Each feature is on with probability p, like generate_batch's,
    but never without the rest of its group.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    p = check_group_probability(group_probability, group_size)
    inst, groups = p.shape
    active = torch.rand(inst, batch_size, groups, 1, generator=generator) < p[:, None, :, None]
    values = torch.rand(inst, batch_size, groups, group_size, generator=generator)
    return (values * active).reshape(inst, batch_size, groups * group_size)

"""Chapter 04's graded exercises in their plain form: the reference answers ``utils.checks.ch04``
grades against (``check.toy_forward``, ``generate_batch``, ``weighted_loss``, ``superposition``,
``dimensionality``, ``anticorrelated_batch``).

Shapes: the instance axis comes first, W [inst, d_hidden, feat], b [inst, feat],
x [inst, batch, feat], importance and feature probability [inst, feat]; see the package docstring
for how W relates to the paper's column convention. ``tests/test_ch04_superposition.py`` checks each
function against loops over instances, rows and features.
"""
from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from utils.superposition.inputs import EPS, check_group_probability, check_probability, check_W

# =========================================================================== 1. the model


def toy_forward(
    W: Float[Tensor, "inst d_hidden feat"],
    b: Float[Tensor, "inst feat"],
    x: Float[Tensor, "inst batch feat"],
    relu_output: bool = True,
    relu_hidden: bool = False,
) -> Float[Tensor, "inst batch feat"]:
    """x' = ReLU(W^T W x + b) for every instance and batch row at once.

    ``relu_output=False`` is the linear model x' = W^T W x + b. ``relu_hidden=True`` puts a ReLU on
    the hidden layer, h = ReLU(W x): its m neurons become a privileged basis.
    """
    if W.ndim != 3 or b.ndim != 2 or x.ndim != 3:
        raise ValueError("expected W [inst, d_hidden, feat], b [inst, feat], x [inst, batch, feat]; got shapes "
                         f"{tuple(W.shape)}, {tuple(b.shape)}, {tuple(x.shape)}")
    if not (W.shape[0] == b.shape[0] == x.shape[0] and W.shape[2] == b.shape[1] == x.shape[2]):
        raise ValueError(f"shapes disagree: W {tuple(W.shape)}, b {tuple(b.shape)}, x {tuple(x.shape)}")
    if relu_hidden:
        h = torch.relu(x @ W.transpose(1, 2))  # [inst, batch, d_hidden]
        pre = h @ W + b[:, None, :]
    else:
        # Rows: x' = x W^T W + b. Without a hidden ReLU the two products fold into the one
        # [feat, feat] matrix W^T W, the matrix the whole chapter looks at.
        pre = x @ (W.transpose(1, 2) @ W) + b[:, None, :]
    return torch.relu(pre) if relu_output else pre


# =========================================================================== 2. data


def generate_batch(
    batch_size: int,
    feature_probability: Float[Tensor, "inst feat"],
    generator: Optional[torch.Generator] = None,
) -> Float[Tensor, "inst batch feat"]:
    """Synthetic sparse features: x_i = 0 with probability S_i, else uniform on [0, 1].

    One uniform draw u per entry decides both parts: the feature is present iff u lands in the top
    slice (S, 1] of width p = 1 - S, and its position in that slice, (u - S) / p, is again uniform
    on [0, 1]. So x = max(0, (u - S) / p): half the random numbers of the two-draw recipe
    (``generate_batch_two_draws``), which any correct answer may use instead.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    p = torch.as_tensor(feature_probability, dtype=torch.float32)
    if p.ndim != 2:
        raise ValueError(f"feature_probability must be [n_instances, n_features], got shape {tuple(p.shape)}")
    check_probability(p)
    p = p[:, None, :]  # [inst, 1, feat], broadcast over the batch
    u = torch.rand(p.shape[0], batch_size, p.shape[2], generator=generator)
    # (u - S) / p written as u * (1/p) - S/p, in one op
    return torch.addcmul(-(1 - p) / p, u, 1 / p).clamp_min_(0)


def generate_anticorrelated_batch(
    batch_size: int,
    group_probability: Float[Tensor, "inst group"],
    group_size: int,
    generator: Optional[torch.Generator] = None,
) -> Float[Tensor, "inst batch feat"]:
    """Anti-correlated feature groups: at most ONE feature of a group is present at a time.

    Group k is the block of features k * group_size ... (k + 1) * group_size - 1. Independently for
    every (instance, row, group), the group is active with probability p = group_probability[inst, k];
    when it is, one of its features, chosen uniformly, takes a value uniform on [0, 1) and the
    others stay 0. Each feature is therefore on with probability p / group_size.

    The chapter's exercise; the recipe here: one draw for activity, one for the choice, one for
    the value (any recipe with these statistics is correct).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    p = check_group_probability(group_probability, group_size)
    inst, groups = p.shape
    shape = (inst, batch_size, groups)
    active = torch.rand(shape, generator=generator) < p[:, None, :]
    chosen = torch.randint(0, group_size, shape, generator=generator)
    values = torch.rand(shape, generator=generator) * active
    x = torch.zeros(inst, batch_size, groups, group_size)
    x.scatter_(-1, chosen[..., None], values[..., None])
    return x.reshape(inst, batch_size, groups * group_size)


# =========================================================================== 3. the loss


def per_instance_loss(
    out: Float[Tensor, "inst batch feat"],
    x: Float[Tensor, "inst batch feat"],
    importance: Float[Tensor, "inst feat"],
) -> Float[Tensor, "inst"]:
    """L_k = mean over the batch of sum_i I_ki (x_i - x'_i)^2, one number per instance."""
    # Reduce the batch first and weight afterwards: the same number, since I does not depend on
    # the row, and the importance multiplies a [inst, feat] table instead of the whole batch.
    return ((out - x).square().sum(1) * importance).sum(-1) / x.shape[1]


def importance_weighted_loss(
    out: Float[Tensor, "inst batch feat"],
    x: Float[Tensor, "inst batch feat"],
    importance: Float[Tensor, "inst feat"],
) -> Float[Tensor, ""]:
    """The training objective: the per-instance losses SUMMED over instances.

    A sum makes each instance's gradient exactly the gradient of its own loss, whatever the number
    of instances; a mean would shrink every instance's gradient by 1/n_instances.
    """
    return per_instance_loss(out, x, importance).sum()


# =========================================================================== 4. the measures


def squared_overlaps(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst feat feat"]:
    """[..., i, j] = (W_i_hat . W_j)^2, the squared length of W_j projected onto feature i's direction
    (W_i_hat = W_i / ||W_i||, and 0 for a dropped feature)."""
    W = check_W(W)
    W_hat = W / (W.norm(dim=-2, keepdim=True) + EPS)
    return (W_hat.transpose(-1, -2) @ W).square()


def superposition(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst feat"]:
    """sum_{j != i} (W_i_hat . W_j)^2: how much other features interfere along feature i's direction.

    0 for a feature with a dimension to itself; 1 for each member of an antipodal pair of unit vectors.
    """
    sq = squared_overlaps(W)
    return sq.sum(-1) - sq.diagonal(dim1=-2, dim2=-1)


def dimensionality(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst feat"]:
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2, the fraction of a hidden dimension feature i gets.

    1 for a feature alone in its dimension, 1/2 for an antipodal pair, 2/5 for a pentagon; 0 for
    a feature that is not represented.
    """
    W = check_W(W)
    return W.norm(dim=-2).square() / (squared_overlaps(W).sum(-1) + EPS)

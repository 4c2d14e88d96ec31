"""Chapter 04's graded exercises in their plain form: the reference answers ``utils.checks.ch04``
grades against (``check.toy_forward``, ``generate_batch``, ``weighted_loss``, ``superposition``,
``dimensionality``, ``anticorrelated_batch``, ``pair_losses``), and the training loop ``train_toy``
(graded on the outcome of training, ``check.train_toy``).

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


# =========================================================================== 4. the training loop


def train_toy(
    W: Float[Tensor, "inst d_hidden feat"],
    b: Float[Tensor, "inst feat"],
    importance: Float[Tensor, "inst feat"],
    feature_probability: Float[Tensor, "inst feat"],
    steps: int,
    batch_size: int,
    lr: float,
) -> tuple[Float[Tensor, "inst d_hidden feat"], Float[Tensor, "inst feat"]]:
    """Adam on the importance-weighted loss from the weights (W, b), a fresh batch every step;
    returns the trained (W, b). The loop of ``training.train``, written with the plain pieces.

    Batches come from torch's global random stream (``generate_batch`` without a generator), so a
    caller seeds it with ``torch.manual_seed``. Gradients are switched on inside: checks and graders
    call a student's function under ``torch.no_grad()``.
    """
    W = W.detach().clone().requires_grad_(True)  # leaves of our own: the caller's tensors stay as they are
    b = b.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([W, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            x = generate_batch(batch_size, feature_probability)
            loss = importance_weighted_loss(toy_forward(W, b, x), x, importance)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return W.detach(), b.detach()


# =========================================================================== 5. the measures


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


# =========================================================================== 6. the phase change in closed form


def pair_losses(
    p: Float[Tensor, "k"],
    r: Float[Tensor, "k"],
) -> Float[Tensor, "k 2"]:
    """Expected loss of the two candidate solutions of the smallest toy model, n = 2 features in
    m = 1 dimension, importances (1, r), each feature present with probability p and then uniform
    on [0, 1]: column 0 for feature 0 ALONE, column 1 for the ANTIPODAL PAIR.

    Alone: W = [1, 0], b = [0, p/2]. Feature 0 passes through exactly; feature 1 is replaced by its
    mean E[x_1] = p/2, the best constant, so its loss is r Var(x_1) = r (p/3 - p^2/4).
    Pair: W = [1, -1], b = 0, so x'_0 = ReLU(x_0 - x_1) and x'_1 = ReLU(x_1 - x_0). A feature
    alone comes back exactly; with both present (probability p^2) each output makes the error
    min(x_0, x_1), and E[min(u, v)^2] = 1/6 for independent uniforms, so the loss is (1 + r) p^2 / 6.
    """
    p, r = torch.broadcast_tensors(torch.as_tensor(p), torch.as_tensor(r))
    alone = r * (p / 3 - p ** 2 / 4)
    pair = (1 + r) * p ** 2 / 6
    return torch.stack([alone, pair], dim=-1)


def critical_probability(r: Float[Tensor, "k"]) -> Float[Tensor, "k"]:
    """The feature probability below which the antipodal pair beats feature 0 alone, where the
    two columns of ``pair_losses`` are equal: (1 + r) p / 6 = r (1/3 - p/4), p* = 4 r / (2 + 5 r)."""
    r = torch.as_tensor(r)
    return 4 * r / (2 + 5 * r)

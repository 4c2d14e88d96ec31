"""Toy models of superposition (Elhage et al., 2022), reference implementations for chapter 04.

The toy model squeezes n sparse features through m < n hidden dimensions and back:

    h = W x,    x' = ReLU(W^T h + b) = ReLU(W^T W x + b)        W: [m, n], b: [n]

Column W_i is the direction feature i gets in the hidden space. The model is trained to
reconstruct x under the importance-weighted squared error  L = E_x sum_i I_i (x_i - x'_i)^2,
on synthetic data where feature i is present with probability p_i = 1 - S_i and, when present,
uniform on [0, 1].

Shapes. Many small models ("instances") are trained at once, each with its own importance and
feature probability; the instance is the LEADING axis of every tensor:

    W                   [inst, m, n]       ("inst d_hidden feat")
    b                   [inst, n]
    x, x'               [inst, batch, n]
    importance, p       [inst, n]

so one instance is a slice ``[k]`` and the whole stack is a batch of matrices for ``torch.bmm``:
no Python loop over instances anywhere.

Besides the model, data, loss and a seeded trainer this module holds the measures of the
chapter (superposition, feature dimensionality, dimensions per feature), the experiments
(sparsity sweep, non-uniform sparsity, privileged basis, Johnson-Lindenstrauss) and their plots.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import matplotlib.pyplot as plt
import torch
from jaxtyping import Float
from torch import Tensor, nn

Number = Union[int, float]
TensorLike = Union[Number, Sequence[Number], Tensor]

# A feature counts as "represented" when its embedding is at least this long: trained models put
# features at norm ~1 or ~0, so any threshold in between gives the same count.
REPRESENTED_NORM = 0.5
# Guards 0/0 for features the model dropped (W_i = 0): their superposition and dimensionality are 0.
EPS = 1e-8


# =========================================================================== inputs


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


def _check_probability(p: Tensor) -> None:
    if not torch.isfinite(p).all() or (p <= 0).any() or (p > 1).any():
        raise ValueError("feature_probability (1 - S) must lie in (0, 1]: it is the probability that a "
                         f"feature is present; got values in [{p.min().item():.3g}, {p.max().item():.3g}]")


def _check_importance(importance: Tensor) -> None:
    if not torch.isfinite(importance).all() or (importance < 0).any():
        raise ValueError("importance must be finite and non-negative")


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


# =========================================================================== data


def generate_batch(
    batch_size: int,
    feature_probability: Float[Tensor, "inst feat"],
    generator: Optional[torch.Generator] = None,
) -> Float[Tensor, "inst batch feat"]:
    """Synthetic sparse features: x_i = 0 with probability S_i, else uniform on [0, 1].

    One uniform draw u per entry decides both parts: the feature is present iff u lands in the top
    slice (S, 1] of width p = 1 - S, and its position in that slice, (u - S) / p, is again uniform
    on [0, 1]. So x = max(0, (u - S) / p): half the random numbers of the two-draw recipe, and
    random number generation is the most expensive step of training this model.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    p = torch.as_tensor(feature_probability, dtype=torch.float32)
    if p.ndim != 2:
        raise ValueError(f"feature_probability must be [n_instances, n_features], got shape {tuple(p.shape)}")
    _check_probability(p)
    return _sample(batch_size, 1 / p[:, None, :], (1 - p)[:, None, :] / p[:, None, :], generator)


def _sample(batch_size: int, inv_p: Tensor, s_over_p: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """generate_batch without the checks: (u - S) / p = u / p - S / p, clipped at 0 (two passes over u)."""
    u = torch.rand(inv_p.shape[0], batch_size, inv_p.shape[2], generator=generator)
    return torch.addcmul(-s_over_p, u, inv_p).clamp_min_(0)


def generate_batch_two_draws(
    batch_size: int,
    feature_probability: Float[Tensor, "inst feat"],
    generator: Optional[torch.Generator] = None,
) -> Float[Tensor, "inst batch feat"]:
    """The textbook version of ``generate_batch``: one draw decides presence, another the value."""
    p = torch.as_tensor(feature_probability, dtype=torch.float32)
    if batch_size < 1 or p.ndim != 2:
        raise ValueError("need batch_size >= 1 and feature_probability of shape [n_instances, n_features]")
    _check_probability(p)
    shape = (p.shape[0], batch_size, p.shape[1])
    present = torch.rand(shape, generator=generator) < p[:, None, :]
    return torch.rand(shape, generator=generator) * present


def _group_probability(group_probability: Tensor, group_size: int) -> Tensor:
    p = torch.as_tensor(group_probability, dtype=torch.float32)
    if p.ndim != 2:
        raise ValueError(f"group_probability must be [n_instances, n_groups], got shape {tuple(p.shape)}")
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size}")
    _check_probability(p)
    return p


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
    p = _group_probability(group_probability, group_size)
    inst, groups = p.shape
    active = torch.rand(inst, batch_size, groups, 1, generator=generator) < p[:, None, :, None]
    values = torch.rand(inst, batch_size, groups, group_size, generator=generator)
    return (values * active).reshape(inst, batch_size, groups * group_size)


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
    p = _group_probability(group_probability, group_size)
    inst, groups = p.shape
    shape = (inst, batch_size, groups)
    active = torch.rand(shape, generator=generator) < p[:, None, :]
    chosen = torch.randint(0, group_size, shape, generator=generator)
    values = torch.rand(shape, generator=generator) * active
    x = torch.zeros(inst, batch_size, groups, group_size)
    x.scatter_(-1, chosen[..., None], values[..., None])
    return x.reshape(inst, batch_size, groups * group_size)


# =========================================================================== model


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
        h = torch.relu(torch.bmm(x, W.transpose(1, 2)))  # [inst, batch, d_hidden]
        pre = torch.baddbmm(b[:, None, :], h, W)
    else:
        # (x W^T) W = x (W^T W): multiplying by the small [feat, feat] matrix is one bmm forward and,
        # as x needs no gradient, one backward; faster than the two-step product at this size.
        pre = torch.baddbmm(b[:, None, :], x, W.transpose(1, 2) @ W)
    return torch.relu(pre) if relu_output else pre


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

    W starts Xavier-normal (std sqrt(2 / (m + n))) and b at zero, drawn from ``seed`` alone, so two
    models built with the same arguments are identical.
    """

    def __init__(self, cfg: ToyConfig, feature_probability: TensorLike = 1.0, importance: TensorLike = 1.0,
                 seed: int = 0):
        super().__init__()
        self.cfg = cfg
        k, n, m = cfg.n_instances, cfg.n_features, cfg.d_hidden
        p = as_instance_feature(feature_probability, k, n, "feature_probability")
        imp = as_instance_feature(importance, k, n, "importance")
        _check_probability(p)
        _check_importance(imp)
        self.register_buffer("feature_probability", p)
        self.register_buffer("importance", imp)
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(k, m, n, generator=g) * math.sqrt(2 / (m + n)))
        self.b = nn.Parameter(torch.zeros(k, n))

    def forward(self, x: Float[Tensor, "inst batch feat"]) -> Float[Tensor, "inst batch feat"]:
        return toy_forward(self.W, self.b, x, self.cfg.relu_output, self.cfg.relu_hidden)

    def generate_batch(self, batch_size: int, generator: Optional[torch.Generator] = None):
        return generate_batch(batch_size, self.feature_probability, generator)


# =========================================================================== loss and training


def per_instance_loss(
    out: Float[Tensor, "inst batch feat"],
    x: Float[Tensor, "inst batch feat"],
    importance: Float[Tensor, "inst feat"],
) -> Float[Tensor, "inst"]:
    """L_k = mean over the batch of sum_i I_ki (x_i - x'_i)^2, one number per instance."""
    # Reduce the batch first and weight afterwards: the same number, and it keeps the large
    # elementwise products free of a broadcast over the batch axis (several times faster on CPU).
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


def loss_and_grads(
    W: Float[Tensor, "inst d_hidden feat"],
    b: Float[Tensor, "inst feat"],
    x: Float[Tensor, "inst batch feat"],
    importance: Float[Tensor, "inst feat"],
    relu_output: bool = True,
    with_loss: bool = True,
) -> tuple[Optional[Tensor], Tensor, Tensor]:
    """Per-instance loss [inst] (None unless ``with_loss``) and its gradients dL/dW, dL/db, by hand.

    With M = W^T W, pre = x M + b, x' = ReLU(pre) and L = (1/B) sum I (x' - x)^2 (summed over
    instances):

        G     = dL/dpre = (2/B) I * (x' - x) * ReLU'(pre)        [inst, batch, feat]
        dL/db = sum over the batch of G
        dL/dM = x^T G
        dL/dW = W (dL/dM + dL/dM^T)                               (M = W^T W is used twice)

    Faster than autograd here: at these sizes the per-operation bookkeeping costs as much as the
    arithmetic, and the written-out gradient needs about half the passes over the batch.
    tests/test_superposition.py checks it against autograd. The importance only scales columns, so
    it is applied to the small [feat, feat] and [feat] results, never to the whole batch.
    """
    batch = x.shape[1]
    pre = torch.baddbmm(b[:, None, :], x, W.transpose(1, 2) @ W)
    out = torch.relu(pre) if relu_output else pre
    err = out - x
    loss = None
    if with_loss:
        loss = (err.square().sum(1) * importance).sum(-1) / batch
    if relu_output:
        err = err * out.sign()  # ReLU'(pre) = 1 exactly where out > 0; sign(out) is that 0/1 mask, cheaply
    weight = (2 / batch) * importance[:, None, :]  # [inst, 1, feat]
    grad_M = torch.bmm(x.transpose(1, 2), err) * weight
    grad_W = torch.bmm(W, grad_M + grad_M.transpose(1, 2))
    grad_b = err.sum(1) * weight[:, 0]
    return loss, grad_W, grad_b


def train(
    model: ToyModel,
    steps: int = 10_000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 100,
    progress: bool = False,
    data: Optional[Callable[[int, torch.Generator], Tensor]] = None,
) -> Float[Tensor, "n_logs inst"]:
    """Adam on the importance-weighted loss with fresh data every step; returns the per-instance
    loss at step 0, every ``log_every`` steps and at the last step.

    Deterministic for a given seed and torch thread count. The standard model uses the
    hand-written gradients of ``loss_and_grads``; the ReLU-hidden model uses autograd.

    ``data(batch_size, generator) -> x [inst, batch, feat]`` replaces the independent features of
    ``model.feature_probability`` (e.g. ``generate_correlated_batch`` with fixed groups); None,
    the default, is generate_batch's data.
    """
    if steps < 1 or batch_size < 1 or not lr > 0 or log_every < 1:
        raise ValueError(f"need steps, batch_size, log_every >= 1 and lr > 0; got steps={steps}, "
                         f"batch_size={batch_size}, lr={lr}, log_every={log_every}")
    g = torch.Generator().manual_seed(seed)
    p = model.feature_probability[:, None, :]
    # generate_batch's two constants, computed once rather than every step
    inv_p, s_over_p = 1 / p, (1 - p) / p
    # fused=True runs Adam as one kernel: with two tiny parameters the per-op overhead is the cost.
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"train {model.cfg.n_instances} instances", leave=False)
    for step in range(steps):
        log = step % log_every == 0 or step == steps - 1
        x = _sample(batch_size, inv_p, s_over_p, g) if data is None else data(batch_size, g)
        if model.cfg.relu_hidden:
            with torch.enable_grad():
                loss = per_instance_loss(model(x), x, model.importance)
                model.zero_grad(set_to_none=True)
                loss.sum().backward()
        else:
            with torch.no_grad():
                loss, model.W.grad, model.b.grad = loss_and_grads(
                    model.W, model.b, x, model.importance, model.cfg.relu_output, with_loss=log)
        opt.step()
        if log:
            history.append(loss.detach())
            if bar is not None:
                bar.set_postfix(loss=f"{loss.sum().item():.4g}")
                bar.update(step + 1 - bar.n)
    if bar is not None:
        bar.close()
    return torch.stack(history)


# =========================================================================== measures


def _check_W(W: Tensor) -> Tensor:
    if not isinstance(W, Tensor) or W.ndim not in (2, 3):
        raise ValueError("W must be a tensor of shape [inst, d_hidden, feat] (or [d_hidden, feat])")
    return W.detach().float()


def feature_norms(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst feat"]:
    """||W_i||, the length of each feature's direction in the hidden space."""
    return _check_W(W).norm(dim=-2)


def _overlaps_sq(W: Tensor) -> Tensor:
    """[..., i, j] = (W_i_hat . W_j)^2, the squared length of W_j projected onto feature i's direction."""
    W = _check_W(W)
    W_hat = W / (W.norm(dim=-2, keepdim=True) + EPS)
    return (W_hat.transpose(-1, -2) @ W).square()


def superposition(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst feat"]:
    """sum_{j != i} (W_i_hat . W_j)^2: how much other features interfere along feature i's direction.

    0 for a feature with a dimension to itself; 1 for each member of an antipodal pair of unit vectors.
    """
    sq = _overlaps_sq(W)
    return sq.sum(-1) - sq.diagonal(dim1=-2, dim2=-1)


def dimensionality(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst feat"]:
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2, the fraction of a hidden dimension feature i gets.

    1 for a feature alone in its dimension, 1/2 for an antipodal pair, 2/5 for a pentagon; 0 for
    a feature that is not represented.
    """
    W = _check_W(W)
    return W.norm(dim=-2).square() / (_overlaps_sq(W).sum(-1) + EPS)


def dims_per_feature(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst"]:
    """m / ||W||_F^2: hidden dimensions per (unit-norm) feature represented, per instance."""
    W = _check_W(W)
    return W.shape[-2] / W.square().sum((-1, -2))


def n_represented(W: Float[Tensor, "inst d_hidden feat"], threshold: float = REPRESENTED_NORM) -> Tensor:
    """How many features per instance have ||W_i|| > threshold."""
    return (feature_norms(W) > threshold).sum(-1)


def cosine_similarities(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst feat feat"]:
    W = _check_W(W)
    W_hat = W / (W.norm(dim=-2, keepdim=True) + EPS)
    return W_hat.transpose(-1, -2) @ W_hat


def antipodal_pairs(W: Float[Tensor, "d_hidden feat"], threshold: float = REPRESENTED_NORM,
                    cos_below: float = -0.95, alone_above: float = 0.9) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of represented features pointing in opposite directions and sharing
    their direction with nothing else (each one's overlaps are all with the other)."""
    if W.ndim != 2:
        raise ValueError("antipodal_pairs takes one instance: W of shape [d_hidden, feat]")
    norms = feature_norms(W)
    cos = cosine_similarities(W)
    sq = _overlaps_sq(W)
    pairs = []
    n = W.shape[-1]
    for i in range(n):
        for j in range(i + 1, n):
            if norms[i] > threshold and norms[j] > threshold and cos[i, j] < cos_below:
                # the pair must own its direction: other features' overlap with i is small
                own = (sq[i, i] + sq[i, j]) / sq[i].sum()
                if own > alone_above:
                    pairs.append((i, j))
    return pairs


def neuron_alignment(W: Float[Tensor, "inst d_hidden feat"], threshold: float = REPRESENTED_NORM) -> Tensor:
    """Mean over represented features of max_k W_ki^2 / ||W_i||^2, per instance.

    1 when every represented feature lies along one hidden unit (a basis direction); well below 1
    for directions that ignore the basis (random unit vectors in 5 dimensions score about 0.5).
    """
    W = _check_W(W)
    norms_sq = W.square().sum(-2)
    share = W.square().max(-2).values / (norms_sq + EPS)
    mask = norms_sq.sqrt() > threshold
    return (share * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def alone_and_shared(W: Float[Tensor, "d_hidden feat"], threshold: float = REPRESENTED_NORM,
                     alone_below: float = 0.1) -> tuple[list[int], list[int]]:
    """Represented features of one instance split into those with a direction to themselves
    (superposition below ``alone_below``) and those sharing theirs with others."""
    if W.ndim != 2:
        raise ValueError("alone_and_shared takes one instance: W of shape [d_hidden, feat]")
    norms, sup = feature_norms(W), superposition(W)
    represented = norms > threshold
    alone = [i for i in range(W.shape[-1]) if represented[i] and sup[i] < alone_below]
    shared = [i for i in range(W.shape[-1]) if represented[i] and sup[i] >= alone_below]
    return alone, shared


def group_geometry(W: Float[Tensor, "inst d_hidden feat"], group_size: int,
                   threshold: float = REPRESENTED_NORM) -> dict[str, float]:
    """How features of the same group sit relative to each other, pooled over all instances of W.

    Features come in contiguous groups of ``group_size`` (feature i is in group i // group_size).
    Over every pair of REPRESENTED features (||W_i|| > threshold) of one instance, split into
    within-group and across-group pairs: the mean signed and absolute cosine of their directions,
    and the fractions that are antipodal (cos < -0.9), aligned (cos > 0.9) or orthogonal
    (|cos| < 0.1). Also the pair counts and the number of represented features per instance.
    """
    W = _check_W(W)
    if W.ndim == 2:
        W = W[None]
    n = W.shape[-1]
    if group_size < 1 or n % group_size:
        raise ValueError(f"n_features = {n} is not a multiple of group_size = {group_size}")
    cos = cosine_similarities(W)
    represented = feature_norms(W) > threshold
    group = torch.arange(n) // group_size
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    both = represented[:, :, None] & represented[:, None, :] & off_diagonal
    result: dict[str, float] = {"represented": float(represented.sum(-1).float().mean())}
    for where, mask in (("within", group[:, None] == group[None]), ("across", group[:, None] != group[None])):
        pairs = both & mask
        c = cos[pairs]
        count = max(int(pairs.sum()), 1)
        result[f"{where}_pairs"] = float(pairs.sum()) / 2  # each pair appears twice, (i, j) and (j, i)
        result[f"{where}_cos"] = float(c.sum()) / count
        result[f"{where}_abs_cos"] = float(c.abs().sum()) / count
        result[f"{where}_antipodal"] = float((c < -0.9).sum()) / count
        result[f"{where}_aligned"] = float((c > 0.9).sum()) / count
        result[f"{where}_orthogonal"] = float((c.abs() < 0.1).sum()) / count
    return result


# =========================================================================== experiments


def sparsity_sweep(
    n_features: int = 20,
    d_hidden: int = 5,
    n_instances: int = 10,
    lowest: float = 1e-3,
    decay: float = 0.7,
    relu_output: bool = True,
    steps: int = 10_000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> ToyModel:
    """The paper's main experiment: one instance per feature probability, 1 - S log-spaced from 1
    down to ``lowest``, importance decay^i; returns the trained stack."""
    cfg = ToyConfig(n_features, d_hidden, n_instances, relu_output=relu_output)
    p = sweep_probabilities(n_instances, lowest)[:, None]
    model = ToyModel(cfg, p, decaying_importance(n_features, decay), seed=seed)
    train(model, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    return model


NONUNIFORM_CASES = (
    "aligned",  # the more important a feature, the more often it is present
    "anti-aligned",  # the more important, the rarer
    "random A",  # importance and probability unrelated (one random pairing) ...
    "random B",  # ... and another, to see what depends on the draw
    "constant importance",  # every feature equally important, probabilities still differ
)


def nonuniform_sparsity_setup(
    n_features: int = 5,
    n_levels: int = 4,
    decay: float = 0.8,
    spread: float = 10.0,
    densest: float = 1.0,
    sparsest: float = 0.05,
    seed: int = 0,
) -> tuple[Tensor, Tensor, list[tuple[str, float]]]:
    """Feature probabilities that differ WITHIN an instance, in the five cases of the course notes.

    Within an instance the probabilities follow a geometric profile over a factor ``spread``
    (densest feature = the level's base probability); the cases differ in which feature gets
    which probability. Each case is repeated at ``n_levels`` base probabilities from ``densest``
    down to ``sparsest``. Returns importance and probability of shape [5 * n_levels, n_features]
    and, per instance, its (case, base probability).
    """
    if n_features < 2 or n_levels < 1 or spread < 1 or not 0 < sparsest <= densest <= 1:
        raise ValueError("need n_features >= 2, n_levels >= 1, spread >= 1 and 0 < sparsest <= densest <= 1")
    profile = torch.logspace(0, -math.log10(spread), n_features)  # densest first
    bases = sweep_probabilities(n_levels, sparsest / densest) * densest
    g = torch.Generator().manual_seed(seed)
    decaying = decaying_importance(n_features, decay)
    orders = {
        "aligned": (decaying, profile),
        "anti-aligned": (decaying, profile.flip(0)),
        "random A": (decaying, profile[torch.randperm(n_features, generator=g)]),
        "random B": (decaying, profile[torch.randperm(n_features, generator=g)]),
        "constant importance": (torch.ones(n_features), profile[torch.randperm(n_features, generator=g)]),
    }
    importance, probability, labels = [], [], []
    for case in NONUNIFORM_CASES:
        imp, prof = orders[case]
        for base in bases.tolist():
            importance.append(imp)
            probability.append(prof * base)
            labels.append((case, base))
    return torch.stack(importance), torch.stack(probability), labels


def privileged_basis_experiment(
    n_features: int = 10,
    d_hidden: int = 5,
    feature_probability: Sequence[float] = (1.0, 1.0, 0.3, 0.1),
    decay: float = 0.75,
    steps: int = 8_000,
    batch_size: int = 1024,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict[str, ToyModel]:
    """The same instances trained with a linear hidden layer and with a ReLU one (h = ReLU(W x)).

    The ReLU-hidden model needs the larger learning rate: gradients through dead units are zero,
    so reaching the neuron-aligned solution is slow at lr = 1e-3 (at 3e-3 the dense instances
    align fully within 8k steps). Both models get the same settings.
    """
    p = torch.tensor(list(feature_probability), dtype=torch.float32)[:, None]
    imp = decaying_importance(n_features, decay)
    models = {}
    for name, relu_hidden in (("linear hidden layer", False), ("ReLU hidden layer", True)):
        cfg = ToyConfig(n_features, d_hidden, len(p), relu_output=True, relu_hidden=relu_hidden)
        models[name] = ToyModel(cfg, p, imp, seed=seed)
        train(models[name], steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    return models


CORRELATION_CASES = ("independent", "correlated", "anti-correlated")


def correlation_experiment(
    n_groups: int = 2,
    group_size: int = 2,
    d_hidden: int = 2,
    feature_probability: Sequence[float] = (0.05, 0.4),
    n_per_level: int = 8,
    steps: int = 3000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[dict[str, ToyModel], Tensor]:
    """The same stack of toy models trained on independent, correlated and anti-correlated features.

    n = n_groups * group_size features of equal importance in ``d_hidden`` dimensions; groups are
    contiguous blocks of features. ``n_per_level`` instances per entry of ``feature_probability``,
    which is every feature's own probability of being on, the same in all three cases: independent
    features (generate_batch), correlated groups active with that probability
    (generate_correlated_batch), and anti-correlated groups active with group_size times it
    (generate_anticorrelated_batch, whose features are each on with probability p / group_size).
    All three start from the same weights (``seed``) and see data from the same seed. Returns the
    models by case and the per-feature probability of every instance [inst].
    """
    levels = torch.tensor(list(feature_probability), dtype=torch.float32)
    if (levels * group_size > 1).any() or (levels <= 0).any():
        raise ValueError("need 0 < feature_probability <= 1 / group_size, so that the anti-correlated groups "
                         "(active with probability group_size * p) keep the same per-feature probability")
    p = levels.repeat_interleave(n_per_level)  # [inst]
    n, k = n_groups * group_size, len(p)
    cfg = ToyConfig(n, d_hidden, k)
    group_p = p[:, None].expand(k, n_groups).contiguous()
    data = {
        "independent": None,
        "correlated": lambda b, g: generate_correlated_batch(b, group_p, group_size, g),
        "anti-correlated": lambda b, g: generate_anticorrelated_batch(b, group_p * group_size, group_size, g),
    }
    models = {}
    for case in CORRELATION_CASES:
        models[case] = ToyModel(cfg, p[:, None], 1.0, seed=seed)
        train(models[case], steps=steps, batch_size=batch_size, lr=lr, seed=seed, data=data[case])
    return models, p


def almost_orthogonal_count(d: int, eps: float, n_candidates: int = 20_000, seed: int = 0,
                            chunk: int = 1024) -> int:
    """Greedy packing: draw random unit vectors in R^d and keep each one whose |cosine| with every
    vector kept so far is below ``eps``. Returns how many were kept: a lower bound on how many
    almost-orthogonal directions fit (more candidates can only add to it)."""
    if d < 1 or not 0 < eps < 1 or n_candidates < 1:
        raise ValueError(f"need d >= 1, 0 < eps < 1, n_candidates >= 1; got d={d}, eps={eps}, n_candidates={n_candidates}")
    g = torch.Generator().manual_seed(seed)
    kept = torch.empty(0, d)
    for start in range(0, n_candidates, chunk):
        cand = torch.randn(min(chunk, n_candidates - start), d, generator=g)
        cand = cand / cand.norm(dim=1, keepdim=True)
        if len(kept):
            cand = cand[(cand @ kept.T).abs().amax(1) < eps]  # the vectorised part: against all kept
        if not len(cand):
            continue
        clash = ((cand @ cand.T).abs() >= eps).tolist()
        chosen: list[int] = []
        for i, row in enumerate(clash):  # greedy within the chunk: survivors are few
            if not any(row[j] for j in chosen):
                chosen.append(i)
        kept = torch.cat([kept, cand[chosen]])
    return len(kept)


def jl_experiment(dims: Sequence[int] = (2, 4, 8, 16, 32, 48), eps_values: Sequence[float] = (0.3, 0.5),
                  n_candidates: int = 20_000, seed: int = 0) -> dict[float, list[int]]:
    """almost_orthogonal_count for every (eps, d): the Johnson-Lindenstrauss picture, empirically."""
    return {eps: [almost_orthogonal_count(d, eps, n_candidates, seed) for d in dims] for eps in eps_values}


# =========================================================================== plots


def _superposition_cmap():
    from matplotlib.colors import LinearSegmentedColormap

    # black: the feature has a dimension to itself; gold: it shares (the paper's colour code)
    return LinearSegmentedColormap.from_list("superposition", ["#000000", "#3b2f73", "#d9a400", "#ffd700"])


def _p_label(p: float) -> str:
    return f"1-S = {p:.3g}"


def plot_sweep(W: Float[Tensor, "inst d_hidden feat"], feature_probability: Optional[Tensor] = None,
               title: str = "", max_norm: Optional[float] = None):
    """Per instance (columns): W^T W as a heatmap (top) and ||W_i|| as bars coloured by superposition
    (bottom; black = a dimension of its own, gold = shared). Returns the figure."""
    W = _check_W(W)
    if W.ndim == 2:
        W = W[None]
    k, m, n = W.shape
    wtw = W.transpose(-1, -2) @ W
    norms, sup = feature_norms(W), superposition(W)
    max_norm = max_norm or max(1.2, float(norms.max()) * 1.05)
    cmap = _superposition_cmap()
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
    W = _check_W(W)
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
    W = _check_W(W)
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
    Ws = [_check_W(models[name].W) for name in names]
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


# =========================================================================== interactive explorer


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
    axes[1].barh(range(n_features), feature_norms(W)[0], color=_superposition_cmap()(sup.clamp(0, 1).numpy()))
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

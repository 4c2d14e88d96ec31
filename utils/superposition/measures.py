"""The chapter's measures of a trained W [inst, d_hidden, feat] beyond the graded two
(``exercises.superposition`` and ``exercises.dimensionality``): feature lengths, dimensions per
feature, how many features are represented, cosines, antipodal pairs, alignment with the neuron
basis, which features have a direction alone, and how feature groups sit relative to each other."""
from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from utils.superposition.exercises import squared_overlaps, superposition
from utils.superposition.inputs import EPS, REPRESENTED_NORM, check_W


def feature_norms(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst feat"]:
    """||W_i||, the length of each feature's direction in the hidden space."""
    return check_W(W).norm(dim=-2)


def dims_per_feature(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst"]:
    """m / ||W||_F^2: hidden dimensions per (unit-norm) feature represented, per instance."""
    W = check_W(W)
    return W.shape[-2] / W.square().sum((-1, -2))


def n_represented(W: Float[Tensor, "inst d_hidden feat"], threshold: float = REPRESENTED_NORM) -> Tensor:
    """How many features per instance have ||W_i|| > threshold."""
    return (feature_norms(W) > threshold).sum(-1)


def cosine_similarities(W: Float[Tensor, "inst d_hidden feat"]) -> Float[Tensor, "inst feat feat"]:
    W = check_W(W)
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
    sq = squared_overlaps(W)
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
    W = check_W(W)
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
    W = check_W(W)
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

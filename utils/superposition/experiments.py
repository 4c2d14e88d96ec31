"""The chapter's experiments, each a function that builds and trains its stack of toy models:
the sparsity sweep (the phase change), non-uniform sparsity, the privileged basis, correlated and
anti-correlated features, and the Johnson-Lindenstrauss count of almost-orthogonal directions."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from utils.superposition.data import generate_correlated_batch
from utils.superposition.exercises import generate_anticorrelated_batch
from utils.superposition.inputs import decaying_importance, sweep_probabilities
from utils.superposition.model import ToyConfig, ToyModel
from utils.superposition.training import train


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
        raise ValueError(f"need d >= 1, 0 < eps < 1, n_candidates >= 1; "
                         f"got d={d}, eps={eps}, n_candidates={n_candidates}")
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

"""Checks for chapter 05, exercise 6: how good is a dictionary? (L0, fraction of variance
explained, CE loss recovered, dead and dense features; ``utils.sae.metrics``).

The reference answers are utils.sae's own functions; the layout, and why the random sizes differ, are in
``utils.checks.ch05``'s docstring. The notebook reaches these checks through ``utils.checks.ch05``.
"""
from __future__ import annotations

import torch

from utils.checks.ch05_inputs import scalar, sizes, sparse_activations, uniform
from utils.checks.core import (
    Cases,
    Exercise,
    Misconception,
    run_check,
)
from utils.checks.toolkit import describe_parts, randint, rng, run_described
from utils.sae import exercises as ref
from utils.sae.metrics import fraction_variance_explained as ref_fve
from utils.sae.metrics import l0 as ref_l0

CHAPTER = "05"


# =========================================================================== 5. metrics


def _l0_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, _, d_sae = sizes(g)
    return {"f": sparse_activations(g, batch, d_sae, p=uniform(g, 0.1, 0.5))}


L0 = Exercise(
    chapter=CHAPTER,
    name="l0",
    reference=lambda f: ref_l0(f),
    make_inputs=_l0_inputs,
    misconceptions=(
        Misconception(
            "L1 instead of L0",
            "L0 COUNTS the active features of each token, Σ_i 1[f_i ≠ 0]; you added up their values, "
            "which is the L1 norm.",
            lambda f: f.abs().sum(-1).mean()),
        Misconception(
            "summed over tokens",
            "Average the per-token count over the tokens: L0 is the mean number of active features PER "
            "TOKEN. You returned the total over the whole batch.",
            lambda f: (f != 0).sum().float()),
        Misconception(
            "fraction of features",
            "L0 is a count (how many of the d_sae features are active on a token), not a fraction: sum over "
            "features, then average over tokens. You averaged over both.",
            lambda f: (f != 0).float().mean()),
        Misconception(
            "per feature",
            "Count over the FEATURES of each token (the last axis) and average over tokens; you counted, for "
            "each feature, the tokens it fires on, and averaged that over features.",
            lambda f: (f != 0).sum(0).float().mean()),
        Misconception(
            "counted the inactive features",
            "Count the features that are NOT zero (f != 0); you counted the zeros.",
            lambda f: (f == 0).sum(-1).float().mean()),
    ),
)


def l0(fn, cases: Cases = None) -> None:
    """Check ``fn(f[batch, d_sae]) -> scalar``: mean number of non-zero features per token."""
    run_check(L0, scalar(fn), cases)


def _fve_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, d_in, _ = sizes(g)
    batch *= 4
    scale = 0.5 + 2 * torch.rand(d_in, generator=g)  # dimensions of different variance
    x = 3 * torch.randn(d_in, generator=g) + scale * torch.randn(batch, d_in, generator=g)  # mean far from 0
    mean = x.mean(0)
    x_hat = mean + uniform(g, 0.6, 0.9) * (x - mean) + 0.4 * torch.randn(batch, d_in, generator=g)
    return {"x": x, "x_hat": x_hat}


def _sum_sq(a):
    return a.double().pow(2).sum()


FVE = Exercise(
    chapter=CHAPTER,
    name="fraction_variance_explained",
    reference=lambda x, x_hat: ref_fve(x, x_hat),
    make_inputs=_fve_inputs,
    misconceptions=(
        Misconception(
            "variance not centred",
            "The total variance is Σ ||x - mean(x)||², around the MEAN activation; you divided by Σ ||x||². "
            "MLP activations have a large mean, so this makes every reconstruction look far better than it is.",
            lambda x, x_hat: 1 - _sum_sq(x - x_hat) / _sum_sq(x)),
        Misconception(
            "unexplained fraction",
            "You returned the fraction NOT explained, Σ ||x - x_hat||² / Σ ||x - mean||²; FVE is 1 minus that.",
            lambda x, x_hat: _sum_sq(x - x_hat) / _sum_sq(x - x.mean(0))),
        Misconception(
            "unbiased variance",
            "torch.var divides by n - 1 by default (unbiased=True), while the squared error is averaged over "
            "n: use sums of squares for both, or var(..., unbiased=False) / correction=0.",
            lambda x, x_hat: 1 - (_sum_sq(x - x_hat) / len(x)) / x.double().var(0).sum()),
        Misconception(
            "averaged per dimension",
            "Compute ONE ratio over all dimensions: 1 - Σ ||x - x_hat||² / Σ ||x - mean||². You computed an FVE "
            "for each dimension and averaged them, which gives low-variance dimensions as much weight as "
            "high-variance ones.",
            lambda x, x_hat: (1 - (x - x_hat).double().pow(2).sum(0) / (x - x.mean(0)).double().pow(2).sum(0)).mean()),
        Misconception(
            "averaged per token",
            "Sum the errors and the variances over all tokens before dividing; you averaged a per-token ratio, "
            "which tokens close to the mean dominate.",
            lambda x, x_hat: (1 - (x - x_hat).double().pow(2).sum(-1)
                              / (x - x.mean(0)).double().pow(2).sum(-1)).mean()),
        Misconception(
            "ratio of variances",
            "FVE compares the ERROR with the variance of x: 1 - Σ ||x - x_hat||² / Σ ||x - mean||². The "
            "variance of x_hat over the variance of x can be close to 1 for a reconstruction that is wrong.",
            lambda x, x_hat: _sum_sq(x_hat - x_hat.mean(0)) / _sum_sq(x - x.mean(0))),
    ),
)


def fraction_variance_explained(fn, cases: Cases = None) -> None:
    """Check ``fn(x, x_hat) -> scalar`` = 1 - Σ ||x - x_hat||² / Σ ||x - mean(x)||²."""
    run_check(FVE, scalar(fn), cases)


def _ce_inputs(seed: int) -> dict:
    g = rng(seed)
    clean = uniform(g, 2.0, 4.0)
    gap = uniform(g, 0.5, 3.0)
    return {"ce_clean": clean, "ce_sae": clean + uniform(g, 0.05, 0.6) * gap, "ce_zero_ablation": clean + gap}


CE_RECOVERED = Exercise(
    chapter=CHAPTER,
    name="ce_loss_recovered",
    reference=lambda ce_clean, ce_sae, ce_zero_ablation: ref.ce_loss_recovered(ce_clean, ce_sae, ce_zero_ablation),
    make_inputs=_ce_inputs,
    misconceptions=(
        Misconception(
            "ratio inverted",
            "Upside down: the score is (CE_zero - CE_sae) / (CE_zero - CE_clean), the part of the gap between "
            "zero-ablation and the clean model that the SAE closes. It is at most 1 for any SAE no better "
            "than the model; yours exceeds 1.",
            lambda ce_clean, ce_sae, ce_zero_ablation: (ce_zero_ablation - ce_clean) / (ce_zero_ablation - ce_sae)),
        Misconception(
            "fraction lost",
            "You computed (CE_sae - CE_clean) / (CE_zero - CE_clean), the fraction of the loss gap LOST (the same "
            "number as swapping the clean and zero-ablation losses). CE loss recovered is 1 minus that: "
            "(CE_zero - CE_sae) / (CE_zero - CE_clean).",
            lambda ce_clean, ce_sae, ce_zero_ablation: (ce_sae - ce_clean) / (ce_zero_ablation - ce_clean)),
        Misconception(
            "SAE and zero swapped",
            "The zero-ablation loss is the 0 point and the clean loss the 1 point: (CE_zero - CE_sae) / "
            "(CE_zero - CE_clean). You swapped the SAE and zero-ablation losses.",
            lambda ce_clean, ce_sae, ce_zero_ablation: (ce_sae - ce_zero_ablation) / (ce_sae - ce_clean)),
        Misconception(
            "ratio of losses",
            "Compare DIFFERENCES of losses, not the losses themselves: (CE_zero - CE_sae) / (CE_zero - CE_clean). "
            "A plain ratio CE_clean / CE_sae is close to 1 even for a poor SAE, because most of the loss is "
            "there with or without this layer.",
            lambda ce_clean, ce_sae, ce_zero_ablation: ce_clean / ce_sae),
        Misconception(
            "relative to zero-ablation only",
            "Divide by the gap CE_zero - CE_clean, not by CE_zero: the score should be 1 exactly when the SAE "
            "is as good as the clean model.",
            lambda ce_clean, ce_sae, ce_zero_ablation: (ce_zero_ablation - ce_sae) / ce_zero_ablation),
        Misconception(
            "percentage",
            "Return a fraction (1 = everything recovered), not a percentage.",
            lambda ce_clean, ce_sae, ce_zero_ablation:
            100 * (ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean)),
    ),
)


def ce_loss_recovered(fn, cases: Cases = None) -> None:
    """Check ``fn(ce_clean, ce_sae, ce_zero_ablation) -> float``."""
    run_check(CE_RECOVERED, fn, cases)


def _density_inputs(seed: int) -> dict:
    g = rng(seed)
    d_sae = randint(g, 200, 400)
    kind = torch.rand(d_sae, generator=g)
    threshold = uniform(g, 0.15, 0.3) if seed % 2 else uniform(g, 0.03, 0.07)  # never the default 0.1
    density = 10 ** (-4 + 2.5 * torch.rand(d_sae, generator=g))  # the live bulk: 1e-4 .. 3e-2
    density = torch.where(kind < 0.1, torch.zeros(()), density)  # dead
    density = torch.where((kind >= 0.1) & (kind < 0.15), 10 ** (-7 + torch.rand(d_sae, generator=g)), density)  # rare
    dense_ish = 0.04 + 0.5 * torch.rand(d_sae, generator=g)
    density = torch.where((kind >= 0.15) & (kind < 0.22), dense_ish, density)
    density[:4] = torch.tensor([0.0, 0.5 * (threshold + 0.1), 0.06, 0.12])  # between the threshold and 0.1
    return {"density": density, "dense_threshold": threshold}


def _fractions(dead, dense):
    return (dead.float().mean().item(), dense.float().mean().item())


DEAD_DENSE = Exercise(
    chapter=CHAPTER,
    name="dead_dense_fractions",
    reference=lambda density, dense_threshold: ref.dead_dense_fractions(density, dense_threshold),
    make_inputs=_density_inputs,
    misconceptions=(
        Misconception(
            "counts, not fractions",
            "Return FRACTIONS of the d_sae features (between 0 and 1), not the numbers of features.",
            lambda density, dense_threshold: (float((density == 0).sum()), float((density > dense_threshold).sum()))),
        Misconception(
            "rare features counted as dead",
            "A dead feature has density exactly 0: it never fired. Features with a tiny density (1e-7) are "
            "alive, just rare; count only density == 0.",
            lambda density, dense_threshold: _fractions(density < 1e-5, density > dense_threshold)),
        Misconception(
            "threshold ignored",
            "Use the dense_threshold argument; you compared with a fixed 0.1.",
            lambda density, dense_threshold: _fractions(density == 0, density > 0.1)),
        Misconception(
            "dense among live features",
            "Both fractions are of ALL d_sae features; you divided the number of dense features by the number "
            "of live ones.",
            lambda density, dense_threshold: ((density == 0).float().mean().item(),
                                              float((density > dense_threshold).sum() / (density > 0).sum()))),
        Misconception(
            "swapped",
            "Return (dead fraction, dense fraction) in that order.",
            lambda density, dense_threshold: tuple(reversed(ref.dead_dense_fractions(density, dense_threshold)))),
        Misconception(
            "percentages",
            "Return fractions between 0 and 1, not percentages.",
            lambda density, dense_threshold:
            tuple(100 * v for v in ref.dead_dense_fractions(density, dense_threshold))),
    ),
)


def dead_dense_fractions(fn, cases: Cases = None) -> None:
    """Check ``fn(density[d_sae], dense_threshold) -> (dead_fraction, dense_fraction)``."""
    run_described(DEAD_DENSE, fn, cases, describe_parts(("the dead fraction", "the dense fraction"),
                                                          DEAD_DENSE.rtol, DEAD_DENSE.atol))

"""Checks for chapter 04, exercises 4 and 5: measuring superposition and feature dimensionality
from the weights W.

Shapes follow utils.superposition (instance axis first); the reference answers are
utils/superposition/exercises.py. The notebook reaches these checks through ``utils.checks.ch04``.
"""
from __future__ import annotations

import torch

from utils.checks.ch04_model import sizes
from utils.checks.core import Cases, CheckFailure, Exercise, Misconception, run_check
from utils.superposition import exercises as ref

CHAPTER = "04"


# --------------------------------------------------------------------------- 4. superposition


def _W_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    inst, m, n, _ = sizes(g)
    W = torch.randn(inst, m, n, generator=g)
    W = W * (0.3 + 1.4 * torch.rand(inst, 1, n, generator=g))  # column norms far from 1
    W[-1, :, -1] = 0.0  # a feature the model dropped: its measures must be 0, not NaN
    return {"W": W}


def _unit(W):
    return W / (W.norm(dim=1, keepdim=True) + 1e-8)


SUPERPOSITION = Exercise(
    chapter=CHAPTER,
    name="superposition",
    reference=lambda W: ref.superposition(W),
    make_inputs=_W_inputs,
    misconceptions=(
        Misconception(
            "includes i = j",
            "The sum runs over j != i: leave out the feature's overlap with itself, (W_i_hat . W_i)^2 = ||W_i||^2. "
            "With it, a feature alone in its dimension would score ||W_i||^2 instead of 0.",
            lambda W: (_unit(W).transpose(1, 2) @ W).square().sum(-1)),
        Misconception(
            "unnormalised W_i",
            "Project onto the UNIT vector W_i_hat = W_i / ||W_i||; you used W_i itself, so the result also "
            "scales with the feature's own norm.",
            lambda W: (W.transpose(1, 2) @ W).square().sum(-1) - W.norm(dim=1) ** 4),
        Misconception(
            "cosines",
            "Only W_i is normalised: (W_i_hat . W_j)^2 keeps the length of W_j, because a long W_j interferes "
            "more. You normalised both vectors (squared cosine similarities).",
            lambda W: (_unit(W).transpose(1, 2) @ _unit(W)).square().sum(-1)
            - (W.norm(dim=1) > 0).float()),
        Misconception(
            "W_j normalised instead of W_i",
            "Normalise the feature you are measuring, W_i, not the others: (W_i_hat . W_j)^2.",
            lambda W: (W.transpose(1, 2) @ _unit(W)).square().sum(-1) - W.norm(dim=1) ** 2),
        Misconception(
            "not squared",
            "Square each overlap before summing: (W_i_hat . W_j)^2. Unsquared dot products cancel between "
            "features on opposite sides.",
            lambda W: (_unit(W).transpose(1, 2) @ W).sum(-1) - W.norm(dim=1)),
    ),
)


def _run_with_zero_column_hint(ex: Exercise, fn, cases: Cases) -> None:
    try:
        run_check(ex, fn, cases)
    except CheckFailure as failure:
        if "NaN" not in str(failure):
            raise
        raise CheckFailure(f"{failure} The inputs include a feature the model dropped (W_i = 0, the last "
                           "feature of the last instance): divide by ||W_i|| + 1e-8 so that it gets 0, "
                           "not 0/0.") from None


def superposition(fn, cases: Cases = None) -> None:
    """Check ``fn(W) -> [inst, feat]`` = sum_{j != i} (W_i_hat . W_j)^2."""
    _run_with_zero_column_hint(SUPERPOSITION, fn, cases)


# --------------------------------------------------------------------------- 5. dimensionality


DIMENSIONALITY = Exercise(
    chapter=CHAPTER,
    name="dimensionality",
    reference=lambda W: ref.dimensionality(W),
    make_inputs=_W_inputs,
    misconceptions=(
        Misconception(
            "unnormalised W_i in the denominator",
            "In the denominator project onto the UNIT vector W_i_hat: D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2. "
            "With the unnormalised W_i the denominator picks up an extra ||W_i||^2, and D is no longer a "
            "fraction of a dimension (a lone feature of norm 2 would get 1/4).",
            lambda W: W.norm(dim=1) ** 2 / ((W.transpose(1, 2) @ W).square().sum(-1) + 1e-8)),
        Misconception(
            "denominator without j = i",
            "The denominator sums over ALL j, including j = i (which contributes ||W_i||^2). Without it you "
            "divided by the superposition alone, and a feature with a dimension to itself would get infinity "
            "instead of 1.",
            lambda W: W.norm(dim=1) ** 2 / (ref.superposition(W) + 1e-8)),
        Misconception(
            "numerator not squared",
            "The numerator is the SQUARED norm ||W_i||^2 (then a lone feature of any length gets D = 1).",
            lambda W: W.norm(dim=1) / ((_unit(W).transpose(1, 2) @ W).square().sum(-1) + 1e-8)),
        Misconception(
            "cosines in the denominator",
            "Normalise only W_i in the denominator: (W_i_hat . W_j)^2, keeping the length of W_j. You used "
            "squared cosines.",
            lambda W: W.norm(dim=1) ** 2 / ((_unit(W).transpose(1, 2) @ _unit(W)).square().sum(-1) + 1e-8)),
        Misconception(
            "upside down",
            "D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2, the feature's share of the dimension it lives in "
            "(at most 1); you computed the reciprocal.",
            lambda W: (_unit(W).transpose(1, 2) @ W).square().sum(-1) / (W.norm(dim=1) ** 2 + 1e-8)),
    ),
)


def dimensionality(fn, cases: Cases = None) -> None:
    """Check ``fn(W) -> [inst, feat]`` = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 (0 for W_i = 0)."""
    _run_with_zero_column_hint(DIMENSIONALITY, fn, cases)

"""Checks for chapter 04, exercise 4b (hard): the phase change of the smallest toy model in closed
form, ``pair_losses(p, r) -> [k, 2]`` = the expected loss of feature 0 alone and of the antipodal
pair, for n = 2 features in m = 1 dimension with importances (1, r).

The reference answer is ``utils.superposition.exercises.pair_losses``; ``tests/test_ch04_checks.py``
checks it against a Monte Carlo estimate of both solutions run through the toy model. Each
misconception below is a slip in the derivation, and its explanation points to the hint that
covers it. The notebook reaches this check through ``utils.checks.ch04``.
"""
from __future__ import annotations

import torch

from utils.checks.core import Cases, Exercise, Misconception, run_check
from utils.superposition import exercises as ref

CHAPTER = "04"


def _phase_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(5, 9, (1,), generator=g))
    p = 0.05 + 0.95 * torch.rand(k, generator=g)
    r = 0.1 + 0.85 * torch.rand(k, generator=g)  # below 1, so the two features' roles cannot be swapped unseen
    return {"p": p, "r": r}


def _reference(p, r):
    return ref.pair_losses(p, r)


def _losses(alone, pair):
    return torch.stack([alone, pair], dim=-1)


def _right_alone(p, r):
    return r * (p / 3 - p ** 2 / 4)


def _right_pair(p, r):
    return (1 + r) * p ** 2 / 6


NEXT_HINT = " (Hint 2 of this exercise has the formula.)"

PAIR_LOSSES = Exercise(
    chapter=CHAPTER,
    name="pair_losses",
    reference=_reference,
    make_inputs=_phase_inputs,
    rtol=1e-4,
    atol=1e-7,
    misconceptions=(
        Misconception(
            "dropped feature predicts 0",
            "Your 'alone' loss is r p / 3: the dropped feature's output was taken as 0. Its output is ReLU(b_1), "
            "and the best constant is its mean E[x_1] = p / 2, which leaves only its variance, "
            "r (p/3 - p^2/4)." + NEXT_HINT,
            lambda p, r: _losses(r * p / 3, _right_pair(p, r))),
        Misconception(
            "mean not squared",
            "Your 'alone' loss is r (p/3 - p/4): the variance is E[x^2] - E[x]^2 with E[x] = p/2, so the second "
            "term is p^2/4, not p/4." + NEXT_HINT,
            lambda p, r: _losses(r * (p / 3 - p / 4), _right_pair(p, r))),
        Misconception(
            "important feature dropped",
            "Your 'alone' loss weights the dropped feature with importance 1: in this solution feature 0 (importance "
            "1) keeps the dimension and feature 1 (importance r) is dropped, so its loss is r Var(x_1).",
            lambda p, r: _losses(p / 3 - p ** 2 / 4, _right_pair(p, r))),
        Misconception(
            "pair errs whenever a feature is present",
            "Your pair loss grows like p, not p^2: a feature that is present ALONE comes back exactly (ReLU(x_0 - 0) "
            "= x_0); the pair only errs when both are present, with probability p^2." + NEXT_HINT,
            lambda p, r: _losses(_right_alone(p, r), (1 + r) * p / 6)),
        Misconception(
            "pair without the ReLU",
            "Your pair loss is (1 + r) p / 3, the linear readout x'_0 = x_0 - x_1, which errs by x_1 whenever feature "
            "1 is present. The ReLU clips the negative interference: with both present the error is min(x_0, x_1), "
            "and 0 otherwise.",
            lambda p, r: _losses(_right_alone(p, r), (1 + r) * p / 3)),
        Misconception(
            "pair error the whole other feature",
            "Your pair loss is (1 + r) p^2 / 3: with both present you took the error of output 0 to be x_1 (mean "
            "square 1/3). When x_0 < x_1 the ReLU outputs 0 and the error is x_0, so the error is min(x_0, x_1), "
            "and E[min(u, v)^2] = 1/6." + NEXT_HINT,
            lambda p, r: _losses(_right_alone(p, r), (1 + r) * p ** 2 / 3)),
        Misconception(
            "pair loss without the importances",
            "Your pair loss does not depend on r: both features err when both are present, feature 0's error "
            "weighted by 1 and feature 1's by r, so the pair loss is (1 + r) p^2 / 6.",
            lambda p, r: _losses(_right_alone(p, r), p ** 2 / 3)),
    ),
)


def pair_losses(fn, cases: Cases = None) -> None:
    """Check ``fn(p [k], r [k]) -> [k, 2]``: the expected loss of feature 0 alone (column 0) and of the
    antipodal pair (column 1) for two features in one dimension, importances (1, r)."""
    run_check(PAIR_LOSSES, fn, cases)

"""Checks for chapter 06, exercises 6 and 7: is it just a neuron? (Pearson correlation of features
with neurons) and universality across seeds (matching features by correlation).

Layout as in utils.sae and utils.features (W_dec's ROW i is feature i), and why some exercises
start with square cases, in ``utils.checks.ch06``'s docstring; the reference answers are
utils/features/exercises.py. The notebook reaches these checks through ``utils.checks.ch06``.
"""
from __future__ import annotations

import torch

from utils.checks.core import Cases, Exercise, Misconception
from utils.checks.toolkit import describe_parts, randint, rng, run_described
from utils.features import exercises as ref

CHAPTER = "06"


# =========================================================================== 3. Pearson correlation


def _pearson_inputs(seed: int) -> dict:
    g = rng(seed)
    if seed % 3 != 0:  # square: as many columns as tokens, so correlating over features runs
        n = randint(g, 6, 8)
        n_tokens, m, k = n, n, n
    else:
        n_tokens, m, k = randint(g, 20, 30), randint(g, 4, 6), randint(g, 7, 9)
    a = torch.relu(torch.randn(n_tokens, m, generator=g)) * (0.5 + 3 * torch.rand(m, generator=g)) + \
        2 * torch.rand(m, generator=g)
    b = 0.6 * a[:, torch.randint(0, m, (k,), generator=g)] + torch.randn(n_tokens, k, generator=g) + 1.5
    if seed % 2 == 0:
        b[:, randint(g, 0, k - 1)] = 0.0  # a dead feature: constant, so its correlation is set to 0
    return {"a": a, "b": b}


def _corr_no_centering(a, b):
    return (a.T @ b) / (a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :])


def _corr_nan(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    return (a.T @ b) / (a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :])


PEARSON = Exercise(
    chapter=CHAPTER,
    name="pearson_correlation",
    reference=ref.pearson_correlation,
    make_inputs=_pearson_inputs,
    default_cases=(1, 0, 3, 4),  # square with a dead column, square, rectangular, square with a dead column
    misconceptions=(
        Misconception(
            "correlation over features",
            "Each column is one feature (or neuron) observed over many TOKENS (rows): centre and normalise each "
            "column over dim 0. You computed it over the features of each token (dim 1), which compares tokens, "
            "not features.",
            lambda a, b: ref.pearson_correlation(a.T, b.T)),
        Misconception(
            "not centred (cosine similarity)",
            "Subtract each column's mean over tokens before the dot products: without it you get the cosine "
            "similarity of the raw activations, which is large for any two features that are both usually "
            "positive.",
            lambda a, b: _corr_no_centering(a, b).nan_to_num(0.0)),
        Misconception(
            "covariance, not correlation",
            "Divide the centred dot products by both columns' norms (equivalently covariance / (std_a std_b)): a "
            "correlation lies in [-1, 1].",
            lambda a, b: (a - a.mean(0)).T @ (b - b.mean(0)) / len(a)),
        Misconception(
            "n and n - 1 mixed",
            "Your covariance divides by n but torch.std divides by n - 1 (or the other way): use the same "
            "convention in both, or simply divide centred dot products by the columns' norms.",
            lambda a, b: ((a - a.mean(0)).T @ (b - b.mean(0)) / len(a) / (a.std(0)[:, None] * b.std(0)[None, :]))
            .nan_to_num(0.0)),
    ),
)


NAN_EXPLANATION = (
    "A column that never varies (a dead feature) has norm 0 after centring, so 0/0 = NaN. Report 0 for it "
    "(torch.nan_to_num, or mask where a norm is 0): a NaN would poison every max and mean downstream.")


def _describe_pearson(inputs: dict, got, expected):
    """NaN where the reference has a constant column's 0: name the mistake (allclose cannot match NaN)."""
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.isnan(got).any():
        return NAN_EXPLANATION
    return None


def pearson_correlation(fn, cases: Cases = None) -> None:
    """Check ``fn(a[n_tokens, m], b[n_tokens, n]) -> [m, n]``."""
    run_described(PEARSON, fn, cases, _describe_pearson)


# =========================================================================== 7. matching features


def _match_inputs(seed: int) -> dict:
    g = rng(seed)
    if seed % 3 != 0:
        n_a = n_b = randint(g, 6, 9)
    else:
        n_a, n_b = randint(g, 5, 7), randint(g, 9, 12)
    corr = 2 * torch.rand(n_a, n_b, generator=g) - 1
    corr[0, 0] = -0.99  # a strongly ANTI-correlated pair: not a match
    return {"corr": corr}


MATCH = Exercise(
    chapter=CHAPTER,
    name="match_features",
    reference=ref.match_features,
    make_inputs=_match_inputs,
    default_cases=(1, 3, 0),  # square, square, rectangular
    misconceptions=(
        Misconception(
            "maximum over the wrong axis",
            "Row i of corr is feature i of dictionary A against every feature of B: take the max over dim=1 "
            "(along the row). dim=0 finds, for each feature of B, its best match in A.",
            lambda corr: tuple(corr.max(dim=0))),
        Misconception(
            "absolute correlation",
            "A match fires on the same tokens: its correlation is close to +1. A correlation near -1 means the "
            "two features are on at opposite times; do not take abs().",
            lambda corr: (lambda v, i: (corr.gather(1, i[:, None])[:, 0].abs(), i))(*corr.abs().max(dim=1))),
        Misconception(
            "minimum",
            "The best match is the LARGEST correlation (max), not the smallest.",
            lambda corr: tuple(corr.min(dim=1))),
    ),
)


def match_features(fn, cases: Cases = None) -> None:
    """Check ``fn(corr[n_a, n_b]) -> (best_corr[n_a], best_index[n_a])``."""
    run_described(MATCH, fn, cases, describe_parts(("best_corr", "best_index"), MATCH.rtol, MATCH.atol))

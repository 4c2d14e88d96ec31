"""Checks for chapter 04, exercise 2: the sparse data generator. It is random, so the check compares
STATISTICS of the student's samples (how often each feature is on, the mean and spread of its
values when on, how often neighbouring features are on together) with their exact expected
values; the misconceptions are described by their own exact statistics.

Shapes follow utils.superposition (instance axis first); the reference answers are
utils/superposition/exercises.py. The notebook reaches these checks through ``utils.checks.ch04``.
"""
from __future__ import annotations

import re

import torch

from utils.checks.core import Cases, CheckFailure, Exercise, Misconception, run_check

CHAPTER = "04"


# --------------------------------------------------------------------------- 2. data generator

# 100k rows: the standard error of every statistic is below a third of the tolerance.
GENERATE_ROWS = 100_000
GENERATE_TOL = 0.03


def _generate_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    inst = int(torch.randint(2, 4, (1,), generator=g))
    n = int(torch.randint(4, 7, (1,), generator=g))
    # Probabilities away from 1/2 (so "on" and "off" cannot be confused by accident) and not tiny
    # (so every feature is on often enough for its statistics to be sharp).
    low = 0.05 + 0.25 * torch.rand(inst, n, generator=g)
    high = 0.7 + 0.25 * torch.rand(inst, n, generator=g)
    p = torch.where(torch.rand(inst, n, generator=g) < 0.5, low, high)
    p[0, 0], p[0, 1] = 0.1, 0.2  # a pair of rare neighbours: makes a shared on/off draw stand out
    return {"feature_probability": p, "batch_size": GENERATE_ROWS, "seed": seed}


def _expected_stats(on: torch.Tensor, mean_on: torch.Tensor, below_half: torch.Tensor, both_on: torch.Tensor):
    return (torch.stack([on, mean_on, below_half]), both_on)


def batch_statistics(x: torch.Tensor):
    """(stats [3, inst, feat], both_on [inst, feat - 1]): per feature, the fraction of rows where
    it is on, the mean of its nonzero values, the fraction of those below 1/2; and for neighbouring
    features i, i+1 the fraction of rows where both are on."""
    on = x != 0
    count = on.sum(1).clamp_min(1)
    frac_on = on.float().mean(1)
    mean_on = (x * on).sum(1) / count
    below_half = (on & (x < 0.5)).sum(1) / count
    both_on = (on[..., :-1] & on[..., 1:]).float().mean(1)
    return _expected_stats(frac_on, mean_on, below_half, both_on)


def _generate_reference(feature_probability, batch_size, seed):
    p = feature_probability
    return _expected_stats(p, torch.full_like(p, 0.5), torch.full_like(p, 0.5), p[:, :-1] * p[:, 1:])


def _stats_wrong(on, mean_on, below_half, both_on):
    return lambda feature_probability, batch_size, seed: _expected_stats(
        *(f(feature_probability) for f in (on, mean_on, below_half, both_on)))


def _run_student_generator(fn, seen: list):
    def wrapper(feature_probability, batch_size, seed):
        seen.append(None)  # one entry per case, in order, even when this case fails below
        with torch.random.fork_rng(devices=[]):  # seeded, without disturbing the notebook's RNG
            torch.manual_seed(seed)
            x = fn(batch_size, feature_probability.clone())
        if not isinstance(x, torch.Tensor):
            raise CheckFailure(f"generate_batch should return a torch.Tensor, not a {type(x).__name__}.")
        inst, n = feature_probability.shape
        if tuple(x.shape) != (inst, batch_size, n):
            hint = " (instances first, then the batch)" if tuple(x.shape) == (batch_size, inst, n) else ""
            raise CheckFailure(f"generate_batch: the batch has shape {tuple(x.shape)}; expected "
                               f"[n_instances, batch_size, n_features] = {(inst, batch_size, n)}{hint}.")
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise CheckFailure("generate_batch: every value must lie in [0, 1] (0 when the feature is off, "
                               f"uniform on [0, 1] when on); yours range over [{x.min().item():.3g}, "
                               f"{x.max().item():.3g}].")
        stats = batch_statistics(x.float())
        seen[-1] = (feature_probability, stats)
        return stats
    return wrapper


def _describe_statistics(p: torch.Tensor, got) -> str:
    """The first statistic that is off, in words: presence first (the others depend on it), then the
    values, then independence."""
    (stats, both), (stats_exp, both_exp) = got, _generate_reference(p, 0, 0)
    candidates = [stats[0] - stats_exp[0], stats[1] - stats_exp[1], stats[2] - stats_exp[2], both - both_exp]
    which = next((j for j, d in enumerate(candidates) if d.abs().max() > GENERATE_TOL),
                 max(range(4), key=lambda j: float(candidates[j].abs().max())))
    diff = candidates[which].abs()
    k, i = (int(v) for v in torch.nonzero(diff == diff.max())[0])
    if which == 0:
        return (f"feature {i} of instance {k} is nonzero in {stats[0, k, i]:.1%} of rows, but its feature "
                f"probability is {p[k, i]:.2f}.")
    if which == 3:
        return (f"features {i} and {i + 1} of instance {k} are on together in {both[k, i]:.1%} of rows, but "
                f"independent features with probabilities {p[k, i]:.2f} and {p[k, i + 1]:.2f} would be on "
                f"together in {both_exp[k, i]:.1%}: draw every entry independently.")
    what = "mean" if which == 1 else "a fraction below 1/2 of"
    return (f"when feature {i} of instance {k} is on, its values have {what} {stats[which, k, i]:.3f}; "
            f"values uniform on [0, 1] have {what} 0.5.")


GENERATE_BATCH = Exercise(
    chapter=CHAPTER,
    name="generate_batch",
    reference=_generate_reference,
    make_inputs=_generate_inputs,
    rtol=0.0,
    atol=GENERATE_TOL,
    misconceptions=(
        Misconception(
            "on/off swapped",
            "Sparsity semantics are swapped: feature_probability = 1 - S is the probability that a feature is "
            "ON (nonzero). Your features are on with probability 1 - p, i.e. off with probability p.",
            _stats_wrong(lambda p: 1 - p, lambda p: torch.full_like(p, 0.5), lambda p: torch.full_like(p, 0.5),
                         lambda p: (1 - p[:, :-1]) * (1 - p[:, 1:]))),
        Misconception(
            "binary features",
            "A present feature takes a value uniform on [0, 1], not the value 1: multiply the on/off mask by "
            "a second uniform draw.",
            _stats_wrong(lambda p: p, lambda p: torch.ones_like(p), lambda p: torch.zeros_like(p),
                         lambda p: p[:, :-1] * p[:, 1:])),
        Misconception(
            "one draw, unscaled",
            "You used the same uniform draw u for presence (u < p) and for the value, so present values are "
            "uniform on [0, p], not [0, 1]. Use a second draw, or rescale the value to u / p.",
            _stats_wrong(lambda p: p, lambda p: p / 2, lambda p: torch.where(p <= 0.5, 1.0, 0.5 / p),
                         lambda p: p[:, :-1] * p[:, 1:])),
        Misconception(
            "one draw for all features",
            "Features must switch on independently: draw a separate random number for every (instance, row, "
            "feature). Yours share one draw per row, so rare features are only ever on together with common ones.",
            _stats_wrong(lambda p: p, lambda p: torch.full_like(p, 0.5), lambda p: torch.full_like(p, 0.5),
                         lambda p: torch.minimum(p[:, :-1], p[:, 1:]))),
    ),
)


def generate_batch(fn, cases: Cases = None) -> None:
    """Check ``fn(batch_size, feature_probability[inst, feat]) -> x[inst, batch, feat]`` statistically."""
    if not callable(fn):
        raise CheckFailure(f"generate_batch: pass your function itself (got a {type(fn).__name__}).")
    seen: list = []
    try:
        run_check(GENERATE_BATCH, _run_student_generator(fn, seen), cases)
    except CheckFailure as failure:
        named = any(m.explanation in str(failure) for m in GENERATE_BATCH.misconceptions)
        case = re.search(r"\(case (\d+) of \d+\)", str(failure))
        if named or case is None or int(case.group(1)) > len(seen) or seen[int(case.group(1)) - 1] is None:
            raise
        # run_check would print the raw statistics tensors; say in words which one is off instead
        label = str(failure).split(":", 1)[0]
        raise CheckFailure(f"{label}: {_describe_statistics(*seen[int(case.group(1)) - 1])}") from None

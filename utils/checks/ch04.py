"""Checks for chapter 04 (toy models of superposition).

Shapes follow utils.superposition: the instance axis comes first, W [inst, d_hidden, feat],
b [inst, feat], x [inst, batch, feat], importance and feature probability [inst, feat].

The data generator is random, so its check compares STATISTICS of the student's samples (how
often each feature is on, the mean and spread of its values when on, how often neighbouring
features are on together) with their exact expected values; the misconceptions are described by
their own exact statistics.

The reference answers are utils/superposition/exercises.py. One section per exercise (its inputs,
its reference, its catalogue of mistakes with their exact statistics), in the notebook's order:
longer than 400 lines because the catalogues are, and splitting them would separate an exercise
from its mistakes.
"""
from __future__ import annotations

import re

import torch

from utils.checks.core import Cases, CheckFailure, Exercise, Misconception, diagnose, question, run_check
from utils.superposition import exercises as ref

CHAPTER = "04"
EXERCISES = ["toy_forward", "generate_batch", "weighted_loss", "superposition", "dimensionality",
             "dense_regime_question", "antipodal_question", "privileged_basis_question", "anticorrelated_batch"]


def _sizes(g: torch.Generator) -> tuple[int, int, int, int]:
    """(instances, hidden, features, batch), all different from each other so that a mistake that
    scales by one of them (a mean over the wrong axis) cannot masquerade as another."""
    inst = int(torch.randint(2, 4, (1,), generator=g))
    m = int(torch.randint(2, 4, (1,), generator=g))
    n = int(torch.randint(5, 8, (1,), generator=g))
    batch = int(torch.randint(9, 14, (1,), generator=g))
    return inst, m, n, batch


def _sparse_features(inst: int, batch: int, n: int, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    return torch.rand(inst, batch, n, generator=g) * (torch.rand(inst, batch, n, generator=g) < p)


# --------------------------------------------------------------------------- 1. forward pass


def _forward_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    inst, m, n, batch = _sizes(g)
    W = torch.randn(inst, m, n, generator=g) * 0.8
    b = torch.randn(inst, n, generator=g) * 0.3  # both signs, so the ReLU and the bias both matter
    return {"W": W, "b": b, "x": _sparse_features(inst, batch, n, g)}


def _forward_reference(W, b, x):
    return ref.toy_forward(W, b, x)


def _hidden(W, x):
    return torch.einsum("ihf,ibf->ibh", W, x)


TOY_FORWARD = Exercise(
    chapter=CHAPTER,
    name="toy_forward",
    reference=_forward_reference,
    make_inputs=_forward_inputs,
    misconceptions=(
        Misconception(
            "missing ReLU",
            "The output needs a ReLU: x' = ReLU(W^T W x + b). You returned W^T W x + b, which is the LINEAR "
            "toy model; without the ReLU the model cannot filter out interference, so it never superposes.",
            lambda W, b, x: torch.einsum("ibh,ihf->ibf", _hidden(W, x), W) + b[:, None]),
        Misconception(
            "bias before W^T",
            "The bias is added AFTER projecting back up: x' = ReLU(W^T (W x) + b). You added b before W^T "
            "(computing W^T W (x + b)), so the bias was squeezed through the m-dimensional bottleneck too.",
            lambda W, b, x: torch.relu(torch.einsum("ibh,ihf->ibf", _hidden(W, x + b[:, None]), W))),
        Misconception(
            "bias after ReLU",
            "The bias goes inside the ReLU: x' = ReLU(W^T W x + b). You added it after the ReLU, so the "
            "model can no longer use a negative bias to cut off small interference.",
            lambda W, b, x: torch.relu(torch.einsum("ibh,ihf->ibf", _hidden(W, x), W)) + b[:, None]),
        Misconception(
            "ReLU on the hidden layer",
            "This model has NO nonlinearity on the hidden layer: h = W x, then x' = ReLU(W^T h + b). You "
            "applied a ReLU to h as well (that is the privileged-basis model of the end of the chapter).",
            lambda W, b, x: torch.relu(torch.einsum("ibh,ihf->ibf", torch.relu(_hidden(W, x)), W) + b[:, None])),
        Misconception(
            "instances mixed",
            "Each instance must use only its own weights: keep the instance index shared between W and x "
            "(e.g. einsum 'ihf,ibf->ibh'). Your einsum summed over the instance axis, mixing the models.",
            lambda W, b, x: torch.relu(torch.einsum("jhf,ibf->ibh", W, x) @ W.sum(0) + b[:, None])),
    ),
)


def toy_forward(fn, cases: Cases = None) -> None:
    """Check ``fn(W, b, x) -> x'[inst, batch, feat]`` = ReLU(W^T W x + b) for every instance."""
    run_check(TOY_FORWARD, fn, cases)


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
                               f"uniform on [0, 1] when on); yours range over [{x.min().item():.3g}, {x.max().item():.3g}].")
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


# --------------------------------------------------------------------------- 3. loss


def _loss_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    inst, _, n, batch = _sizes(g)
    x = _sparse_features(inst, batch, n, g)
    out = (x + 0.3 * torch.randn(inst, batch, n, generator=g)).clamp_min(0)
    importance = 0.3 + torch.rand(inst, n, generator=g)  # far from uniform and from 1
    return {"out": out, "x": x, "importance": importance}


def _loss_reference(out, x, importance):
    return ref.importance_weighted_loss(out, x, importance)


def _sq(out, x):
    return (x - out) ** 2


LOSS = Exercise(
    chapter=CHAPTER,
    name="weighted_loss",
    reference=_loss_reference,
    make_inputs=_loss_inputs,
    misconceptions=(
        Misconception(
            "averaged over instances",
            "The loss is SUMMED over instances, not averaged: each instance is a separate model, and a sum "
            "gives each one exactly the gradient of its own loss. Your mean divides every instance's "
            "gradient by the number of instances.",
            lambda out, x, importance: (importance[:, None] * _sq(out, x)).sum((1, 2)).div(x.shape[1]).mean()),
        Misconception(
            "importance inside the square",
            "The importance weights the SQUARED error, I_i (x_i - x'_i)^2, with I outside the square. You "
            "squared the weighted error (I_i (x_i - x'_i))^2, so the weights entered as I_i^2.",
            lambda out, x, importance: ((importance[:, None] * (x - out)) ** 2).sum() / x.shape[1]),
        Misconception(
            "importance outside the feature sum",
            "Weight each feature's squared error by its own importance before summing over features. You "
            "applied the importance after the sum (or to the already-reduced loss), so the features were "
            "never weighted individually.",
            lambda out, x, importance: (importance.mean(-1) * _sq(out, x).sum((1, 2)) / x.shape[1]).sum()),
        Misconception(
            "no importance",
            "You left out the importance weights I_i: the loss is sum_i I_i (x_i - x'_i)^2.",
            lambda out, x, importance: _sq(out, x).sum() / x.shape[1]),
        Misconception(
            "mean over features",
            "Sum the weighted squared errors over features (L = sum_i I_i (x_i - x'_i)^2) and average over the "
            "batch only; you also averaged over features.",
            lambda out, x, importance: (importance[:, None] * _sq(out, x)).mean((1, 2)).sum()),
        Misconception(
            "summed over the batch",
            "Average over the batch (an expectation over inputs), do not sum: with a sum the loss and the "
            "gradient grow with the batch size.",
            lambda out, x, importance: (importance[:, None] * _sq(out, x)).sum()),
    ),
)


def weighted_loss(fn, cases: Cases = None) -> None:
    """Check ``fn(out, x, importance) -> scalar`` = sum over instances of E_batch sum_i I_i (x_i - x'_i)^2."""
    run_check(LOSS, fn, cases)


# --------------------------------------------------------------------------- 4. superposition


def _W_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    inst, m, n, _ = _sizes(g)
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


# --------------------------------------------------------------------------- 6. anti-correlated groups
#
# fn(batch_size, group_probability [inst, n_groups], group_size) -> x [inst, batch, n_groups * group_size]
# Group k is the block of features k*g ... k*g + g - 1 (g = group_size). Per (instance, row, group):
# active with probability p, then exactly one feature, uniform among the g, takes a value uniform
# on [0, 1). Graded on statistics, like generate_batch, plus one exact rule (never two features of
# a group on in the same row). The misconceptions are described by their own exact statistics.

ANTI_ROWS = 100_000


def _anti_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    inst = int(torch.randint(2, 4, (1,), generator=g))
    size = int(torch.randint(2, 4, (1,), generator=g))
    # at least twice as many groups as features per group: then the g features of any two
    # neighbouring groups lie in 2g different groups of the interleaved layout, and that
    # misconception's statistics stay exact products
    groups = int(torch.randint(2 * size, 2 * size + 2, (1,), generator=g))
    p = 0.3 + 0.6 * torch.rand(inst, groups, generator=g)
    p[0, 0], p[0, 1] = 0.3, 0.4  # rare neighbours: a draw shared by all groups stands out
    p[-1, -1] = 0.9  # a busy group: features switched on independently collide often
    return {"group_probability": p, "group_size": size, "batch_size": ANTI_ROWS, "seed": seed}


def anti_statistics(x: torch.Tensor, group_size: int):
    """(features [3, inst, feat], groups [2, inst, n_groups], neighbours [inst, n_groups - 1]):
    per feature the fraction of rows where it is on, the mean of its nonzero values and the
    fraction of those below 1/2; per group (contiguous blocks) the fraction of rows with at least
    one and with at least two features on; for groups k, k+1 the fraction of rows with both active."""
    inst, batch, n = x.shape
    on = x != 0
    count = on.sum(1).clamp_min(1)
    features = torch.stack([on.float().mean(1), (x * on).sum(1) / count, (on & (x < 0.5)).sum(1) / count])
    per_group = on.reshape(inst, batch, n // group_size, group_size).sum(-1)  # [inst, batch, groups]
    active = per_group >= 1
    groups = torch.stack([active.float().mean(1), (per_group >= 2).float().mean(1)])
    neighbours = (active[..., :-1] & active[..., 1:]).float().mean(1)
    return features, groups, neighbours


def _stats_from(p_feature, mean_on, below_half, q_sets_per_group, neighbours):
    """Exact statistics from: per-feature on-probability [inst, feat], value mean and fraction below
    1/2 when on [inst, feat], for each group a list of [inst] tensors = probabilities of independent,
    internally exclusive sets of its features being on, and the neighbour co-activity [inst, G-1]."""
    any_on, two_on = [], []
    for q_sets in q_sets_per_group:
        none = torch.ones_like(q_sets[0])
        for q in q_sets:
            none = none * (1 - q)
        exactly_one = torch.zeros_like(none)
        for j, q in enumerate(q_sets):
            others_off = torch.ones_like(none)
            for l, q_other in enumerate(q_sets):
                if l != j:
                    others_off = others_off * (1 - q_other)
            exactly_one = exactly_one + q * others_off
        any_on.append(1 - none)
        two_on.append(1 - none - exactly_one)
    return (torch.stack([p_feature, mean_on, below_half]),
            torch.stack([torch.stack(any_on, -1), torch.stack(two_on, -1)]), neighbours)


def _anti_stats(group_probability, group_size, active=None, choice=None, values=None, layout="blocks",
                shared_draw=False):
    """Statistics of a generator family: groups active with probability ``active(p)`` [inst, G];
    ``choice(g)`` the probability of each of a group's g features given that it is active [g]
    (None: every feature independently on with probability active(p)); ``values(g)``: (mean,
    fraction below 1/2) of each member's nonzero values [g] each; the interleaved layout puts
    feature r * G + k in group k; ``shared_draw``: one activity draw for all groups of a row."""
    p, g = group_probability.double(), int(group_size)
    inst, G = p.shape
    a = (active or (lambda p: p))(p).clamp(0, 1)
    w = (choice(g) if choice is not None else None)
    mean, below = values(g) if values is not None else (torch.full((g,), 0.5), torch.full((g,), 0.5))
    # on-probability of feature f and the group of the layout it belongs to
    if layout == "blocks":
        member = torch.arange(G * g) % g
        owner = torch.arange(G * g) // g
    else:
        member = torch.arange(G * g) // G
        owner = torch.arange(G * g) % G
    p_feature = a[:, owner] * (w[member] if w is not None else 1.0)
    # a feature that is never on has no values: the statistics report 0 for both
    mean_on = torch.where(p_feature > 0, mean.double()[member], 0.0)
    below_half = torch.where(p_feature > 0, below.double()[member], 0.0)
    q_sets = []
    for k in range(G):  # contiguous group k, as the statistics see it
        feats = range(k * g, (k + 1) * g)
        if w is None:  # independent features
            q_sets.append([p_feature[:, f] for f in feats])
        else:  # features of one true group are exclusive: merge them into one set
            by_owner: dict = {}
            for f in feats:
                by_owner[int(owner[f])] = by_owner.get(int(owner[f]), 0) + p_feature[:, f]
            q_sets.append(list(by_owner.values()))
    stats = _stats_from(p_feature, mean_on, below_half, q_sets, None)
    any_on = stats[1][0]
    if shared_draw:  # one uniform u per row, group k active when u < p_k
        neighbours = torch.minimum(any_on[:, :-1], any_on[:, 1:])
    else:
        neighbours = any_on[:, :-1] * any_on[:, 1:]
    return stats[0], stats[1], neighbours


def _anti_reference(group_probability, group_size, batch_size, seed):
    return _anti_stats(group_probability, group_size, choice=lambda g: torch.full((g,), 1 / g, dtype=torch.float64))


def _anti_wrong(**kwargs):
    return lambda group_probability, group_size, batch_size, seed: _anti_stats(group_probability, group_size, **kwargs)


def _uniform_choice(g):
    return torch.full((g,), 1 / g, dtype=torch.float64)


def _last_never(g):
    w = torch.full((g,), 1 / (g - 1), dtype=torch.float64)
    w[-1] = 0
    return w


def _value_from_choice_draw(g):
    j = torch.arange(g, dtype=torch.float64)
    below = ((0.5 - j / g) * g).clamp(0, 1)  # share of [j/g, (j+1)/g) below 1/2
    return (j + 0.5) / g, below


ANTI_TWO_ACTIVE = ("At most ONE feature of a group may be on in a row: decide once per group whether it is active, "
                   "then pick a single one of its features.")

ANTICORRELATED_BATCH = Exercise(
    chapter=CHAPTER,
    name="anticorrelated_batch",
    reference=_anti_reference,
    make_inputs=_anti_inputs,
    rtol=0.0,
    atol=GENERATE_TOL,
    misconceptions=(
        Misconception(
            "independent features, p / group_size each",
            "Two features of the same group were on together: you switched every feature on independently "
            "(each with probability p / group_size), which gets each feature's frequency right but not the "
            "anti-correlation. " + ANTI_TWO_ACTIVE,
            lambda group_probability, group_size, batch_size, seed: _anti_stats(
                group_probability, group_size, active=lambda p: p / group_size)),
        Misconception(
            "independent features, p each",
            "Two features of the same group were on together, and each feature was on with the group's "
            "probability p: you drew one activity per FEATURE. p is the probability that the GROUP is active; "
            "then exactly one of its features is on, so each feature is on with probability p / group_size. "
            + ANTI_TWO_ACTIVE,
            _anti_wrong(choice=None)),
        Misconception(
            "probability per feature",
            "Per group, not per feature: group_probability p is the probability that a GROUP is active (then "
            "one of its features, so each feature is on with probability p / group_size). Your groups are "
            "active group_size times too often, as if p were each feature's own probability.",
            lambda group_probability, group_size, batch_size, seed: _anti_stats(
                group_probability, group_size, active=lambda p: p * group_size, choice=_uniform_choice)),
        Misconception(
            "groups interleaved",
            "Groups are laid out wrongly: group k is the CONTIGUOUS block of features k * group_size ... "
            "(k + 1) * group_size - 1, i.e. x.reshape(inst, batch, n_groups, group_size). You put feature "
            "r * n_groups + k in group k (a reshape to [inst, batch, group_size, n_groups]), so neighbouring "
            "features of one block come from different groups and are on together.",
            _anti_wrong(choice=_uniform_choice, layout="interleaved")),
        Misconception(
            "last feature never chosen",
            "The last feature of every group is never on: torch.randint(low, high) draws from low ... high - 1, "
            "so pick the feature with torch.randint(0, group_size, ...) (not group_size - 1).",
            _anti_wrong(choice=_last_never)),
        Misconception(
            "choice and value from one draw",
            "You used one uniform draw u both to pick the feature (floor(u * group_size)) and as its value, so "
            "feature j of a group only ever takes values in [j / group_size, (j + 1) / group_size). Use a "
            "second draw for the value (or the fractional part u * group_size - floor(u * group_size)).",
            _anti_wrong(choice=_uniform_choice, values=_value_from_choice_draw)),
        Misconception(
            "binary features",
            "A feature that is on takes a value uniform on [0, 1), not the value 1: multiply the chosen "
            "feature's one-hot mask by a uniform draw.",
            _anti_wrong(choice=_uniform_choice, values=lambda g: (torch.ones(g), torch.zeros(g)))),
        Misconception(
            "one draw for all groups",
            "Groups must switch on independently of each other: draw a separate number for every (instance, "
            "row, group). Yours share one draw per row (shape [inst, batch, 1]), so a rare group is only ever "
            "active together with the more common ones.",
            _anti_wrong(choice=_uniform_choice, shared_draw=True)),
    ),
)


def _run_student_anticorrelated(fn, seen: list):
    def wrapper(group_probability, group_size, batch_size, seed):
        seen.append(None)  # one entry per case, in order, even when this case fails below
        with torch.random.fork_rng(devices=[]):  # seeded, without disturbing the notebook's RNG
            torch.manual_seed(seed)
            x = fn(batch_size, group_probability.clone(), group_size)
        if not isinstance(x, torch.Tensor):
            raise CheckFailure(f"anticorrelated_batch should return a torch.Tensor, not a {type(x).__name__}.")
        inst, groups = group_probability.shape
        expected = (inst, batch_size, groups * group_size)
        if tuple(x.shape) != expected:
            hint = ""
            if tuple(x.shape) == (inst, batch_size, groups, group_size):
                hint = " (flatten the group axes: .reshape(inst, batch, n_groups * group_size))"
            elif tuple(x.shape) == (batch_size, inst, groups * group_size):
                hint = " (instances first, then the batch)"
            raise CheckFailure(f"anticorrelated_batch: the batch has shape {tuple(x.shape)}; expected "
                               f"[n_instances, batch_size, n_groups * group_size] = {expected}{hint}.")
        x = x.float()
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            low, high = x.min().item(), x.max().item()
            why = ""
            if low < 0:
                why = (" Negative values: a present feature is uniform on [0, 1) (torch.rand), not normal "
                       "(torch.randn).")
            elif high > 1:
                why = (f" Values up to {high:.3g}: if you picked the feature with floor(u * group_size), the "
                       "value left over is the fractional part of u * group_size, not u * group_size itself.")
            raise CheckFailure("anticorrelated_batch: values not in [0, 1): every value must be 0 (feature off) "
                               f"or uniform on [0, 1) (feature on); yours range over [{low:.3g}, {high:.3g}].{why}")
        stats = anti_statistics(x, group_size)
        per_group = (x != 0).reshape(inst, batch_size, groups, group_size).sum(-1)
        if (per_group >= 2).any():  # exact: a correct generator never does this
            inputs = {"group_probability": group_probability, "group_size": group_size,
                      "batch_size": batch_size, "seed": seed}
            wrong = diagnose(stats, inputs, ANTICORRELATED_BATCH, _anti_reference(**inputs))
            if wrong is not None:
                raise CheckFailure(f"anticorrelated_batch: {wrong.explanation}")
            k, r, grp = (int(v) for v in torch.nonzero(per_group >= 2)[0])
            rows = int((per_group >= 2).sum())
            raise CheckFailure(f"anticorrelated_batch: two features of a group active together: in {rows} "
                               f"(row, group) places, e.g. row {r} of instance {k}, group {grp} (features "
                               f"{grp * group_size}-{(grp + 1) * group_size - 1}). {ANTI_TWO_ACTIVE}")
        seen[-1] = ({"group_probability": group_probability, "group_size": group_size,
                     "batch_size": batch_size, "seed": seed}, stats)
        return stats
    return wrapper


def _describe_anti(inputs: dict, got) -> str:
    """The first statistic that is off, in words: group activity, which feature, values, independence."""
    p, g = inputs["group_probability"], inputs["group_size"]
    (feat, grp, nb), (feat_e, grp_e, nb_e) = got, _anti_reference(**inputs)
    candidates = [("group", grp[0] - grp_e[0]), ("feature", feat[0] - feat_e[0]), ("mean", feat[1] - feat_e[1]),
                  ("below", feat[2] - feat_e[2]), ("neighbours", nb - nb_e)]
    which, diff = next(((w, d) for w, d in candidates if d.abs().max() > GENERATE_TOL),
                       max(candidates, key=lambda c: float(c[1].abs().max())))
    k, i = (int(v) for v in torch.nonzero(diff.abs() == diff.abs().max())[0])
    if which == "group":
        return (f"group {i} of instance {k} is active in {grp[0, k, i]:.1%} of rows, but its group probability "
                f"is {p[k, i]:.2f}: the wrong activation probability per group.")
    if which == "feature":
        return (f"feature {i} of instance {k} is on in {feat[0, k, i]:.1%} of rows; with its group active with "
                f"probability {p[k, i // g]:.2f} and the feature picked uniformly among {g}, it should be "
                f"{feat_e[0, k, i]:.1%}.")
    if which == "neighbours":
        return (f"groups {i} and {i + 1} of instance {k} are active together in {nb[k, i]:.1%} of rows; "
                f"independent groups would be in {nb_e[k, i]:.1%}: draw each group's activity separately.")
    what = "mean" if which == "mean" else "a fraction below 1/2 of"
    row = 1 if which == "mean" else 2
    return (f"when feature {i} of instance {k} is on, its values have {what} {feat[row, k, i]:.3f}; values "
            f"uniform on [0, 1) have {what} 0.5.")


def anticorrelated_batch(fn, cases: Cases = None) -> None:
    """Check ``fn(batch_size, group_probability[inst, n_groups], group_size) -> x[inst, batch,
    n_groups * group_size]`` statistically, and that no two features of a group are ever on together."""
    if not callable(fn):
        raise CheckFailure(f"anticorrelated_batch: pass your function itself (got a {type(fn).__name__}).")
    seen: list = []
    try:
        run_check(ANTICORRELATED_BATCH, _run_student_anticorrelated(fn, seen), cases)
    except CheckFailure as failure:
        message = str(failure)
        named = any(m.explanation in message for m in ANTICORRELATED_BATCH.misconceptions)
        case = re.search(r"\(case (\d+) of \d+\)", message)
        if named or case is None or int(case.group(1)) > len(seen) or seen[int(case.group(1)) - 1] is None:
            raise
        # run_check would quote the raw statistics tensors; say in words which one is off instead
        label = message.split(":", 1)[0]
        raise CheckFailure(f"{label}: {_describe_anti(*seen[int(case.group(1)) - 1])}") from None


# --------------------------------------------------------------------------- multiple choice
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


dense_regime_question = question(CHAPTER, "dense_regime_question")
antipodal_question = question(CHAPTER, "antipodal_question")
privileged_basis_question = question(CHAPTER, "privileged_basis_question")

"""Checks for chapter 04, exercise 6: anti-correlated feature groups, graded on statistics like the
data generator (``ch04_data``), plus one exact rule.

Shapes follow utils.superposition (instance axis first); the reference answers are
utils/superposition/exercises.py. The notebook reaches these checks through ``utils.checks.ch04``.
"""
from __future__ import annotations

import re

import torch

from utils.checks.ch04_data import GENERATE_TOL
from utils.checks.core import Cases, CheckFailure, Exercise, Misconception, diagnose, run_check

CHAPTER = "04"


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

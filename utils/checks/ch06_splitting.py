"""Checks for chapter 06, the feature-splitting section: how much of a small dictionary's feature
its children in a larger dictionary explain together (Exercise 7b, hard).

The reference answer is utils/features/exercises.py (``split_regression``). The notebook reaches
this check through ``utils.checks.ch06``.
"""
from __future__ import annotations

import torch

from utils.checks.core import Cases, Exercise, Misconception
from utils.checks.toolkit import describe_parts, randint, rng, run_described
from utils.features import exercises as ref

CHAPTER = "06"


def split_inputs(seed: int) -> dict:
    """Sparse, non-negative children that overlap (some tokens fire two of them) and a parent that
    fires where they do, plus noise and an offset (so the intercept and the centring matter)."""
    g = rng(seed)
    n, k = randint(g, 50, 90), randint(g, 2, 4)
    children = torch.relu(torch.randn(n, k, generator=g) * 1.5 - 0.6)
    shared = torch.relu(torch.randn(n, 1, generator=g) - 0.3)  # a direction the children share
    children = children + shared * (torch.rand(1, k, generator=g) < 0.6)
    weights = torch.rand(k, generator=g) * 1.5 + 0.3
    parent = children @ weights + torch.randn(n, generator=g) * 0.4 + 0.8
    return {"parent": parent, "children": children}


def _fit(parent, children, intercept=True):
    X = children.double()
    if intercept:
        X = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], dim=1)
    w = torch.linalg.lstsq(X, parent.double()[:, None]).solution[:, 0]
    return w, X @ w


def _r2(y, pred, centred=True):
    y = y.double()
    total = ((y - y.mean()) ** 2).sum() if centred else (y ** 2).sum()
    return float(1 - ((y - pred) ** 2).sum() / total)


def _no_intercept(parent, children):
    w, pred = _fit(parent, children, intercept=False)
    return w.float(), 0.0, _r2(parent, pred)


def _uncentred_total(parent, children):
    w, pred = _fit(parent, children)
    return w[:-1].float(), float(w[-1]), _r2(parent, pred, centred=False)


def _one_at_a_time(parent, children):
    y, C = parent.double(), children.double()
    Cc, yc = C - C.mean(0), y - y.mean()
    w = (Cc * yc[:, None]).sum(0) / (Cc ** 2).sum(0)  # each child's own slope, the others ignored
    b = y.mean() - C.mean(0) @ w
    return w.float(), float(b), _r2(parent, C @ w + b)


def _children_on_parent(parent, children):
    y, C = parent.double(), children.double()
    yc, Cc = y - y.mean(), C - C.mean(0)
    w = (Cc * yc[:, None]).sum(0) / (yc ** 2).sum()  # each child regressed on the parent
    b = C.mean(0) - w * y.mean()
    r2 = 1 - ((C - (y[:, None] * w + b)) ** 2).sum(0) / (Cc ** 2).sum(0)
    return w.float(), float(b.mean()), float(r2.mean())


def _correlation_not_squared(parent, children):
    w, pred = _fit(parent, children)
    r = torch.corrcoef(torch.stack([parent.double(), pred]))[0, 1]
    return w[:-1].float(), float(w[-1]), float(r)


SPLIT = Exercise(
    chapter=CHAPTER,
    name="split_regression",
    reference=ref.split_regression,
    make_inputs=split_inputs,
    rtol=1e-3, atol=1e-4,
    misconceptions=(
        Misconception("no intercept", "Your fit has no intercept: a column of ones beside the children lets the "
                      "parent have its own baseline; without it the weights absorb the offset. (Hint 2 has the "
                      "design matrix.)", _no_intercept),
        Misconception("one child at a time", "You fitted each child on its own (one slope per child, the others "
                      "ignored); the children overlap, so their weights must be fitted together, in one least-squares "
                      "problem. (Hint 2.)", _one_at_a_time),
        Misconception("children on parent", "You regressed the children on the parent; the question is how well the "
                      "children explain the parent: the parent is the target y, the children the columns of X. "
                      "(Hint 2.)", _children_on_parent),
        Misconception("uncentred total", "Your r2 divides by the sum of the parent's squares; the total sum of squares "
                      "is taken around the parent's mean: SS_tot = sum((y - y.mean())**2). (Hint 2.)",
                      _uncentred_total),
        Misconception("correlation, not squared", "Your r2 is the correlation between the parent and the fit; with an "
                      "intercept, R^2 = 1 - SS_res / SS_tot is its square. (Hint 2.)", _correlation_not_squared),
    ),
)


def split_regression(fn, cases: Cases = None) -> None:
    """Check ``fn(parent[n_tokens], children[n_tokens, k]) -> (weights[k], intercept, r2)``."""
    run_described(SPLIT, fn, cases, describe_parts(("weights", "intercept", "r2"), SPLIT.rtol, SPLIT.atol))

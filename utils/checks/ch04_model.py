"""Checks for chapter 04, exercises 1 and 3: the toy model's forward pass and its
importance-weighted loss. Also the random sizes and sparse features the other parts share
(``sizes``, ``sparse_features``).

Shapes follow utils.superposition (instance axis first); the reference answers are
utils/superposition/exercises.py. The notebook reaches these checks through ``utils.checks.ch04``.
"""
from __future__ import annotations

import torch

from utils.checks.core import Cases, Exercise, Misconception, run_check
from utils.superposition import exercises as ref

CHAPTER = "04"


def sizes(g: torch.Generator) -> tuple[int, int, int, int]:
    """(instances, hidden, features, batch), all different from each other so that a mistake that
    scales by one of them (a mean over the wrong axis) cannot masquerade as another."""
    inst = int(torch.randint(2, 4, (1,), generator=g))
    m = int(torch.randint(2, 4, (1,), generator=g))
    n = int(torch.randint(5, 8, (1,), generator=g))
    batch = int(torch.randint(9, 14, (1,), generator=g))
    return inst, m, n, batch


def sparse_features(inst: int, batch: int, n: int, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    return torch.rand(inst, batch, n, generator=g) * (torch.rand(inst, batch, n, generator=g) < p)


# --------------------------------------------------------------------------- 1. forward pass


def _forward_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    inst, m, n, batch = sizes(g)
    W = torch.randn(inst, m, n, generator=g) * 0.8
    b = torch.randn(inst, n, generator=g) * 0.3  # both signs, so the ReLU and the bias both matter
    return {"W": W, "b": b, "x": sparse_features(inst, batch, n, g)}


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


# --------------------------------------------------------------------------- 3. loss


def _loss_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    inst, _, n, batch = sizes(g)
    x = sparse_features(inst, batch, n, g)
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

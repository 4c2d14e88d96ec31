"""Checks for chapter 05, exercise 8: TopK activations (``utils.sae.model.topk_relu``).

The reference answers are utils.sae's own functions; the layout, and why the random sizes differ, are in
``utils.checks.ch05``'s docstring. The notebook reaches these checks through ``utils.checks.ch05``.
"""
from __future__ import annotations

import torch

from utils.checks.ch05_inputs import sizes
from utils.checks.core import (
    Cases,
    Exercise,
    Misconception,
    run_check,
)
from utils.checks.toolkit import randint, rng
from utils.sae.model import topk_relu

CHAPTER = "05"


# =========================================================================== 7. TopK


def _topk_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, _, d_sae = sizes(g)
    k = randint(g, 3, 6)
    z = torch.randn(batch, d_sae, generator=g)
    z[: batch // 3] -= 2.0  # rows with fewer than k positive pre-activations: the ReLU must act
    z[-2:] -= 4.0
    return {"z": z, "k": k}


def _keep(z, indices, values):
    return torch.zeros_like(z).scatter(-1, indices, values)


TOPK = Exercise(
    chapter=CHAPTER,
    name="topk_activation",
    reference=lambda z, k: topk_relu(z, k),
    make_inputs=_topk_inputs,
    misconceptions=(
        Misconception(
            "no ReLU",
            "Apply a ReLU to the k kept values: when fewer than k pre-activations are positive, the negative "
            "ones among the top k must become 0 (an activation is never negative).",
            lambda z, k: _keep(z, z.topk(k, dim=-1).indices, z.topk(k, dim=-1).values)),
        Misconception(
            "top k over the batch",
            "Pick the k largest pre-activations of each TOKEN (dim=-1, over features); you picked, for each "
            "feature, its k largest tokens (dim=0).",
            lambda z, k: torch.zeros_like(z).scatter(0, z.topk(k, dim=0).indices, z.topk(k, dim=0).values.relu())),
        Misconception(
            "smallest k",
            "Keep the k LARGEST pre-activations (topk's default largest=True); you kept the smallest.",
            lambda z, k: _keep(z, *(lambda t: (t.indices, t.values.relu()))(z.topk(k, dim=-1, largest=False)))),
        Misconception(
            "largest magnitude",
            "Rank by the signed pre-activation, not its absolute value: a very negative pre-activation is a "
            "feature that is strongly OFF.",
            lambda z, k: (lambda i: _keep(z, i, z.gather(-1, i).relu()))(z.abs().topk(k, dim=-1).indices)),
        Misconception(
            "binary mask",
            "Keep the VALUES of the top k (after the ReLU), not a 0/1 mask of where they are.",
            lambda z, k: _keep(z, z.topk(k, dim=-1).indices, (z.topk(k, dim=-1).values > 0).float())),
        Misconception(
            "strict threshold keeps k - 1",
            "Your threshold drops the k-th largest value itself (z > k-th value keeps only k - 1): keep "
            "z >= the k-th largest, or scatter the values topk returns.",
            lambda z, k: torch.relu(z) * (z > z.topk(k, dim=-1).values[..., -1:])),
    ),
)


def topk_activation(fn, cases: Cases = None) -> None:
    """Check ``fn(z[batch, d_sae], k) -> f``: ReLU of each row's k largest entries, zeros elsewhere."""
    run_check(TOPK, fn, cases)

"""Checks for chapter 02, section 2: the positional QK circuit (2a, the pattern that positions alone
produce) and scoring and classifying heads by position (2b).

The reference answers are utils/circuits/exercises.py; how the cases are chosen is in
``utils.checks.ch02``'s docstring. The notebook reaches these checks through ``utils.checks.ch02``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from utils.checks.ch02_full_circuits import QK_SWAPPED, real_weight_inputs, real_weights, square_sizes
from utils.checks.core import Cases, Exercise, run_check
from utils.checks.toolkit import (
    misconception,
    nan_as_inf,
    randint,
    random_pattern,
    rng,
)
from utils.circuits import exercises as ref
from utils.tensors import causal_mask

CHAPTER = "02"


# --------------------------------------------------------------------------- 2a. the positional QK circuit


def _pos_inputs(seed: int) -> dict:
    g = rng(seed)
    h = randint(g, 1, 3)
    if square_sizes("positional_qk_pattern", seed):
        n = d = randint(g, 5, 8)
    else:
        n, d = randint(g, 4, 9), randint(g, 10, 14)
    k = randint(g, 2, 4)
    return dict(W_pos=torch.randn(n, d, generator=g), W_Q=torch.randn(h, d, k, generator=g) * 2 / math.sqrt(d),
                W_K=torch.randn(h, d, k, generator=g) * 2 / math.sqrt(d))


def _pos_variant(*, swap=False, transpose_pos=False, scale=True, axis=-1, mask=True):
    def positional_qk_pattern(W_pos, W_Q, W_K):
        P = W_pos.T if transpose_pos else W_pos
        q, k = P @ W_Q, P @ W_K
        scores = (k @ q.transpose(-1, -2)) if swap else (q @ k.transpose(-1, -2))
        if scale:
            scores = scores / math.sqrt(W_Q.shape[-1])
        if mask:
            scores = scores.masked_fill(~causal_mask(scores.shape[-1]), float("-inf"))
        return scores.softmax(axis)

    return positional_qk_pattern


POSITIONAL_QK_PATTERN = Exercise(
    chapter=CHAPTER,
    name="positional_qk_pattern",
    reference=lambda W_pos, W_Q, W_K: ref.positional_qk_pattern(W_pos, W_Q, W_K),
    make_inputs=_pos_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(real_weight_inputs("W_pos", "W_Q", "W_K"),),
    misconceptions=(
        misconception(*QK_SWAPPED, _pos_variant(swap=True)),
        misconception("W_pos transposed", "You used W_pos transposed. W_pos is [n_ctx, d_model]: position i's "
           "embedding is its ROW W_pos[i], so the queries are W_pos @ W_Q.",
           _pos_variant(transpose_pos=True)),
        misconception("missing 1/sqrt(d_head)", "The model divides scores by sqrt(d_head) before the softmax; the "
           "positional pattern must too, or it comes out sharper than anything the model does.",
           _pos_variant(scale=False)),
        misconception("softmax over queries", "Your softmax ran over the QUERY axis. Each query position distributes "
           "its attention over the keys it can see: softmax(dim=-1) after the causal mask.",
           _pos_variant(axis=-2)),
        misconception("no causal mask", "There is no causal mask: query i may only attend to keys j <= i. Set the "
           "scores above the diagonal to -inf before the softmax.",
           _pos_variant(mask=False)),
    ),
)


def positional_qk_pattern(fn, cases: Cases = None) -> None:
    """Check ``fn(W_pos, W_Q, W_K) -> pattern [head, n_ctx, n_ctx]``; the real-model case uses
    attn-only-1l's W_pos, W_Q and W_K."""
    run_check(POSITIONAL_QK_PATTERN, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 2b. positional head scores


def _scores_inputs(seed: int) -> dict:
    g = rng(seed)
    h, n = randint(g, 1, 4), randint(g, 4, 10)
    return dict(pattern=random_pattern(g, h, n))


@lru_cache(maxsize=1)
def _real_positional_pattern() -> torch.Tensor:
    w = real_weights()
    return ref.positional_qk_pattern(w["W_pos"], w["W_Q"], w["W_K"], b_Q=w["b_Q"])


def _scores_variant(*, prev_offset=-1, first_from=1, norm="half", ratio_from=1):
    def positional_head_scores(pattern):
        n = pattern.shape[-1]
        i = torch.arange(n)
        if prev_offset == -1:
            previous = pattern[..., i[1:], i[1:] - 1].mean(-1)
        elif prev_offset == 0:
            previous = pattern[..., i[1:], i[1:]].mean(-1)
        else:
            previous = pattern[..., i[:-1], i[:-1] + 1].mean(-1)
        first = pattern[..., first_from:, 0].mean(-1)
        dist = (i[:, None] - i[None, :]).clamp(min=0).float()
        mean_dist = (pattern * dist).sum(-1)[..., ratio_from:]
        q = i[ratio_from:].float()
        divisor = {"half": q / 2, "full": q, "none": torch.ones_like(q)}[norm]
        return torch.stack([previous, first, (mean_dist / divisor).mean(-1)], -1)

    return positional_head_scores


POSITIONAL_HEAD_SCORES = Exercise(
    chapter=CHAPTER,
    name="positional_head_scores",
    reference=ref.positional_head_scores,
    make_inputs=_scores_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(pattern=_real_positional_pattern()),),
    misconceptions=(
        misconception("diagonal instead of previous token", "Your previous-token score reads the DIAGONAL A[i, i] "
           "(attention to the current token). The previous token of query i is key i - 1: A[i, i - 1], the diagonal "
           "just below the main one (torch.diagonal(A, offset=-1, dim1=-2, dim2=-1)).",
           _scores_variant(prev_offset=0)),
        misconception("previous token above the diagonal", "Your previous-token score reads A[i, i + 1], the NEXT "
           "token, which the causal mask always sets to 0. The previous token is key i - 1: offset=-1.",
           _scores_variant(prev_offset=1)),
        misconception("query 0 in the first-token score", "Your first-token score includes query 0, whose only choice "
           "is key 0 (A[0, 0] = 1 always). Average A[i, 0] over queries i >= 1 only.",
           _scores_variant(first_from=0)),
        misconception("distance divided by i", "Your distance ratio divides by i; a uniform pattern over keys 0..i has "
           "mean distance i / 2, and the ratio compares with that, so divide by i / 2.",
           _scores_variant(norm="full")),
        misconception("distance not normalised", "You returned the raw mean attention distance. Divide each query's "
           "mean distance by i / 2 (a uniform pattern's) before averaging, so that 1 means 'no preference'.",
           _scores_variant(norm="none")),
    ),
)


def positional_head_scores(fn, cases: Cases = None) -> None:
    """Check ``fn(pattern) -> [head, 3]`` (previous-token, first-token, distance ratio); the real-model
    case is attn-only-1l's positional pattern with its query bias."""
    run_check(POSITIONAL_HEAD_SCORES, nan_as_inf(fn), cases)

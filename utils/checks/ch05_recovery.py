"""Checks for chapter 05, exercise 1: did the SAE find the features? (the toy model of chapter 04
and the SAE trained on its hidden layer, ``utils.sae.toy``).

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
from utils.checks.toolkit import rng, unit_columns, unit_rows
from utils.sae import exercises as ref

CHAPTER = "05"


# =========================================================================== 0. recovering known features


def _recovery_inputs(seed: int) -> dict:
    """True directions and an SAE's weights in which every catalogued mistake shows.

    The true directions (columns) and the decoder's rows have lengths far from 1 (so a forgotten
    normalisation changes the answer); some decoder rows point almost exactly AWAY from a true
    feature while its best same-way match is weaker (so an absolute value changes it); the encoder
    columns are the decoder's directions plus strong noise (so reading them changes it).
    """
    g = rng(seed)
    n_true, d_in, d_sae = sizes(g)
    true = torch.randn(d_in, n_true, generator=g) * (0.4 + 1.6 * torch.rand(n_true, generator=g))
    unit = unit_columns(true)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    n_close = n_true // 2
    W_dec[:n_close] = unit[:, :n_close].T + 0.25 * torch.randn(n_close, d_in, generator=g)  # found, same sign
    n_flipped = 3
    W_dec[n_close:n_close + n_flipped] = -unit[:, n_close:n_close + n_flipped].T \
        + 0.1 * torch.randn(n_flipped, d_in, generator=g)  # pointing away: not a match
    W_dec = W_dec * (0.3 + 2.0 * torch.rand(d_sae, 1, generator=g))
    W_enc = W_dec.T + 0.8 * torch.randn(d_in, d_sae, generator=g) * W_dec.norm(dim=1)
    perm = torch.randperm(d_sae, generator=g)  # the SAE's features come in no particular order
    return {"true_directions": true, "W_enc": W_enc[:, perm], "W_dec": W_dec[perm]}


def real_recovery_inputs() -> dict:
    """The chapter's toy model of superposition and the SAE it trains on its hidden layer."""
    from utils.sae.toy import bridge_run

    run = bridge_run()
    return {"true_directions": run["true_directions"], "W_enc": run["resampled"]["W_enc"],
            "W_dec": run["resampled"]["W_dec"]}


def _cosines(true_directions, directions):
    """[n_true, d_sae] cosines of the true directions (columns) with SAE directions (ROWS)."""
    return unit_columns(true_directions).T @ unit_rows(directions).T


FEATURE_RECOVERY = Exercise(
    chapter=CHAPTER,
    name="feature_recovery",
    reference=lambda true_directions, W_enc, W_dec: ref.feature_recovery(true_directions, W_enc, W_dec),
    make_inputs=_recovery_inputs,
    extra_inputs=(real_recovery_inputs,),
    misconceptions=(
        Misconception(
            "dot products, not cosines",
            "Normalise both sets of directions before comparing them: the cosine is t_i . d_j / (||t_i|| ||d_j||). "
            "Raw dot products grow with the lengths of the vectors, so a long decoder row wins whatever its "
            "direction (and the toy model's W columns are not unit length).",
            lambda true_directions, W_enc, W_dec: (true_directions.T @ W_dec.T).max(1).values),
        Misconception(
            "true directions not normalised",
            "Normalise the TRUE directions too: you divided by the decoder rows' norms only, so each score "
            "is scaled by ||t_i|| and is not a cosine (the toy model's feature columns are not unit length).",
            lambda true_directions, W_enc, W_dec: (true_directions.T @ unit_rows(W_dec).T).max(1).values),
        Misconception(
            "decoder not normalised",
            "Normalise the decoder rows too: you divided by the true directions' norms only. A trained SAE "
            "keeps its decoder rows at unit norm, but the function must not assume it.",
            lambda true_directions, W_enc, W_dec: (unit_columns(true_directions).T @ W_dec.T).max(1).values),
        Misconception(
            "best true feature per SAE feature",
            "Take the max over the SAE's features (one score per TRUE feature, shape [n_true]): for each true "
            "feature, is there an SAE feature that points its way? You took, for each SAE feature, its best true "
            "feature, which says whether the SAE's features are real ones, not whether every real one was found.",
            lambda true_directions, W_enc, W_dec: _cosines(true_directions, W_dec).max(0).values),
        Misconception(
            "absolute value",
            "Do not take the absolute value of the cosine: an SAE feature's activation is never negative, so a "
            "decoder row pointing AWAY from a true feature (cosine near -1) cannot write that feature. Take "
            "the max of the signed cosines.",
            lambda true_directions, W_enc, W_dec: _cosines(true_directions, W_dec).abs().max(1).values),
        Misconception(
            "encoder columns instead of decoder rows",
            "Compare with the DECODER's rows W_dec[j], the directions the SAE writes its features along; "
            "you used the encoder's columns W_enc[:, j], which say what each feature reads (they are tuned to "
            "ignore interference, so they point elsewhere).",
            lambda true_directions, W_enc, W_dec: _cosines(true_directions, W_enc.T).max(1).values),
        Misconception(
            "norms over the wrong axis",
            "The true features are the COLUMNS of true_directions [d_in, n_true] (norm over dim=0) and the SAE's "
            "are the ROWS of W_dec [d_sae, d_in] (norm over dim=1). You took both norms over the other axis, so "
            "the results are not cosines.",
            lambda true_directions, W_enc, W_dec: (
                (true_directions / true_directions.norm(dim=1, keepdim=True)).T
                @ (W_dec / W_dec.norm(dim=0, keepdim=True)).T).max(1).values),
        Misconception(
            "decoder normalised over its columns",
            "W_dec [d_sae, d_in] holds one feature per ROW: normalise over dim=1 (W_dec.norm(dim=1, "
            "keepdim=True)). You took the norms over dim=0, as for true_directions, whose features are columns.",
            lambda true_directions, W_enc, W_dec: (
                unit_columns(true_directions).T @ (W_dec / W_dec.norm(dim=0, keepdim=True)).T).max(1).values),
        Misconception(
            "index of the best feature",
            "Return the best cosine itself (.max(...).values), not the index of the SAE feature that achieves "
            "it (.indices / argmax).",
            lambda true_directions, W_enc, W_dec: _cosines(true_directions, W_dec).max(1).indices),
    ),
)


def feature_recovery(fn, cases: Cases = None) -> None:
    """Check ``fn(true_directions[d_in, n_true], W_enc[d_in, d_sae], W_dec[d_sae, d_in]) -> [n_true]`` best cosines."""
    run_check(FEATURE_RECOVERY, fn, cases)

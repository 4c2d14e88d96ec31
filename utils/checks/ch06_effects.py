"""Checks for chapter 06, exercises 4 and 5: ablating one feature and steering (clamping) it.

Layout as in utils.sae and utils.features (W_dec's ROW i is feature i), and why some exercises
start with square cases, in ``utils.checks.ch06``'s docstring; the reference answers are
utils/features/exercises.py. The notebook reaches these checks through ``utils.checks.ch06``.
"""
from __future__ import annotations

import torch

from utils.checks.core import Cases, Exercise, Misconception, run_check
from utils.checks.toolkit import randint, rng, unit_rows
from utils.features import exercises as ref

CHAPTER = "06"


# =========================================================================== 5-6. ablation and steering


def edit_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, d_in, d_sae = randint(g, 9, 12), randint(g, 4, 7), randint(g, 14, 18)
    b_dec = torch.randn(d_in, generator=g)
    W_dec = unit_rows(torch.randn(d_sae, d_in, generator=g))  # [d_sae, d_in], unit rows
    W_enc = W_dec.T + 0.5 * torch.randn(d_in, d_sae, generator=g)  # [d_in, d_sae], not W_dec.T
    feature = randint(g, 0, d_sae - 1)
    x = b_dec + 1.5 * torch.randn(batch, d_in, generator=g)
    b_enc = 0.3 * torch.randn(d_sae, generator=g)
    # the feature fires on most rows but not all, so the ReLU matters
    pre = (x - b_dec) @ W_enc[:, feature]
    b_enc[feature] = -float(pre.quantile(0.3))
    return {"x": x, "W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "feature": feature}


def _f(x, W_enc, b_enc, b_dec, feature):
    return ref.feature_activation(x, W_enc, b_enc, b_dec, feature)[:, None]


def _reconstruction(x, W_enc, b_enc, W_dec, b_dec):
    return torch.relu((x - b_dec) @ W_enc + b_enc) @ W_dec + b_dec


ABLATE = Exercise(
    chapter=CHAPTER,
    name="ablate_feature",
    reference=ref.ablate_feature,
    make_inputs=edit_inputs,
    misconceptions=(
        Misconception(
            "whole reconstruction subtracted",
            "Remove ONE feature's term, f_i(x) W_dec[i]; you subtracted the SAE's whole reconstruction, which "
            "deletes every feature at once (and leaves only the reconstruction error).",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - _reconstruction(x, W_enc, b_enc, W_dec, b_dec)),
        Misconception(
            "returned the reconstruction without the feature",
            "Edit x itself, not the SAE's reconstruction of it: x - f_i W_dec[i] keeps the part of x the SAE "
            "fails to reconstruct, so the only change the model sees is the feature's.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: _reconstruction(x, W_enc, b_enc, W_dec, b_dec)
            - _f(x, W_enc, b_enc, b_dec, feature) * W_dec[feature]),
        Misconception(
            "encoder column instead of decoder row",
            "A feature WRITES along its decoder row W_dec[i]; the encoder column W_enc[:, i] is the direction it "
            "READS from, and in general points elsewhere.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - _f(x, W_enc, b_enc, b_dec, feature)
            * W_enc[:, feature]),
        Misconception(
            "not scaled by the activation",
            "Subtract f_i(x) W_dec[i], the feature's contribution on EACH input: where it is off, nothing "
            "should change, and where it is strong, more is removed.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - W_dec[feature]),
        Misconception(
            "pre-activation instead of activation",
            "The feature's contribution uses its activation f_i = ReLU(...), not the pre-activation: where the "
            "pre-activation is negative, the feature is off and contributes nothing.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - (((x - b_dec) @ W_enc[:, feature]
                                                               + b_enc[feature])[:, None] * W_dec[feature])),
        Misconception(
            "b_dec not subtracted",
            "Encode x - b_dec, as the SAE does: f_i = ReLU((x - b_dec) @ W_enc[:, i] + b_enc[i]).",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature: x - _f(x, W_enc, b_enc, torch.zeros_like(b_dec), feature)
            * W_dec[feature]),
    ),
)


def ablate_feature(fn, cases: Cases = None) -> None:
    """Check ``fn(x, W_enc, b_enc, W_dec, b_dec, feature) -> x without feature's term``."""
    run_check(ABLATE, fn, cases)


def _steer_inputs(seed: int) -> dict:
    inputs = edit_inputs(seed)
    inputs["value"] = 2.0 + 6.0 * float(torch.rand((), generator=rng(seed + 1)))
    return inputs


STEER = Exercise(
    chapter=CHAPTER,
    name="steer_feature",
    reference=ref.steer_feature,
    make_inputs=_steer_inputs,
    misconceptions=(
        Misconception(
            "encoder column instead of decoder row",
            "Steer along the direction the feature WRITES: its decoder row W_dec[i]. The encoder column "
            "W_enc[:, i] is what the feature reads, not what downstream layers see when it fires.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature, value: x + (value - _f(x, W_enc, b_enc, b_dec, feature))
            * W_enc[:, feature]),
        Misconception(
            "added instead of clamped",
            "Clamping sets the feature TO the value: remove its current term and add value * W_dec[i], i.e. "
            "x + (value - f_i(x)) W_dec[i]. Adding value * W_dec[i] on top of what is there overshoots "
            "wherever the feature was already on.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature, value: x + value * W_dec[feature]),
        Misconception(
            "replaced x by the feature",
            "Keep the rest of x: only the feature's own term changes. Returning value * W_dec[i] (+ b_dec) "
            "throws away every other feature.",
            lambda x, W_enc, b_enc, W_dec, b_dec, feature, value: (value * W_dec[feature] + b_dec).expand_as(x)),
    ),
)


def steer_feature(fn, cases: Cases = None) -> None:
    """Check ``fn(x, W_enc, b_enc, W_dec, b_dec, feature, value) -> x with the feature clamped to value``."""
    run_check(STEER, fn, cases)

"""Checks for chapter 07, exercise 1: the TopK transcoder's forward pass.

Layout as in utils.attribution (and SAELens): W_enc [d_in, d_trans], W_dec [d_trans, d_out]. The
first case has d_in = d_out, so subtracting b_dec from the input (the SAE habit) still runs and is
named; the other cases are rectangular, where it fails on shape. Every case has rows with fewer
than k positive pre-activations, where leaving out the ReLU shows. The notebook reaches these
checks through ``utils.checks.ch07``.
"""
from __future__ import annotations

import torch

from utils.attribution import exercises as ref
from utils.checks.core import Cases, Exercise, Misconception, square_case
from utils.checks.toolkit import describe_parts, randint, rng, run_described, unit_rows

CHAPTER = "07"


def transcoder_inputs(seed: int) -> dict:
    g = rng(seed)
    d_in = randint(g, 5, 7)
    d_out = d_in if square_case("transcoder_forward", seed) else d_in + randint(g, 2, 4)
    d_trans, batch, k = randint(g, 12, 16), randint(g, 8, 10), randint(g, 2, 3)
    x = torch.randn(batch, d_in, generator=g)
    W_enc = torch.randn(d_in, d_trans, generator=g) / d_in ** 0.5
    b_enc = 0.3 * torch.randn(d_trans, generator=g) - 0.6  # most pre-activations negative
    x[0] *= 0.05  # a row where (nearly) nothing is positive: fewer than k features can fire
    x[1] *= 4.0  # a row where many are: more than k would fire without TopK
    k = max(2, min(k, int(((x[1] @ W_enc + b_enc) > 0).sum()) - 1))
    return {"x": x, "W_enc": W_enc, "b_enc": b_enc, "W_dec": unit_rows(torch.randn(d_trans, d_out, generator=g)),
            "b_dec": torch.randn(d_out, generator=g), "k": k}


def _forward(x, W_enc, b_enc, W_dec, b_dec, k, *, relu=True, topk_dim=-1, subtract=False, decoder_bias=True):
    """transcoder_forward with one step changed (the catalogued mistakes)."""
    pre = (x - b_dec if subtract else x) @ W_enc + b_enc
    acts = torch.relu(pre) if relu else pre
    if topk_dim is None:
        f = acts
    else:
        values, index = acts.topk(k, dim=topk_dim)
        f = torch.zeros_like(acts).scatter(topk_dim, index, values)
    return (f @ W_dec + b_dec if decoder_bias else f @ W_dec), f


TRANSCODER = Exercise(
    chapter=CHAPTER,
    name="transcoder_forward",
    reference=ref.transcoder_forward,
    make_inputs=transcoder_inputs,
    misconceptions=(
        Misconception(
            "no TopK",
            "Keep only the k largest activations of each row and set the others to 0: with ReLU alone every "
            "positive pre-activation stays, and L0 is no longer k.",
            lambda **kw: _forward(**kw, topk_dim=None)),
        Misconception(
            "ReLU left out",
            "Apply the ReLU before (or after) choosing the top k: where fewer than k pre-activations are "
            "positive, TopK alone keeps negative values, and a feature's activation is never negative.",
            lambda **kw: _forward(**kw, relu=False)),
        Misconception(
            "TopK over the batch",
            "Choose the k largest features of EACH token (topk over the last axis, d_trans), not the k tokens "
            "where each feature is largest (the batch axis).",
            lambda **kw: _forward(**kw, topk_dim=0)),
        Misconception(
            "b_dec subtracted from the input",
            "A transcoder is not an SAE: b_dec belongs to the OUTPUT space (the MLP's output), and the input is "
            "another vector (the MLP's input). Encode x itself: f = TopK(ReLU(x @ W_enc + b_enc)).",
            lambda **kw: _forward(**kw, subtract=True)),
        Misconception(
            "decoder bias left out",
            "The prediction is f @ W_dec + b_dec: b_dec carries the MLP's average output, which no feature "
            "has to explain.",
            lambda **kw: _forward(**kw, decoder_bias=False)),
    ),
)


def transcoder_forward(fn, cases: Cases = None) -> None:
    """Check ``fn(x, W_enc, b_enc, W_dec, b_dec, k) -> (y_hat, f)``."""
    run_described(TRANSCODER, fn, cases, describe_parts(("y_hat", "f"), TRANSCODER.rtol, TRANSCODER.atol))

"""Checks for chapter 05, exercise 7: resampling dead features (``utils.sae.resampling``), with
Adam's moments as two dicts keyed 'W_enc', 'b_enc', 'W_dec'; and exercise 7b: the probability of
sending a dead feature to each input (proportional to its loss squared).

The reference answers are utils.sae's own functions; the layout, and why the random sizes differ, are in
``utils.checks.ch05``'s docstring. The notebook reaches these checks through ``utils.checks.ch05``.
"""
from __future__ import annotations

import math

import torch

from utils.checks.ch05_inputs import sizes
from utils.checks.core import (
    Cases,
    CheckFailure,
    Exercise,
    Misconception,
    run_check,
)
from utils.checks.toolkit import describe_parts, randint, rng, run_described, unit_rows
from utils.sae import exercises as ref
from utils.sae.resampling import ENCODER_NORM_SCALE

CHAPTER = "05"


# =========================================================================== 6. resampling

STATE_KEYS = ("W_enc", "b_enc", "W_dec")
RESAMPLE_PARTS = ("W_enc", "b_enc", "W_dec") + tuple(f"exp_avg[{k!r}]" for k in STATE_KEYS) \
    + tuple(f"exp_avg_sq[{k!r}]" for k in STATE_KEYS)


def _resample_inputs(seed: int) -> dict:
    g = rng(seed)
    _, d_in, d_sae = sizes(g)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=g)[:randint(g, 2, 5)]] = True
    # Dead features' encoder columns are short (they drifted until they stopped firing): averaging the
    # norms over all columns instead of the live ones gives a visibly different scale.
    scale = torch.where(dead, 0.2, 1.0 + torch.rand(d_sae, generator=g))
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in)}
    inputs = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) * scale / math.sqrt(d_in),
        "b_enc": 0.3 * torch.randn(d_sae, generator=g),
        "W_dec": unit_rows(torch.randn(d_sae, d_in, generator=g)),
        "b_dec": 1.5 * torch.randn(d_in, generator=g),
        "dead": dead,
        "replacement_inputs": 2 * torch.randn(int(dead.sum()), d_in, generator=g),
    }
    for k in STATE_KEYS:
        inputs[f"exp_avg_{k}"] = 0.01 * torch.randn(shapes[k], generator=g)
    for k in STATE_KEYS:
        inputs[f"exp_avg_sq_{k}"] = 1e-4 * torch.rand(shapes[k], generator=g) + 1e-6
    return inputs


def _resample_variant(*, subtract_b_dec=True, normalize=True, encoder_scale="live", reset_b_enc=True,
                      reset_m=True, reset_v=True, reset_everything=False, reset_keys=STATE_KEYS):
    """A (possibly wrong) resampling on the check's flat inputs, returning the flat 9-tuple."""
    def run(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, **state):
        directions = replacement_inputs - (b_dec if subtract_b_dec else 0)
        unit = directions / directions.norm(dim=-1, keepdim=True)
        if encoder_scale == "live":
            scale = ENCODER_NORM_SCALE * W_enc[:, ~dead].norm(dim=0).mean()
        elif encoder_scale == "all":
            scale = ENCODER_NORM_SCALE * W_enc.norm(dim=0).mean()
        else:
            scale = 1.0
        W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
        W_enc[:, dead] = unit.T * scale
        if reset_b_enc:
            b_enc[dead] = 0.0
        W_dec[dead] = unit if normalize else directions
        out = [W_enc, b_enc, W_dec]
        for prefix, reset in (("exp_avg_", reset_m), ("exp_avg_sq_", reset_v)):
            for k in STATE_KEYS:
                s = state[prefix + k].clone()
                if reset_everything:
                    s.zero_()
                elif reset and k in reset_keys:
                    if k == "W_enc":
                        s[:, dead] = 0.0
                    else:
                        s[dead] = 0.0
                out.append(s)
        return tuple(out)
    return run


def _resample_reference(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, **state):
    m = {k: state[f"exp_avg_{k}"] for k in STATE_KEYS}
    v = {k: state[f"exp_avg_sq_{k}"] for k in STATE_KEYS}
    W_enc, b_enc, W_dec, m, v = ref.resample_dead_features(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, m, v)
    return (W_enc, b_enc, W_dec) + tuple(m[k] for k in STATE_KEYS) + tuple(v[k] for k in STATE_KEYS)


def _call_resample(fn, inputs: dict):
    """The student's convention: Adam's moments as two dicts; flattened back for comparison."""
    exp_avg = {k: inputs[f"exp_avg_{k}"] for k in STATE_KEYS}
    exp_avg_sq = {k: inputs[f"exp_avg_sq_{k}"] for k in STATE_KEYS}
    out = fn(W_enc=inputs["W_enc"], b_enc=inputs["b_enc"], W_dec=inputs["W_dec"], b_dec=inputs["b_dec"],
             dead=inputs["dead"], replacement_inputs=inputs["replacement_inputs"],
             exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    shape = "return (W_enc, b_enc, W_dec, exp_avg, exp_avg_sq), the last two dicts with keys 'W_enc', 'b_enc', 'W_dec'"
    if not isinstance(out, (tuple, list)) or len(out) != 5:
        raise CheckFailure(f"resample_dead_features: {shape}; you returned "
                           f"{'None' if out is None else type(out).__name__}.")
    flat = list(out[:3])
    for part, name in ((out[3], "exp_avg"), (out[4], "exp_avg_sq")):
        if not isinstance(part, dict) or not all(k in part for k in STATE_KEYS):
            raise CheckFailure(f"resample_dead_features: {shape}; your {name} is not such a dict.")
        flat += [part[k] for k in STATE_KEYS]
    return tuple(flat)


RESAMPLE = Exercise(
    chapter=CHAPTER,
    name="resample_dead_features",
    reference=_resample_reference,
    make_inputs=_resample_inputs,
    misconceptions=(
        Misconception(
            "Adam state untouched",
            "Reset Adam's state for the resampled features: zero exp_avg and exp_avg_sq at their encoder columns, "
            "encoder-bias entries and decoder rows. Otherwise the old feature's momentum keeps pushing the "
            "new one for the next hundreds of steps (and its stale second moment shrinks or inflates its "
            "steps).",
            _resample_variant(reset_m=False, reset_v=False)),
        Misconception(
            "all Adam state reset",
            "Zero Adam's state only at the resampled features' columns, entries and rows: you zeroed all of it, "
            "which throws away the live features' momentum and makes their next steps too large (Adam divides "
            "by a second moment that restarts from 0).",
            _resample_variant(reset_everything=True)),
        Misconception(
            "only exp_avg reset",
            "Zero BOTH of Adam's moments (exp_avg and exp_avg_sq) for the resampled features; you left the second "
            "moment exp_avg_sq untouched.",
            _resample_variant(reset_v=False)),
        Misconception(
            "only exp_avg_sq reset",
            "Zero BOTH of Adam's moments (exp_avg and exp_avg_sq) for the resampled features; you left the first "
            "moment exp_avg (the momentum) untouched.",
            _resample_variant(reset_m=False)),
        Misconception(
            "decoder's Adam state not reset",
            "Reset Adam's state for the resampled features' DECODER ROWS too: exp_avg['W_dec'][dead] and "
            "exp_avg_sq['W_dec'][dead] = 0. You reset the encoder's state only, so the old feature's "
            "momentum keeps moving its new decoder direction.",
            _resample_variant(reset_keys=("W_enc", "b_enc"))),
        Misconception(
            "encoder's Adam state not reset",
            "Reset Adam's state for the resampled features' ENCODER COLUMNS and biases too: exp_avg['W_enc'][:, dead], "
            "exp_avg['b_enc'][dead] (and the same in exp_avg_sq) = 0. You reset the decoder's state only.",
            _resample_variant(reset_keys=("W_dec",))),
        Misconception(
            "encoder bias's Adam state not reset",
            "Reset Adam's state for the resampled features' encoder BIAS entries too: exp_avg['b_enc'][dead] and "
            "exp_avg_sq['b_enc'][dead] = 0.",
            _resample_variant(reset_keys=("W_enc", "W_dec"))),
        Misconception(
            "b_dec not subtracted",
            "The new direction is the input relative to the dictionary's origin: replacement input minus "
            "b_dec, then normalised. You used the raw input.",
            _resample_variant(subtract_b_dec=False)),
        Misconception(
            "decoder row not normalised",
            "Normalise the new decoder row to unit norm (like every decoder row).",
            _resample_variant(normalize=False)),
        Misconception(
            "encoder column at unit norm",
            "The new encoder column is the unit direction times 0.2 x the mean norm of the LIVE features' encoder "
            "columns, so the feature starts firing only weakly; you used the unit direction itself.",
            _resample_variant(encoder_scale="unit")),
        Misconception(
            "encoder norm over all features",
            "Take the mean encoder-column norm over the LIVE features only (~dead): the dead features' columns are "
            "not representative (and are about to be replaced).",
            _resample_variant(encoder_scale="all")),
        Misconception(
            "b_enc not reset",
            "Set the resampled features' encoder bias to 0: the old bias (often very negative for a dead "
            "feature) would keep the new feature from firing.",
            _resample_variant(reset_b_enc=False)),
    ),
)


def resample_dead_features(fn, cases: Cases = None) -> None:
    """Check ``fn(W_enc, b_enc, W_dec, b_dec, dead, replacement_inputs, exp_avg, exp_avg_sq)``."""
    run_described(RESAMPLE, fn, cases, describe_parts(RESAMPLE_PARTS, RESAMPLE.rtol, RESAMPLE.atol),
                   call=_call_resample)


# =========================================================================== 7b. where dead features go


def _probability_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, d_in, d_sae = sizes(g)
    x = 1.0 + torch.randn(batch, d_in, generator=g)
    x[: batch // 3] *= 3.0  # a few inputs far from the rest: the squared loss must single them out
    return {
        "x": x,
        "W_enc": torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in),
        "b_enc": -0.2 + 0.1 * torch.randn(d_sae, generator=g),  # some features off on some inputs
        "W_dec": unit_rows(torch.randn(d_sae, d_in, generator=g)),
        "b_dec": 0.5 * torch.randn(d_in, generator=g),
        # the L1 term is a sizeable part of each loss, so dropping it changes the draw
        "l1_coeff": 0.5 + 1.5 * float(torch.rand((), generator=g)),
    }


def perfect_reconstruction_inputs() -> dict:
    """Every input reconstructed exactly by an SAE that fires nothing: every loss is 0."""
    inputs = _probability_inputs(9_999)
    d_in, d_sae = inputs["W_enc"].shape
    inputs["W_enc"] = torch.zeros(d_in, d_sae)
    inputs["b_enc"] = -torch.ones(d_sae)
    inputs["x"] = inputs["b_dec"].expand(len(inputs["x"]), d_in).clone()
    return inputs


def _losses(x, W_enc, b_enc, W_dec, b_dec, l1_coeff, *, squared_error=True, per_dim=False, l1=True):
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    error = (x - (f @ W_dec + b_dec)).pow(2)
    error = error.mean(-1) if per_dim else error.sum(-1)
    if not squared_error:
        error = error.sqrt()
    return error + (l1_coeff * f.sum(-1) if l1 else 0)


def _normalised(weights):
    return weights / weights.sum()


RESAMPLE_PROBABILITIES = Exercise(
    chapter=CHAPTER,
    name="resampling_probabilities",
    reference=ref.resampling_probabilities,
    make_inputs=_probability_inputs,
    extra_inputs=(perfect_reconstruction_inputs,),
    misconceptions=(
        Misconception(
            "loss not squared",
            "Draw each input with probability proportional to the SQUARE of its loss: squaring sends dead "
            "features much more often to the inputs the SAE handles worst. Yours is proportional to the loss.",
            lambda **i: _normalised(_losses(**i))),
        Misconception(
            "L1 term dropped",
            "Each input's loss is the whole SAE loss, ||x - x_hat||^2 + l1_coeff * ||f||_1: you used the "
            "reconstruction error alone.",
            lambda **i: _normalised(_losses(**i, l1=False).pow(2))),
        Misconception(
            "mean over d_in",
            "Sum the squared error over the d_in dimensions (as the training loss does), do not average it: the "
            "mean shrinks the error next to the L1 term and changes the draw.",
            lambda **i: _normalised(_losses(**i, per_dim=True).pow(2))),
        Misconception(
            "norm instead of squared norm",
            "The reconstruction term is the SQUARED norm ||x - x_hat||^2 (then the whole loss is squared again "
            "for the weighting); you used the norm ||x - x_hat||.",
            lambda **i: _normalised(_losses(**i, squared_error=False).pow(2))),
        Misconception(
            "not normalised",
            "Return probabilities: divide the squared losses by their sum, so they add up to 1.",
            lambda **i: _losses(**i).pow(2)),
        Misconception(
            "softmax",
            "The weights are proportional to loss squared, divided by their sum; a softmax exponentiates the "
            "losses and hands almost all the probability to the single worst input.",
            lambda **i: torch.softmax(_losses(**i), dim=0)),
        Misconception(
            "one loss for the whole batch",
            "Compute one loss PER INPUT (sum over d_in and over features, no mean over the batch): with the "
            "batch's mean loss every input gets the same probability.",
            lambda **i: torch.full((len(i["x"]),), 1 / len(i["x"]))),
    ),
)


def _explain_zero_losses(fn):
    """When every loss is 0, 0 / 0 gives NaN: say what to return instead."""
    if not callable(fn):
        return fn

    def run(**inputs):
        out = fn(**inputs)
        if isinstance(out, torch.Tensor) and not torch.isfinite(out).all() \
                and bool((_losses(**inputs) == 0).all()):
            raise CheckFailure("resampling_probabilities: when every input's loss is 0 (the SAE reconstructs "
                               "all of them perfectly), the weights sum to 0 and dividing gives NaN: return the "
                               "uniform distribution, 1/n for each input, instead.")
        return out
    return run


def resampling_probabilities(fn, cases: Cases = None) -> None:
    """Check ``fn(x, W_enc, b_enc, W_dec, b_dec, l1_coeff) -> p[n]``: p ∝ (each input's SAE loss)²."""
    run_check(RESAMPLE_PROBABILITIES, _explain_zero_losses(fn), cases)

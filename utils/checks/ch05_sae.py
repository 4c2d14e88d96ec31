"""Checks for chapter 05, exercises 2-5: the SAE itself (the forward pass, the loss, keeping the
decoder rows at unit norm, the geometric median that initialises b_dec).

The reference answers are utils.sae's own functions; the layout, and why the random sizes differ, are in
``utils.checks.ch05``'s docstring. The notebook reaches these checks through ``utils.checks.ch05``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

from utils.checks.ch05_inputs import scalar, sizes, sparse_activations, uniform
from utils.checks.core import (
    Cases,
    Exercise,
    Misconception,
    describe_difference,
    run_check,
    withholding_values,
)
from utils.checks.toolkit import describe_parts, randint, rng, run_described, unit_rows
from utils.sae import exercises as ref
from utils.sae.model import geometric_median as ref_geometric_median

CHAPTER = "05"


# =========================================================================== 1. the forward pass


def _forward_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, d_in, d_sae = sizes(g)
    b_dec = 1.5 * torch.randn(d_in, generator=g)  # far from 0: forgetting it changes everything
    return {
        "x": b_dec + torch.randn(batch, d_in, generator=g),
        "W_enc": 0.6 * torch.randn(d_in, d_sae, generator=g),
        "b_enc": 0.4 * torch.randn(d_sae, generator=g),  # both signs, so the ReLU matters
        "W_dec": unit_rows(torch.randn(d_sae, d_in, generator=g)),
        "b_dec": b_dec,
    }


def _forward(x, W_enc, b_enc, W_dec, b_dec, *, shift=-1.0, add_back=True, relu=True, encoder=None,
             bias_after_relu=False, relu_output=False):
    z = (x + shift * b_dec) @ (W_enc if encoder is None else encoder)
    f = (torch.relu(z) + b_enc) if bias_after_relu else z + b_enc
    if relu and not bias_after_relu:
        f = torch.relu(f)
    x_hat = f @ W_dec + (b_dec if add_back else 0)
    return f, (torch.relu(x_hat) if relu_output else x_hat)


SAE_FORWARD = Exercise(
    chapter=CHAPTER,
    name="sae_forward",
    reference=lambda x, W_enc, b_enc, W_dec, b_dec: ref.sae_forward(x, W_enc, b_enc, W_dec, b_dec),
    make_inputs=_forward_inputs,
    misconceptions=(
        Misconception(
            "b_dec not subtracted",
            "Subtract b_dec from x BEFORE encoding: f = ReLU((x - b_dec) @ W_enc + b_enc). b_dec is the origin of "
            "the dictionary (the geometric median of the data); the encoder should see each activation "
            "relative to it, exactly as the decoder adds it back.",
            lambda x, W_enc, b_enc, W_dec, b_dec: _forward(x, W_enc, b_enc, W_dec, b_dec, shift=0.0)),
        Misconception(
            "b_dec added before encoding",
            "Sign error: the encoder reads x - b_dec, not x + b_dec.",
            lambda x, W_enc, b_enc, W_dec, b_dec: _forward(x, W_enc, b_enc, W_dec, b_dec, shift=1.0)),
        Misconception(
            "b_dec not added back",
            "The reconstruction is x_hat = f @ W_dec + b_dec: add b_dec back after decoding, or every "
            "reconstruction is shifted by -b_dec.",
            lambda x, W_enc, b_enc, W_dec, b_dec: _forward(x, W_enc, b_enc, W_dec, b_dec, add_back=False)),
        Misconception(
            "b_dec ignored",
            "b_dec appears twice: subtracted from x before the encoder, f = ReLU((x - b_dec) @ W_enc + b_enc), "
            "and added after the decoder, x_hat = f @ W_dec + b_dec. You left it out of both.",
            lambda x, W_enc, b_enc, W_dec, b_dec: _forward(x, W_enc, b_enc, W_dec, b_dec, shift=0.0, add_back=False)),
        Misconception(
            "missing ReLU",
            "The feature activations are f = ReLU((x - b_dec) @ W_enc + b_enc): without the ReLU they can be "
            "negative, and a feature could never be 'off'.",
            lambda x, W_enc, b_enc, W_dec, b_dec: _forward(x, W_enc, b_enc, W_dec, b_dec, relu=False)),
        Misconception(
            "b_enc after the ReLU",
            "Add b_enc INSIDE the ReLU: f = ReLU((x - b_dec) @ W_enc + b_enc). A negative b_enc is the threshold "
            "a feature's input has to clear before it fires.",
            lambda x, W_enc, b_enc, W_dec, b_dec: _forward(x, W_enc, b_enc, W_dec, b_dec, bias_after_relu=True)),
        Misconception(
            "encoded with the decoder",
            "Encode with W_enc ([d_in, d_sae], so (x - b_dec) @ W_enc), not with the decoder's transpose: the two "
            "are separate parameters (tied weights would force each feature to be read from the direction it "
            "writes to).",
            lambda x, W_enc, b_enc, W_dec, b_dec: _forward(x, W_enc, b_enc, W_dec, b_dec, encoder=W_dec.T)),
        Misconception(
            "ReLU on the reconstruction",
            "Only the feature activations go through a ReLU; the reconstruction x_hat = f @ W_dec + b_dec is "
            "linear in f (activations can be negative).",
            lambda x, W_enc, b_enc, W_dec, b_dec: _forward(x, W_enc, b_enc, W_dec, b_dec, relu_output=True)),
    ),
)


def sae_forward(fn, cases: Cases = None) -> None:
    """Check ``fn(x, W_enc, b_enc, W_dec, b_dec) -> (f, x_hat)``."""
    run_described(SAE_FORWARD, fn, cases, describe_parts(("f", "x_hat"), SAE_FORWARD.rtol, SAE_FORWARD.atol))


# =========================================================================== 2. the loss


def _loss_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, d_in, d_sae = sizes(g)
    x = 2 * torch.randn(batch, d_in, generator=g)
    return {
        "x": x,
        "x_hat": x + 0.7 * torch.randn(batch, d_in, generator=g),
        "f": sparse_activations(g, batch, d_sae),
        "W_dec": unit_rows(torch.randn(d_sae, d_in, generator=g)),  # unit rows, as in training
        "l1_coeff": uniform(g, 0.3, 3.0),
    }


def _sq(x, x_hat):
    return (x - x_hat).pow(2)


SAE_LOSS = Exercise(
    chapter=CHAPTER,
    name="sae_loss",
    reference=lambda x, x_hat, f, W_dec, l1_coeff: ref.sae_loss(x, x_hat, f, W_dec, l1_coeff),
    make_inputs=_loss_inputs,
    misconceptions=(
        Misconception(
            "L1 on the decoder weights",
            "The sparsity penalty is on the feature ACTIVATIONS f (λ ||f||₁ per input, averaged over the "
            "batch), not on the decoder weights: we want few features active per input, not a dictionary "
            "with small or sparse weights (its rows have unit norm anyway).",
            lambda x, x_hat, f, W_dec, l1_coeff: _sq(x, x_hat).sum(-1).mean() + l1_coeff * W_dec.abs().sum()),
        Misconception(
            "MSE averaged over d_in",
            "Sum the squared error over the d_in components of each activation (||x - x_hat||²) and average "
            "over the batch only. Your mean over d_in divides the reconstruction term by d_in, so λ "
            "effectively becomes d_in times larger.",
            lambda x, x_hat, f, W_dec, l1_coeff: _sq(x, x_hat).mean() + l1_coeff * f.sum(-1).mean()),
        Misconception(
            "MSE summed over the batch",
            "Average the reconstruction error over the batch (it is an expectation over inputs); you summed "
            "it, so its weight against the L1 term grows with the batch size.",
            lambda x, x_hat, f, W_dec, l1_coeff: _sq(x, x_hat).sum() + l1_coeff * f.sum(-1).mean()),
        Misconception(
            "L1 summed over the batch",
            "Average the L1 penalty over the batch, like the reconstruction error; you summed it over the "
            "batch, so its weight grows with the batch size.",
            lambda x, x_hat, f, W_dec, l1_coeff: _sq(x, x_hat).sum(-1).mean() + l1_coeff * f.abs().sum()),
        Misconception(
            "everything summed over the batch",
            "Average both terms over the batch instead of summing them: with sums the loss and its gradient "
            "scale with the batch size, and the learning rate would have to follow.",
            lambda x, x_hat, f, W_dec, l1_coeff: _sq(x, x_hat).sum() + l1_coeff * f.abs().sum()),
        Misconception(
            "L1 averaged over features",
            "The L1 norm SUMS |f_i| over the d_sae features of an input; you averaged over features too, "
            "which divides λ by d_sae.",
            lambda x, x_hat, f, W_dec, l1_coeff: _sq(x, x_hat).sum(-1).mean() + l1_coeff * f.abs().mean()),
        Misconception(
            "error not squared",
            "The reconstruction term is the SQUARED norm ||x - x_hat||²; you used the norm itself.",
            lambda x, x_hat, f, W_dec, l1_coeff: (x - x_hat).norm(dim=-1).mean() + l1_coeff * f.sum(-1).mean()),
        Misconception(
            "squared penalty",
            "Use the L1 norm Σ|f_i| of the activations: an L2 penalty Σ f_i² barely punishes small "
            "activations, so it does not push features to exactly zero.",
            lambda x, x_hat, f, W_dec, l1_coeff: _sq(x, x_hat).sum(-1).mean() + l1_coeff * f.pow(2).sum(-1).mean()),
        Misconception(
            "λ on the wrong term",
            "λ multiplies the sparsity penalty: L = ||x - x_hat||² + λ ||f||₁. You weighted the "
            "reconstruction error instead.",
            lambda x, x_hat, f, W_dec, l1_coeff: l1_coeff * _sq(x, x_hat).sum(-1).mean() + f.sum(-1).mean()),
    ),
)


def sae_loss(fn, cases: Cases = None) -> None:
    """Check ``fn(x, x_hat, f, W_dec, l1_coeff) -> scalar`` = mean ||x - x_hat||² + λ mean ||f||₁."""
    run_check(SAE_LOSS, scalar(fn), cases)


# =========================================================================== 3. the decoder constraint


def _decoder_inputs(seed: int) -> dict:
    g = rng(seed)
    _, d_in, d_sae = sizes(g)
    W = torch.randn(d_sae, d_in, generator=g) * (0.3 + 1.7 * torch.rand(d_sae, 1, generator=g))
    return {"W_dec": W}  # rows of many lengths


NORMALIZE_DECODER = Exercise(
    chapter=CHAPTER,
    name="normalize_decoder",
    reference=lambda W_dec: ref.normalize_decoder(W_dec),
    make_inputs=_decoder_inputs,
    misconceptions=(
        Misconception(
            "columns normalised",
            "Normalise the ROWS of W_dec (W_dec[i] is feature i's direction, norm over dim=1); you "
            "normalised its columns (dim=0).",
            lambda W_dec: W_dec / W_dec.norm(dim=0, keepdim=True)),
        Misconception(
            "decoder not normalised",
            "You returned W_dec unchanged: every row must be rescaled to norm 1, otherwise the L1 penalty "
            "can be dodged by shrinking f and growing the row.",
            lambda W_dec: W_dec),
        Misconception(
            "whole matrix normalised",
            "Normalise each row separately; you divided the whole matrix by one number (its Frobenius norm).",
            lambda W_dec: W_dec / W_dec.norm()),
        Misconception(
            "divided by the squared norm",
            "Divide each row by its norm ||W_dec[i]||, not by its squared norm.",
            lambda W_dec: W_dec / W_dec.pow(2).sum(1, keepdim=True)),
        Misconception(
            "L1 norm of the row",
            "Use the Euclidean (L2) norm of each row, ||d_i|| = sqrt(Σ_j d_ij²); you divided by the sum of "
            "absolute values.",
            lambda W_dec: W_dec / W_dec.abs().sum(1, keepdim=True)),
    ),
)


def normalize_decoder(fn, cases: Cases = None) -> None:
    """Check ``fn(W_dec[d_sae, d_in]) -> W_dec`` with every row at unit norm."""
    run_check(NORMALIZE_DECODER, fn, cases)


def _grad_inputs(seed: int) -> dict:
    W = _decoder_inputs(seed)["W_dec"]
    return {"W_dec": W, "grad": torch.randn(W.shape, generator=rng(seed + 1))}


def _along(W, G, dim=1):
    return (G * W).sum(dim, keepdim=True)


REMOVE_PARALLEL_GRAD = Exercise(
    chapter=CHAPTER,
    name="remove_parallel_grad",
    reference=lambda W_dec, grad: ref.remove_parallel_grad(W_dec, grad),
    make_inputs=_grad_inputs,
    misconceptions=(
        Misconception(
            "columns instead of rows",
            "Project each ROW's gradient onto that row (sums over dim=1): the rows are the feature "
            "directions. You projected along the columns.",
            lambda W_dec, grad: grad - _along(W_dec, grad, 0) / W_dec.pow(2).sum(0, keepdim=True) * W_dec),
        Misconception(
            "returned the parallel part",
            "Return the gradient MINUS its component along the row, grad - (grad·d̂) d̂; you returned the "
            "component itself.",
            lambda W_dec, grad: _along(W_dec, grad) / W_dec.pow(2).sum(1, keepdim=True) * W_dec),
        Misconception(
            "assumed unit-norm rows",
            "Divide by ||d_i||²: the component of g along d is (g·d / ||d||²) d. (g·d) d is only right when d "
            "has unit norm, and the function must work for rows of any length.",
            lambda W_dec, grad: grad - _along(W_dec, grad) * W_dec),
        Misconception(
            "divided by the norm once",
            "The component of g along d is (g·d / ||d||²) d, i.e. (g·d̂) d̂: divide by the norm twice (once "
            "per unit vector), not once.",
            lambda W_dec, grad: grad - _along(W_dec, grad) / W_dec.norm(dim=1, keepdim=True) * W_dec),
        Misconception(
            "one projection for the whole matrix",
            "Each row gets its own projection (a sum over dim=1 only); you projected the whole gradient "
            "matrix onto the whole weight matrix at once.",
            lambda W_dec, grad: grad - (grad * W_dec).sum() / W_dec.pow(2).sum() * W_dec),
        Misconception(
            "gradient unchanged",
            "You returned the gradient unchanged: remove from each row of the gradient its component "
            "along that decoder row.",
            lambda W_dec, grad: grad),
    ),
)


def remove_parallel_grad(fn, cases: Cases = None) -> None:
    """Check ``fn(W_dec, grad) -> grad`` with each row's component along W_dec[i] removed."""
    run_check(REMOVE_PARALLEL_GRAD, fn, cases)


# =========================================================================== 4. geometric median

MEDIAN_TOL = 1e-3


def _median_inputs(seed: int) -> dict:
    g = rng(seed)
    n, d = 2 * randint(g, 30, 60) + 1, randint(g, 3, 6)  # odd n: the coordinate-wise median is one point
    bulk = torch.randn(n, d, generator=g) * (0.5 + torch.rand(d, generator=g)) + 2 * torch.randn(d, generator=g)
    outliers = torch.rand(n, generator=g) < 0.15
    far = 6 * torch.randn(d, generator=g) + 3 * torch.randn(n, d, generator=g)
    return {"points": torch.where(outliers[:, None], far, bulk)}


@lru_cache(maxsize=1)
def _real_activations() -> torch.Tensor:
    """gelu-1l's MLP activations on 2 rows of held-out text (254 tokens, BOS dropped) x 512."""
    from utils.data.dataset import analysis_tokens
    from utils.models import load_model

    model = load_model("gelu-1l", device="cpu")
    _, cache = model.run_with_cache(analysis_tokens(seq_len=128, n_seqs=2), names_filter="blocks.0.mlp.hook_post")
    return cache["blocks.0.mlp.hook_post"][:, 1:].reshape(-1, 512).detach().float()


def _weiszfeld(points, weight, steps=200):
    y = points.double().mean(0)
    x = points.double()
    for _ in range(steps):
        w = weight((x - y).norm(dim=1).clamp_min(1e-8))
        y = (w[:, None] * x).sum(0) / w.sum()
    return y.to(points.dtype)


def _total_distance(points: torch.Tensor, y: torch.Tensor) -> float:
    return float((points.double() - y.double()).norm(dim=1).sum())


GEOMETRIC_MEDIAN = Exercise(
    chapter=CHAPTER,
    name="geometric_median",
    reference=lambda points: ref_geometric_median(points, max_iter=1000, tol=1e-9),
    make_inputs=_median_inputs,
    rtol=MEDIAN_TOL,
    atol=MEDIAN_TOL,
    extra_inputs=(lambda: {"points": _real_activations()},),
    misconceptions=(
        Misconception(
            "the mean",
            "You returned the mean of the points. The geometric median minimises the sum of DISTANCES "
            "Σ ||x_i - y||, not of squared distances; start from the mean and iterate Weiszfeld's update.",
            lambda points: points.mean(0)),
        Misconception(
            "coordinate-wise median",
            "The median of each coordinate separately is a different point: the geometric median minimises "
            "Σ ||x_i - y|| with the Euclidean norm of whole vectors. Use Weiszfeld's iteration.",
            lambda points: points.median(0).values),
        Misconception(
            "one step",
            "You stopped after a single Weiszfeld step. Repeat the update y <- Σ w_i x_i / Σ w_i with "
            "w_i = 1 / ||x_i - y|| until y stops moving (e.g. up to 200 steps).",
            lambda points: _weiszfeld(points, lambda d: 1 / d, steps=1)),
        Misconception(
            "weights 1/distance²",
            "Weiszfeld's weights are 1 / ||x_i - y||, not 1 / ||x_i - y||²: with squared distances the "
            "estimate is pulled onto whichever data point it gets close to.",
            lambda points: _weiszfeld(points, lambda d: d.pow(-2))),
        Misconception(
            "weights proportional to distance",
            "The weights are the INVERSE distances, w_i = 1 / ||x_i - y||: far points must pull less. With "
            "w_i = ||x_i - y|| the outliers drag the estimate towards them.",
            lambda points: _weiszfeld(points, lambda d: d)),
    ),
)


def _describe_median(inputs: dict, got, expected) -> Optional[str]:
    points = inputs["points"]
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.isfinite(got).all():
        return None
    yours, best, mean = (_total_distance(points, y) for y in (got, expected, points.mean(0)))
    excess = (yours - best) / max(best, 1e-12)  # how much longer your total distance is, relatively
    if withholding_values():  # a hidden case: the relation, not the expected numbers
        return (f"your point is not the median yet: its sum of distances is {excess:.2g} (relative) above the "
                "median's. Iterate Weiszfeld's update until the estimate stops moving.")
    if best <= yours < mean:
        return (f"your point is better than the mean but not yet the median: the sum of distances is "
                f"{yours:.8g} at your point and {best:.8g} at the median (relative excess {excess:.2g}; "
                f"{mean:.8g} at the mean). Run Weiszfeld's update until the estimate stops moving (e.g. 200 "
                "steps, or until a step moves it less than 1e-6), and compute in float64 if it stalls.")
    return (f"{describe_difference(got, expected)} (Sum of distances: yours {yours:.8g}, the median's {best:.8g}, "
            f"relative excess {excess:.2g}.)")


def geometric_median(fn, cases: Cases = None) -> None:
    """Check ``fn(points[n, d]) -> [d]``, the point minimising Σ ||x_i - y||."""
    run_described(GEOMETRIC_MEDIAN, fn, cases, _describe_median)

"""Checks for chapter 05 (sparse autoencoders, after Bricken et al. 2023).

Layout as in utils.sae (and SAELens): W_enc [d_in, d_sae] (column i = what feature i reads),
W_dec [d_sae, d_in] whose ROWS are the feature directions, b_enc [d_sae], b_dec [d_in]; activations
are rows, x [batch, d_in], f [batch, d_sae]. Random inputs are drawn as they were when the course
stored the transposes, then transposed, so every case holds the same numbers as before.
The reference answers are utils.sae's own functions (utils/sae/exercises.py for the ones whose
shape differs from the trainer's).

Random inputs keep batch, d_in and d_sae different from each other, so a sum or mean over the
wrong axis, or a transposed weight, cannot pass by accident. Several exercises return a tuple;
when such an answer is wrong in a way no catalogued mistake explains, the check says WHICH part is
wrong and where, instead of printing both tuples.
One section per exercise (its inputs, its reference, its catalogue of mistakes), in the notebook's
order: longer than 400 lines because the catalogues are, and splitting them would separate an
exercise from its mistakes.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch

from utils.checks.core import (
    Cases,
    CheckFailure,
    Exercise,
    Misconception,
    describe_difference,
    question,
    run_check,
    withholding_values,
)
from utils.checks.toolkit import describe_parts, randint, rng, run_described
from utils.sae import exercises as ref
from utils.sae.metrics import fraction_variance_explained as ref_fve
from utils.sae.metrics import l0 as ref_l0
from utils.sae.model import geometric_median as ref_geometric_median
from utils.sae.model import topk_relu
from utils.sae.resampling import ENCODER_NORM_SCALE

CHAPTER = "05"
EXERCISES = ["feature_recovery", "sae_forward", "sae_loss", "normalize_decoder", "remove_parallel_grad", "geometric_median",
             "l0", "fraction_variance_explained", "ce_loss_recovered", "dead_dense_fractions",
             "resample_dead_features", "topk_activation",
             "l0_question", "shrinkage_question", "resampling_question"]






def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _sizes(g: torch.Generator) -> tuple[int, int, int]:
    """(batch, d_in, d_sae), never equal to each other."""
    return randint(g, 9, 13), randint(g, 4, 7), randint(g, 14, 20)


def _unit_columns(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=0, keepdim=True)


def _unit_rows(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=1, keepdim=True)


def _sparse_activations(g: torch.Generator, batch: int, d_sae: int, p: float = 0.3) -> torch.Tensor:
    """Non-negative, mostly zero, values far from 1 (so a count and a sum of values differ)."""
    return (0.2 + 2.5 * torch.rand(batch, d_sae, generator=g)) * (torch.rand(batch, d_sae, generator=g) < p)


def _scalar(fn):
    """Accept a plain Python number where the reference returns a 0-d tensor (``.item()`` is fine)."""
    if not callable(fn):
        return fn

    def wrapper(**inputs):
        out = fn(**inputs)
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            return torch.tensor(float(out), dtype=torch.float64)
        return out
    return wrapper


# =========================================================================== 0. recovering known features


def _recovery_inputs(seed: int) -> dict:
    """True directions and an SAE's weights in which every catalogued mistake shows.

    The true directions (columns) and the decoder's rows have lengths far from 1 (so a forgotten
    normalisation changes the answer); some decoder rows point almost exactly AWAY from a true
    feature while its best same-way match is weaker (so an absolute value changes it); the encoder
    columns are the decoder's directions plus strong noise (so reading them changes it). Built with
    the features along columns of both, then W_enc and W_dec are transposed to the course layout.
    """
    g = rng(seed)
    n_true, d_in, d_sae = _sizes(g)
    true = torch.randn(d_in, n_true, generator=g) * (0.4 + 1.6 * torch.rand(n_true, generator=g))
    unit = _unit_columns(true)
    W_dec = torch.randn(d_in, d_sae, generator=g)
    n_close = n_true // 2
    W_dec[:, :n_close] = unit[:, :n_close] + 0.25 * torch.randn(d_in, n_close, generator=g)  # found, same sign
    n_flipped = 3
    W_dec[:, n_close:n_close + n_flipped] = -unit[:, n_close:n_close + n_flipped] \
        + 0.1 * torch.randn(d_in, n_flipped, generator=g)  # pointing away: not a match
    W_dec = W_dec * (0.3 + 2.0 * torch.rand(d_sae, generator=g))
    W_enc = W_dec.T + 0.8 * torch.randn(d_sae, d_in, generator=g) * W_dec.norm(dim=0)[:, None]
    perm = torch.randperm(d_sae, generator=g)  # the SAE's features come in no particular order
    return {"true_directions": true, "W_enc": W_enc[perm].T.contiguous(), "W_dec": W_dec[:, perm].T.contiguous()}


def _real_recovery_inputs() -> dict:
    """The chapter's toy model of superposition and the SAE it trains on its hidden layer."""
    from utils.sae.toy import bridge_run

    run = bridge_run()
    return {"true_directions": run["true_directions"], "W_enc": run["resampled"]["W_enc"],
            "W_dec": run["resampled"]["W_dec"]}


def _cosines(true_directions, directions):
    """[n_true, d_sae] cosines of the true directions (columns) with SAE directions (ROWS)."""
    return _unit_columns(true_directions).T @ _unit_rows(directions).T


FEATURE_RECOVERY = Exercise(
    chapter=CHAPTER,
    name="feature_recovery",
    reference=lambda true_directions, W_enc, W_dec: ref.feature_recovery(true_directions, W_enc, W_dec),
    make_inputs=_recovery_inputs,
    extra_inputs=(_real_recovery_inputs,),
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
            lambda true_directions, W_enc, W_dec: (true_directions.T @ _unit_rows(W_dec).T).max(1).values),
        Misconception(
            "decoder not normalised",
            "Normalise the decoder rows too: you divided by the true directions' norms only. A trained SAE "
            "keeps its decoder rows at unit norm, but the function must not assume it.",
            lambda true_directions, W_enc, W_dec: (_unit_columns(true_directions).T @ W_dec.T).max(1).values),
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
                _unit_columns(true_directions).T @ (W_dec / W_dec.norm(dim=0, keepdim=True)).T).max(1).values),
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


# =========================================================================== 1. the forward pass


def _forward_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, d_in, d_sae = _sizes(g)
    b_dec = 1.5 * torch.randn(d_in, generator=g)  # far from 0: forgetting it changes everything
    return {
        "x": b_dec + torch.randn(batch, d_in, generator=g),
        "W_enc": (0.6 * torch.randn(d_sae, d_in, generator=g)).T.contiguous(),  # [d_in, d_sae]
        "b_enc": 0.4 * torch.randn(d_sae, generator=g),  # both signs, so the ReLU matters
        "W_dec": _unit_columns(torch.randn(d_in, d_sae, generator=g)).T.contiguous(),  # [d_sae, d_in], unit rows
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
    batch, d_in, d_sae = _sizes(g)
    x = 2 * torch.randn(batch, d_in, generator=g)
    return {
        "x": x,
        "x_hat": x + 0.7 * torch.randn(batch, d_in, generator=g),
        "f": _sparse_activations(g, batch, d_sae),
        "W_dec": _unit_columns(torch.randn(d_in, d_sae, generator=g)).T.contiguous(),  # unit rows, as in training
        "l1_coeff": _uniform(g, 0.3, 3.0),
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
    run_check(SAE_LOSS, _scalar(fn), cases)


# =========================================================================== 3. the decoder constraint


def _decoder_inputs(seed: int) -> dict:
    g = rng(seed)
    _, d_in, d_sae = _sizes(g)
    W = torch.randn(d_in, d_sae, generator=g) * (0.3 + 1.7 * torch.rand(1, d_sae, generator=g))
    return {"W_dec": W.T.contiguous()}  # [d_sae, d_in]: rows of many lengths


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
    return {"W_dec": W, "grad": torch.randn(W.T.shape, generator=rng(seed + 1)).T.contiguous()}


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


# =========================================================================== 5. metrics


def _l0_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, _, d_sae = _sizes(g)
    return {"f": _sparse_activations(g, batch, d_sae, p=_uniform(g, 0.1, 0.5))}


L0 = Exercise(
    chapter=CHAPTER,
    name="l0",
    reference=lambda f: ref_l0(f),
    make_inputs=_l0_inputs,
    misconceptions=(
        Misconception(
            "L1 instead of L0",
            "L0 COUNTS the active features of each token, Σ_i 1[f_i ≠ 0]; you added up their values, "
            "which is the L1 norm.",
            lambda f: f.abs().sum(-1).mean()),
        Misconception(
            "summed over tokens",
            "Average the per-token count over the tokens: L0 is the mean number of active features PER "
            "TOKEN. You returned the total over the whole batch.",
            lambda f: (f != 0).sum().float()),
        Misconception(
            "fraction of features",
            "L0 is a count (how many of the d_sae features are active on a token), not a fraction: sum over "
            "features, then average over tokens. You averaged over both.",
            lambda f: (f != 0).float().mean()),
        Misconception(
            "per feature",
            "Count over the FEATURES of each token (the last axis) and average over tokens; you counted, for "
            "each feature, the tokens it fires on, and averaged that over features.",
            lambda f: (f != 0).sum(0).float().mean()),
        Misconception(
            "counted the inactive features",
            "Count the features that are NOT zero (f != 0); you counted the zeros.",
            lambda f: (f == 0).sum(-1).float().mean()),
    ),
)


def l0(fn, cases: Cases = None) -> None:
    """Check ``fn(f[batch, d_sae]) -> scalar``: mean number of non-zero features per token."""
    run_check(L0, _scalar(fn), cases)


def _fve_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, d_in, _ = _sizes(g)
    batch *= 4
    scale = 0.5 + 2 * torch.rand(d_in, generator=g)  # dimensions of different variance
    x = 3 * torch.randn(d_in, generator=g) + scale * torch.randn(batch, d_in, generator=g)  # mean far from 0
    mean = x.mean(0)
    x_hat = mean + _uniform(g, 0.6, 0.9) * (x - mean) + 0.4 * torch.randn(batch, d_in, generator=g)
    return {"x": x, "x_hat": x_hat}


def _sum_sq(a):
    return a.double().pow(2).sum()


FVE = Exercise(
    chapter=CHAPTER,
    name="fraction_variance_explained",
    reference=lambda x, x_hat: ref_fve(x, x_hat),
    make_inputs=_fve_inputs,
    misconceptions=(
        Misconception(
            "variance not centred",
            "The total variance is Σ ||x - mean(x)||², around the MEAN activation; you divided by Σ ||x||². "
            "MLP activations have a large mean, so this makes every reconstruction look far better than it is.",
            lambda x, x_hat: 1 - _sum_sq(x - x_hat) / _sum_sq(x)),
        Misconception(
            "unexplained fraction",
            "You returned the fraction NOT explained, Σ ||x - x_hat||² / Σ ||x - mean||²; FVE is 1 minus that.",
            lambda x, x_hat: _sum_sq(x - x_hat) / _sum_sq(x - x.mean(0))),
        Misconception(
            "unbiased variance",
            "torch.var divides by n - 1 by default (unbiased=True), while the squared error is averaged over "
            "n: use sums of squares for both, or var(..., unbiased=False) / correction=0.",
            lambda x, x_hat: 1 - (_sum_sq(x - x_hat) / len(x)) / x.double().var(0).sum()),
        Misconception(
            "averaged per dimension",
            "Compute ONE ratio over all dimensions: 1 - Σ ||x - x_hat||² / Σ ||x - mean||². You computed an FVE "
            "for each dimension and averaged them, which gives low-variance dimensions as much weight as "
            "high-variance ones.",
            lambda x, x_hat: (1 - (x - x_hat).double().pow(2).sum(0) / (x - x.mean(0)).double().pow(2).sum(0)).mean()),
        Misconception(
            "averaged per token",
            "Sum the errors and the variances over all tokens before dividing; you averaged a per-token ratio, "
            "which tokens close to the mean dominate.",
            lambda x, x_hat: (1 - (x - x_hat).double().pow(2).sum(-1)
                              / (x - x.mean(0)).double().pow(2).sum(-1)).mean()),
        Misconception(
            "ratio of variances",
            "FVE compares the ERROR with the variance of x: 1 - Σ ||x - x_hat||² / Σ ||x - mean||². The "
            "variance of x_hat over the variance of x can be close to 1 for a reconstruction that is wrong.",
            lambda x, x_hat: _sum_sq(x_hat - x_hat.mean(0)) / _sum_sq(x - x.mean(0))),
    ),
)


def fraction_variance_explained(fn, cases: Cases = None) -> None:
    """Check ``fn(x, x_hat) -> scalar`` = 1 - Σ ||x - x_hat||² / Σ ||x - mean(x)||²."""
    run_check(FVE, _scalar(fn), cases)


def _ce_inputs(seed: int) -> dict:
    g = rng(seed)
    clean = _uniform(g, 2.0, 4.0)
    gap = _uniform(g, 0.5, 3.0)
    return {"ce_clean": clean, "ce_sae": clean + _uniform(g, 0.05, 0.6) * gap, "ce_zero_ablation": clean + gap}


CE_RECOVERED = Exercise(
    chapter=CHAPTER,
    name="ce_loss_recovered",
    reference=lambda ce_clean, ce_sae, ce_zero_ablation: ref.ce_loss_recovered(ce_clean, ce_sae, ce_zero_ablation),
    make_inputs=_ce_inputs,
    misconceptions=(
        Misconception(
            "ratio inverted",
            "Upside down: the score is (CE_zero - CE_sae) / (CE_zero - CE_clean), the part of the gap between "
            "zero-ablation and the clean model that the SAE closes. It is at most 1 for any SAE no better "
            "than the model; yours exceeds 1.",
            lambda ce_clean, ce_sae, ce_zero_ablation: (ce_zero_ablation - ce_clean) / (ce_zero_ablation - ce_sae)),
        Misconception(
            "fraction lost",
            "You computed (CE_sae - CE_clean) / (CE_zero - CE_clean), the fraction of the loss gap LOST (the same "
            "number as swapping the clean and zero-ablation losses). CE loss recovered is 1 minus that: "
            "(CE_zero - CE_sae) / (CE_zero - CE_clean).",
            lambda ce_clean, ce_sae, ce_zero_ablation: (ce_sae - ce_clean) / (ce_zero_ablation - ce_clean)),
        Misconception(
            "SAE and zero swapped",
            "The zero-ablation loss is the 0 point and the clean loss the 1 point: (CE_zero - CE_sae) / "
            "(CE_zero - CE_clean). You swapped the SAE and zero-ablation losses.",
            lambda ce_clean, ce_sae, ce_zero_ablation: (ce_sae - ce_zero_ablation) / (ce_sae - ce_clean)),
        Misconception(
            "ratio of losses",
            "Compare DIFFERENCES of losses, not the losses themselves: (CE_zero - CE_sae) / (CE_zero - CE_clean). "
            "A plain ratio CE_clean / CE_sae is close to 1 even for a poor SAE, because most of the loss is "
            "there with or without this layer.",
            lambda ce_clean, ce_sae, ce_zero_ablation: ce_clean / ce_sae),
        Misconception(
            "relative to zero-ablation only",
            "Divide by the gap CE_zero - CE_clean, not by CE_zero: the score should be 1 exactly when the SAE "
            "is as good as the clean model.",
            lambda ce_clean, ce_sae, ce_zero_ablation: (ce_zero_ablation - ce_sae) / ce_zero_ablation),
        Misconception(
            "percentage",
            "Return a fraction (1 = everything recovered), not a percentage.",
            lambda ce_clean, ce_sae, ce_zero_ablation:
            100 * (ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean)),
    ),
)


def ce_loss_recovered(fn, cases: Cases = None) -> None:
    """Check ``fn(ce_clean, ce_sae, ce_zero_ablation) -> float``."""
    run_check(CE_RECOVERED, fn, cases)


def _density_inputs(seed: int) -> dict:
    g = rng(seed)
    d_sae = randint(g, 200, 400)
    kind = torch.rand(d_sae, generator=g)
    threshold = _uniform(g, 0.15, 0.3) if seed % 2 else _uniform(g, 0.03, 0.07)  # never the default 0.1
    density = 10 ** (-4 + 2.5 * torch.rand(d_sae, generator=g))  # the live bulk: 1e-4 .. 3e-2
    density = torch.where(kind < 0.1, torch.zeros(()), density)  # dead
    density = torch.where((kind >= 0.1) & (kind < 0.15), 10 ** (-7 + torch.rand(d_sae, generator=g)), density)  # rare
    dense_ish = 0.04 + 0.5 * torch.rand(d_sae, generator=g)
    density = torch.where((kind >= 0.15) & (kind < 0.22), dense_ish, density)
    density[:4] = torch.tensor([0.0, 0.5 * (threshold + 0.1), 0.06, 0.12])  # between the threshold and 0.1
    return {"density": density, "dense_threshold": threshold}


def _fractions(dead, dense):
    return (dead.float().mean().item(), dense.float().mean().item())


DEAD_DENSE = Exercise(
    chapter=CHAPTER,
    name="dead_dense_fractions",
    reference=lambda density, dense_threshold: ref.dead_dense_fractions(density, dense_threshold),
    make_inputs=_density_inputs,
    misconceptions=(
        Misconception(
            "counts, not fractions",
            "Return FRACTIONS of the d_sae features (between 0 and 1), not the numbers of features.",
            lambda density, dense_threshold: (float((density == 0).sum()), float((density > dense_threshold).sum()))),
        Misconception(
            "rare features counted as dead",
            "A dead feature has density exactly 0: it never fired. Features with a tiny density (1e-7) are "
            "alive, just rare; count only density == 0.",
            lambda density, dense_threshold: _fractions(density < 1e-5, density > dense_threshold)),
        Misconception(
            "threshold ignored",
            "Use the dense_threshold argument; you compared with a fixed 0.1.",
            lambda density, dense_threshold: _fractions(density == 0, density > 0.1)),
        Misconception(
            "dense among live features",
            "Both fractions are of ALL d_sae features; you divided the number of dense features by the number "
            "of live ones.",
            lambda density, dense_threshold: ((density == 0).float().mean().item(),
                                              float((density > dense_threshold).sum() / (density > 0).sum()))),
        Misconception(
            "swapped",
            "Return (dead fraction, dense fraction) in that order.",
            lambda density, dense_threshold: tuple(reversed(ref.dead_dense_fractions(density, dense_threshold)))),
        Misconception(
            "percentages",
            "Return fractions between 0 and 1, not percentages.",
            lambda density, dense_threshold:
            tuple(100 * v for v in ref.dead_dense_fractions(density, dense_threshold))),
    ),
)


def dead_dense_fractions(fn, cases: Cases = None) -> None:
    """Check ``fn(density[d_sae], dense_threshold) -> (dead_fraction, dense_fraction)``."""
    run_described(DEAD_DENSE, fn, cases, describe_parts(("the dead fraction", "the dense fraction"),
                                                          DEAD_DENSE.rtol, DEAD_DENSE.atol))


# =========================================================================== 6. resampling

STATE_KEYS = ("W_enc", "b_enc", "W_dec")
RESAMPLE_PARTS = ("W_enc", "b_enc", "W_dec") + tuple(f"exp_avg[{k!r}]" for k in STATE_KEYS) \
    + tuple(f"exp_avg_sq[{k!r}]" for k in STATE_KEYS)


def _resample_inputs(seed: int) -> dict:
    g = rng(seed)
    _, d_in, d_sae = _sizes(g)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=g)[:randint(g, 2, 5)]] = True
    # Dead features' encoder columns are short (they drifted until they stopped firing): averaging the
    # norms over all columns instead of the live ones gives a visibly different scale.
    scale = torch.where(dead, 0.2, 1.0 + torch.rand(d_sae, generator=g))
    # Drawn feature-first (as when the course stored W_enc [d_sae, d_in], W_dec [d_in, d_sae]), then
    # the weights and their Adam states are transposed to W_enc [d_in, d_sae], W_dec [d_sae, d_in].
    drawn = {"W_enc": (d_sae, d_in), "b_enc": (d_sae,), "W_dec": (d_in, d_sae)}

    def course_layout(k, t):
        return t if k == "b_enc" else t.T.contiguous()

    inputs = {
        "W_enc": course_layout("W_enc", torch.randn(d_sae, d_in, generator=g) * scale[:, None] / math.sqrt(d_in)),
        "b_enc": 0.3 * torch.randn(d_sae, generator=g),
        "W_dec": course_layout("W_dec", _unit_columns(torch.randn(d_in, d_sae, generator=g))),
        "b_dec": 1.5 * torch.randn(d_in, generator=g),
        "dead": dead,
        "replacement_inputs": 2 * torch.randn(int(dead.sum()), d_in, generator=g),
    }
    for k in STATE_KEYS:
        inputs[f"exp_avg_{k}"] = course_layout(k, 0.01 * torch.randn(drawn[k], generator=g))
    for k in STATE_KEYS:
        inputs[f"exp_avg_sq_{k}"] = course_layout(k, 1e-4 * torch.rand(drawn[k], generator=g) + 1e-6)
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


# =========================================================================== 7. TopK


def _topk_inputs(seed: int) -> dict:
    g = rng(seed)
    batch, _, d_sae = _sizes(g)
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


# =========================================================================== multiple choice
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


l0_question = question(CHAPTER, "l0_question")
shrinkage_question = question(CHAPTER, "shrinkage_question")
resampling_question = question(CHAPTER, "resampling_question")

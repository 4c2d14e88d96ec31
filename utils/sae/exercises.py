"""Chapter 05's exercises as pure tensor functions: the reference answers its checks grade against.

The SAE classes in this package hold their parameters in an ``nn.Module`` and Adam's state in an
optimizer; a student's function receives plain tensors instead (the grading contract in
``utils/checks/core.py``). Where the package already has a function of exactly the exercise's shape
(``geometric_median``, ``topk_relu``, ``l0``, ``fraction_variance_explained``) the check uses it
directly; the functions here cover the rest, and ``tests/test_ch05_sae_exercises.py`` checks each one
against the module it mirrors (``SparseAutoencoder``, ``resample_dead_features_``, the metrics).

Layout as in ``utils.sae.model`` (and SAELens): ``W_enc [d_in, d_sae]`` (column i is what feature
i reads), ``W_dec [d_sae, d_in]`` (ROW i is feature i's direction), activations as rows
``x [batch, d_in]``, ``f [batch, d_sae]``.
"""
from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from utils.sae.metrics import DENSE_THRESHOLD
from utils.sae.resampling import ENCODER_NORM_SCALE


def sae_forward(
    x: Float[Tensor, "batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, "d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, "d_in"],
) -> tuple[Float[Tensor, "batch d_sae"], Float[Tensor, "batch d_in"]]:
    """(f, x_hat): f = ReLU((x - b_dec) @ W_enc + b_enc), x_hat = f @ W_dec + b_dec, for rows x."""
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    return f, f @ W_dec + b_dec


def sae_loss(
    x: Float[Tensor, "batch d_in"],
    x_hat: Float[Tensor, "batch d_in"],
    f: Float[Tensor, "batch d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    l1_coeff: float,
) -> Float[Tensor, ""]:
    """||x - x_hat||^2 summed over d_in plus l1_coeff * ||f||_1, both averaged over the batch.

    ``W_dec`` is not needed for this form of the penalty (it is part of the exercise's signature so
    that a penalty on the decoder weights can be written, and recognised as a mistake).
    """
    mse = (x - x_hat).pow(2).sum(-1).mean()
    l1 = f.abs().sum(-1).mean()
    return mse + l1_coeff * l1


def normalize_decoder(W_dec: Float[Tensor, "d_sae d_in"]) -> Float[Tensor, "d_sae d_in"]:
    """W_dec with every row (feature direction) rescaled to unit norm (a new tensor)."""
    return W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def remove_parallel_grad(
    W_dec: Float[Tensor, "d_sae d_in"], grad: Float[Tensor, "d_sae d_in"],
) -> Float[Tensor, "d_sae d_in"]:
    """grad minus, for each row i, its projection onto W_dec[i] (rows of any length)."""
    along = (grad * W_dec).sum(1, keepdim=True) / W_dec.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
    return grad - along * W_dec


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_zero_ablation: float) -> float:
    """(CE_zero - CE_sae) / (CE_zero - CE_clean): 1 = as good as the clean model, 0 = as bad as ablation."""
    return (ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean)


def dead_dense_fractions(density: Float[Tensor, "d_sae"], dense_threshold: float = DENSE_THRESHOLD
                         ) -> tuple[float, float]:
    """(fraction of features with density exactly 0, fraction with density > dense_threshold)."""
    return (density == 0).float().mean().item(), (density > dense_threshold).float().mean().item()


def resample_dead_features(
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, "d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, "d_in"],
    dead: Bool[Tensor, "d_sae"],
    replacement_inputs: Float[Tensor, "n_dead d_in"],
    exp_avg: dict[str, Tensor],
    exp_avg_sq: dict[str, Tensor],
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Re-initialise the dead features (new tensors; the arguments are left unchanged).

    Dead feature number j (in index order) is sent to ``replacement_inputs[j]`` (the input the
    trainer drew for it, with probability proportional to its loss squared):

    * decoder row ``W_dec[i]``: the input minus b_dec, at unit norm;
    * encoder column ``W_enc[:, i]``: the same direction, at ENCODER_NORM_SCALE (0.2) times the
      mean norm of the LIVE features' encoder columns;
    * encoder bias: 0;
    * Adam's exp_avg and exp_avg_sq (dicts keyed "W_enc", "b_enc", "W_dec"): zero at exactly those
      columns, entries and rows, untouched elsewhere.

    Returns (W_enc, b_enc, W_dec, exp_avg, exp_avg_sq).
    """
    dead = dead.bool()
    directions = replacement_inputs - b_dec
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    alive_norm = W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.ones((), dtype=W_enc.dtype)
    W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
    W_enc[:, dead] = directions.T * (ENCODER_NORM_SCALE * alive_norm)
    b_enc[dead] = 0.0
    W_dec[dead] = directions
    moments = []
    for state in (exp_avg, exp_avg_sq):
        state = {name: value.clone() for name, value in state.items()}
        state["W_enc"][:, dead] = 0.0
        state["b_enc"][dead] = 0.0
        state["W_dec"][dead] = 0.0
        moments.append(state)
    return W_enc, b_enc, W_dec, moments[0], moments[1]


def feature_recovery(
    true_directions: Float[Tensor, "d_in n_true"],
    W_enc: Float[Tensor, "d_in d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
) -> Float[Tensor, "n_true"]:
    """For each TRUE feature (column i of ``true_directions``, chapter 04's layout), the best cosine
    similarity between its direction and any SAE feature direction (a ROW of ``W_dec``).

    cos(t_i, d_j) = t_i . d_j / (||t_i|| ||d_j||), then the max over j (the SAE's features) for
    every i. Signed, no absolute value: an SAE feature's activation is never negative, so a decoder
    row pointing at -t_i cannot write feature i. ``W_enc`` is not needed (the decoder says where
    a feature WRITES; it is in the signature so that reading the encoder can be recognised as a
    mistake). Neither matrix is assumed to have unit-norm directions.
    """
    true_unit = true_directions / true_directions.norm(dim=0, keepdim=True).clamp_min(1e-12)
    dec_unit = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (true_unit.T @ dec_unit.T).max(dim=1).values

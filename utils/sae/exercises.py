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


def resampling_probabilities(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, "d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, "d_in"],
    l1_coeff: float,
) -> Float[Tensor, "n"]:
    """Where resampling sends dead features: the probability of drawing each input, proportional to
    the SQUARE of its own SAE loss, ||x - x_hat||^2 + l1_coeff * ||f||_1 (no batch mean: one loss per
    input). Uniform when every loss is 0 (nothing is reconstructed badly)."""
    f, x_hat = sae_forward(x, W_enc, b_enc, W_dec, b_dec)
    loss = (x - x_hat).pow(2).sum(-1) + l1_coeff * f.abs().sum(-1)
    weights = loss.pow(2)
    if weights.sum() == 0:
        return torch.full_like(weights, 1 / len(weights))
    return weights / weights.sum()


@torch.enable_grad()
def training_loop(seed: int, d_sae: int, steps: int, batch_size: int, l1_coeff: float, lr: float,
                  resample_steps, resample_window: int) -> dict[str, Tensor]:
    """The chapter's training loop, assembled from the functions above: a correct ``train_my_sae``.

    Not named like the exercise on purpose: a submission calling it is caught anyway (it runs the
    chapter's references), and the tripwire's tests need not train with it.

    The same step as ``utils.sae.training.train_sae`` (batch from the store, forward, loss, backward,
    parallel gradient removed, Adam step, decoder renormalised, resampling at the scheduled steps),
    without its warm-ups and clipping. Returns the trained parameters and Adam's exp_avg of W_dec.
    """
    from utils.sae.loop import initial_parameters, training_store
    from utils.sae.model import geometric_median

    store = training_store(seed=seed, batch_size=batch_size)
    params = initial_parameters(store.d_in, d_sae, seed=seed)
    W_enc, b_enc, W_dec, b_dec = (params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    with torch.no_grad():
        b_dec.copy_(geometric_median(store.sample(4096)))
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    steps_since_fired = torch.zeros(d_sae, dtype=torch.long)
    for step in range(1, steps + 1):
        x = store.next_batch()
        f, x_hat = sae_forward(x, W_enc, b_enc, W_dec, b_dec)
        loss = sae_loss(x, x_hat, f, W_dec, l1_coeff)
        optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():
            W_dec.grad.copy_(remove_parallel_grad(W_dec, W_dec.grad))
        optimizer.step()
        with torch.no_grad():
            W_dec.copy_(normalize_decoder(W_dec))
            steps_since_fired = torch.where((f > 0).any(0), 0, steps_since_fired + 1)
            dead = steps_since_fired >= resample_window
            if step in resample_steps and dead.any():
                sample = store.sample(8192)
                probs = resampling_probabilities(sample, W_enc, b_enc, W_dec, b_dec, l1_coeff)
                chosen = torch.multinomial(probs, int(dead.sum()), replacement=False)
                names = ("W_enc", "b_enc", "W_dec")
                moments = [{k: optimizer.state[params[k]][s] for k in names} for s in ("exp_avg", "exp_avg_sq")]
                new = resample_dead_features(W_enc, b_enc, W_dec, b_dec, dead, sample[chosen], *moments)
                for k, value in zip(names, new[:3]):
                    params[k].copy_(value)
                for state, new_state in zip(moments, new[3:]):
                    for k in names:
                        state[k].copy_(new_state[k])
                steps_since_fired[dead] = 0
    out = {k: v.detach().clone() for k, v in params.items()}
    out["W_dec_exp_avg"] = optimizer.state[W_dec]["exp_avg"].clone()
    return out

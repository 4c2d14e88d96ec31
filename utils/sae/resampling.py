"""Bring dead features back to life: Anthropic's resampling (Bricken et al., 2023, appendix).

A feature that has stopped firing gets no gradient from the reconstruction, so it never recovers
by itself: its capacity is wasted. Every so often the trainer finds the features that did not
fire in the last window of steps and re-initialises each one to point at an input the SAE
currently reconstructs badly:

1. compute the SAE's loss on each of a sample of inputs;
2. draw one input per dead feature with probability proportional to loss²;
3. the feature's decoder row ``W_dec[i]`` becomes that input (minus b_dec, the dictionary's origin)
   at unit norm; its encoder column ``W_enc[:, i]`` the same direction at 0.2 x the mean norm of the
   live encoder columns (so it starts firing weakly, on inputs like the one it was built from); its
   encoder bias 0;
4. Adam's moment estimates for exactly those columns, rows and bias entries are zeroed, so stale
   momentum from the feature's previous life does not push it straight back.

Inputs are drawn WITHOUT replacement (while there are enough inputs with non-zero loss): two dead
features sent to the same input would become duplicates of each other.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from utils.sae.model import SparseAutoencoder

ENCODER_NORM_SCALE = 0.2  # the paper's factor on the mean live encoder norm


@torch.no_grad()
def per_input_loss(sae: SparseAutoencoder, x: Float[Tensor, "n d_in"],
                   sparsity_coeff: Optional[float] = None, chunk: int = 8192) -> Float[Tensor, "n"]:
    """The SAE loss of each input on its own: ||x - x̂||² + λ · (its sparsity penalty)."""
    coeff = sae.cfg.sparsity_coeff if sparsity_coeff is None else sparsity_coeff
    losses = []
    for piece in x.split(chunk):
        z = sae.pre_activations(piece)
        f = sae.activation(z)
        loss = (sae.decode(f) - piece).pow(2).sum(-1)
        if sae.cfg.architecture == "l1":
            loss = loss + coeff * f.sum(-1)
        elif sae.cfg.architecture == "jumprelu":
            loss = loss + coeff * (z > sae.threshold).sum(-1)
        losses.append(loss)
    return torch.cat(losses)


def _zero_adam_state(optimizer: Optional[torch.optim.Optimizer], param: Tensor, index) -> None:
    """Zero Adam's exp_avg and exp_avg_sq at ``param[index]`` (no-op before the first step)."""
    if optimizer is None:
        return
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in state:
            state[key][index] = 0


@torch.no_grad()
def resample_dead_features_(
    sae: SparseAutoencoder,
    dead: Bool[Tensor, "d_sae"],
    inputs: Float[Tensor, "n d_in"],
    optimizer: Optional[torch.optim.Optimizer] = None,
    sparsity_coeff: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> int:
    """Re-initialise the features marked ``dead`` in place (see the module docstring).

    Returns the number of features resampled. ``optimizer`` is the Adam optimizer over the SAE's
    parameters (its state for the touched entries is zeroed); ``generator`` seeds the draw.
    A JumpReLU SAE's resampled features also get their threshold reset to the initial value.
    """
    dead = dead.to(sae.W_dec.device).bool()
    if dead.shape != (sae.d_sae,):
        raise ValueError(f"dead must be a [d_sae={sae.d_sae}] boolean mask, got shape {tuple(dead.shape)}")
    idx = dead.nonzero()[:, 0]
    n_dead = len(idx)
    if n_dead == 0:
        return 0
    inputs = inputs.to(sae.W_dec.device)
    weights = per_input_loss(sae, inputs, sparsity_coeff).float().pow(2)
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        weights = torch.ones_like(weights)  # perfect reconstruction everywhere: draw uniformly
    replacement = int((weights > 0).sum()) < n_dead
    if generator is not None and generator.device != weights.device:
        weights = weights.to(generator.device)
    chosen = torch.multinomial(weights, n_dead, replacement=replacement, generator=generator).to(inputs.device)

    directions = inputs[chosen] - sae.b_dec  # [n_dead, d_in]
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    alive_norm = sae.W_enc[:, alive].norm(dim=0).mean().item() if alive.any() else 1.0  # live columns' mean norm

    sae.W_dec[idx] = directions
    sae.W_enc[:, idx] = directions.T * (ENCODER_NORM_SCALE * alive_norm)
    sae.b_enc[idx] = 0.0
    _zero_adam_state(optimizer, sae.W_dec, idx)
    _zero_adam_state(optimizer, sae.W_enc, (slice(None), idx))
    _zero_adam_state(optimizer, sae.b_enc, idx)
    if sae.cfg.architecture == "jumprelu":
        sae.log_threshold[idx] = math.log(sae.cfg.jumprelu_init_threshold)
        _zero_adam_state(optimizer, sae.log_threshold, idx)
    return n_dead

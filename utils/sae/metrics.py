"""How good is a dictionary? Sparsity, reconstruction, and what the model loses when it uses it.

- ``l0``: mean number of features active per token (the sparsity that matters, not weight counts).
- ``fraction_variance_explained``: 1 - Σ||x - x̂||² / Σ||x - mean(x)||² over a set of tokens.
- ``ce_loss_recovered_from``: splice x̂ into the forward pass in place of x, and compare the model's
  next-token loss with the clean run (1) and with the hook zero-ablated (0):
  (CE_zero - CE_sae) / (CE_zero - CE_clean). Reconstruction error in directions the model ignores
  costs nothing here; error in the directions it reads costs a lot, which FVE cannot see.
- feature density: the fraction of tokens on which a feature fires. Dead features never fire on
  the evaluation tokens; dense features fire on more than ``DENSE_THRESHOLD`` of them.

Position 0 (BOS) is left untouched when splicing: the SAE was never trained on it (the activation
store drops it), and in a 1-layer model its MLP output only affects the prediction of token 1.
Both the SAE and the zero-ablation runs replace positions 1..n-1, so the two ends of the ratio are
measured on the same footing.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils.sae.model import SparseAutoencoder

# A feature firing on more than 10% of tokens is "dense": Bricken et al. set such features apart
# (they mostly track position or very common tokens and are hard to interpret); 1e-1 is also the
# upper edge of the usual log-density histogram.
DENSE_THRESHOLD = 0.1
# log10 density at which dead features are drawn in histograms (they have density 0).
DEAD_LOG10_DENSITY = -10.0


# =========================================================================== on activations


def l0(f: Float[Tensor, "... d_sae"]) -> Tensor:
    """Mean number of non-zero feature activations per token."""
    return (f != 0).sum(-1).float().mean()


def fraction_variance_explained(x: Float[Tensor, "... d_in"], x_hat: Float[Tensor, "... d_in"]) -> Tensor:
    """1 - Σ||x - x̂||² / Σ||x - mean(x)||², sums over all tokens and dimensions (float64 sums)."""
    wide = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    x, x_hat = x.reshape(-1, x.shape[-1]).to(wide), x_hat.reshape(-1, x_hat.shape[-1]).to(wide)
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return (1 - residual / total).float()


def feature_density(f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "d_sae"]:
    """Fraction of tokens on which each feature is non-zero."""
    return (f.reshape(-1, f.shape[-1]) != 0).float().mean(0)


def dead_fraction(density: Float[Tensor, "d_sae"]) -> float:
    """Fraction of features that never fired (on the tokens the density was measured on)."""
    return (density == 0).float().mean().item()


def dense_fraction(density: Float[Tensor, "d_sae"], threshold: float = DENSE_THRESHOLD) -> float:
    """Fraction of features firing on more than ``threshold`` of tokens."""
    return (density > threshold).float().mean().item()


def log10_density(density: Float[Tensor, "d_sae"], dead_value: float = DEAD_LOG10_DENSITY) -> Float[Tensor, "d_sae"]:
    """log10 of each feature's density, with dead features (density 0) at ``dead_value``."""
    return torch.where(density > 0, density.clamp_min(1e-30).log10(), torch.full_like(density, dead_value))


def density_histogram(density: Float[Tensor, "d_sae"], bins: int = 40, low: float = -6.0,
                      high: float = 0.0) -> dict:
    """Histogram of log10 density over live features: {"edges", "counts", "n_dead", "n_below"}.

    Bricken et al. plot this: a healthy dictionary has one bump (typically 1e-4 to 1e-2); a
    second bump of "ultralow density" features far to the left signals features that barely live.
    ``n_below`` counts live features with log10 density under ``low`` (kept out of the bins).
    """
    alive = density[density > 0]
    logs = alive.log10().float().cpu()
    edges = torch.linspace(low, high, bins + 1)
    counts = torch.histc(logs.clamp(max=high), bins=bins, min=low, max=high) if len(logs) else torch.zeros(bins)
    return {"edges": edges, "counts": counts.long(), "n_dead": int((density == 0).sum()),
            "n_below": int((logs < low).sum())}


# =========================================================================== in the model


def _splice_hook(replace):
    """A forward hook replacing positions 1.. of the activation by replace(activation[:, 1:])."""
    def hook(activation, hook):
        out = activation.clone()
        out[:, 1:] = replace(activation[:, 1:])
        return out
    return hook


@torch.no_grad()
def ce_losses(sae: SparseAutoencoder, model, tokens: Int[Tensor, "batch pos"],
              hook_name: Optional[str] = None, clean: Optional[float] = None) -> dict[str, float]:
    """Next-token loss of the clean model, with the SAE spliced in, and with the hook zero-ablated.

    ``clean``: the clean loss if already computed (saves one forward pass)."""
    hook_name = hook_name or sae.cfg.hook_name
    tokens = tokens.to(next(model.parameters()).device)
    sae_device = sae.W_dec.device

    def reconstruct(act):
        x = act.to(sae_device)
        return sae.decode(sae.encode(x)).to(act.device, act.dtype)

    if clean is None:
        clean = model(tokens, return_type="loss").item()
    spliced = model.run_with_hooks(tokens, return_type="loss",
                                   fwd_hooks=[(hook_name, _splice_hook(reconstruct))]).item()
    zero = model.run_with_hooks(tokens, return_type="loss",
                                fwd_hooks=[(hook_name, _splice_hook(torch.zeros_like))]).item()
    return {"ce_clean": clean, "ce_sae": spliced, "ce_zero_ablation": zero}


def ce_loss_recovered_from(ce: dict[str, float]) -> float:
    """Chapter 05's ``ce_loss_recovered`` (``utils.sae.exercises``) read from a ``ce_losses`` dict:
    (CE_zero - CE_sae) / (CE_zero - CE_clean), 1 = as good as the model, 0 = as bad as deleting the
    hook; NaN where zero-ablating the hook does not hurt (the ratio would mean nothing)."""
    from utils.sae.exercises import ce_loss_recovered  # a module-level import would be circular

    if ce["ce_zero_ablation"] - ce["ce_clean"] <= 0:
        return math.nan
    return ce_loss_recovered(ce["ce_clean"], ce["ce_sae"], ce["ce_zero_ablation"])


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, model, n_tokens: int = 65_536, batch_seqs: int = 64,
                 seq_len: int = 128, hook_name: Optional[str] = None, split: str = "val") -> dict:
    """Every metric above on held-out text: ``n_tokens`` activations (rounded up to whole rows).

    Uses ``analysis_tokens`` (fixed, consecutive windows of the validation split), so the numbers
    are the same on every machine. Returns a dict of floats, plus ``"density"``: the per-feature
    density tensor [d_sae] (for ``density_histogram``; drop it before writing JSON).
    """
    from utils.data.dataset import analysis_tokens

    if n_tokens < 1 or batch_seqs < 1:
        raise ValueError("n_tokens and batch_seqs must be positive")
    hook_name = hook_name or sae.cfg.hook_name
    n_seqs = -(-n_tokens // (seq_len - 1))
    tokens = analysis_tokens(seq_len=seq_len, n_seqs=n_seqs, split=split)
    sae_device = sae.W_dec.device
    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero_ablation": 0.0}
    fired = torch.zeros(sae.d_sae, device=sae_device)
    active = residual = x_sq = 0.0
    n_act = 0
    x_sum = torch.zeros(sae.d_in, dtype=torch.float64)  # on the CPU: MPS has no float64
    for start in range(0, n_seqs, batch_seqs):
        chunk = tokens[start:start + batch_seqs]
        clean, cache = model.run_with_cache(chunk, names_filter=hook_name, return_type="loss")
        x = cache[hook_name][:, 1:].reshape(-1, sae.d_in).to(sae_device)
        f = sae.encode(x)
        x_hat = sae.decode(f)
        fired += (f != 0).sum(0)
        active += (f != 0).sum().item()
        residual += (x - x_hat).pow(2).sum().item()  # per-chunk float32 sums, accumulated in float64
        x_sum += x.sum(0).cpu().double()
        x_sq += x.pow(2).sum().item()
        n_act += len(x)
        for key, value in ce_losses(sae, model, chunk, hook_name, clean=clean.item()).items():
            sums[key] += value * len(chunk)  # every row has the same length: a row-weighted mean is exact
    ce = {key: value / n_seqs for key, value in sums.items()}
    # Σ||x - mean||² = Σ||x||² - n ||mean||², accumulated over chunks without keeping them.
    total_variance = x_sq - x_sum.pow(2).sum().item() / n_act
    density = fired / n_act
    return {
        "n_tokens": n_act,
        "l0": active / n_act,
        "mse": residual / n_act,
        "fve": 1 - residual / total_variance,
        **ce,
        "ce_loss_recovered": ce_loss_recovered_from(ce),
        "dead_fraction": dead_fraction(density),
        "dense_fraction": dense_fraction(density),
        "density": density.cpu(),
    }

"""The sparse autoencoder of "Towards Monosemanticity" (Bricken et al., 2023), plus TopK and JumpReLU.

Notation of the paper, for one activation vector x of width d_in:

    f(x)  = ReLU(W_enc (x - b_dec) + b_enc)        (the paper's column vectors)
    x̂(f) = W_dec f + b_dec
    L     = ||x - x̂||²  +  λ ||f||₁                 (squared error summed over d_in, mean over batch)

Code works on batches of ROW vectors and stores every weight ``[d_in, d_out]``, the layout of
SAELens (and of the whole course):

    f     = relu((x - b_dec) @ W_enc + b_enc)      W_enc: [d_in, d_sae]    b_enc: [d_sae]
    x_hat = f @ W_dec + b_dec                      W_dec: [d_sae, d_in]    b_dec: [d_in]

so the paper's matrices are the transposes of the stored ones. Row ``W_dec[i]`` is feature i's
direction in activation space, kept at unit norm: otherwise the L1 penalty could be dodged by
shrinking f and growing the row. Column ``W_enc[:, i]`` is what feature i reads. Subtracting b_dec
before encoding makes b_dec the origin of the dictionary; it starts at the geometric median of the
data.

Each weight is stored contiguously in that layout, and files hold the same tensors
(``utils.sae.saving``).

Two other activation functions share the same parameters:

- ``"topk"`` (Gao et al., 2024): keep the k largest pre-activations of each token, ReLU them, zero
  the rest. Sparsity is set by k directly, so there is no sparsity penalty.
- ``"jumprelu"`` (Rajamanoharan et al., 2024): f_i = z_i · H(z_i - θ_i) with a learned per-feature
  threshold θ_i > 0 (stored as log θ), and an L0 penalty λ Σ_i H(z_i - θ_i). H has zero derivative
  almost everywhere, so θ learns through the paper's straight-through pseudo-derivatives with a
  rectangle kernel of width ε (``jumprelu_bandwidth``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn import functional as F

from utils.sae.config import SAEConfig

# Weiszfeld divides by distances to the current estimate; this keeps a data point that coincides
# with the estimate from producing 1/0 (it then gets a large but finite weight).
_WEISZFELD_EPS = 1e-8


# =========================================================================== b_dec initialisation


@torch.no_grad()
def geometric_median(
    points: Float[Tensor, "n d"],
    max_iter: int = 200,
    tol: float = 1e-7,
) -> Float[Tensor, "d"]:
    """The point y minimising Σ_i ||x_i - y||, by Weiszfeld's iterations.

    Each step replaces y by an average of the points weighted by 1 / ||x_i - y||: far points pull
    less than they would on the mean, so a few outliers (activations of unusual tokens) cannot drag
    it away from the bulk. Starts at the mean; stops when y moves less than ``tol`` relative to the
    data's scale.
    """
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty [n, d] tensor, got shape {tuple(points.shape)}")
    # Sums of many 1/distance weights: keep the precision (on the CPU for MPS, which has no float64).
    x = (points.cpu() if points.device.type == "mps" else points).double()
    y = x.mean(0)
    scale = (x - y).norm(dim=1).mean().clamp_min(1e-12)
    for _ in range(max_iter):
        w = 1 / (x - y).norm(dim=1).clamp_min(_WEISZFELD_EPS)
        y_next = (w[:, None] * x).sum(0) / w.sum()
        moved = (y_next - y).norm()
        y = y_next
        if moved <= tol * scale:
            break
    return y.to(points.device, points.dtype)


# =========================================================================== JumpReLU estimators


def _rectangle(u: Tensor) -> Tensor:
    """The kernel K(u) = 1 if |u| < 1/2 else 0."""
    return (u.abs() < 0.5).to(u.dtype)


def _sum_to_shape(grad: Tensor, shape: torch.Size) -> Tensor:
    """Undo broadcasting: sum a [..., d_sae] gradient down to the threshold's [d_sae]."""
    return grad.reshape(-1, grad.shape[-1]).sum(0).reshape(shape)


class JumpReLUFunction(torch.autograd.Function):
    """z · H(z - θ); d/dz = H(z - θ) (exact), d/dθ := -(θ / ε) K((z - θ) / ε) (pseudo-derivative)."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_out * (z > threshold)
        grad_threshold = -(threshold / eps) * _rectangle((z - threshold) / eps) * grad_out
        return grad_z, _sum_to_shape(grad_threshold, threshold.shape), None


class StepFunction(torch.autograd.Function):
    """H(z - θ); d/dz = 0 (exact almost everywhere), d/dθ := -(1 / ε) K((z - θ) / ε)."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1 / eps) * _rectangle((z - threshold) / eps) * grad_out
        return torch.zeros_like(z), _sum_to_shape(grad_threshold, threshold.shape), None


def topk_relu(z: Float[Tensor, "... d_sae"], k: int) -> Float[Tensor, "... d_sae"]:
    """ReLU of the k largest entries of each row, zeros elsewhere (gradients flow to those k only)."""
    values, indices = z.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter_(-1, indices, values.relu())


# =========================================================================== the model


class SparseAutoencoder(nn.Module):
    """A dictionary of ``d_sae`` features for ``d_in``-wide activations (see the module docstring).

    ``forward(x)`` returns ``(x_hat, f, losses)`` with ``losses = {"loss", "mse", "sparsity"}``:
    the total the trainer minimises, the squared error ||x - x̂||² (mean over the batch), and the
    unweighted sparsity penalty (mean ||f||₁ for "l1", mean number of firing features for
    "jumprelu", 0 for "topk").
    """

    def __init__(self, cfg: SAEConfig, seed: Optional[int] = None):
        super().__init__()
        self.cfg = cfg
        self.metrics: dict = {}  # filled by load_sae from the saved JSON
        g = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
        # Random unit directions, with the encoder starting as the decoder's transpose: every
        # feature then starts by reading the direction it writes, which trains faster and leaves
        # fewer dead features than independent initialisations (Conerly et al. 2024, Gao et al. 2024).
        # Scaled down for L1 (encoder_init_norm, default 0.1): at full scale half the features fire
        # on every token and the reconstruction overshoots ~d_sae / (2 d_in) times; starting small,
        # the L1 penalty has far fewer activations to switch off (on synthetic features in
        # superposition, 0.1 found all of them in 600 steps where 1.0 found none). JumpReLU starts
        # at full scale: its pre-activations must clear the initial thresholds.
        # Drawn [d_in, d_sae], one feature per column (the draw of the course's earlier layout, so a
        # seed gives the dictionary it always gave), and stored contiguously in the current layout.
        directions = torch.randn(cfg.d_in, cfg.d_sae, generator=g)
        directions /= directions.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(directions.T.contiguous())  # [d_sae, d_in]: row i is feature i's direction
        self.W_enc = nn.Parameter(cfg.initial_encoder_norm * directions)  # [d_in, d_sae]: column i is what i reads
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold)))

    # ------------------------------------------------------------------ shapes and properties
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def threshold(self) -> Float[Tensor, "d_sae"]:
        """JumpReLU thresholds θ = exp(log θ) (positive by construction)."""
        if self.cfg.architecture != "jumprelu":
            raise AttributeError(f"only a 'jumprelu' SAE has thresholds; this one is {self.cfg.architecture!r}")
        return self.log_threshold.exp()

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"this SAE reads {self.d_in}-dimensional activations (d_in), "
                             f"got input of shape {tuple(x.shape)}")

    # ------------------------------------------------------------------ encoder and decoder
    def pre_activations(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """z = (x - b_dec) @ W_enc + b_enc, computed as x @ W_enc + (b_enc - b_dec @ W_enc).

        Same numbers, less work in training: written as (x - b_dec) @ W_enc, autograd would get
        b_dec's gradient through a [batch, d_sae] x [d_sae, d_in] matmul (a sixth of a step);
        folded into the bias it costs one matrix-vector product. ``F.linear(x, W.T, b)`` is
        ``x @ W + b`` with the bias added inside the matmul.
        """
        self._check_input(x)
        return F.linear(x, self.W_enc.T, self.b_enc - self.b_dec @ self.W_enc)

    def activation(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """The architecture's nonlinearity: ReLU, TopK-then-ReLU, or JumpReLU."""
        arch = self.cfg.architecture
        if arch == "l1":
            return z.relu()
        if arch == "topk":
            return topk_relu(z, self.cfg.k)
        return JumpReLUFunction.apply(z, self.threshold, self.cfg.jumprelu_bandwidth)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations f(x) >= 0."""
        return self.activation(self.pre_activations(x))

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """x̂ = f @ W_dec + b_dec: the sum of the active features' directions (rows of W_dec), scaled
        by their activations."""
        if f.shape[-1] != self.d_sae:
            raise ValueError(f"this SAE has {self.d_sae} features (d_sae), got f of shape {tuple(f.shape)}")
        return F.linear(f, self.W_dec.T, self.b_dec)  # f @ W_dec + b_dec, bias added inside the matmul

    def aux_loss(
        self, x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"], z: Float[Tensor, "batch d_sae"],
        dead: Tensor,
    ) -> Float[Tensor, ""]:
        """AuxK (Gao et al. 2024): how well the DEAD latents alone reconstruct the residual error.

            e     = x - x̂                          the main reconstruction's error, held fixed (detached)
            f_aux = ReLU(TopK_{k_aux}(z restricted to the dead latents))     (zeros elsewhere)
            ê     = f_aux @ W_dec                   (no b_dec: e is a difference of activations)
            L_aux = ||e - ê||²                      (summed over d_in, mean over the batch, like "mse")

        with k_aux = min(cfg.aux_k, number of dead latents). The gradient of L_aux reaches the dead
        latents' encoder columns, encoder biases and decoder rows only (and b_dec through the
        pre-activations): it pulls them towards what the live latents fail to reconstruct. 0 when
        no latent is dead. ``dead``: a [d_sae] boolean mask.
        """
        dead = dead.to(z.device).bool()
        n_dead = int(dead.sum())
        if n_dead == 0 or self.cfg.aux_k is None:
            return torch.zeros((), device=x.device, dtype=x.dtype)
        k = min(self.cfg.aux_k, n_dead)
        values, indices = z.masked_fill(~dead, float("-inf")).topk(k, dim=-1, sorted=False)
        f_aux = torch.zeros_like(z).scatter(-1, indices, values.relu())
        e = (x - x_hat).detach()
        n = x.reshape(-1, self.d_in).shape[0]
        return (e - F.linear(f_aux, self.W_dec.T)).pow(2).sum() / n

    def forward(
        self, x: Float[Tensor, "batch d_in"], sparsity_coeff: Optional[float] = None, dead: Optional[Tensor] = None,
    ) -> tuple[Float[Tensor, "batch d_in"], Float[Tensor, "batch d_sae"], dict[str, Tensor]]:
        """(x_hat, f, {"loss", "mse", "sparsity"}); ``sparsity_coeff`` overrides λ (for its warm-up).

        With AuxK on (``cfg.aux_k`` set) the dict also holds "aux", ``aux_loss`` for the [d_sae]
        mask ``dead`` (0 when ``dead`` is None), and "loss" includes ``cfg.aux_coeff`` times it.
        """
        arch = self.cfg.architecture
        z = self.pre_activations(x)
        f = self.activation(z)
        x_hat = self.decode(f)
        n = x.reshape(-1, self.d_in).shape[0]
        mse = (x_hat - x).pow(2).sum() / n
        if arch == "l1":
            sparsity = f.sum() / n  # f >= 0, so this is the L1 norm of the ACTIVATIONS
        elif arch == "jumprelu":
            sparsity = StepFunction.apply(z, self.threshold, self.cfg.jumprelu_bandwidth).sum() / n
        else:
            sparsity = torch.zeros((), device=x.device, dtype=x.dtype)
        coeff = self.cfg.sparsity_coeff if sparsity_coeff is None else sparsity_coeff
        losses = {"loss": mse + coeff * sparsity, "mse": mse, "sparsity": sparsity}
        if self.cfg.aux_k is not None:
            aux = self.aux_loss(x, x_hat, z, dead) if dead is not None else torch.zeros((), device=x.device,
                                                                                         dtype=x.dtype)
            losses["aux"] = aux
            losses["loss"] = losses["loss"] + self.cfg.aux_coeff * aux
        return x_hat, f, losses

    # ------------------------------------------------------------------ constraints on W_dec
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row (feature direction) to unit norm, in place."""
        # sqrt of a sum of squares: torch's norm(dim=1) takes ~10x longer on a CPU at [2048, 512]
        self.W_dec /= self.W_dec.pow(2).sum(1, keepdim=True).sqrt_().clamp_min_(1e-12)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove from each row's gradient its component along the row, in place.

        The step that remains is tangent to the unit sphere, so it moves the direction without
        (to first order) changing the norm that ``normalize_decoder_`` would undo anyway; this
        keeps Adam's moment estimates about directions only.
        """
        W, G = self.W_dec, self.W_dec.grad
        if G is None:
            return
        along = (G * W).sum(1, keepdim=True) / W.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
        G -= along * W

    @torch.no_grad()
    def init_b_dec_(self, sample: Float[Tensor, "n d_in"], method: Optional[str] = None) -> None:
        """Set b_dec to the geometric median (or mean, or zero) of a sample of activations."""
        method = method or self.cfg.b_dec_init
        self._check_input(sample)
        if method == "geometric_median":
            self.b_dec.copy_(geometric_median(sample.float()))
        elif method == "mean":
            self.b_dec.copy_(sample.float().mean(0))
        elif method == "zeros":
            self.b_dec.zero_()
        else:
            raise ValueError(f"b_dec init must be 'geometric_median', 'mean' or 'zeros', got {method!r}")

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, architecture={self.cfg.architecture!r}"

"""Sparse autoencoders on a model's activations, reference implementation for chapter 05.

    from utils.models import load_model
    from utils.sae import preset, train_sae, evaluate_sae

    model = load_model("gelu-1l")
    sae, log = train_sae(preset("cpu"), model=model)     # a few minutes on a 2-core CPU
    evaluate_sae(sae, model)                             # L0, FVE, CE loss recovered, dead/dense

Layout (SAELens's, and the course's: every weight [d_in, d_out], activations as rows):
``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` (row i = feature i's direction), ``b_enc [d_sae]``,
``b_dec [d_in]``; ``f = relu((x - b_dec) @ W_enc + b_enc)``, ``x_hat = f @ W_dec + b_dec``.
Training takes the plain autograd step unless the config opts in to the faster hand-written CPU
step (``fast_cpu=True``, ``cpu_step``).

Modules: ``config`` (SAEConfig, presets), ``model`` (the SAE), ``saving`` (save/load, SAELens's
layout), ``activations`` (the shuffled activation buffer), ``training`` (the loop), ``resampling``
(dead features), ``metrics``, ``cpu_step`` (the opt-in CPU step), ``toy`` (chapter 04's bridge).
"""
from utils.sae.activations import ActivationStore
from utils.sae.config import PRESETS, SAEConfig, preset
from utils.sae.metrics import (
                               ce_loss_recovered_from,
                               ce_losses,
                               dead_fraction,
                               dense_fraction,
                               density_histogram,
                               evaluate_sae,
                               feature_density,
                               fraction_variance_explained,
                               l0,
                               log10_density,
)
from utils.sae.model import JumpReLUFunction, SparseAutoencoder, StepFunction, geometric_median, topk_relu
from utils.sae.resampling import per_input_loss, resample_dead_features_
from utils.sae.saving import SAE_DIR, load_sae, save_sae
from utils.sae.training import lr_at, make_store, pick_device, sparsity_coeff_at, train_sae

__all__ = [
    "SAEConfig", "PRESETS", "preset",
    "SparseAutoencoder", "geometric_median", "topk_relu", "JumpReLUFunction", "StepFunction",
    "save_sae", "load_sae", "SAE_DIR",
    "ActivationStore", "make_store",
    "train_sae", "pick_device", "lr_at", "sparsity_coeff_at",
    "resample_dead_features_", "per_input_loss",
    "l0", "fraction_variance_explained", "feature_density", "dead_fraction", "dense_fraction",
    "log10_density", "density_histogram", "ce_losses", "ce_loss_recovered_from", "evaluate_sae",
]

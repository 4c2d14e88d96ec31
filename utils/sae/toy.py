"""The bridge from chapter 04: an SAE trained on the hidden layer of a toy model of superposition.

Chapter 04's toy model (``utils.superposition``) squeezes n sparse features into m < n hidden
dimensions, h = W x, with feature i written along column W[:, i]. Those columns are the TRUE
features of h, something we never know for a language model. An SAE trained on h should find
them again: for each true feature, some decoder row d_j = W_dec[j] should point the same way,
cos(W[:, i], d_j) close to 1 (``utils.sae.exercises.feature_recovery``). (The toy's W is chapter
04's, [d_hidden, n_features] with features as columns; the SAE's W_dec is [d_sae, d_in], features
as rows.)

    toy = train_toy_model()                      # ~2 s on one core
    sae, log = train_toy_sae(toy, resample=True) # ~1 s
    best = feature_recovery(true_directions(toy), sae.W_enc, sae.W_dec)

Everything is seeded: the toy model by ``seed``, its data by the store's own generator, the SAE
by its config's ``seed``.
"""
from __future__ import annotations

import contextlib
import io
from functools import lru_cache
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from utils.sae.config import SAEConfig
from utils.sae.model import SparseAutoencoder
from utils.sae.training import train_sae
from utils.superposition import ToyConfig, ToyModel, generate_batch, train

# The chapter's toy: 40 features in 10 dimensions (4 per dimension), each present 3% of the time.
N_FEATURES, D_HIDDEN, FEATURE_PROBABILITY = 40, 10, 0.03
RECOVERY_THRESHOLD = 0.9  # a true feature is "recovered" when some SAE feature has cosine above this


def train_toy_model(n_features: int = N_FEATURES, d_hidden: int = D_HIDDEN,
                    feature_probability: float = FEATURE_PROBABILITY, steps: int = 2000, seed: int = 0) -> ToyModel:
    """Chapter 04's ReLU-output toy model (uniform importance), trained with ``utils.superposition.train``."""
    toy = ToyModel(ToyConfig(n_features=n_features, d_hidden=d_hidden), feature_probability=feature_probability,
                   seed=seed)
    train(toy, steps=steps, batch_size=1024, lr=3e-3, seed=seed)
    return toy.eval()


def true_directions(toy: ToyModel) -> Float[Tensor, "d_hidden n_features"]:
    """W of the (first) toy instance: column i is where feature i lives in the hidden space."""
    return toy.W.detach()[0].clone()


class ToyHiddenStore:
    """Serves the toy model's hidden activations h = W x for fresh sparse feature vectors x.

    The interface ``train_sae`` needs from a store: ``next_batch()``, ``sample(n)``, ``d_in``,
    ``batch_size``. Its data come from its own seeded generator.
    """

    def __init__(self, toy: ToyModel, batch_size: int, seed: int = 1):
        self.W = true_directions(toy)
        self.feature_probability = toy.feature_probability[:1].detach()
        self.d_in, self.batch_size = self.W.shape[0], batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def features(self, n: int) -> Float[Tensor, "n n_features"]:
        """n fresh sparse feature vectors x (each entry 0, or uniform on [0, 1] with probability p)."""
        return generate_batch(n, self.feature_probability, self.generator)[0]

    def sample(self, n: int) -> Float[Tensor, "n d_hidden"]:
        return self.features(n) @ self.W.T

    def next_batch(self) -> Float[Tensor, "batch d_hidden"]:
        return self.sample(self.batch_size)


def toy_sae_config(resample: bool = True, **changes) -> SAEConfig:
    """The chapter's SAE for the toy: an L1 SAE with twice as many features as the toy has, 800 steps.

    ``resample``: dead features are resampled after steps 250 and 500 (window 100), or never.
    """
    base = dict(d_in=D_HIDDEN, d_sae=2 * N_FEATURES, architecture="l1", l1_coeff=0.3, lr=3e-3, lr_warmup_steps=20,
                batch_size=256, training_tokens=256 * 800, buffer_size=4096, b_dec_init_samples=1024,
                resample_inputs=2048, resample_steps=(250, 500) if resample else (), resample_window=100,
                device="cpu", log_every=100, seed=0)
    return SAEConfig(**{**base, **changes})


def train_toy_sae(toy: ToyModel, resample: bool = True, cfg: Optional[SAEConfig] = None,
                  progress: bool = False) -> tuple[SparseAutoencoder, dict]:
    """Train an SAE on the toy's hidden activations (``toy_sae_config(resample)`` unless ``cfg``)."""
    cfg = cfg or toy_sae_config(resample)
    return train_sae(cfg, store=ToyHiddenStore(toy, cfg.batch_size, seed=cfg.seed + 1), progress=progress)


@lru_cache(maxsize=1)
def bridge_run() -> dict:
    """The chapter's run, computed once per process: the toy model's true directions and the SAEs
    trained with and without resampling (weights detached: plain tensors)."""
    # One thread: these tensors are tiny, and on a busy machine a second thread only waits (it made
    # this run 15x slower in a 2-thread kernel). Also keeps the numbers independent of the setting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        toy = train_toy_model()
        out = {"true_directions": true_directions(toy)}
        for name, resample in (("resampled", True), ("plain", False)):
            with contextlib.redirect_stdout(io.StringIO()):  # the trainer's resampling lines: a check prints one line
                sae, log = train_toy_sae(toy, resample=resample)
            out[name] = {"W_enc": sae.W_enc.detach().clone(), "W_dec": sae.W_dec.detach().clone(),
                         "n_resampled": [r["n_resampled"] for r in log["resampled"]], "history": log["history"],
                         "dead_fraction": log["history"][-1]["dead_fraction"]}
    finally:
        torch.set_num_threads(threads)
    return out

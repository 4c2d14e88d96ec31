"""What chapter 05's own training loop starts from: a seeded activation buffer and starting weights.

The course trainer (``utils.sae.training.train_sae``) takes a ``store`` with ``next_batch()`` and
``sample(n)`` and an SAE; a student's loop (the chapter's "your own training loop" exercise) takes
the same two things, as plain tensors instead of an ``nn.Module``: the four parameters are leaf
tensors that require gradients, updated by ``torch.optim.Adam`` from the student's own forward pass,
loss, gradient projection, renormalisation and resampling. Everything here is seeded, so one seed
gives one run: the check (``utils.checks.ch05_training``) calls the loop with its seed.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from utils.sae.activations import ActivationStore

MODEL_NAME = "gelu-1l"
HOOK_NAME = "blocks.0.mlp.hook_post"
BUFFER_SIZE = 32_768  # activations kept shuffled (refilled when half are used): 64 MB at d_in 512
ENCODER_INIT_NORM = 0.1  # W_enc starts as this times W_dec's transpose, as in utils.sae.model
# In a run of a few hundred steps few features die by themselves, so a loop that never resamples
# would look as healthy as one that does. The starting point therefore ships this fraction of the
# dictionary already dead: an encoder bias so negative that the feature never fires (and so gets no
# gradient). Only resampling brings them back, as it would features that died during training.
DEAD_AT_START = 0.25
DEAD_BIAS = -100.0


@lru_cache(maxsize=1)
def training_model():
    """gelu-1l on the CPU, loaded once per process (the store only runs it, never changes it)."""
    from utils.models import load_model

    return load_model(MODEL_NAME, device="cpu")


def training_store(seed: int, batch_size: int, buffer_size: int = BUFFER_SIZE) -> ActivationStore:
    """The course's shuffled buffer of gelu-1l's MLP activations (``blocks.0.mlp.hook_post``), on the
    CPU; the same seed serves the same batches."""
    return ActivationStore(training_model(), HOOK_NAME, batch_size=batch_size, buffer_size=buffer_size, seed=seed,
                           device="cpu")


def initial_parameters(d_in: int, d_sae: int, seed: int) -> dict[str, Tensor]:
    """{"W_enc", "b_enc", "W_dec", "b_dec"}: leaf tensors requiring gradients, in the course's layout.

    W_dec's rows are random unit vectors, W_enc is ENCODER_INIT_NORM times W_dec's transpose (each
    feature starts reading the direction it writes), b_dec is zero (set it from the data before
    training: the geometric median of a sample), and b_enc is zero except for a random
    DEAD_AT_START fraction of the features, which start dead (b_enc = DEAD_BIAS).
    """
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    b_enc = torch.zeros(d_sae)
    b_enc[torch.randperm(d_sae, generator=g)[: int(DEAD_AT_START * d_sae)]] = DEAD_BIAS
    params = {"W_enc": ENCODER_INIT_NORM * W_dec.T.contiguous(), "b_enc": b_enc,
              "W_dec": W_dec, "b_dec": torch.zeros(d_in)}
    return {name: value.requires_grad_(True) for name, value in params.items()}

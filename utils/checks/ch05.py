"""Checks for chapter 05 (sparse autoencoders, after Bricken et al. 2023): the one module the
notebook imports, ``from utils.checks import ch05 as check``.

Layout as in utils.sae (and SAELens): W_enc [d_in, d_sae] (column i = what feature i reads),
W_dec [d_sae, d_in] whose ROWS are the feature directions, b_enc [d_sae], b_dec [d_in]; activations
are rows, x [batch, d_in], f [batch, d_sae]. Random weights are drawn in that layout.
The reference answers are utils.sae's own functions (utils/sae/exercises.py for the ones whose
shape differs from the trainer's).

Random inputs keep batch, d_in and d_sae different from each other, so a sum or mean over the
wrong axis, or a transposed weight, cannot pass by accident. Several exercises return a tuple;
when such an answer is wrong in a way no catalogued mistake explains, the check says WHICH part is
wrong and where, instead of printing both tuples.

The checks are written one module per part of the chapter, each section holding one exercise (its
inputs, its reference, its catalogue of mistakes), and every check and Exercise is re-exported
here under its own name:

- ``ch05_inputs``      the random inputs the parts share (sizes, sparse activations, ``scalar``)
- ``ch05_recovery``    1. did the SAE find the features? (the toy model of chapter 04)
- ``ch05_sae``         2-5. the forward pass, the loss, unit-norm decoder rows, the geometric median
- ``ch05_metrics``     6. L0, fraction of variance explained, CE loss recovered, dead and dense
- ``ch05_resampling``  7. resampling dead features; 7b. where they are sent (loss-squared probabilities)
- ``ch05_topk``        8. TopK activations
- ``ch05_training``    9. the student's own training loop, graded on the trained SAE's outcome

The conceptual questions live here (their options and keys are in the solutions' questions.json).
"""
from __future__ import annotations

from utils.checks.ch05_metrics import (  # noqa: F401
    CE_RECOVERED,
    DEAD_DENSE,
    FVE,
    L0,
    ce_loss_recovered,
    dead_dense_fractions,
    fraction_variance_explained,
    l0,
)
from utils.checks.ch05_recovery import FEATURE_RECOVERY, feature_recovery  # noqa: F401
from utils.checks.ch05_resampling import (  # noqa: F401
    RESAMPLE,
    RESAMPLE_PARTS,
    RESAMPLE_PROBABILITIES,
    STATE_KEYS,
    resample_dead_features,
    resampling_probabilities,
)
from utils.checks.ch05_sae import (  # noqa: F401
    GEOMETRIC_MEDIAN,
    MEDIAN_TOL,
    NORMALIZE_DECODER,
    REMOVE_PARALLEL_GRAD,
    SAE_FORWARD,
    SAE_LOSS,
    geometric_median,
    normalize_decoder,
    remove_parallel_grad,
    sae_forward,
    sae_loss,
)
from utils.checks.ch05_topk import TOPK, topk_activation  # noqa: F401
from utils.checks.ch05_training import TRAIN_LOOP, train_my_sae, trained_run  # noqa: F401
from utils.checks.core import question

CHAPTER = "05"
EXERCISES = ("feature_recovery", "sae_forward", "sae_loss", "normalize_decoder", "remove_parallel_grad",
             "geometric_median", "l0", "fraction_variance_explained", "ce_loss_recovered", "dead_dense_fractions",
             "resample_dead_features", "resampling_probabilities", "topk_activation", "train_my_sae",
             "l0_question", "shrinkage_question", "resampling_question")


# =========================================================================== multiple choice
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


l0_question = question(CHAPTER, "l0_question")
shrinkage_question = question(CHAPTER, "shrinkage_question")
resampling_question = question(CHAPTER, "resampling_question")

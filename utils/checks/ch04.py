"""Checks for chapter 04 (toy models of superposition): the one module the notebook imports,
``from utils.checks import ch04 as check``.

Shapes follow utils.superposition: the instance axis comes first, W [inst, d_hidden, feat],
b [inst, feat], x [inst, batch, feat], importance and feature probability [inst, feat].

The data generator is random, so its check compares STATISTICS of the student's samples (how
often each feature is on, the mean and spread of its values when on, how often neighbouring
features are on together) with their exact expected values; the misconceptions are described by
their own exact statistics.

The reference answers are utils/superposition/exercises.py. The checks are written one module per
part of the chapter, one section per exercise (its inputs, its reference, its catalogue of mistakes
with their exact statistics), and every check and Exercise is re-exported here under its own name:

- ``ch04_model``           1, 3. the forward pass, the importance-weighted loss (and the random
                           sizes the parts share)
- ``ch04_data``            2. the sparse data generator (``batch_statistics``)
- ``ch04_measures``        4-5. superposition, feature dimensionality
- ``ch04_anticorrelated``  6. anti-correlated feature groups (``anti_statistics``)
- ``ch04_phase``           4b. the phase change of two features in one dimension, in closed form
- ``ch04_training``        3b. the student's own training loop, graded on what it trains
                           (``last_run``: the weights it trained, for the notebook's plots)

The conceptual questions live here (their options and keys are in the solutions' questions.json).
"""
from __future__ import annotations

from utils.checks.ch04_anticorrelated import (  # noqa: F401
    ANTI_ROWS,
    ANTI_TWO_ACTIVE,
    ANTICORRELATED_BATCH,
    anti_statistics,
    anticorrelated_batch,
)
from utils.checks.ch04_data import GENERATE_BATCH, GENERATE_ROWS, GENERATE_TOL, batch_statistics, generate_batch  # noqa: F401
from utils.checks.ch04_measures import DIMENSIONALITY, SUPERPOSITION, dimensionality, superposition  # noqa: F401
from utils.checks.ch04_model import LOSS, TOY_FORWARD, toy_forward, weighted_loss  # noqa: F401
from utils.checks.ch04_phase import PAIR_LOSSES, pair_losses  # noqa: F401
from utils.checks.ch04_training import BANDS, TRAIN_TOY, last_run, train_toy  # noqa: F401
from utils.checks.core import question

CHAPTER = "04"
EXERCISES = ("toy_forward", "generate_batch", "weighted_loss", "train_toy", "superposition", "dimensionality",
             "dense_regime_question", "antipodal_question", "pair_losses", "privileged_basis_question",
             "anticorrelated_batch")


# --------------------------------------------------------------------------- multiple choice
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


dense_regime_question = question(CHAPTER, "dense_regime_question")
antipodal_question = question(CHAPTER, "antipodal_question")
privileged_basis_question = question(CHAPTER, "privileged_basis_question")

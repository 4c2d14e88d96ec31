"""Checks for chapter 02 (QK and OV circuits, and skip-trigrams): the one module the notebook
imports, ``from utils.checks import ch02 as check``.

Every check runs the student's function on seeded random inputs and, where the exercise is about
the real model, on the bundled attn-only-1l's own weights and activations. A mismatch is explained
by the first catalogued mistake whose output the student's output reproduces.

The first default case of every weight-shaped exercise is "square" (d_vocab == d_model == d_head,
or n_ctx == d_model): there every transposition and every wrong product order still runs, so the
check can name it instead of reporting a shape error. The other cases keep the sizes apart.

The reference answers are utils/circuits/exercises.py. The checks are written one module per part
of the chapter, one section per exercise (its inputs, its reference, its catalogue of mistakes),
and every check and Exercise is re-exported here under its own name:

- ``ch02_full_circuits``  1. the full OV and QK circuits, an OV slice from activations (and the
                          helpers the parts share)
- ``ch02_positions``      2. the positional QK pattern, positional head scores
- ``ch02_skip_trigrams``  3-4. a source's top destinations and outs, a head's best skip-trigrams
                          over every source (hard), behavioural confirmation
- ``ch02_bigrams``        5. Spearman's rank correlation (the direct path against bigrams)

The conceptual questions live here (their options and keys are in the solutions' questions.json).
"""
from __future__ import annotations

from utils.checks.ch02_bigrams import SPEARMAN, spearman  # noqa: F401
from utils.checks.ch02_full_circuits import (  # noqa: F401
    FULL_OV,
    FULL_QK,
    OV_FROM_ACTIVATIONS,
    PROBE,
    full_ov_circuit,
    full_qk_circuit,
    ov_from_activations,
)
from utils.checks.ch02_positions import (  # noqa: F401
    POSITIONAL_HEAD_SCORES,
    POSITIONAL_QK_PATTERN,
    positional_head_scores,
    positional_qk_pattern,
)
from utils.checks.ch02_skip_trigrams import (  # noqa: F401
    CONFIRMATION_EFFECT,
    HEAD_TRIGRAMS,
    TOP_FOR_SOURCE,
    confirmation_effect,
    head_skip_trigrams,
    top_for_source,
)
from utils.checks.core import question

CHAPTER = "02"
EXERCISES = (
    "full_ov_circuit", "full_qk_circuit", "ov_from_activations", "positional_qk_pattern",
    "positional_head_scores", "top_for_source", "head_skip_trigrams", "confirmation_effect", "spearman",
    "axis_question", "baseline_question", "shortformer_question",
)


# --------------------------------------------------------------------------- conceptual questions
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


axis_question = question(CHAPTER, "axis_question")
baseline_question = question(CHAPTER, "baseline_question")
shortformer_question = question(CHAPTER, "shortformer_question")

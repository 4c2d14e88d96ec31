"""Checks for chapter 06 (interpreting SAE features, after Bricken et al. 2023): the one module the
notebook imports, ``from utils.checks import ch06 as check``.

Layout as in utils.sae and utils.features (and SAELens): W_enc [d_in, d_sae] (column i = what
feature i reads), W_dec [d_sae, d_in] (ROW i is feature i), b_enc [d_sae], b_dec [d_in]; the model's
W_out [d_mlp, d_model], W_U [d_model, d_vocab]. Random weights are drawn in that layout.
The reference answers are utils/features/exercises.py.

Most random cases keep every dimension different, so a transposed weight or a reduction over the
wrong axis fails on shape or value. Some mistakes only run at all when two dimensions are equal
(skipping W_out needs d_mlp = d_model; correlating over features needs as many features as tokens),
so those exercises START with square cases: there the mistake gives numbers, and the check can name
it, before a rectangular case fails it on shape.

The checks are written one module per part of the chapter, one section per exercise (its inputs,
its reference, its catalogue of mistakes), and every check and Exercise is re-exported here under
its own name:

- ``ch06_dashboard``    1-3. top-activating examples, logit weights, specificity and sensitivity
- ``ch06_effects``      4-5. ablating a feature, steering with it
- ``ch06_correlation``  6-7. is it just a neuron? (Pearson correlation), universality across seeds
- ``ch06_splitting``    7b. how much of a parent feature its children explain (hard)
- ``ch06_hunt``         8-9. hand ratings against an automatic score, direct logit attribution

The conceptual questions live here (their options and keys are in the solutions' questions.json).
"""
from __future__ import annotations

from utils.checks.ch06_correlation import MATCH, NAN_EXPLANATION, PEARSON, match_features, pearson_correlation  # noqa: F401
from utils.checks.ch06_dashboard import (  # noqa: F401
    LOGIT_WEIGHTS,
    SPECIFICITY,
    TOP_ACTIVATING,
    logit_weights,
    specificity_sensitivity,
    top_activating,
)
from utils.checks.ch06_effects import ABLATE, STEER, ablate_feature, steer_feature  # noqa: F401
from utils.checks.ch06_hunt import ATTRIBUTION, RUBRIC, feature_logit_attribution, rubric_agreement  # noqa: F401
from utils.checks.ch06_splitting import SPLIT, split_regression  # noqa: F401
from utils.checks.core import question

CHAPTER = "06"
EXERCISES = ("top_activating", "logit_weights", "pearson_correlation", "specificity_sensitivity",
             "ablate_feature", "steer_feature", "match_features", "split_regression", "rubric_agreement",
             "feature_logit_attribution", "neuron_question", "specificity_question", "universality_question")


# =========================================================================== multiple choice
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


neuron_question = question(CHAPTER, "neuron_question")
specificity_question = question(CHAPTER, "specificity_question")
universality_question = question(CHAPTER, "universality_question")

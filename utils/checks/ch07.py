"""Checks for chapter 07 (transcoders and attribution graphs, after Ameisen et al. 2025): the one
module the notebook imports, ``from utils.checks import ch07 as check``.

Layout as in utils.attribution (and SAELens): a transcoder's W_enc [d_in, d_trans], W_dec
[d_trans, d_out] (row i: what feature i writes); attention patterns [n_heads, query, key];
adjacency matrices A[target, source]. The reference answers are utils/attribution/exercises.py;
the edge check's expected values come from finite interventions, not from that formula.

The checks are written one module per part of the chapter, and re-exported here:

- ``ch07_transcoder``   1. the TopK transcoder's forward pass
- ``ch07_edges``        2. feature -> feature edges through the residual stream and frozen attention
- ``ch07_influence``    3-5. influence, pruning, replacement and completeness scores

The conceptual questions live here (their options and keys are in the solutions' questions.json).
"""
from __future__ import annotations

from utils.checks.ch07_edges import EDGES, edges_by_intervention, feature_edges  # noqa: F401
from utils.checks.ch07_influence import (  # noqa: F401
    INFLUENCE,
    PRUNE,
    SCORES,
    graph_scores,
    influence_matrix,
    prune_mask,
)
from utils.checks.ch07_transcoder import TRANSCODER, transcoder_forward  # noqa: F401
from utils.checks.core import question

CHAPTER = "07"
EXERCISES = ("transcoder_forward", "feature_edges", "influence_matrix", "prune_mask", "graph_scores",
             "exactness_question", "intervention_question")


# =========================================================================== multiple choice
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


exactness_question = question(CHAPTER, "exactness_question")
intervention_question = question(CHAPTER, "intervention_question")

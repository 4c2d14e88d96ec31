"""Checks for chapter 03 (copying, induction heads, composition, the circuit, patching): the one
module the notebook imports, ``from utils.checks import ch03 as check``.

The checks are written one module per part of the chapter, and every check and Exercise is
re-exported here under its own name:

- ``ch03_copying``      1. eigenvalues and copying (attn-only-1l's OV circuits)
- ``ch03_induction``    2. per-token loss, induction and previous-token scores, the loss drop,
                        ablation (attn-only-2l on repeated random tokens)
- ``ch03_composition``  3. composition scores (attn-only-2l's K-composition)
- ``ch03_circuit``      the induction circuit read from the weights
- ``ch03_patching``     activation patching and direct logit attribution
- ``ch03_hooks``        hooks the student writes (zero- and mean-ablation, patching one head at one
                        position), run inside attn-only-2l's forward pass, and the held-out text's
                        in-context-learning score with heads ablated through them
- ``ch03_text``         the induction score of any tokens (natural text), a hard exercise
- ``ch03_training``     train your own induction heads: the student's schedule for the course
                        trainer, graded on the outcome of the run it makes

The conceptual questions live here (their options and keys are in the solutions' questions.json).
Every check runs the student's function on seeded random inputs and on a bundled model, and
explains a mismatch by the first catalogued mistake whose output the student's output reproduces.
"""
from __future__ import annotations

from utils.checks import ch03_circuit as _circuit
from utils.checks import ch03_composition as _composition
from utils.checks import ch03_copying as _copying
from utils.checks import ch03_hooks as _hooks
from utils.checks import ch03_induction as _induction
from utils.checks import ch03_patching as _patching
from utils.checks import ch03_text as _text
from utils.checks import ch03_training as _training
from utils.checks.ch03_circuit import (  # noqa: F401
                                       IN_CONTEXT_LEARNING_SCORE,
                                       K_COMPOSITION_CIRCUIT,
                                       POSITIONAL_ATTENTION_PATTERN,
                                       TOP_1_DIAGONAL_ACCURACY,
                                       in_context_learning_score,
                                       k_composition_circuit,
                                       positional_attention_pattern,
                                       top_1_diagonal_accuracy,
)
from utils.checks.ch03_composition import COMPOSITION_SCORE, COMPOSITION_SCORES, composition_score, composition_scores  # noqa: F401
from utils.checks.ch03_copying import (  # noqa: F401
                                       COPYING_SCORE,
                                       EIGENVALUES_VIA_SMALL_PRODUCT,
                                       FULL_OV_CIRCUIT_EIGENVALUES,
                                       SELF_TOP_K_FRACTION,
                                       copying_score,
                                       eigenvalues_via_small_product,
                                       full_ov_circuit_eigenvalues,
                                       self_top_k_fraction,
)
from utils.checks.ch03_hooks import (  # noqa: F401
                                       ABLATED_ICL_SCORE,
                                       MEAN_ABLATION_HOOK,
                                       PATCH_HEAD_POSITION_HOOK,
                                       ZERO_ABLATION_HOOK,
                                       ablated_icl_score,
                                       mean_ablation_hook,
                                       patch_head_position_hook,
                                       zero_ablation_hook,
)
from utils.checks.ch03_induction import (  # noqa: F401
                                       ABLATE_HEADS,
                                       INDUCTION_LOSS_DROP,
                                       INDUCTION_SCORES,
                                       PER_TOKEN_LOSS,
                                       PREVIOUS_TOKEN_SCORES,
                                       REAL_SEQ_LEN,
                                       ablate_heads,
                                       attn_only_2l,
                                       induction_loss_drop,
                                       induction_scores,
                                       per_token_loss,
                                       previous_token_scores,
)
from utils.checks.ch03_patching import (  # noqa: F401
                                       HEAD_LOGIT_ATTRIBUTION,
                                       INDUCTION_LOGIT_DIFF,
                                       NORMALISED_PATCHING_METRIC,
                                       PATCHED_HEAD_OUTPUTS,
                                       PATCHED_RESIDUAL_POSITIONS,
                                       head_logit_attribution,
                                       induction_logit_diff,
                                       normalised_patching_metric,
                                       patched_head_outputs,
                                       patched_residual_positions,
)
from utils.checks.ch03_text import TEXT_INDUCTION_SCORES, text_induction_scores  # noqa: F401
from utils.checks.ch03_training import INDUCTION_SCHEDULE, induction_schedule  # noqa: F401
from utils.checks.core import question

CHAPTER = "03"
EXERCISES = tuple(_copying.EXERCISES + _induction.EXERCISES + _composition.EXERCISES
                  + ["copying_question", "k_composition_question", "baseline_question"]
                  + _circuit.EXERCISES + _hooks.EXERCISES[:2] + _patching.EXERCISES + ["patching_question"]
                  + _hooks.EXERCISES[2:] + _text.EXERCISES + _training.EXERCISES)


# --------------------------------------------------------------------------- conceptual questions
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


copying_question = question(CHAPTER, "copying_question")
k_composition_question = question(CHAPTER, "k_composition_question")
baseline_question = question(CHAPTER, "baseline_question")
patching_question = question(CHAPTER, "patching_question")

"""Every graded reference of chapter 03, in the notebook's order, gathered in one place.

They are written in five modules of this package (one file would pass ~400 lines): ``copying``
(sections 1-3: eigenvalues, the induction loss drop and ablation, composition scores), ``circuit``
(the circuit read from the weights), ``patching`` (activation patching and direct logit
attribution), ``hooks`` (the ablation and patching hooks, and the text in-context-learning score
with heads ablated), ``text`` (induction scores on any text) and ``training`` (a schedule that
trains a small model's own induction heads). Three live in
``utils.models.evaluation`` because the LM trainer logs them: ``induction_scores``,
``previous_token_scores`` and ``in_context_learning_score``.
``utils.checks.ch03`` grades each one under the same name.
"""
from utils.induction.circuit import k_composition_circuit, positional_attention_pattern, top_1_diagonal_accuracy
from utils.induction.copying import (
                                     ablate_heads,
                                     composition_score,
                                     composition_scores,
                                     copying_score,
                                     eigenvalues_via_small_product,
                                     full_ov_circuit_eigenvalues,
                                     induction_loss_drop,
                                     per_token_loss,
                                     self_top_k_fraction,
)
from utils.induction.hooks import ablated_icl_score, mean_ablation_hook, patch_head_position_hook, zero_ablation_hook
from utils.induction.patching import (
                                     head_logit_attribution,
                                     induction_logit_diff,
                                     normalised_patching_metric,
                                     patched_head_outputs,
                                     patched_residual_positions,
)
from utils.induction.text import text_induction_scores
from utils.induction.training import induction_schedule
from utils.models.evaluation import in_context_learning_score, induction_scores, previous_token_scores

__all__ = [
    # 1. copying
    "eigenvalues_via_small_product", "full_ov_circuit_eigenvalues", "copying_score", "self_top_k_fraction",
    # 2. induction heads
    "per_token_loss", "induction_scores", "previous_token_scores", "induction_loss_drop", "ablate_heads",
    # 3. composition
    "composition_score", "composition_scores",
    # 4. the circuit from the weights
    "in_context_learning_score", "positional_attention_pattern", "k_composition_circuit", "top_1_diagonal_accuracy",
    # 5. patching and direct logit attribution
    "induction_logit_diff", "normalised_patching_metric", "patched_head_outputs", "patched_residual_positions",
    "head_logit_attribution",
    # 6. hooks and natural text
    "zero_ablation_hook", "mean_ablation_hook", "patch_head_position_hook", "ablated_icl_score",
    "text_induction_scores",
    # 7. train your own induction heads
    "induction_schedule",
]

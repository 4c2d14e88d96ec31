"""Chapter 03: copying, induction heads, K-composition and activation patching.

- ``exercises``: every graded reference, in the notebook's order. They are written in three
  modules (one file would pass ~400 lines): ``copying`` (eigenvalue copying scores, the induction
  loss drop, head ablation, composition scores), ``circuit`` (positional attention, the
  K-composition circuit read from the weights, a circuit's top-1 diagonal accuracy) and ``patching``
  (the patching metric, patched activations, direct logit attribution).
- ``experiments``: the references run on a model (OV weights of a layer, a random-init baseline,
  ablated loss drops, the random composition baseline, corrupted tokens, patching sweeps).
- ``training``: train your own induction heads (a small model, the synthetic curriculum, the course
  trainer): the graded ``induction_schedule``, ``train_schedule``, ``best_heads``.
- ``cli``: ``python -m utils.induction [MODEL] [--gate]``.

The repeated-random-token data, the head scores, the held-out and in-context-learning losses and
the bundled attn-only-2l's gate are model-level (the LM trainer logs them): they live in
``utils.models.evaluation``; those the chapter uses are re-exported here, so ``from utils.induction
import X`` works for every name the notebook and the checks read (a head's OV circuit, chapter 02's
``utils.circuits.full_ov_circuit``, too).
"""
from utils.circuits.exercises import full_ov_circuit  # chapter 02's, read here one head at a time
from utils.induction import exercises
from utils.induction.circuit import (
                                     k_composition_circuit,
                                     positional_attention_pattern,
                                     top_1_diagonal_accuracy,
)
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
from utils.induction.experiments import (
                                     ablated_induction_loss_drop,
                                     attn_weights,
                                     copying_summary,
                                     corrupted_first_copy,
                                     folded_unembed,
                                     head_patching_table,
                                     ov_weights,
                                     random_composition_baseline,
                                     random_composition_scores,
                                     random_init_copy,
                                     residual_hook_names,
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
from utils.induction.training import SMALL_MODEL, best_heads, induction_schedule, train_schedule
from utils.models.evaluation import (
                                     ICL_EARLY,
                                     ICL_LATE,
                                     chunk_means,
                                     gate_failures,
                                     gate_report,
                                     held_out_losses,
                                     in_context_learning_score,
                                     induction_report,
                                     induction_scores,
                                     previous_token_scores,
                                     record_gate,
                                     repeated_random_tokens,
                                     second_copy_losses,
)

__all__ = [
    "exercises",
    # copying
    "eigenvalues_via_small_product", "full_ov_circuit_eigenvalues", "copying_score", "self_top_k_fraction",
    "per_token_loss", "induction_loss_drop", "ablate_heads", "composition_score", "composition_scores",
    # circuit
    "in_context_learning_score", "ICL_EARLY", "ICL_LATE", "positional_attention_pattern", "k_composition_circuit",
    "full_ov_circuit", "top_1_diagonal_accuracy",
    # patching
    "induction_logit_diff", "normalised_patching_metric", "patched_head_outputs", "patched_residual_positions",
    "head_logit_attribution",
    # hooks and natural text
    "zero_ablation_hook", "mean_ablation_hook", "patch_head_position_hook", "ablated_icl_score",
    "text_induction_scores",
    # train your own induction heads
    "SMALL_MODEL", "induction_schedule", "train_schedule", "best_heads",
    # experiments
    "ov_weights", "random_init_copy", "copying_summary", "ablated_induction_loss_drop", "attn_weights",
    "random_composition_scores", "random_composition_baseline", "corrupted_first_copy", "folded_unembed",
    "head_patching_table", "residual_hook_names",
    # model-level (utils.models.evaluation)
    "repeated_random_tokens", "induction_scores", "previous_token_scores", "induction_report", "second_copy_losses",
    "chunk_means", "held_out_losses", "gate_report", "gate_failures", "record_gate",
]

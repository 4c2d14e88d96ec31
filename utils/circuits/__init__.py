"""QK and OV circuits of a one-layer attention-only model, and the skip-trigrams they encode: the
reference package of chapter 02.

Layout as in ``utils.attention``: weights act on ROW vectors, so each circuit is the transpose of
the paper's (column-vector) formula:

    full OV circuit   paper W_U W_O^h W_V^h W_E      code W_E @ W_V[h] @ W_O[h] @ W_U    [src, out]
    full QK circuit   paper W_E^T W_Q^hT W_K^h W_E   code W_E @ W_Q[h] @ W_K[h].T @ W_E.T  [dest, src]

Row s of the OV circuit is how head h changes every logit when it attends (fully) to token s. Row
d of the QK circuit holds the (unscaled) attention scores of a query token d for every key token.
Both are d_vocab x d_vocab but have rank at most d_head, so they are kept as ``FactoredMatrix``
([d_vocab, d_head] times [d_head, d_vocab]) and only ever materialised in slices.

Modules, in the chapter's order:

- ``exercises``: the graded computations as pure tensor functions (the references): the full
  circuits, positional attention, one head's top skip-trigrams, the confirmation measurement,
  Spearman's rank correlation.
- ``experiments``: what runs the model: forced attention, the skip-trigram search over every head
  (``skip_trigrams`` -> ``SkipTrigrams``), behavioural confirmation (``confirm_skip_trigrams``).
- ``bigrams``: the direct path against bigram counts (``direct_path_vs_bigrams``).
- ``tables``: skip-trigrams as text/HTML tables (``skip_trigram_table``, ``TrigramTable``).
- ``plots``: ``plot_relative_attention``.
- ``widgets``: the ipywidgets explorer (``circuit_explorer``, ``explorer_html``).

The names the notebook, the checks and the tests use are re-exported here, so
``from utils import circuits; circuits.skip_trigrams(...)`` works.
"""
from transformer_lens import FactoredMatrix

from utils.circuits import exercises
from utils.circuits.bigrams import bigram_counts, direct_path_vs_bigrams
from utils.circuits.exercises import (
                                      average_ranks,
                                      circuit_slice,
                                      classify_heads,
                                      confirmation_effect,
                                      full_ov_circuit,
                                      full_qk_circuit,
                                      head_skip_trigrams,
                                      ov_from_activations,
                                      positional_head_scores,
                                      positional_qk_pattern,
                                      positional_qk_scores,
                                      source_centred,
                                      spearman,
                                      top_for_source,
)
from utils.circuits.experiments import (
                                      confirm_skip_trigrams,
                                      confirmation_prompts,
                                      filler_contexts,
                                      forced_attention_logit_difference,
                                      neutral_tokens,
                                      random_triples,
                                      skip_trigrams,
)
from utils.circuits.plots import plot_relative_attention
from utils.circuits.tables import TrigramTable, show_token, skip_trigram_table, trigram_string
from utils.circuits.widgets import circuit_explorer, explorer_html

__all__ = [
    "exercises", "FactoredMatrix",
    "full_ov_circuit", "full_qk_circuit", "source_centred", "circuit_slice", "ov_from_activations",
    "positional_qk_scores", "positional_qk_pattern", "positional_head_scores",
    "classify_heads", "top_for_source", "head_skip_trigrams", "confirmation_effect", "average_ranks", "spearman",
    "forced_attention_logit_difference", "skip_trigrams",
    "confirmation_prompts", "filler_contexts", "neutral_tokens", "confirm_skip_trigrams",
    "random_triples",
    "bigram_counts", "direct_path_vs_bigrams",
    "TrigramTable", "show_token", "skip_trigram_table", "trigram_string",
    "plot_relative_attention",
    "circuit_explorer", "explorer_html",
]

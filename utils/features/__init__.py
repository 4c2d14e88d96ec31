"""Chapter 06: interpreting the features of a sparse autoencoder.

- ``exercises``: the chapter's graded computations as pure tensor functions (the references).
- ``corpus``: held-out text and its MLP activations; statistics over every feature in chunks.
- ``effects``: ablating and clamping a feature inside the model's forward pass.
- ``dashboard``: offline figures and HTML views of a feature and of a prompt.
- ``attribution``: the MLP's direct contribution to one logit, split into features, error and biases.
- ``saelens``: an optional, online-only look at a public SAE through SAELens (skips offline).
"""
from utils.features import exercises
from utils.features.attribution import mlp_logit_attribution
from utils.features.corpus import (
                                   FeatureCorpus,
                                   collect,
                                   cross_correlation,
                                   decoder_cosine,
                                   feature_acts,
                                   firing_counts,
                                   hypothesis_scores,
                                   proxy_log_likelihood_ratio,
)
from utils.features.dashboard import (
                                   effect_html,
                                   examples_html,
                                   feature_figure,
                                   feature_logit_weights,
                                   prompt_html,
                                   quantile_examples,
                                   top_tokens,
)
from utils.features.effects import ablation_effect, logit_effect, steered_generate

__all__ = [
    "exercises", "FeatureCorpus", "collect", "cross_correlation", "decoder_cosine", "feature_acts", "firing_counts",
    "hypothesis_scores", "proxy_log_likelihood_ratio", "effect_html", "examples_html", "feature_figure",
    "feature_logit_weights", "prompt_html", "quantile_examples", "top_tokens", "ablation_effect", "logit_effect",
    "steered_generate", "mlp_logit_attribution",
]

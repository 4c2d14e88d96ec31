"""Chapter 07: transcoders and attribution graphs on gelu-2l.

    from utils.models import load_model
    from utils.attribution import load_transcoders, freeze, build_graph, output_influence

    model = load_model("gelu-2l")
    fp = freeze(model, load_transcoders(), "import os\\nos.path")   # the replacement model of a prompt
    graph = build_graph(fp)                                        # nodes and A[target, source]

Modules (one idea each): ``transcoder`` (the TopK transcoder), ``training`` (its loop and paired
activations), ``metrics`` (FVE, L0, dead, CE with the MLPs replaced), ``saving`` (bundled files),
``replacement`` (frozen attention and LayerNorms, error nodes: the replacement model of a prompt),
``graph`` (the adjacency matrix), ``influence`` (normalised influence, pruning, replacement and
completeness scores), ``interventions`` (the real model against the graph's prediction), ``view``
(the offline interactive graph), ``exercises`` (the chapter's graded references).
"""
from utils.attribution import exercises
from utils.attribution.graph import Graph, build_graph, top_logits
from utils.attribution.influence import (
    graph_scores,
    influence_matrix,
    normalize_adjacency,
    output_influence,
    prune_mask,
)
from utils.attribution.interventions import (
    frozen_quantities_shift,
    intervention_agreement,
    predicted_logit_change,
    real_logit_change,
)
from utils.attribution.metrics import evaluate_transcoders, replacement_hooks
from utils.attribution.replacement import FrozenPrompt, freeze, frozen_forward
from utils.attribution.saving import TRANSCODER_DIR, load_transcoder, load_transcoders, save_transcoder
from utils.attribution.training import PairedActivations, train_transcoder, transcoder_loss
from utils.attribution.transcoder import Transcoder, TranscoderConfig, topk_relu

__all__ = [
    "exercises", "Graph", "build_graph", "top_logits", "graph_scores", "influence_matrix", "normalize_adjacency",
    "output_influence", "prune_mask", "frozen_quantities_shift",
    "intervention_agreement", "predicted_logit_change", "real_logit_change",
    "evaluate_transcoders", "replacement_hooks", "FrozenPrompt", "freeze", "frozen_forward", "TRANSCODER_DIR",
    "load_transcoder", "load_transcoders", "save_transcoder", "PairedActivations", "train_transcoder",
    "transcoder_loss", "Transcoder", "TranscoderConfig", "topk_relu",
]

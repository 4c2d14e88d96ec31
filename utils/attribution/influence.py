"""From the adjacency matrix to what matters for one answer: influence, pruning, and two scores.

Definitions used here (after Ameisen et al. 2025, "Circuit Tracing", written out in our terms;
``A[target, source]``, nodes as in ``utils.attribution.graph``):

* Normalised adjacency: ``Â = |A|`` with each ROW divided by its sum, so a node's incoming edges
  are shares that add up to 1 (a node with no inputs, a token or an error, keeps a row of zeros).
* Influence: ``B = Â + Â² + Â³ + ... = (I - Â)^{-1} - I`` sums the products of edge shares over
  every path of length >= 1; B[t, s] is how much of t's input comes from s, directly or not. With
  logit weights w (the logit nodes' probabilities, 0 elsewhere), a node's influence on the output
  is ``(w @ B)[s]``. The series is finite: the graph has no cycles, so Â is nilpotent.
* Pruning: sort the nodes by influence on the output and keep the smallest top set that carries a
  ``share`` of the total influence (the logit nodes, whose own influence is 0, are added back by the
  caller).
* Replacement score: of the influence that reaches the graph's sources (tokens and errors), the
  fraction that reaches tokens: ``I_tokens / (I_tokens + I_errors)``. 1 would mean every path from
  the output back to the input runs through features only.
* Completeness score: for every node that HAS inputs (features, logits), the share of its
  normalised input that comes from non-error nodes, averaged with weights ``influence + w``: how
  much of what matters is explained by the graph's interpretable nodes one step back.
"""
from __future__ import annotations

import torch
from torch import Tensor

from utils.attribution import exercises


def normalize_adjacency(A: Tensor) -> Tensor:
    """|A| with each row scaled to sum to 1 (rows of zeros stay zero)."""
    absolute = A.abs()
    total = absolute.sum(1, keepdim=True)
    return absolute / total.where(total > 0, torch.ones_like(total))


def influence_matrix(A: Tensor) -> Tensor:
    """B = (I - Â)^{-1} - I: the summed shares of every path of length >= 1 (target, source).
    The chapter's graded reference, used as it is."""
    return exercises.influence_matrix(A)


def output_influence(A: Tensor, logit_weights: Tensor) -> Tensor:
    """Each node's influence on the weighted logits, w @ B (one linear solve, not an inverse)."""
    normalized = normalize_adjacency(A)
    eye = torch.eye(len(A), dtype=A.dtype)
    total = torch.linalg.solve((eye - normalized).T, logit_weights.to(A.dtype))  # w (I - Â)^{-1}
    return total - logit_weights.to(A.dtype)


def prune_mask(influence: Tensor, share: float) -> Tensor:
    """Bool mask of the smallest set of nodes, taken by decreasing influence, whose influence adds
    up to at least ``share`` of the total (the node that crosses the line is kept)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must lie in (0, 1], got {share}")
    return exercises.prune_mask(influence, share)


def graph_scores(A: Tensor, error_nodes: Tensor, token_nodes: Tensor, logit_weights: Tensor) -> tuple[float, float]:
    """(replacement score, completeness score) as defined in this module's docstring."""
    return exercises.graph_scores(A, error_nodes, token_nodes, logit_weights.to(A.dtype))

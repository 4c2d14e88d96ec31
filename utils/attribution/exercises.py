"""Chapter 07's exercises as pure tensor functions: the reference answers its checks grade against.

Layout as the rest of the course (every weight [d_in, d_out], activations as rows): a transcoder's
``W_enc [d_in, d_trans]`` (column j: what feature j reads), ``W_dec [d_trans, d_out]`` (row i: what
feature i writes); attention ``W_V [n_heads, d_model, d_head]``, ``W_O [n_heads, d_head, d_model]``;
patterns ``[n_heads, query_pos, key_pos]``; an adjacency matrix is ``A[target, source]``.

tests/test_ch07_attribution.py checks each against an independent computation: the Transcoder
module, finite interventions in the frozen replacement model, a path-sum series, brute force.
"""
from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def transcoder_forward(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_trans"],
                       b_enc: Float[Tensor, "d_trans"], W_dec: Float[Tensor, "d_trans d_out"],
                       b_dec: Float[Tensor, "d_out"], k: int) -> tuple[Tensor, Tensor]:
    """A TopK transcoder: f = the k largest of ReLU(x @ W_enc + b_enc) per row (others 0),
    y_hat = f @ W_dec + b_dec. Returns (y_hat [batch, d_out], f [batch, d_trans])."""
    acts = torch.relu(x @ W_enc + b_enc)
    values, index = acts.topk(k, dim=-1)
    f = torch.zeros_like(acts).scatter(-1, index, values)
    return f @ W_dec + b_dec, f


def _centre(x: Tensor) -> Tensor:
    return x - x.mean(-1, keepdim=True)


def feature_edges(acts: Float[Tensor, "pos n_src"], W_dec: Float[Tensor, "n_src d_model"],
                  pattern: Float[Tensor, "head pos pos"], W_V: Float[Tensor, "head d_model d_head"],
                  W_O: Float[Tensor, "head d_head d_model"], ln1_w: Float[Tensor, "d_model"],
                  ln1_scale: Float[Tensor, "pos"], ln2_w: Float[Tensor, "d_model"], ln2_scale: Float[Tensor, "pos"],
                  W_enc: Float[Tensor, "d_model n_tgt"]) -> Float[Tensor, "pos n_src pos n_tgt"]:
    """Edges from layer-0 features to layer-1 features, through the residual stream and through
    layer 1's frozen attention: edge[k, i, q, j] = the part of target j's pre-activation at
    position q that source i, active with value acts[k, i] at position k, adds.

    The source writes v = acts[k, i] * W_dec[i] at position k. It reaches resid_mid at q directly
    (only if q == k) and through every head: pattern[h, q, k] * LN1(v at k) @ W_V[h] @ W_O[h], with
    LN1's linear part centre(v) / ln1_scale[k] * ln1_w. The target reads resid_mid at q through
    LN2's linear part (centre, / ln2_scale[q], * ln2_w) and W_enc[:, j]. Biases add no edge.
    """
    n = acts.shape[0]
    through_ln1 = torch.einsum("id,k->kid", _centre(W_dec) * ln1_w, 1 / ln1_scale)  # [k, i, d]
    ov = torch.einsum("hde,hef->hdf", W_V, W_O)  # [h, d, d]
    via_heads = torch.einsum("hqk,kid,hdf->kiqf", pattern, through_ln1, ov)  # [k, i, q, d]
    direct = torch.einsum("kq,id->kiqd", torch.eye(n, dtype=acts.dtype), W_dec)
    written = direct + via_heads  # what one unit of each source adds to resid_mid at q
    read = torch.einsum("kiqd,q->kiqd", _centre(written) * ln2_w, 1 / ln2_scale)
    return acts[:, :, None, None] * (read @ W_enc)


def influence_matrix(A: Float[Tensor, "n n"]) -> Float[Tensor, "n n"]:
    """B = (I - Â)^{-1} - I with Â = |A|, each row divided by its sum (zero rows stay zero):
    B[t, s] sums, over every path s -> ... -> t, the product of the normalised edge shares."""
    absolute = A.abs()
    total = absolute.sum(1, keepdim=True)
    normalized = absolute / torch.where(total > 0, total, torch.ones_like(total))
    eye = torch.eye(len(A), dtype=A.dtype)
    return torch.linalg.inv(eye - normalized) - eye


def prune_mask(influence: Float[Tensor, "n"], share: float) -> Bool[Tensor, "n"]:
    """The smallest set of nodes, taken by decreasing influence, that carries at least ``share``
    of the total influence (the node that crosses the line is kept)."""
    values, order = influence.sort(descending=True)
    cumulative = values.cumsum(0) / values.sum()
    keep = int((cumulative < share).sum()) + 1
    mask = torch.zeros(len(influence), dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


def graph_scores(A: Float[Tensor, "n n"], error_nodes: Bool[Tensor, "n"], token_nodes: Bool[Tensor, "n"],
                 logit_weights: Float[Tensor, "n"]) -> tuple[float, float]:
    """(replacement score, completeness score).

    With Â the row-normalised |A| and each node's influence on the output I = w @ ((I - Â)^{-1} - I):
    replacement = I[tokens].sum() / (I[tokens].sum() + I[errors].sum());
    completeness = sum over nodes with inputs of (1 - Â[n, errors].sum()) * (I[n] + w[n]),
    divided by the sum of (I[n] + w[n]) over the same nodes.
    """
    absolute = A.abs()
    total = absolute.sum(1, keepdim=True)
    normalized = absolute / torch.where(total > 0, total, torch.ones_like(total))
    eye = torch.eye(len(A), dtype=A.dtype)
    influence = logit_weights @ (torch.linalg.inv(eye - normalized) - eye)
    to_tokens, to_errors = influence[token_nodes].sum(), influence[error_nodes].sum()
    replacement = float(to_tokens / (to_tokens + to_errors))
    has_inputs = total[:, 0] > 0
    weight = (influence + logit_weights)[has_inputs]
    non_error = 1 - normalized[has_inputs][:, error_nodes].sum(1)
    return replacement, float((non_error * weight).sum() / weight.sum())

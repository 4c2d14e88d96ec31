"""The induction circuit read from the weights: positional attention, K-composition, copying.

Chapter 03's graded references, sections on the circuit. Row-vector layout as in
``utils.induction.copying`` (``x @ W``); the paper's column-vector products are the transposes of the ones written here.

In a shortformer model the positional embedding is added to the input of the queries and keys
only; it never enters the residual stream. So (a) a layer-0 head's attention pattern can depend on
positions alone, and (b) what a layer-0 head WRITES is built from token embeddings only: the
token-level circuits below are the whole story of what layer 1 reads from layer 0 (up to the
LayerNorms, which these circuits leave out; chapter 03 measures how little that changes).

Contents:

``in_context_learning_score``   late-minus-early loss on text (Olsson et al. 2022); defined in
                                ``utils.models.evaluation`` (the LM trainer logs it), re-exported here
``positional_attention_pattern``  a layer's attention pattern from positions alone
``k_composition_circuit``       token-level query token x previous-token-of-key circuit, factored
``top_1_diagonal_accuracy``     fraction of rows whose largest entry is on the diagonal

A head's token-level OV circuit is chapter 02's ``utils.circuits.full_ov_circuit`` (one function for
one head or a stack of them); this section reads it with ``top_1_diagonal_accuracy``.
"""
from __future__ import annotations

import torch
from jaxtyping import Float
from transformer_lens import FactoredMatrix

from utils.circuits.exercises import positional_qk_pattern
from utils.models.evaluation import ICL_EARLY, ICL_LATE, in_context_learning_score  # noqa: F401  (this section grades it)
from utils.tensors import require_ndim

DIAGONAL_CHUNK = 512  # rows of a factored vocab x vocab matrix materialised at once


def positional_attention_pattern(
    W_pos: Float[torch.Tensor, "n_ctx d_model"],
    W_Q: Float[torch.Tensor, "head d_model d_head"],
    W_K: Float[torch.Tensor, "head d_model d_head"],
) -> Float[torch.Tensor, "head query key"]:
    """Each head's attention pattern when queries and keys see positional embeddings only:
    softmax over keys of (W_pos W_Q)(W_pos W_K)^T / sqrt(d_head), causally masked.

    In a shortformer model this is the part of the attention score that no token can change; a
    previous-token head puts almost all its weight on the diagonal just below the main one.
    """
    return positional_qk_pattern(W_pos, W_Q, W_K)  # chapter 02's computation, met again in layer 0


def k_composition_circuit(
    W_E: Float[torch.Tensor, "d_vocab d_model"],
    W_Q: Float[torch.Tensor, "d_model d_head"],
    W_K: Float[torch.Tensor, "d_model d_head"],
    W_V: Float[torch.Tensor, "d_model d_head"],
    W_O: Float[torch.Tensor, "d_head d_model"],
) -> FactoredMatrix:
    """[d_vocab, d_vocab] FactoredMatrix, entry [a, b]: the attention score a layer-1 head (W_Q, W_K)
    gives, from a query whose token is a, to a key whose PREVIOUS token b was moved there by a
    layer-0 head (W_V, W_O):

        (W_E W_Q) (W_E W_V W_O W_K)^T      (paper: W_E^T W_Q^T W_K W_OV W_E)

    An induction head through a previous-token head scores high on the diagonal: "find the position
    whose previous token is my token". Kept factored through d_head: never a vocab x vocab product
    until someone asks for it.
    """
    for name, w in (("W_E", W_E), ("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V), ("W_O", W_O)):
        require_ndim(w, name, 2)
    query_side = W_E @ W_Q  # [d_vocab, d_head]
    key_side = W_E @ W_V @ W_O @ W_K  # [d_vocab, d_head]: what layer 0 moved, as layer 1's key reads it
    return FactoredMatrix(query_side, key_side.T)


def top_1_diagonal_accuracy(M: FactoredMatrix | Float[torch.Tensor, "n n"]) -> float:
    """Fraction of rows i whose largest entry is M[i, i] (ties count as misses for i unless i is the
    first maximum, as argmax reports). 1 / n for a random matrix; 1 for one that maps each token to
    itself. Materialises DIAGONAL_CHUNK rows at a time, so a factored 4096 x 4096 matrix is fine."""
    if isinstance(M, FactoredMatrix):
        A, B = M.A, M.B
        if A.ndim != 2:
            raise ValueError(f"expected a single [n, n] matrix, got a FactoredMatrix of shape {tuple(M.shape)}")
        rows = lambda s: A[s:s + DIAGONAL_CHUNK] @ B  # noqa: E731
        n, m = A.shape[0], B.shape[1]
    else:
        require_ndim(M, "M", 2)
        rows = lambda s: M[s:s + DIAGONAL_CHUNK]  # noqa: E731
        n, m = M.shape
    if n != m:
        raise ValueError(f"top_1_diagonal_accuracy needs a square matrix; got {n} x {m}")
    hits = 0
    for start in range(0, n, DIAGONAL_CHUNK):
        best = rows(start).argmax(dim=-1)
        hits += (best == torch.arange(start, start + len(best), device=best.device)).sum().item()
    return hits / n

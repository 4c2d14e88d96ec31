"""Attention as tensor products: the reference package of chapter 01.

Layout. Like TransformerLens, weights act on ROW vectors: a residual vector x [d_model] becomes a
value ``x @ W_V + b_V`` [d_head], and the head writes ``z @ W_O`` [d_model]. The papers and the
slides write the same maps for COLUMN vectors, so their matrices are our transposes:

    W_V(paper) = W_V.T,   W_O(paper) = W_O.T,   W_O W_V (paper) = (W_V @ W_O).T,
    W_E(paper) = W_E.T,   W_U(paper) = W_U.T,   W_U W_E (paper) = (W_E @ W_U).T.

In this package ``W_OV`` always means ``W_V @ W_O`` [d_model, d_model] (row layout), so a head maps
position i to ``sum_j A[i, j] * x[j] @ W_OV``. Flattening x [pos, d_model] row-major into
vec(x) [pos * d_model] turns that into one matrix-vector product with the Kronecker product
``torch.kron(A, W_OV.T)``: the paper's A ⊗ W_O W_V.

Modules:

- ``exercises``: the chapter's graded computations as pure tensor functions (the references):
  one head, its tensor-product form, a whole layer, the path expansion, reading and writing
  subspaces, composing heads.
- ``inputs``: what those functions need, read from a model (``head_inputs``, ``path_inputs``,
  ``path_names``).
- ``plots``: ``plot_kron_blocks``, ``plot_matrices``, ``plot_path_contributions``.

The shared helpers ``causal_mask``, ``kron`` and ``MASKED`` live in ``utils.tensors`` and are
re-exported here.
"""
from utils.attention import exercises
from utils.attention.exercises import (
                                       attention_pattern,
                                       compose_heads,
                                       head_output,
                                       kron_head_factors,
                                       kron_head_matrix,
                                       multihead_residual,
                                       ov_matrix,
                                       path_logits,
                                       read_write_weights,
                                       tensor_head,
                                       tensor_head_einsum,
                                       tensor_head_kron,
                                       vec,
                                       virtual_weight,
)
from utils.attention.inputs import head_inputs, path_inputs, path_names
from utils.attention.plots import plot_kron_blocks, plot_matrices, plot_path_contributions
from utils.tensors import MASKED, causal_mask, kron

__all__ = [
    "exercises",
    "attention_pattern", "head_output",
    "ov_matrix", "tensor_head", "tensor_head_einsum", "vec", "kron_head_factors", "kron_head_matrix",
    "tensor_head_kron",
    "multihead_residual", "path_logits",
    "read_write_weights", "virtual_weight", "compose_heads",
    "head_inputs", "path_inputs", "path_names",
    "plot_kron_blocks", "plot_matrices", "plot_path_contributions",
    "MASKED", "causal_mask", "kron",
]

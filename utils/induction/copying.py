"""Chapter 03's graded references, sections 1-3: copying (eigenvalues of OV circuits), the induction
loss drop and head ablation, and composition scores. Plain tensor functions, as the checks in
``utils.checks.ch03_copying``, ``ch03_induction`` and ``ch03_composition`` grade them.

Layout as in ``utils.circuits``: weights act on ROW vectors, so a product that the paper writes
right to left (column vectors) is written left to right here:

    full OV circuit   paper W_U W_O^h W_V^h W_E      code W_E @ W_V[h] @ W_O[h] @ W_U   [src, out]
    OV of a head      paper W_O^h W_V^h              code W_V[h] @ W_O[h]               [d_model, d_model]
    QK of a head      paper W_Q^hT W_K^h             code W_Q[h] @ W_K[h].T             [d_model, d_model]

A matrix and its transpose have the same eigenvalues and the same Frobenius norm, so every number
this module returns (eigenvalues, copying scores, composition scores) is the same in either
convention; only the order in which the matrices are typed differs.

Contents, in the chapter's order:

1. copying: ``eigenvalues_via_small_product``, ``full_ov_circuit_eigenvalues``, ``copying_score``,
   ``self_top_k_fraction``
2. induction: ``per_token_loss``, ``induction_loss_drop``, ``ablate_heads`` (the head scores
   ``induction_scores`` and ``previous_token_scores`` and the data ``repeated_random_tokens`` live in
   ``utils.models.evaluation``, since the LM trainer logs them; ``utils.induction`` re-exports them)
3. composition: ``composition_score``, ``composition_scores``

Running them on a model (``ov_weights``, ``copying_summary``, ``ablated_induction_loss_drop``,
``attn_weights``, the random baseline) is ``utils.induction.experiments``.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from jaxtyping import Complex, Float, Int
from transformer_lens import FactoredMatrix

from utils.tensors import is_factored, require_equal, require_ndim

Matrix = Union[torch.Tensor, FactoredMatrix]
KINDS = ("Q", "K", "V")
TOP_K_CHUNK = 512  # rows of a vocab x vocab circuit materialised at once (x vocab x heads floats)


# --------------------------------------------------------------------------- 1. copying


def eigenvalues_via_small_product(
    A: Float[torch.Tensor, "*batch n r"],
    B: Float[torch.Tensor, "*batch r n"],
) -> Complex[torch.Tensor, "*batch r"]:
    """The eigenvalues of the n x n matrix A @ B, from the r x r matrix B @ A (r << n).

    If B A v = k v with k != 0, then A B (A v) = A (B A v) = k (A v) and A v != 0: every nonzero
    eigenvalue of BA is one of AB, and the same argument the other way round shows the converse,
    with multiplicities. AB has rank at most r, so its other n - r eigenvalues are 0. Returning the
    r eigenvalues of BA therefore loses nothing, and costs O(n r^2 + r^3) instead of O(n^3).
    (When BA itself is singular some of the r values are 0 too.)

    Computed in float64 (eigenvalues of non-normal matrices are sensitive to rounding) and returned
    as the complex type of the inputs' precision. A real matrix has real eigenvalues or complex
    conjugate pairs; the order is whatever LAPACK returns.
    """
    require_ndim(A, "A", range(2, 8))
    require_ndim(B, "B", range(2, 8))
    require_equal(A.shape[-1], B.shape[-2], "A's columns must match B's rows (A is [n, r], B is [r, n])")
    require_equal(A.shape[-2], B.shape[-1], "A @ B must be square (A is [n, r], B is [r, n])")
    small = B.double() @ A.double()  # [*batch, r, r]
    complex_dtype = torch.complex128 if A.dtype == torch.float64 else torch.complex64
    return torch.linalg.eigvals(small).to(complex_dtype)


def full_ov_circuit_eigenvalues(
    W_E: Float[torch.Tensor, "d_vocab d_model"],
    W_V: Float[torch.Tensor, "*head d_model d_head"],
    W_O: Float[torch.Tensor, "*head d_head d_model"],
    W_U: Float[torch.Tensor, "d_model d_vocab"],
) -> Complex[torch.Tensor, "*head d_head"]:
    """The d_head (possibly) nonzero eigenvalues of each head's full OV circuit
    W_E W_V^h W_O^h W_U ([d_vocab, d_vocab], the paper's W_U W_O^h W_V^h W_E transposed).

    The circuit is (W_E W_V)(W_O W_U), a [d_vocab, d_head] times a [d_head, d_vocab] factor, so its
    eigenvalues are those of (W_O W_U)(W_E W_V), a d_head x d_head matrix: the 4096 x 4096 matrix
    is never formed. The same as ``utils.circuits.full_ov_circuit(...).eigenvalues`` in
    TransformerLens (which computes them from its ``BA``), up to order and float64 accuracy.
    """
    require_ndim(W_E, "W_E", 2)
    require_ndim(W_U, "W_U", 2)
    require_equal(W_E.shape[-1], W_V.shape[-2], "W_E's d_model must match W_V's")
    require_equal(W_V.shape[-1], W_O.shape[-2], "W_V's d_head must match W_O's")
    require_equal(W_O.shape[-1], W_U.shape[0], "W_O's d_model must match W_U's")
    require_equal(W_E.shape[0], W_U.shape[1], "W_E and W_U must have the same d_vocab")
    return eigenvalues_via_small_product(W_E @ W_V, W_O @ W_U)


def copying_score(eigenvalues: Complex[torch.Tensor, "*head r"]) -> Float[torch.Tensor, "*head"]:
    """Re(sum of eigenvalues) / sum of |eigenvalues|, per head: +1 when every eigenvalue is real
    and positive (the circuit maps each direction it reads back onto itself, raising the logits of
    the tokens it attended to), -1 when all are real and negative (suppression), near 0 when they
    are rotations or cancel. The real part of the sum is the trace of the circuit, the sum of its
    diagonal: how much attending to a token raises that same token's logit, summed over tokens.

    Real input is accepted (as eigenvalues with zero imaginary part). All-zero eigenvalues give NaN.
    """
    require_ndim(eigenvalues, "eigenvalues", range(1, 8))
    if eigenvalues.is_complex():
        real, magnitude = eigenvalues.real, eigenvalues.abs()
    else:
        real, magnitude = eigenvalues, eigenvalues.abs()
    return real.sum(-1) / magnitude.sum(-1)


def self_top_k_fraction(
    W_E: Float[torch.Tensor, "d_vocab d_model"],
    W_V: Float[torch.Tensor, "*head d_model d_head"],
    W_O: Float[torch.Tensor, "*head d_head d_model"],
    W_U: Float[torch.Tensor, "d_model d_vocab"],
    k: int = 5,
    chunk: int = TOP_K_CHUNK,
) -> Float[torch.Tensor, "*head"]:
    """Per head: the fraction of tokens t whose own logit is among the k largest entries of row t
    of the full OV circuit W_E W_V W_O W_U, i.e. attending to t raises t itself into the top k.

    A token counts when fewer than k tokens of its row score strictly higher than it (without ties
    this is exactly "t in row.topk(k)"; with ties it gives t the benefit of the doubt). Rows are
    built ``chunk`` at a time from the factors, so memory is chunk x d_vocab per head.
    """
    require_ndim(W_E, "W_E", 2)
    require_ndim(W_U, "W_U", 2)
    require_equal(W_E.shape[0], W_U.shape[1], "W_E and W_U must have the same d_vocab")
    d_vocab = W_E.shape[0]
    if not 1 <= k <= d_vocab:
        raise ValueError(f"k must lie in [1, d_vocab = {d_vocab}], got {k}")
    left, right = W_E @ W_V, W_O @ W_U  # [*head, d_vocab, d_head], [*head, d_head, d_vocab]
    hits = torch.zeros(left.shape[:-2], dtype=torch.long, device=W_E.device)
    for start in range(0, d_vocab, chunk):
        rows = left[..., start:start + chunk, :] @ right  # [*head, c, d_vocab]: rows start..start+c
        own = torch.arange(start, start + rows.shape[-2], device=W_E.device)
        own_logit = rows.gather(-1, own.expand(*rows.shape[:-1])[..., None])  # [*head, c, 1]
        beaten_by = (rows > own_logit).sum(-1)  # tokens that beat t in its own row
        hits += (beaten_by < k).sum(-1)
    return hits.to(W_E.dtype) / d_vocab


# --------------------------------------------------------------------------- 2. induction


def per_token_loss(
    logits: Float[torch.Tensor, "batch pos d_vocab"],
    tokens: Int[torch.Tensor, "batch pos"],
) -> Float[torch.Tensor, "batch pos_minus_1"]:
    """Next-token cross-entropy at every position: entry [b, i] = -log p(tokens[b, i + 1] | logits[b, i]).

    Position i's logits are a prediction of token i + 1, so the last position predicts nothing and
    the first token is never predicted: pos - 1 losses per sequence. log_softmax (not log(softmax))
    is numerically safe; the logits are normalised exactly once, over the vocabulary.
    """
    require_ndim(logits, "logits", 3)
    require_ndim(tokens, "tokens", 2)
    require_equal(tuple(logits.shape[:2]), tuple(tokens.shape), "logits and tokens must agree on [batch, pos]")
    log_probs = logits[:, :-1].log_softmax(dim=-1)  # predictions made at positions 0 .. pos-2
    return -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]  # ... of tokens 1 .. pos-1


def induction_loss_drop(losses: Float[torch.Tensor, "batch two_seq_len"], seq_len: int) -> float:
    """First-half minus second-half mean loss on BOS, r_1..r_n, r_1..r_n (n = seq_len), from
    ``per_token_loss`` of those tokens ([batch, 2 n]: entry i is the loss of predicting token i + 1).

    Both halves average the predictions of r_2..r_n: entries 1..n-1 (first copy) and n+1..2n-1
    (second copy). Left out on purpose: entry 0 (r_1 predicted from BOS) and entry n (r_1 of the
    second copy predicted from r_n, which has no earlier occurrence to copy from), so the two halves
    predict the same tokens from the same current tokens and differ only in what came before.
    """
    require_ndim(losses, "losses", 2)
    if losses.shape[1] != 2 * seq_len:
        raise ValueError(f"losses must be [batch, 2 * seq_len] = [*, {2 * seq_len}] for tokens of length "
                         f"1 + 2 * seq_len; got {tuple(losses.shape)}")
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    first = losses[:, 1:seq_len].mean()
    second = losses[:, seq_len + 1:].mean()
    return float(first - second)


def ablate_heads(
    z: Float[torch.Tensor, "batch pos head d_head"],
    heads: Sequence[int],
    mean: bool = False,
) -> Float[torch.Tensor, "batch pos head d_head"]:
    """``hook_z`` with the listed heads knocked out: their z set to 0 (zero-ablation), or, with
    ``mean=True``, to that head's mean z over the batch AND positions of this run (mean-ablation:
    the head still adds its average output, so only the information it moves is removed).

    z is each head's attention-weighted value, before W_O: zeroing it removes exactly that head's
    contribution W_O^h z^h to the residual stream (b_O, shared by all heads, stays). Returns a new
    tensor; the input is not modified.
    """
    require_ndim(z, "z", 4)
    idx = torch.as_tensor(list(heads), dtype=torch.long, device=z.device)
    if len(idx) and (idx.min() < 0 or idx.max() >= z.shape[2]):
        raise ValueError(f"heads must lie in [0, {z.shape[2]})")
    out = z.clone()
    if mean:
        out[:, :, idx] = z[:, :, idx].mean(dim=(0, 1), keepdim=True).expand_as(out[:, :, idx])
    else:
        out[:, :, idx] = 0.0
    return out


# --------------------------------------------------------------------------- 3. composition


def _frobenius(M: Matrix) -> torch.Tensor:
    """||M||_F over the last two axes. For M = A B (a FactoredMatrix, inner size r) from the factors
    alone: ||A B||_F^2 = tr(B^T A^T A B) = tr((A^T A)(B B^T)), a sum over r x r Gram matrices, so
    the big matrix is never formed (TransformerLens's FactoredMatrix.norm gets the same number from
    an SVD, which is slower)."""
    if is_factored(M):
        gram_a = M.A.transpose(-1, -2) @ M.A  # [*, r, r]
        gram_b = M.B @ M.B.transpose(-1, -2)  # [*, r, r]
        return (gram_a * gram_b).sum((-2, -1)).clamp_min(0).sqrt()  # both symmetric: elementwise = trace
    return torch.linalg.matrix_norm(M)


def composition_score(W_A: Matrix, W_B: Matrix) -> Float[torch.Tensor, "*batch"]:
    """||W_A W_B||_F / (||W_A||_F ||W_B||_F), batched (and broadcast) over the leading axes.

    W_A is what the earlier head writes (its OV matrix), W_B what the later head reads with (see
    ``composition_scores``). The score is scale-free, lies in [0, 1] (Cauchy-Schwarz for the
    Frobenius norm), and is large when what W_A writes lands where W_B reads. Dense tensors and
    TransformerLens FactoredMatrix are both accepted (a product involving one stays factored).
    """
    for name, M in (("W_A", W_A), ("W_B", W_B)):
        if not (is_factored(M) or isinstance(M, torch.Tensor)):
            raise TypeError(f"{name} must be a torch.Tensor or a FactoredMatrix, got {type(M).__name__}")
        if len(M.shape) < 2:
            raise ValueError(f"{name} must be a matrix (or a batch of them), got shape {tuple(M.shape)}")
    require_equal(W_A.shape[-1], W_B.shape[-2], "W_A's columns must match W_B's rows")
    return _frobenius(W_A @ W_B) / (_frobenius(W_A) * _frobenius(W_B))


def composition_scores(
    W_Q: Float[torch.Tensor, "n_layers head d_model d_head"],
    W_K: Float[torch.Tensor, "n_layers head d_model d_head"],
    W_V: Float[torch.Tensor, "n_layers head d_model d_head"],
    W_O: Float[torch.Tensor, "n_layers head d_head d_model"],
    kind: str,
    earlier: int = 0,
    later: int = 1,
) -> Float[torch.Tensor, "head_earlier head_later"]:
    """Q-, K- or V-composition scores of every head of layer ``earlier`` (rows) with every head of
    layer ``later`` (columns), the weights stacked as ``model.W_Q`` etc.

    TransformerLens's convention (``HookedTransformer.all_composition_scores``, kept in 4.x as
    ``TransformerBridge.all_composition_scores``), in the row layout: the left matrix is the
    earlier head's OV = W_V W_O ([d_model, d_model]); the right one is what the later head reads:

        Q-composition   W_A = OV^0, W_B = QK^1   = W_Q^1 W_K^1T   (its queries read OV^0's output)
        K-composition   W_A = OV^0, W_B = QK^1 T = W_K^1 W_Q^1T   (its keys read OV^0's output)
        V-composition   W_A = OV^0, W_B = OV^1   = W_V^1 W_O^1    (its values read OV^0's output)

    Why the transpose for K: the later head's score is x_dest W_Q W_K^T x_src^T; when the key
    x_src carries y OV^0, the score is x_dest W_Q W_K^T OV^0T y^T, whose matrix read from y's side
    is OV^0 (W_Q W_K^T)^T. In the paper's column notation these are W_QK^T W_OV, W_QK W_OV and
    W_OV W_OV: the same norms.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    for name, W in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V), ("W_O", W_O)):
        require_ndim(W, name, 4)
    n_layers = W_Q.shape[0]
    if not 0 <= earlier < later < n_layers:
        raise ValueError(f"need 0 <= earlier < later < n_layers = {n_layers}, got {earlier}, {later}")
    ov = FactoredMatrix(W_V[earlier], W_O[earlier])  # [head, d_model, d_model], rank d_head
    if kind == "Q":
        right = FactoredMatrix(W_Q[later], W_K[later].transpose(-1, -2))
    elif kind == "K":
        right = FactoredMatrix(W_K[later], W_Q[later].transpose(-1, -2))  # (W_Q W_K^T)^T
    else:
        right = FactoredMatrix(W_V[later], W_O[later])
    # Rows index the earlier head, columns the later one: broadcast [h0, 1] against [1, h1].
    left = FactoredMatrix(ov.A[:, None], ov.B[:, None])
    right = FactoredMatrix(right.A[None], right.B[None])
    return composition_score(left, right)

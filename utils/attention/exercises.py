"""Chapter 01's graded computations, in their plain form: the references its checks grade against.

Row layout (see the package docstring): ``W_OV = W_V @ W_O`` [d_model, d_model], so a head maps
position i to ``sum_j A[i, j] * x[j] @ W_OV``, and flattening x [pos, d_model] row-major into
vec(x) turns that into one product with ``torch.kron(A, W_OV.T)``: the paper's A ⊗ W_O W_V.

In the chapter's order:

1. one head from its weights: ``attention_scores``, ``attention_pattern``, ``head_output``
2. the tensor-product form: ``ov_matrix``, ``tensor_head``, ``tensor_head_einsum``, ``vec``,
   ``kron_head_factors``, ``kron_head_matrix``, ``tensor_head_kron``
3. a whole attention layer: ``multihead_residual``
4. the path expansion of a 1-layer attention-only model: ``path_logits``
5. the residual stream as a channel: ``read_write_weights``, ``virtual_weight`` (its normalised
   norm, the composition score, is chapter 03's ``utils.induction.composition_score``)
6. composing heads: ``compose_heads``

Everything here takes tensors and returns tensors; reading them out of a model is ``inputs``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from jaxtyping import Float, Int

from utils.tensors import MASKED, causal_mask, kron, require_equal, require_ndim

# The kron form materialises a (pos * d_model)^2 matrix; refuse sizes that would eat the RAM.
KRON_MAX_SIDE = 4096


# --------------------------------------------------------------------------- 1. one head


def attention_scores(
    qk_input: Float[torch.Tensor, "batch pos d_model"],
    W_Q: Float[torch.Tensor, "d_model d_head"],
    W_K: Float[torch.Tensor, "d_model d_head"],
    b_Q: Float[torch.Tensor, "d_head"],
    b_K: Float[torch.Tensor, "d_head"],
) -> Float[torch.Tensor, "batch query key"]:
    """Scaled, causally masked scores q_i . k_j / sqrt(d_head) (masked entries are -inf).

    The 1/sqrt(d_head) keeps the scores' spread independent of d_head: a dot product of d_head
    roughly independent terms grows like sqrt(d_head), which would saturate the softmax.
    """
    require_ndim(qk_input, "qk_input", 3)
    require_equal(qk_input.shape[-1], W_Q.shape[0], "qk_input's last axis must match W_Q's d_model")
    q = qk_input @ W_Q + b_Q  # [batch, pos, d_head]
    k = qk_input @ W_K + b_K
    scores = torch.einsum("bqh,bkh->bqk", q, k) / math.sqrt(W_Q.shape[-1])
    return scores.masked_fill(~causal_mask(scores.shape[-1], scores.device), MASKED)


def attention_pattern(
    qk_input: Float[torch.Tensor, "batch pos d_model"],
    W_Q: Float[torch.Tensor, "d_model d_head"],
    W_K: Float[torch.Tensor, "d_model d_head"],
    b_Q: Float[torch.Tensor, "d_head"],
    b_K: Float[torch.Tensor, "d_head"],
) -> Float[torch.Tensor, "batch query key"]:
    """A[b, i, j]: how much query position i reads from key position j; each row sums to 1.

    The softmax runs over KEYS (the last axis): each destination distributes one unit of
    attention over the sources it may see. Equal to the model's ``hook_pattern[:, head]``.
    """
    return attention_scores(qk_input, W_Q, W_K, b_Q, b_K).softmax(dim=-1)


def head_output(
    pattern: Float[torch.Tensor, "batch query key"],
    v_input: Float[torch.Tensor, "batch pos d_model"],
    W_V: Float[torch.Tensor, "d_model d_head"],
    b_V: Float[torch.Tensor, "d_head"],
    W_O: Float[torch.Tensor, "d_head d_model"],
) -> tuple[Float[torch.Tensor, "batch pos d_head"], Float[torch.Tensor, "batch pos d_model"]]:
    """(z, result): z_i = sum_j A[i, j] v_j with v_j = x_j W_V + b_V, and result_i = z_i W_O.

    Equal to the model's ``hook_z[:, :, head]`` and ``hook_result[:, :, head]``. The shared
    output bias b_O is not part of any single head's result (TransformerLens adds it once, after
    summing the heads).
    """
    require_ndim(pattern, "pattern", 3)
    require_ndim(v_input, "v_input", 3)
    require_equal(pattern.shape[-1], v_input.shape[1], "pattern's key axis must match v_input's positions")
    v = v_input @ W_V + b_V  # [batch, pos, d_head]
    z = torch.einsum("bqk,bkh->bqh", pattern, v)
    return z, z @ W_O


# --------------------------------------------------------------------------- 2. tensor products


def ov_matrix(W_V: Float[torch.Tensor, "... d_model d_head"],
              W_O: Float[torch.Tensor, "... d_head d_model"]) -> Float[torch.Tensor, "... d_model d_model"]:
    """W_OV = W_V @ W_O (row layout): the paper's W_O W_V, transposed. Rank at most d_head."""
    require_equal(W_V.shape[-1], W_O.shape[-2], "W_V's d_head must match W_O's d_head")
    return W_V @ W_O


def tensor_head(A: Float[torch.Tensor, "*batch pos pos"], W_OV: Float[torch.Tensor, "d_model d_model"],
                x: Float[torch.Tensor, "*batch pos d_model"]) -> Float[torch.Tensor, "*batch pos d_model"]:
    """(A ⊗ W_OV) x without materialising the Kronecker product: mix positions with A, map each
    vector with W_OV. The two steps commute, which is why the tensor product factorises."""
    require_ndim(A, "A", (2, 3))
    require_ndim(x, "x", (2, 3))
    require_equal(A.shape[-1], x.shape[-2], "A's key axis must match x's positions")
    return torch.einsum("...ij,...jd->...id", A, x) @ W_OV


def tensor_head_einsum(
    A: Float[torch.Tensor, "pos pos"],
    W_V: Float[torch.Tensor, "d_model d_head"],
    W_O: Float[torch.Tensor, "d_head d_model"],
    x: Float[torch.Tensor, "pos d_model"],
) -> Float[torch.Tensor, "pos d_model"]:
    """h(x) = (Id ⊗ W_O)(A ⊗ Id)(Id ⊗ W_V) x = (A ⊗ W_O W_V) x, one einsum per factor.

    No biases: this is the linear part of a head (the bias adds b_V W_O to every position,
    because each row of A sums to 1).
    """
    require_ndim(A, "A", 2)
    require_ndim(x, "x", 2)
    v = torch.einsum("jd,dh->jh", x, W_V)  # (Id ⊗ W_V): every position on its own
    r = torch.einsum("ij,jh->ih", A, v)  # (A ⊗ Id): mix positions, every d_head coordinate alike
    return torch.einsum("ih,hd->id", r, W_O)  # (Id ⊗ W_O): every position on its own


def vec(x: Float[torch.Tensor, "pos d_model"]) -> Float[torch.Tensor, "pos_times_d_model"]:
    """Row-major flattening: vec(x)[j * d_model + b] = x[j, b] (position is the slow index)."""
    return require_ndim(x, "x", 2).reshape(-1)


def kron_head_factors(
    A: Float[torch.Tensor, "pos pos"],
    W_V: Float[torch.Tensor, "d_model d_head"],
    W_O: Float[torch.Tensor, "d_head d_model"],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three Kronecker factors acting on vec(x), in the order they are applied:

    (Id_pos ⊗ W_V.T) [pos*d_head, pos*d_model], (A ⊗ Id_d_head) [pos*d_head, pos*d_head],
    (Id_pos ⊗ W_O.T) [pos*d_model, pos*d_head].

    The position factor comes FIRST in every kron because vec() makes position the slow index.
    The transposes turn our row-layout weights into the column maps the kron acts with.
    """
    require_ndim(A, "A", 2)
    pos, d_model = A.shape[0], W_V.shape[0]
    if pos * max(d_model, W_V.shape[1]) > KRON_MAX_SIDE:
        raise ValueError(f"the kron form builds ({pos} * {d_model})^2-entry matrices; keep pos * d_model "
                         f"<= {KRON_MAX_SIDE} (use tensor_head_einsum for real sizes)")
    eye_pos = torch.eye(pos, dtype=A.dtype, device=A.device)
    eye_head = torch.eye(W_V.shape[1], dtype=A.dtype, device=A.device)
    return kron(eye_pos, W_V.T), kron(A, eye_head), kron(eye_pos, W_O.T)


def kron_head_matrix(A: Float[torch.Tensor, "pos pos"],
                     W_OV: Float[torch.Tensor, "d_model d_model"]) -> torch.Tensor:
    """A ⊗ W_O W_V as one [pos*d_model, pos*d_model] matrix: block (i, j) is A[i, j] * W_OV.T."""
    require_ndim(A, "A", 2)
    if A.shape[0] * W_OV.shape[0] > KRON_MAX_SIDE:
        raise ValueError(f"pos * d_model = {A.shape[0] * W_OV.shape[0]} > {KRON_MAX_SIDE}: too big to materialise")
    return kron(A, W_OV.T)


def tensor_head_kron(
    A: Float[torch.Tensor, "pos pos"],
    W_V: Float[torch.Tensor, "d_model d_head"],
    W_O: Float[torch.Tensor, "d_head d_model"],
    x: Float[torch.Tensor, "pos d_model"],
) -> Float[torch.Tensor, "pos d_model"]:
    """The same h(x) as ``tensor_head_einsum``, built from explicit torch.kron matrices.

    Only for tiny cases: the matrices have (pos * d_model)^2 entries.
    """
    require_ndim(x, "x", 2)
    read, mix, write = kron_head_factors(A, W_V, W_O)
    return (write @ mix @ read @ vec(x)).reshape(x.shape)


# --------------------------------------------------------------------------- 3. the attention layer


def multihead_residual(
    x0: Float[torch.Tensor, "batch pos d_model"],
    A: Float[torch.Tensor, "batch head query key"],
    W_V: Float[torch.Tensor, "head d_model d_head"],
    W_O: Float[torch.Tensor, "head d_head d_model"],
    b_V: Float[torch.Tensor, "head d_head"],
    b_O: Float[torch.Tensor, "d_model"],
) -> Float[torch.Tensor, "batch pos d_model"]:
    """x1 = x0 + sum_h (A^h ⊗ W_OV^h) x0 + (b_O + sum_h b_V^h W_O^h), with frozen patterns A.

    Each head's W_O maps ITS OWN d_head coordinates into the residual stream, so W_O is applied
    per head and the d_model outputs are summed (equivalently: concatenate the heads' z and
    multiply by W_O stacked to [head * d_head, d_model]). The b_V term is one constant vector
    per head because every row of A^h sums to 1. Equal to the model's ``hook_resid_post``.
    """
    require_ndim(x0, "x0", 3)
    require_ndim(A, "A", 4)
    require_equal(A.shape[1], W_V.shape[0], "A's head axis must match W_V's")
    mixed = torch.einsum("bhij,bjd->bhid", A, x0)  # (A^h ⊗ Id) x0, for every head
    heads = torch.einsum("bhid,hdk,hke->bie", mixed, W_V, W_O)  # then W_OV^h per head, summed
    bias = b_O + torch.einsum("hk,hkd->d", b_V, W_O)
    return x0 + heads + bias


# --------------------------------------------------------------------------- 4. the path expansion


def path_logits(
    tokens: Int[torch.Tensor, "batch pos"],
    A: Float[torch.Tensor, "batch head query key"],
    W_E: Float[torch.Tensor, "d_vocab d_model"],
    W_V: Float[torch.Tensor, "head d_model d_head"],
    W_O: Float[torch.Tensor, "head d_head d_model"],
    W_U: Float[torch.Tensor, "d_model d_vocab"],
    b_V: Float[torch.Tensor, "head d_head"],
    b_O: Float[torch.Tensor, "d_model"],
    b_U: Float[torch.Tensor, "d_vocab"],
) -> Float[torch.Tensor, "batch path pos d_vocab"]:
    """Each path's logits for a 1-layer attention-only model (no LayerNorm, shortformer
    positions), with the attention patterns A frozen. Paths along axis 1:

    * 0, direct: (Id ⊗ W_U W_E) t, i.e. ``W_E[t_i] @ W_U``: the bigram-like table;
    * 1 + h, head h: (A^h ⊗ W_U W_OV^h W_E) t, i.e. ``sum_j A^h[i, j] W_E[t_j] @ W_V^h @ W_O^h @ W_U``;
    * last, biases: ``(b_O + sum_h b_V^h W_O^h) @ W_U + b_U``, the same at every position.

    The sum over paths is the model's logits exactly (up to float rounding): the residual stream
    holds only W_E[t] (positions enter the queries and keys alone), nothing is normalised, and
    once A is fixed everything else is linear.
    """
    require_ndim(tokens, "tokens", 2)
    require_ndim(A, "A", 4)
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
    require_equal(A.shape[-1], tokens.shape[1], "A's key axis must match the number of positions")
    batch, pos = tokens.shape
    x0 = W_E[tokens]  # (Id ⊗ W_E) t: one-hot times W_E is a row lookup
    direct = x0 @ W_U
    # Mixing positions commutes with the per-position maps, so mix in d_head (cheap), not in vocab.
    z = torch.einsum("bhij,bjd,hdk->bhik", A, x0, W_V)
    heads = torch.einsum("bhik,hkd->bhid", z, W_O) @ W_U
    bias = (b_O + torch.einsum("hk,hkd->d", b_V, W_O)) @ W_U + b_U
    bias = bias.expand(batch, 1, pos, -1)
    return torch.cat([direct[:, None], heads, bias], dim=1)


# --------------------------------------------------------------------------- 5. read and write subspaces


def read_write_weights(
    d_model: int, read_dims: Sequence[int], write_dims: Sequence[int],
) -> tuple[Float[torch.Tensor, "d_model k"], Float[torch.Tensor, "k d_model"]]:
    """(W_V, W_O) of a head that copies residual dims ``read_dims[i]`` into ``write_dims[i]``.

    W_V [d_model, k] has a 1 at (read_dims[i], i): value coordinate i reads one residual dim.
    W_O [k, d_model] has a 1 at (i, write_dims[i]): value coordinate i is written to one dim.
    Everything else is 0, so the head ignores the rest of the stream and leaves it untouched.
    """
    read_dims, write_dims = [int(d) for d in read_dims], [int(d) for d in write_dims]
    if len(read_dims) != len(write_dims) or not read_dims:
        raise ValueError(f"need as many read dims as write dims (and at least one), got "
                         f"{len(read_dims)} and {len(write_dims)}")
    for name, dims in (("read_dims", read_dims), ("write_dims", write_dims)):
        if len(set(dims)) != len(dims) or min(dims) < 0 or max(dims) >= d_model:
            raise ValueError(f"{name} must be distinct dims in [0, {d_model}), got {dims}")
    k = len(read_dims)
    W_V, W_O = torch.zeros(d_model, k), torch.zeros(k, d_model)
    W_V[read_dims, range(k)] = 1.0
    W_O[range(k), write_dims] = 1.0
    return W_V, W_O


def virtual_weight(W_O_1: Float[torch.Tensor, "d_head_1 d_model"],
                   W_V_2: Float[torch.Tensor, "d_model d_head_2"]) -> Float[torch.Tensor, "d_head_1 d_head_2"]:
    """How head 2's values read head 1's output, skipping the residual stream: W_O^1 @ W_V^2.

    (The paper's W_V^2 W_O^1, transposed for row vectors.) Zero exactly when head 1 writes into a
    subspace head 2 does not read.
    """
    require_equal(W_O_1.shape[-1], W_V_2.shape[-2], "W_O_1 and W_V_2 must share d_model")
    return W_O_1 @ W_V_2


# --------------------------------------------------------------------------- 6. composing heads


def compose_heads(
    A_2: Float[torch.Tensor, "*batch pos pos"],
    W_OV_2: Float[torch.Tensor, "d_model d_model"],
    A_1: Float[torch.Tensor, "*batch pos pos"],
    W_OV_1: Float[torch.Tensor, "d_model d_model"],
) -> tuple[Float[torch.Tensor, "*batch pos pos"], Float[torch.Tensor, "d_model d_model"]]:
    """(A, W_OV) of the virtual head "head 1, then head 2" (patterns frozen):

    (A^2 ⊗ W_OV^2)(A^1 ⊗ W_OV^1) = (A^2 A^1) ⊗ (W_OV^2 W_OV^1)   [paper, column layout]

    In the row layout W_OV = W_V @ W_O, the same map is ``W_OV_1 @ W_OV_2``: a row vector meets
    the first head's matrix first. Patterns compose as ``A_2 @ A_1`` in both layouts.
    """
    require_equal(A_2.shape[-1], A_1.shape[-2], "the two patterns must cover the same positions")
    require_equal(W_OV_1.shape[-1], W_OV_2.shape[-2], "the two OV matrices must share d_model")
    return A_2 @ A_1, W_OV_1 @ W_OV_2

"""Checks for chapter 01 (tensorized attention and the residual stream).

Every check runs the student's function on seeded random inputs (random biases included, so no
term can hide behind a zero) and, where the exercise is about the real model, on the bundled
attn-only-1l model's own activations. A mismatch is explained by the first catalogued mistake
whose output the student's output reproduces.

The reference answers are utils/attention/exercises.py. One section per exercise (its inputs,
its reference, its catalogue of mistakes), in the notebook's order: longer than 400 lines because
the catalogue is the point, and splitting it would separate each exercise from its mistakes.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from utils.attention import exercises as ref
from utils.attention.inputs import head_inputs, path_inputs
from utils.checks.core import Cases, Exercise, question, run_check
from utils.checks.toolkit import INF, attn_only_1l, misconception, nan_as_inf, randint, random_pattern, rng
from utils.tensors import causal_mask, kron

CHAPTER = "01"
EXERCISES = (
    "attention_pattern", "head_output", "tensor_head_einsum", "tensor_head_kron", "multihead_residual",
    "path_logits", "read_write_weights", "virtual_weight", "compose_heads",
    "factor_question", "bias_question", "exactness_question",
)

@lru_cache(maxsize=1)
def _real_tokens() -> torch.Tensor:
    from utils.data import analysis_tokens

    return analysis_tokens(seq_len=24, n_seqs=2)


@lru_cache(maxsize=4)
def _real_head(head: int) -> dict:
    return head_inputs(attn_only_1l(), _real_tokens(), head)


@lru_cache(maxsize=1)
def _real_paths() -> dict:
    return path_inputs(attn_only_1l(), _real_tokens())


def _pick(data: dict, *names: str) -> dict:
    return {k: data[k] for k in names}


# --------------------------------------------------------------------------- 1a. the attention pattern


def _pattern_inputs(seed: int) -> dict:
    g = rng(seed)
    b, n, d, k = randint(g, 1, 3), randint(g, 4, 8), randint(g, 6, 12), randint(g, 2, 5)
    scale = 1.5 / math.sqrt(d)
    return dict(qk_input=torch.randn(b, n, d, generator=g), W_Q=torch.randn(d, k, generator=g) * scale,
                W_K=torch.randn(d, k, generator=g) * scale, b_Q=torch.randn(k, generator=g) * 0.5,
                b_K=torch.randn(k, generator=g) * 0.5)


def _raw_scores(qk_input, W_Q, W_K, b_Q, b_K, scale=None):
    q, k = qk_input @ W_Q + b_Q, qk_input @ W_K + b_K
    scale = math.sqrt(W_Q.shape[-1]) if scale is None else scale
    return torch.einsum("bqh,bkh->bqk", q, k) / scale


def _masked(scores, allowed, fill=-INF):
    return scores.masked_fill(~allowed, fill)


def _lower(n):
    return causal_mask(n)


def _strict_lower(n):
    return torch.ones(n, n, dtype=torch.bool).tril(-1)


def _upper(n):
    return torch.ones(n, n, dtype=torch.bool).triu()


def _pattern_variant(*, axis=-1, allowed=_lower, fill=-INF, scale=None, biases=True, mask_after=False):
    def pattern(qk_input, W_Q, W_K, b_Q, b_K):
        if not biases:
            b_Q, b_K = torch.zeros_like(b_Q), torch.zeros_like(b_K)
        scores = _raw_scores(qk_input, W_Q, W_K, b_Q, b_K, scale)
        n = scores.shape[-1]
        if allowed is None:
            return scores.softmax(axis)
        if mask_after:
            return scores.softmax(axis) * allowed(n)
        return _masked(scores, allowed(n), fill).softmax(axis)

    return pattern


ATTENTION_PATTERN = Exercise(
    chapter=CHAPTER,
    name="attention_pattern",
    reference=ref.attention_pattern,
    make_inputs=_pattern_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: _pick(_real_head(0), "qk_input", "W_Q", "W_K", "b_Q", "b_K"),
                  lambda: _pick(_real_head(3), "qk_input", "W_Q", "W_K", "b_Q", "b_K")),
    misconceptions=(
        misconception("softmax over queries", "Your softmax ran over the QUERY axis (each column sums to 1). A query "
           "position distributes its attention over the keys it can see, so normalise over the key axis: "
           "softmax(dim=-1).",
           _pattern_variant(axis=-2)),
        misconception("no causal mask", "There is no causal mask: position i attends to later positions j > i. Set the "
           "scores above the diagonal to -inf BEFORE the softmax.",
           _pattern_variant(allowed=None)),
        misconception("masked the diagonal", "Your mask also hides the diagonal, so a position cannot attend to itself "
           "(and position 0 has nothing left to attend to: NaN). Mask only j > i; keep j == i.",
           _pattern_variant(allowed=_strict_lower)),
        misconception("masked the diagonal (finite fill)", "Your mask also hides the diagonal (j == i), so a position "
           "cannot attend to itself and position 0 spreads its attention over masked keys. Mask only j > i.",
           _pattern_variant(allowed=_strict_lower, fill=-1e9)),
        misconception("masked the lower triangle", "You masked the wrong triangle: each position attends to itself and "
           "the FUTURE (keys j >= i). A causal mask hides the upper triangle (j > i) and keeps the lower one "
           "(torch.tril of ones marks the allowed entries).",
           _pattern_variant(allowed=_upper)),
        misconception("mask after softmax", "You zeroed the future AFTER the softmax, so the rows no longer sum to 1. "
           "Fill the masked scores with -inf before the softmax instead.",
           _pattern_variant(allowed=_lower, mask_after=True)),
        misconception("missing 1/sqrt(d_head)", "The scores are not scaled: divide q . k by sqrt(d_head) before the "
           "softmax (without it the softmax saturates as d_head grows).",
           _pattern_variant(scale=1.0)),
        misconception("divided by d_head", "You divided the scores by d_head; the scale is 1/sqrt(d_head).",
           lambda qk_input, W_Q, W_K, b_Q, b_K: _pattern_variant(scale=float(W_Q.shape[-1]))(
               qk_input, W_Q, W_K, b_Q, b_K)),
        misconception("divided by sqrt(d_model)", "You scaled the scores by 1/sqrt(d_model); the scale is "
           "1/sqrt(d_head), the length of the vectors whose dot product you take (q and k live in the head's d_head "
           "dimensions).",
           lambda qk_input, W_Q, W_K, b_Q, b_K: _pattern_variant(scale=float(qk_input.shape[-1]) ** 0.5)(
               qk_input, W_Q, W_K, b_Q, b_K)),
        misconception("no query/key biases", "You left out the biases: q = x W_Q + b_Q and k = x W_K + b_K.",
           _pattern_variant(biases=False)),
    ),
)


def attention_pattern(fn, cases: Cases = None) -> None:
    """Check ``fn(qk_input, W_Q, W_K, b_Q, b_K) -> pattern[batch, query, key]``; the real-model cases
    compare with heads 0 and 3 of attn-only-1l (``hook_pattern``)."""
    run_check(ATTENTION_PATTERN, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 1b. z and result


def _head_output_inputs(seed: int) -> dict:
    g = rng(seed)
    b, n, d, k = randint(g, 1, 3), randint(g, 3, 8), randint(g, 5, 12), randint(g, 2, 5)
    return dict(pattern=random_pattern(g, b, n), v_input=torch.randn(b, n, d, generator=g),
                W_V=torch.randn(d, k, generator=g) / math.sqrt(d), b_V=torch.randn(k, generator=g),
                W_O=torch.randn(k, d, generator=g) / math.sqrt(k))


def _head_output_variant(*, transpose=False, bias=True):
    def head_output(pattern, v_input, W_V, b_V, W_O):
        v = v_input @ W_V + (b_V if bias else 0)
        A = pattern.transpose(-1, -2) if transpose else pattern
        z = A @ v
        return z, z @ W_O

    return head_output


HEAD_OUTPUT = Exercise(
    chapter=CHAPTER,
    name="head_output",
    reference=ref.head_output,
    make_inputs=_head_output_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: _pick(_real_head(1), "pattern", "v_input", "W_V", "b_V", "W_O"),),
    misconceptions=(
        misconception("pattern transposed", "You mixed the values with A transposed. Row i of the pattern says where "
           "query i reads from: z_i = sum_j A[i, j] v_j (contract the pattern's KEY axis with the values' "
           "position axis).",
           _head_output_variant(transpose=True)),
        misconception("forgot b_V", "The values need their bias: v_j = x_j W_V + b_V.",
           _head_output_variant(bias=False)),
    ),
)


def head_output(fn, cases: Cases = None) -> None:
    """Check ``fn(pattern, v_input, W_V, b_V, W_O) -> (z[batch, pos, d_head], result[batch, pos, d_model])``;
    the real-model case is head 1 of attn-only-1l."""
    run_check(HEAD_OUTPUT, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 2. tensor products


def _tiny_head_inputs(seed: int) -> dict:
    g = rng(seed)
    n, d, k = randint(g, 2, 5), randint(g, 3, 6), randint(g, 2, 3)
    return dict(A=random_pattern(g, n), W_V=torch.randn(d, k, generator=g), W_O=torch.randn(k, d, generator=g),
                x=torch.randn(n, d, generator=g))


def _einsum_variant(*, transpose_A=False, transpose_OV=False):
    def tensor_head(A, W_V, W_O, x):
        W_OV = W_V @ W_O
        return (A.T if transpose_A else A) @ x @ (W_OV.T if transpose_OV else W_OV)

    return tensor_head


_A_TRANSPOSED = ("A transposed", "You used A transposed: the output at position i is sum_j A[i, j] (x_j W_OV), so "
                 "A's row index is the destination and its column index the source.")
_OV_TRANSPOSED = ("W_OV transposed", "You applied W_OV transposed. With row vectors (TransformerLens layout) a "
                  "position's vector x_j maps to x_j @ W_V @ W_O; the paper's W_O W_V is the same map written "
                  "for column vectors, i.e. (W_V @ W_O).T.")

TENSOR_HEAD_EINSUM = Exercise(
    chapter=CHAPTER,
    name="tensor_head_einsum",
    reference=ref.tensor_head_einsum,
    make_inputs=_tiny_head_inputs,
    misconceptions=(
        misconception(*_A_TRANSPOSED, _einsum_variant(transpose_A=True)),
        misconception(*_OV_TRANSPOSED, _einsum_variant(transpose_OV=True)),
    ),
)


def tensor_head_einsum(fn, cases: Cases = None) -> None:
    """Check ``fn(A, W_V, W_O, x) -> h[pos, d_model]`` (the linear part of one head)."""
    run_check(TENSOR_HEAD_EINSUM, nan_as_inf(fn), cases)


def _kron_variant(*, swap=False, transpose_OV=True, transpose_A=False):
    def tensor_head(A, W_V, W_O, x):
        M = (W_V @ W_O).T if transpose_OV else W_V @ W_O
        A = A.T if transpose_A else A
        K = kron(M, A) if swap else kron(A, M)
        return (K @ x.reshape(-1)).reshape(x.shape)

    return tensor_head


TENSOR_HEAD_KRON = Exercise(
    chapter=CHAPTER,
    name="tensor_head_kron",
    reference=ref.tensor_head_kron,
    make_inputs=_tiny_head_inputs,
    misconceptions=(
        misconception("kron order swapped", "Your Kronecker factors are in the wrong order. x.reshape(-1) makes the "
           "POSITION the slow index, so the position matrix goes first: torch.kron(A, W), not "
           "torch.kron(W, A) (or flatten x column-major, x.T.reshape(-1), to match the swapped order).",
           _kron_variant(swap=True)),
        misconception("kron without the transpose", "Inside the Kronecker product W acts on each position's vector as "
           "a COLUMN vector, so it must be (W_V @ W_O).T, the paper's W_O W_V; torch.kron(A, W_V @ W_O) applies "
           "the transposed map.",
           _kron_variant(transpose_OV=False)),
        misconception(*_A_TRANSPOSED, _kron_variant(transpose_A=True)),
    ),
)


def tensor_head_kron(fn, cases: Cases = None) -> None:
    """Check ``fn(A, W_V, W_O, x) -> h[pos, d_model]`` built from torch.kron."""
    run_check(TENSOR_HEAD_KRON, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 3. the whole layer


def _layer_inputs(seed: int) -> dict:
    g = rng(seed)
    b, n, d, k, h = randint(g, 1, 3), randint(g, 3, 7), randint(g, 5, 10), randint(g, 2, 4), randint(g, 2, 4)
    return dict(x0=torch.randn(b, n, d, generator=g), A=random_pattern(g, b, h, n),
                W_V=torch.randn(h, d, k, generator=g) / math.sqrt(d),
                W_O=torch.randn(h, k, d, generator=g) / math.sqrt(k),
                b_V=torch.randn(h, k, generator=g), b_O=torch.randn(d, generator=g))


def _layer_variant(*, residual=True, combine="per_head", b_V_on=True, b_O_times=1, transpose=False):
    def layer(x0, A, W_V, W_O, b_V, b_O):
        v = torch.einsum("bjd,hdk->bhjk", x0, W_V) + (b_V[None, :, None] if b_V_on else 0)
        z = (A.transpose(-1, -2) if transpose else A) @ v  # [b, h, i, k]
        if combine == "per_head":
            out = torch.einsum("bhik,hkd->bid", z, W_O)
        elif combine == "mean":
            out = torch.einsum("bhik,hkd->bid", z, W_O) / W_O.shape[0]
        elif combine == "sum_z":
            out = z.sum(1) @ W_O.sum(0)
        elif combine == "concat_mismatch":
            b, h, i, k = z.shape
            out = z.permute(0, 2, 1, 3).reshape(b, i, h * k) @ W_O.permute(1, 0, 2).reshape(k * h, -1)
        return (x0 if residual else 0) + out + b_O * b_O_times

    return layer


MULTIHEAD_RESIDUAL = Exercise(
    chapter=CHAPTER,
    name="multihead_residual",
    reference=ref.multihead_residual,
    make_inputs=_layer_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(lambda: dict(x0=_real_head(0)["v_input"], **_pick(_real_paths(), "A", "W_V", "W_O", "b_V", "b_O")),),
    misconceptions=(
        misconception("forgot the residual x0", "You returned only what the heads write. The layer ADDS to the "
           "residual stream: x1 = x0 + sum_h h(x0) (the Id term of Id + sum_h A^h ⊗ W_OV^h).",
           _layer_variant(residual=False)),
        misconception("summed z before W_O", "You summed the heads' z vectors before applying W_O. Each head's z lives "
           "in its OWN d_head coordinates, so apply each head's W_O^h to its own z^h, then sum the d_model outputs "
           "(einsum 'bhik,hkd->bid').",
           _layer_variant(combine="sum_z")),
        misconception("W_O stacked in the wrong order", "You concatenated the heads' z in (head, d_head) order but "
           "flattened W_O in (d_head, head) order, so each head's coordinates meet another head's W_O rows. "
           "Reshape W_O [head, d_head, d_model] directly to [head * d_head, d_model].",
           _layer_variant(combine="concat_mismatch")),
        misconception("averaged the heads", "You averaged the heads; their outputs add up: sum over h, not mean.",
           _layer_variant(combine="mean")),
        misconception("b_O once per head", "b_O is shared by all heads and added once, not once per head.",
           lambda x0, A, W_V, W_O, b_V, b_O: _layer_variant(b_O_times=W_O.shape[0])(x0, A, W_V, W_O, b_V, b_O)),
        misconception("forgot b_V", "Each head's values carry b_V^h, which adds b_V^h W_O^h to every position "
           "(the rows of A^h sum to 1).",
           _layer_variant(b_V_on=False)),
        misconception(*_A_TRANSPOSED, _layer_variant(transpose=True)),
    ),
)


def multihead_residual(fn, cases: Cases = None) -> None:
    """Check ``fn(x0, A, W_V, W_O, b_V, b_O) -> x1[batch, pos, d_model]``; the real-model case is
    attn-only-1l's ``hook_resid_post``."""
    run_check(MULTIHEAD_RESIDUAL, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 4. the path expansion


def _path_inputs(seed: int) -> dict:
    """Two seeds in three use d_vocab == d_model, so a transposed W_E or W_U still runs and can be
    recognised; the others keep the two sizes apart so that axis slips raise."""
    g = rng(seed)
    b, n, d, k, h = randint(g, 1, 2), randint(g, 3, 6), randint(g, 5, 8), randint(g, 2, 3), randint(g, 2, 3)
    vocab = d if seed % 3 else d + randint(g, 2, 6)
    return dict(tokens=torch.randint(0, vocab, (b, n), generator=g), A=random_pattern(g, b, h, n),
                W_E=torch.randn(vocab, d, generator=g), W_V=torch.randn(h, d, k, generator=g) / math.sqrt(d),
                W_O=torch.randn(h, k, d, generator=g) / math.sqrt(k),
                W_U=torch.randn(d, vocab, generator=g) / math.sqrt(d),
                b_V=torch.randn(h, k, generator=g), b_O=torch.randn(d, generator=g),
                b_U=torch.randn(vocab, generator=g))


def _path_variant(*, W_E_T=False, W_U_T=False, direct=True, transpose=False, ov_T=False, fold_bias=False,
                  b_V_on=True, b_U_on=True):
    def paths(tokens, A, W_E, W_V, W_O, W_U, b_V, b_O, b_U):
        W_E = W_E.T if W_E_T else W_E
        W_U = W_U.T if W_U_T else W_U
        x = W_E[tokens]
        A = A.transpose(-1, -2) if transpose else A
        W_OV = W_V @ W_O
        W_OV = W_OV.transpose(-1, -2) if ov_T else W_OV
        heads = torch.einsum("bhij,bjd,hde->bhie", A, x, W_OV) @ W_U
        bias = (b_O + (torch.einsum("hk,hkd->d", b_V, W_O) if b_V_on else 0)) @ W_U + (b_U if b_U_on else 0)
        bias = bias.expand(tokens.shape[0], 1, tokens.shape[1], -1)
        first = x @ W_U if direct else torch.zeros_like(heads[:, 0])
        if fold_bias:
            return torch.cat([(first + bias[:, 0])[:, None], heads, torch.zeros_like(bias)], 1)
        return torch.cat([first[:, None], heads, bias], 1)

    return paths


PATH_LOGITS = Exercise(
    chapter=CHAPTER,
    name="path_logits",
    reference=ref.path_logits,
    make_inputs=_path_inputs,
    rtol=1e-4, atol=1e-4,
    extra_inputs=(lambda: dict(_real_paths()),),
    misconceptions=(
        misconception("W_E transposed", "You used W_E transposed. Here W_E is [d_vocab, d_model] and a token's "
           "embedding is its ROW, W_E[t]; the paper's W_E (a [d_model, d_vocab] map of one-hot columns) is our W_E.T.",
           _path_variant(W_E_T=True)),
        misconception("W_U transposed", "You used W_U transposed. W_U is [d_model, d_vocab]: logits = x @ W_U.",
           _path_variant(W_U_T=True)),
        misconception("no direct path", "The direct path is missing: the residual x0 = W_E[t] itself reaches the "
           "unembedding, giving (Id ⊗ W_U W_E) t = W_E[t] @ W_U in slot 0.",
           _path_variant(direct=False)),
        misconception(*_A_TRANSPOSED, _path_variant(transpose=True)),
        misconception(*_OV_TRANSPOSED, _path_variant(ov_T=True)),
        misconception("biases folded into the direct path", "Your paths add up to the right logits, but the constant "
           "bias term (b_U plus (b_O + sum_h b_V^h W_O^h) @ W_U) belongs in the LAST slot, not in the direct "
           "path.",
           _path_variant(fold_bias=True)),
        misconception("bias path without b_V", "The bias path misses sum_h b_V^h W_O^h: every head adds b_V^h W_O^h at "
           "every position, because the rows of A^h sum to 1.",
           _path_variant(b_V_on=False)),
        misconception("bias path without b_U", "The bias path misses the unembedding bias b_U.",
           _path_variant(b_U_on=False)),
    ),
)


def path_logits(fn, cases: Cases = None) -> None:
    """Check ``fn(tokens, A, W_E, W_V, W_O, W_U, b_V, b_O, b_U) -> paths[batch, 2 + n_heads, pos, d_vocab]``
    (direct, one per head, biases); the real-model case uses attn-only-1l's weights and patterns."""
    run_check(PATH_LOGITS, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 5. read and write subspaces


def _read_write_inputs(seed: int) -> dict:
    g = rng(seed)
    d, k = randint(g, 8, 20), randint(g, 2, 4)
    dims = torch.randperm(d, generator=g)[: 2 * k].tolist()
    return dict(d_model=d, read_dims=tuple(dims[:k]), write_dims=tuple(dims[k:]))


def _paper_layout(d_model, read_dims, write_dims):
    W_V, W_O = ref.read_write_weights(d_model, read_dims, write_dims)
    return W_V.T, W_O.T


READ_WRITE_WEIGHTS = Exercise(
    chapter=CHAPTER,
    name="read_write_weights",
    reference=ref.read_write_weights,
    make_inputs=_read_write_inputs,
    misconceptions=(
        misconception("paper layout", "You built the paper's column-vector matrices ([d_head, d_model] for W_V). In "
           "our row layout W_V is [d_model, d_head] (x @ W_V) and W_O is [d_head, d_model]: transpose both.",
           _paper_layout),
        misconception("read and write swapped", "Your head reads the write dims and writes the read dims: W_V's "
           "nonzero ROWS are the dims it reads, W_O's nonzero COLUMNS the dims it writes.",
           lambda d_model, read_dims, write_dims: ref.read_write_weights(d_model, write_dims, read_dims)),
        misconception("pairing lost", "Value coordinate i must carry read_dims[i] to write_dims[i]; your pairing "
           "differs (did you sort the dims?).",
           lambda d_model, read_dims, write_dims: ref.read_write_weights(d_model, sorted(read_dims),
                                                                         sorted(write_dims))),
    ),
)


def read_write_weights(fn, cases: Cases = None) -> None:
    """Check ``fn(d_model, read_dims, write_dims) -> (W_V[d_model, k], W_O[k, d_model])``."""
    run_check(READ_WRITE_WEIGHTS, nan_as_inf(fn), cases)


def _virtual_inputs(seed: int) -> dict:
    g = rng(seed)
    d, k1, k2 = randint(g, 6, 16), randint(g, 2, 5), randint(g, 2, 5)
    return dict(W_O_1=torch.randn(k1, d, generator=g), W_V_2=torch.randn(d, k2, generator=g))


VIRTUAL_WEIGHT = Exercise(
    chapter=CHAPTER,
    name="virtual_weight",
    reference=ref.virtual_weight,
    make_inputs=_virtual_inputs,
    misconceptions=(
        misconception("paper orientation", "You returned the column-layout product W_V_2 W_O_1 ([d_head_2, d_head_1]), "
           "which is our result transposed. In the row layout the first head's output z @ W_O_1 is read by the second "
           "head as (z @ W_O_1) @ W_V_2, so return W_O_1 @ W_V_2 [d_head_1, d_head_2].",
           lambda W_O_1, W_V_2: (W_O_1 @ W_V_2).T),
    ),
)


def virtual_weight(fn, cases: Cases = None) -> None:
    """Check ``fn(W_O_1, W_V_2) -> [d_head_1, d_head_2]``."""
    run_check(VIRTUAL_WEIGHT, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- 6. composing heads


def _compose_inputs(seed: int) -> dict:
    g = rng(seed)
    n, d = randint(g, 3, 6), randint(g, 3, 6)
    return dict(A_2=random_pattern(g, n), W_OV_2=torch.randn(d, d, generator=g),
                A_1=random_pattern(g, n), W_OV_1=torch.randn(d, d, generator=g))


COMPOSE_HEADS = Exercise(
    chapter=CHAPTER,
    name="compose_heads",
    reference=ref.compose_heads,
    make_inputs=_compose_inputs,
    misconceptions=(
        misconception("patterns in the wrong order", "Your pattern is A_1 @ A_2. The first head (A_1) moves "
           "information first and the second (A_2) then moves the result, so the composed pattern is A_2 @ A_1 (the "
           "matrix applied first stands on the right).",
           lambda A_2, W_OV_2, A_1, W_OV_1: (A_1 @ A_2, W_OV_1 @ W_OV_2)),
        misconception("OV in paper order", "Your OV product is in the column layout's order, W_OV_2 @ W_OV_1. With "
           "row vectors (x @ W_OV) the first head's matrix meets x first: W_OV_1 @ W_OV_2.",
           lambda A_2, W_OV_2, A_1, W_OV_1: (A_2 @ A_1, W_OV_2 @ W_OV_1)),
        misconception("both orders reversed", "Both products are reversed: the pattern is A_2 @ A_1 and, in the row "
           "layout, the OV matrix is W_OV_1 @ W_OV_2.",
           lambda A_2, W_OV_2, A_1, W_OV_1: (A_1 @ A_2, W_OV_2 @ W_OV_1)),
        misconception("added instead of composed", "You added the two heads. Adding is what two heads in the SAME "
           "layer do; a head reading another head's output composes with it, and composition multiplies: "
           "(A^2 A^1) ⊗ (W_OV^2 W_OV^1).",
           lambda A_2, W_OV_2, A_1, W_OV_1: (A_2 + A_1, W_OV_1 + W_OV_2)),
        misconception("elementwise pattern product", "You multiplied the patterns elementwise. Composing two position "
           "mixings is a matrix product: A^2 @ A^1 (position i reads j via every intermediate k).",
           lambda A_2, W_OV_2, A_1, W_OV_1: (A_2 * A_1, W_OV_1 @ W_OV_2)),
    ),
)


def compose_heads(fn, cases: Cases = None) -> None:
    """Check ``fn(A_2, W_OV_2, A_1, W_OV_1) -> (A[pos, pos], W_OV[d_model, d_model])``."""
    run_check(COMPOSE_HEADS, nan_as_inf(fn), cases)


# --------------------------------------------------------------------------- conceptual questions
# Options, keys and explanations live in the solutions' questions.json (see utils/checks/questions.py).


factor_question = question(CHAPTER, "factor_question")
bias_question = question(CHAPTER, "bias_question")
exactness_question = question(CHAPTER, "exactness_question")
